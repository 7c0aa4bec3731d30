"""Generated C stands on its own: two kernels of one op and algorithm link into one program
(every symbol has its own prefix), a C driver sizes their buffers from the sizes the C
exports, and runs them with no Python in the loop; a Winograd kernel hands a NaN weight to
the exact kernel inside its own library, as the Python path does."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from convgen.backends import backend_for, get_target
from convgen.core.layers import spec_from_op
from convgen.core.spec import workload_of
from convgen.cpu.compile import compiler_path
from convgen.cpu.plan import Plan
from convgen.runtime import pipeline
from helpers import rel_l2, torch_reference

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>

#define DECLARE(p) \
  size_t p##_workspace_bytes(void); size_t p##_packed_weights_bytes(void); \
  void p##_pack(const float *w, float *wp); \
  int p##_run(const float *x, const float *wp, const float *b, float *y, float *work);
{declarations}

static float *load(const char *dir, const char *name, size_t *count)
{{
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) {{ perror(path); exit(2); }}
  fseek(f, 0, SEEK_END);
  long bytes = ftell(f);
  fseek(f, 0, SEEK_SET);
  float *data = malloc(bytes);
  if (fread(data, 1, bytes, f) != (size_t)bytes) exit(3);
  fclose(f);
  *count = bytes / sizeof(float);
  return data;
}}

static void save(const char *dir, const char *name, const float *data, size_t count)
{{
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, sizeof(float), count, f) != count) exit(4);
  fclose(f);
}}

#define RUN(p, outputs) do {{ \
    size_t nx, nw, nb; \
    float *x = load(argv[1], #p ".x", &nx), *w = load(argv[1], #p ".w", &nw); \
    float *b = load(argv[1], #p ".b", &nb); \
    float *wp = malloc(p##_packed_weights_bytes()); \
    float *work = malloc(p##_workspace_bytes() + 1); \
    float *y = malloc(sizeof(float) * (outputs)); \
    p##_pack(w, wp); \
    if (p##_run(x, wp, b, y, work) != 0) return 5; \
    save(argv[1], #p ".y", y, (outputs)); \
    printf("%s workspace %zu packed %zu\n", #p, p##_workspace_bytes(), \
           p##_packed_weights_bytes()); \
  }} while (0)

int main(int argc, char **argv)
{{
  if (argc != 2) return 1;
{runs}
  return 0;
}}
"""

# (prefix, op, input shape, weight shape, args, plan): two direct_simd conv2d kernels of
# different shapes, and a Winograd one run twice (finite weights, then a NaN among them)
LAYERS = [
    ("layer_a", "conv2d", (1, 8, 12, 10), (16, 8, 3, 3), {"padding": 1}, "direct_simd"),
    ("layer_b", "conv2d", (2, 4, 9, 17), (8, 4, 3, 3), {"stride": 2, "padding": 1},
     "direct_simd"),
    ("layer_w", "conv2d", (1, 16, 14, 14), (16, 16, 3, 3), {"padding": 1}, "winograd2"),
    ("layer_w_nan", "conv2d", (1, 16, 14, 14), (16, 16, 3, 3), {"padding": 1}, "winograd2"),
]


def _generate(prefix, op, x_shape, w_shape, args, algorithm, directory: Path):
    spec = spec_from_op(op, w_shape, True, x_shape, **args)
    workload, _ = workload_of(spec, x_shape, "float32")
    target = get_target("cpu")
    backend = backend_for(target)
    plan = backend.resolve(algorithm, workload, target)
    assert isinstance(plan, Plan) and plan.algorithm == algorithm
    _, sources, _ = pipeline.generate(backend, workload, plan, target, prefix)
    paths = []
    for name, text in sources:
        path = directory / prefix / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return workload, paths


def test_two_kernels_of_one_op_link_into_one_c_program(tmp_path):
    rng = np.random.default_rng(10)
    data = tmp_path / "data"
    data.mkdir()
    sources, declarations, runs, expected = [], [], [], {}
    for prefix, op, x_shape, w_shape, args, algorithm in LAYERS:
        workload, paths = _generate(prefix, op, x_shape, w_shape, args, algorithm, tmp_path)
        sources += paths
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        if prefix.endswith("_nan"):
            w[3, 2, 1, 1] = np.nan
        for suffix, array in (("x", x), ("w", w), ("b", b)):
            array.tofile(data / f"{prefix}.{suffix}")
        expected[prefix] = torch_reference(op, x, w, b, **args)
        declarations.append(f"DECLARE({prefix})")
        runs.append(f"  RUN({prefix}, {int(np.prod(workload.output_shape))});")
    driver = tmp_path / "driver.c"
    driver.write_text(DRIVER.format(declarations="\n".join(declarations), runs="\n".join(runs)))
    program = tmp_path / "driver"
    # one program: every kernel's sources and the driver, compiled and linked together
    subprocess.run([compiler_path(), "-O2", "-std=c11", "-fopenmp", "-march=native",
                    "-ffp-contract=fast", "-o", str(program), str(driver),
                    *map(str, sources), "-lm"], check=True, capture_output=True, text=True)
    done = subprocess.run([str(program), str(data)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for prefix, _, _, _, _, _ in LAYERS:
        ours = np.fromfile(data / f"{prefix}.y", np.float32).reshape(expected[prefix].shape)
        ref = expected[prefix]
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
        if prefix.endswith("_nan"):   # the exact path: NaN only where torch has it
            assert 0 < np.isnan(ref).sum() < ref.size
        finite = np.isfinite(ref)
        assert rel_l2(ours[finite], ref[finite]) < 1e-5, prefix


@pytest.mark.parametrize("algorithm", ["direct_simd", "implicit_gemm", "depthwise", "winograd4",
                                       "direct"])
def test_the_exported_sizes_are_the_planners(algorithm):
    """What the C says it needs is what the planner computed (cpu.derived)."""
    import convgen
    from convgen.cpu.derived import derive

    groups = 8 if algorithm == "depthwise" else 1
    spec = spec_from_op("conv2d", (8, 8 // groups, 3, 3), True, (1, 8, 11, 13), padding=1,
                        groups=groups)
    kernel = convgen.compile(spec, (1, 8, 11, 13), "float32", plan=algorithm)
    facts = derive(kernel.workload, kernel.plan, kernel.target)
    assert kernel.workspace_elements == facts.workspace
    assert kernel.packed_elements == facts.packed_weights
