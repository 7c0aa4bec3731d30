# Quick start: `make demo` (compile, check and time sample layers), `make test` (the suite).
# Both set up what they need in .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP    := $(VENV)/.test-installed
# Parallel test workers: the suite is dominated by C compiles, one per distinct kernel.
TEST_WORKERS ?= auto

BENCH_STAMP   := $(VENV)/.bench-installed

.PHONY: demo examples test lint fuzz bench bench-classes bench-class bench-network bench-pytest bench-tune clean-cache clean gpu-check gpu-wheels

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

# torch is pinned to 2.13.0 (the CPU build on this machine's disk) in the test extra.
$(TEST_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(RUNTIME_STAMP)
	$(PY) -m convgen.demo

# Every script in examples/, one use each (tests/test_examples.py runs them in `make test`).
examples: $(RUNTIME_STAMP)
	@for script in examples/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

# ruff with the rule set of pyproject.toml; `make test` runs it first.
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check convgen tests bench examples

# The property fuzz of tests/test_fuzz.py with a large budget (the suite runs 60 examples).
fuzz: $(TEST_STAMP)
	CONVGEN_FUZZ_EXAMPLES=$${CONVGEN_FUZZ_EXAMPLES:-2000} $(PY) -m pytest -q -n $(TEST_WORKERS) \
		tests/test_fuzz.py --hypothesis-show-statistics

$(BENCH_STAMP): pyproject.toml $(TEST_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

# convgen vs torch vs onnxruntime on bench/suite_public.json (shared/bench's), 2 threads then 1
# (a table per thread count; see bench/RESULTS.md). BENCH_ARGS passes options through.
bench: $(BENCH_STAMP)
	$(PY) bench/compare.py --threads 2 --repeat 3 $(BENCH_ARGS)
	$(PY) bench/compare.py --threads 1 --repeat 3 --skip-threading-check $(BENCH_ARGS)

# The machine-model issue's layer classes (bench/suite_classes.json), 2 threads.
bench-classes: $(BENCH_STAMP)
	$(PY) bench/compare.py --threads 2 --repeat 3 --skip-threading-check \
		--suite bench/suite_classes.json $(BENCH_ARGS)

# Whole networks (ResNet-18's stages, MobileNet v1, a HiFi-GAN v2 generator) built ahead of
# time and run through NAME_run, against torch and onnxruntime on the same model, 2 threads
# then 1 (bench/network.py; about 12 minutes).
bench-network: $(BENCH_STAMP)
	$(PY) bench/network.py --threads 2 $(BENCH_ARGS)
	$(PY) bench/network.py --threads 1 $(BENCH_ARGS)

# Every table RESULTS.md keeps for a machine class (the public suite at 2 and 1 threads, the
# layer classes, the regret at 2 and 1 threads, the machine model) in one run, written under
# bench/class_results/<machine class>-<date>/ (bench/class_check.sh; about 20 minutes).
bench-class: $(BENCH_STAMP)
	bash bench/class_check.sh $(CLASS_CHECK_OUT)

# The same layers through pytest-benchmark (statistics, history, --benchmark-compare).
bench-pytest: $(BENCH_STAMP)
	$(PY) -m pytest -q bench/test_bench.py -p no:xdist --benchmark-columns=median,iqr,rounds

# Tuned vs untuned convgen vs torch on the public suite, with the tuning time per layer
# (bench/tune_compare.py; TUNE_ARGS passes options through, e.g. --trials 32 --seconds 120).
bench-tune: $(TEST_STAMP)
	$(PY) bench/tune_compare.py $(TUNE_ARGS)

# The one-call GPU check (bench/gpu_check.sh): run on a machine with an NVIDIA GPU, nvcc and a
# CUDA torch; writes its tables and logs under GPU_CHECK_OUT ($$OUT on the device runner).
# Needs no .venv: it runs the machine's python3 with the wheels of bench/wheels.
GPU_CHECK_OUT ?= $(if $(OUT),$(OUT),gpu-check-out)
gpu-check:
	bash bench/gpu_check.sh $(GPU_CHECK_OUT)

# The wheels gpu-check installs there (the GPU image's python3 is CPython 3.12 without cffi):
# downloaded once and committed in bench/wheels, since the device receives the checkout.
GPU_WHEELS := cffi==2.1.1 pycparser==3.12
gpu-wheels:
	rm -f bench/wheels/*.whl
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d bench/wheels \
		$(GPU_WHEELS)

clean-cache: $(RUNTIME_STAMP)
	$(VENV)/bin/convgen cache clear

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
