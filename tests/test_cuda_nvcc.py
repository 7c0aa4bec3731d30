"""Every CUDA kernel family compiles with nvcc for sm_80 and sm_90, without spills, within the
architecture's limits: read from ptxas's own report (-Xptxas -v). Runs without a GPU; skipped
where nvcc is absent.

The GEMM's main loop is proven in its SASS (cuobjdump -sass; the test extra installs
cuobjdump where the toolkit lacks it): no generic LD/ST and no local memory in the loop, the
operands arrive by 16-byte LDGSTS only, and for the planner's choice on every public
benchmark layer (both precisions, both layouts) at most 4 other instructions per HMMA and at
most 128 registers with TF32, the FMAs the bulk of the SIMT loops. The counts are static
(each instruction of the loop's body once, the tap-advancing branch included): an upper
bound on what one iteration issues.

Also: a whole shared library (host launcher included) builds with nvcc and loads; on a machine
without a GPU its launch fails with a clear CudaError, not a crash.
"""
from __future__ import annotations

import collections

import pytest

import convgen
from convgen.backends import get_target
from convgen.core.layers import spec_from_op
from convgen.core.spec import workload_of
from convgen.cuda import CudaError, CudaPlan, check_plan, driver, sass
from convgen.cuda.compile import nvcc_path, parse_ptxas, ptxas_report
from convgen.cuda.cost import GEMM_REGISTERS, min_blocks_per_sm
from convgen.cuda.plan import launch_of
from convgen.cuda.render import render as render_sources
from convgen.target.cuda_arch import CUDA_ARCHS


def render(workload, plan, target) -> str:
    """The kernel's one source file, rendered under a test prefix."""
    return render_sources(workload, plan, target, "cg_test")[0][1]

pytestmark = pytest.mark.skipif(nvcc_path() is None, reason="nvcc (the CUDA compiler) is absent")
ARCHS = ("sm_80", "sm_90")

# realistic layers (sizes are baked in, so they shape the code ptxas sees)
LAYERS = {
    "conv2d": ("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    "conv2d_reflect_grouped": ("conv2d", (2, 32, 28, 28), (64, 16, 3, 3),
                               dict(padding=1, groups=2, padding_mode="reflect")),
    "conv1d_circular": ("conv1d", (1, 32, 1024), (32, 32, 5), dict(padding=2,
                                                                    padding_mode="circular")),
    "conv3d": ("conv3d", (1, 16, 16, 32, 32), (32, 16, 3, 3, 3), dict(padding=1)),
    "depthwise": ("conv2d", (1, 96, 56, 56), (96, 1, 3, 3), dict(padding=1, groups=96)),
    "depthwise3d": ("conv3d", (1, 16, 8, 16, 16), (32, 1, 3, 3, 3),
                    dict(padding=1, groups=16, padding_mode="replicate")),
    "upconv": ("conv_transpose2d", (1, 256, 16, 16), (256, 128, 4, 4), dict(stride=2, padding=1)),
    "hifigan": ("conv_transpose1d", (1, 512, 256), (512, 256, 16), dict(stride=8, padding=4)),
    "deconv3d": ("conv_transpose3d", (1, 32, 8, 16, 16), (32, 16, 3, 3, 3),
                 dict(stride=2, padding=1, output_padding=1)),
}

# (layer, dtype, plan): every algorithm, both arithmetics, every pipeline depth, split-K,
# the tensor-core path, the largest tiles the planner lists
SAMPLE = [
    ("conv2d", "float32", "algorithm=direct tile=128x4 warp=- stages=1 split_k=1 math=fp32 threads=128"),
    ("conv3d", "float64", "algorithm=direct tile=256x8 warp=- stages=1 split_k=1 math=fp64 threads=256"),
    ("hifigan", "float32", "algorithm=direct tile=64x16 warp=- stages=1 split_k=1 math=fp32 threads=64"),
    ("depthwise", "float32", "algorithm=depthwise tile=32x32 warp=- stages=1 split_k=1 math=fp32 threads=256"),
    ("depthwise3d", "float64", "algorithm=depthwise tile=4x8x16 warp=- stages=1 split_k=1 math=fp64 threads=128"),
    ("conv2d", "float32", "algorithm=implicit_gemm tile=128x128x16 warp=64x32 stages=4 split_k=1 math=fp32 threads=256"),
    ("conv2d", "float32", "algorithm=implicit_gemm tile=128x128x32 warp=64x32 stages=3 split_k=1 math=fp32 threads=256"),
    ("conv2d_reflect_grouped", "float32", "algorithm=implicit_gemm tile=64x64x8 warp=32x32 stages=1 split_k=1 math=fp32 threads=128"),
    ("conv1d_circular", "float32", "algorithm=implicit_gemm tile=128x32x8 warp=64x32 stages=2 split_k=4 math=fp32 threads=64"),
    ("conv3d", "float64", "algorithm=implicit_gemm tile=64x64x16 warp=32x32 stages=3 split_k=2 math=fp64 threads=128"),
    ("conv2d", "float32", "algorithm=implicit_gemm tile=128x128x32 warp=64x32 stages=4 split_k=1 math=tf32 threads=256"),
    ("conv3d", "float32", "algorithm=implicit_gemm tile=64x64x16 warp=32x32 stages=2 split_k=4 math=tf32 threads=128"),
    ("upconv", "float32", "algorithm=phase_gemm tile=128x64x16 warp=64x32 stages=3 split_k=1 math=fp32 threads=128"),
    ("hifigan", "float32", "algorithm=phase_gemm tile=64x64x32 warp=32x32 stages=4 split_k=2 math=tf32 threads=128"),
    ("deconv3d", "float64", "algorithm=phase_gemm tile=64x32x8 warp=32x16 stages=1 split_k=1 math=fp64 threads=128"),
]


def workload(layer: str, dtype: str):
    op, x, w, args = LAYERS[layer]
    return workload_of(spec_from_op(op, w, True, x, **args), x, dtype)[0]


def test_the_sample_covers_every_family():
    plans = [CudaPlan.parse(p) for _, _, p in SAMPLE]
    assert {p.algorithm for p in plans} == {"direct", "depthwise", "implicit_gemm", "phase_gemm"}
    assert {p.math for p in plans} == {"fp32", "fp64", "tf32"}
    assert {p.stages for p in plans if p.is_gemm} == {1, 2, 3, 4}
    assert any(p.split_k > 1 for p in plans)
    assert {LAYERS[layer][0] for layer, _, _ in SAMPLE} == {
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}


HAVE_SASS = sass.cuobjdump_path() is not None
# The targets for the planner's choices, as other instructions per multiply on the longest
# path through one iteration of the main loop (sass.LoopStats.issued_per_multiply). The
# channels-last kernel also rounds what it reads in place to TF32 inside the loop.
TF32_OTHERS_PER_HMMA = {"NCHW": 4.0, "channels-last": 5.5}
SIMT_OTHERS_PER_FMA = 0.5


def compile_checked(source: str, arch: str, plan: CudaPlan):
    """Compile; no function spills or uses local memory; returns the compiled kernel."""
    compiled = sass.compile_cubin(source, arch, with_sass=HAVE_SASS)
    for record in compiled.resources:
        assert record.spill_stores == 0 and record.spill_loads == 0, f"{plan}\n{compiled.ptxas}"
        assert record.stack_bytes == 0, f"local memory used: {plan}\n{compiled.ptxas}"
    return compiled


def main_kernels(compiled) -> dict:
    """The two layouts' instantiations of the main kernel (not the GEMM's prologue)."""
    return {name: ins for name, ins in sass.parse_sass(compiled.sass).items()
            if "_kernelILb" in name}


def check_sass(compiled, plan: CudaPlan, strict: bool) -> dict:
    """The SASS rules; ``strict``: the issue's targets (the planner's choices). Returns the
    main loops' statistics by function."""
    kernels = main_kernels(compiled)
    assert len(kernels) == 2, sorted(sass.parse_sass(compiled.sass))
    found = {}
    for name, instructions in kernels.items():
        bases = {i.base for i in instructions}
        assert not bases & {"LDL", "STL"}, f"local memory in {name}"
        if not plan.is_gemm:   # direct, depthwise: no generic access anywhere
            assert not bases & {"LD", "ST"}, f"generic loads/stores in {name}"
            continue
        loop = sass.main_loop(instructions)
        unrolled = loop is None
        if unrolled:   # a short reduction, unrolled whole: the kernel is the loop
            loop = sass.LoopStats(len(instructions),
                                  dict(collections.Counter(i.base for i in instructions)),
                                  dict(collections.Counter(i.opcode for i in instructions)),
                                  len(instructions), len(instructions))
            assert loop.multiplies > 0, f"no multiplies in {name}"
        found[name] = loop
        assert loop.count("LD") == 0 and loop.count("ST") == 0, (name, loop.counts)
        copies = {op: n for op, n in loop.opcodes.items() if op.startswith("LDGSTS")}
        assert copies and all(op.endswith(".128") for op in copies), (name, copies)
        if unrolled:   # the epilogue's bias loads are in the count: the rules below are the loop's
            continue
        assert not any(op.startswith("LDG") and not op.startswith("LDGSTS")
                       and op != "LDGDEPBAR" for op in loop.opcodes), (name, loop.opcodes)
        layout = "channels-last" if "_kernelILb1" in name else "NCHW"
        if plan.math == "tf32":
            assert loop.counts.get("HMMA", 0) > 0 and loop.counts.get("LDSM", 0) > 0, name
            if strict:
                assert loop.issued_per_multiply <= TF32_OTHERS_PER_HMMA[layout], \
                    f"{plan}: {loop.issued_per_multiply:.2f} others per HMMA ({layout})"
        else:
            assert loop.counts.get("FFMA" if plan.math == "fp32" else "DFMA", 0) > 0, name
            if strict:
                assert loop.issued_per_multiply <= SIMT_OTHERS_PER_FMA, \
                    f"{plan}: {loop.issued_per_multiply:.2f} others per FMA ({layout})"
    return found


def check_registers(compiled, plan: CudaPlan, workload, arch) -> None:
    (main,) = [r for r in compiled.resources if r.entry and "_kernelILb0" in r.function]
    budget = arch.registers_per_sm // (plan.threads * min_blocks_per_sm(plan, workload, arch))
    for record in compiled.resources:
        if record.entry and "_kernelILb0" in record.function:
            assert record.registers <= min(255, budget), (plan, record)
    if plan.is_gemm and plan.math == "tf32":
        assert main.registers <= GEMM_REGISTERS, (plan, main)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer,dtype,plan", SAMPLE,
                         ids=[f"{layer}-{CudaPlan.parse(p).algorithm}-{i}"
                              for i, (layer, _, p) in enumerate(SAMPLE)])
def test_ptxas_no_spills_within_limits(layer, dtype, plan, arch, monkeypatch):
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", arch)
    target = get_target("cuda")
    assert target.cuda.name == arch
    load = workload(layer, dtype)
    chosen = CudaPlan.parse(plan)
    check_plan(chosen, load, target.cuda)
    compiled = compile_checked(render(load, chosen, target), arch, chosen)
    records = compiled.resources
    kernels = [r for r in records if r.entry and "_kernelILb" in r.function]
    assert len(kernels) == 2, compiled.ptxas        # the NCHW and channels-last kernels
    limits = CUDA_ARCHS[arch]
    launch = launch_of(chosen, load)
    for kernel in kernels:
        assert kernel.shared_bytes == launch.static_smem, compiled.ptxas
        assert kernel.shared_bytes + launch.dynamic_smem <= limits.smem_per_block
        assert kernel.registers * chosen.threads <= limits.registers_per_sm, compiled.ptxas
    check_registers(compiled, chosen, load, target.cuda)
    if HAVE_SASS:
        check_sass(compiled, chosen, strict=False)


@pytest.mark.parametrize("layer,dtype", [("conv2d", "float32"), ("upconv", "float32"),
                                         ("depthwise", "float64")])
def test_planner_choice_compiles_cleanly(layer, dtype):
    target = get_target("cuda")
    load = workload(layer, dtype)
    chosen = convgen.api.choose_plan(load, target=target)
    records, output = ptxas_report(render(load, chosen, target), target.cuda.name)
    assert all(r.spill_stores == 0 and r.spill_loads == 0 for r in records), output


def test_parse_ptxas():
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'
ptxas info    : Function properties for _Z6kernelPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 360 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
    kernel, helper = parse_ptxas(text, "sm_90")
    assert (kernel.function, kernel.registers, kernel.shared_bytes, kernel.stack_bytes,
            kernel.spill_stores, kernel.spill_loads, kernel.entry) == \
        ("_Z6kernelPf", 40, 2048, 8, 4, 12, True)
    assert helper.function == "_Z6helperv" and not helper.entry


def test_nvcc_library_loads_and_reports_status(monkeypatch):
    """The whole library (launcher and kernel) builds with nvcc; without a GPU, calling it is
    a CudaError naming the CUDA status, never a crash."""
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_80")
    spec = spec_from_op("conv1d", (4, 2, 3), True, (1, 2, 8), padding=1)
    kernel = convgen.compile(spec, (1, 2, 8), "float32", target="cuda", plan="implicit_gemm")
    assert kernel.target.name == "cuda" and kernel.target.cuda.name == "sm_80"
    assert "__global__" in kernel.source
    assert kernel.source.count("<<<") == 1   # in the CG_LAUNCH macro: every launch goes through it
    import numpy as np
    with pytest.raises(TypeError, match="cuda-emu"):
        kernel(np.ones((1, 2, 8), np.float32), np.ones((4, 2, 3), np.float32),
               np.ones(4, np.float32))
    if driver.available():
        pytest.skip("a GPU is present: the launch would run (tests/test_cuda_gpu.py)")
    # reach the launcher with null pointers: no GPU, so the runtime refuses before any access
    with pytest.raises(CudaError, match=r"running conv1d kernel implicit_gemm on cuda failed"):
        kernel._run(0, 0, 0, 0, 0)


def _suite_layers():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "suite_public.json"
    return json.loads(path.read_text())["layers"]


SUITE = _suite_layers()


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("layer", SUITE, ids=[layer["name"] for layer in SUITE])
def test_benchmark_suite_choices(layer, precision, monkeypatch):
    """What bench/cuda_compare.py runs on an H100/H200: the planner's sm_90 choice for every
    public layer, in both precisions, compiles without spills or local memory, and its main
    loop (both layouts) meets the targets in SASS."""
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90")
    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    load, _ = workload_of(spec, tuple(layer["x"]), "float32")
    sources = {}
    for allowed in ("0", "1") if precision == "tf32" else ("0",):
        monkeypatch.setenv("CONVGEN_CUDA_TF32", allowed)
        target = get_target("cuda")
        chosen = convgen.api.choose_plan(load, target=target)
        sources[allowed] = render(load, chosen, target)
    if precision == "tf32" and sources["1"] == sources["0"]:
        # TF32 allowed, the planner keeps the fp32 kernel (direct, depthwise, or a GEMM it
        # prices better in fp32): the fp32 case compiles and checks this very source
        assert chosen.math == "fp32", chosen
        return
    compiled = compile_checked(sources[max(sources)], "sm_90", chosen)
    check_registers(compiled, chosen, load, target.cuda)
    if not HAVE_SASS:
        pytest.skip("cuobjdump is absent (the test extra installs nvidia-cuda-cuobjdump)")
    check_sass(compiled, chosen, strict=True)


def test_sass_reader_finds_the_main_loop():
    text = """
        Function : _Z11cg_t_kernelILb0EEvPKfS1_S1_Pf
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDGSTS.E.BYPASS.128 [R3], [R4.64], P0 ;
        /*0020*/                   HMMA.1684.F32.TF32 R8, R12, R16, R8 ;
        /*0030*/                   LDSM.16.M88.4 R12, [R2] ;
        /*0040*/               @P1 BRA 0x10 ;
        /*0050*/                   EXIT ;
"""
    (name, instructions), = sass.parse_sass(text).items()
    loop = sass.main_loop(instructions)
    assert name.startswith("_Z11cg_t_kernel")
    assert loop.instructions == 4 and loop.multiplies == 1 and loop.others_per_multiply == 3
    assert loop.count("LDGSTS") == 1 and loop.count("LD") == 0


# -- the Hopper path: compiled only (the emulator cannot run TMA or wgmma) ----------------------
def test_sm90a_kernel_has_hgmma_and_tma_in_sass(monkeypatch):
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90a")
    monkeypatch.setenv("CONVGEN_CUDA_TF32", "1")
    target = get_target("cuda")
    spec = spec_from_op("conv2d", (64, 64, 3, 3), True, (8, 64, 56, 56), padding=1)
    load = workload_of(spec, (8, 64, 56, 56), "float32")[0]
    chosen = convgen.api.choose_plan(load, target=target)
    assert chosen.algorithm == "wgmma_gemm", chosen      # the planner takes it on sm_90a
    for plan in (chosen, CudaPlan("wgmma_gemm", (128, 128, 32), (64, 128), 4, 1, "tf32", 384)):
        check_plan(plan, load, target.cuda)
        compiled = compile_checked(render(load, plan, target), "sm_90a", plan)
        launch = launch_of(plan, load)
        assert launch.dynamic_smem <= CUDA_ARCHS["sm_90a"].smem_per_block
        if not HAVE_SASS:
            pytest.skip("cuobjdump is absent (the test extra installs nvidia-cuda-cuobjdump)")
        kernels = main_kernels(compiled)
        assert len(kernels) == 2
        for name, instructions in kernels.items():
            bases = {i.base for i in instructions}
            assert {"HGMMA", "UTMALDG", "SYNCS"} <= bases, (name, sorted(bases))
            assert not bases & {"LD", "ST", "LDL", "STL", "HMMA"}, (name, sorted(bases))
            assert all(".TF32" in i.opcode for i in instructions if i.base == "HGMMA")


def test_sm90a_library_builds_as_the_gpu_path_builds_it(monkeypatch):
    """The whole library (launcher and the wgmma kernel), with the flags a 9.0 GPU gets:
    ``-arch=sm_90a`` made nvcc 13.0 run a compute_90 PTX pass that rejects wgmma, so the
    cubin-only SASS test above passed while every sm_90a library failed to build."""
    from convgen.target.cuda_arch import nvcc_arch_flags
    assert nvcc_arch_flags("sm_90a") == ("-gencode=arch=compute_90a,code=sm_90a",)
    assert nvcc_arch_flags("sm_80") == ("-arch=sm_80",)
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90a")
    monkeypatch.setenv("CONVGEN_CUDA_TF32", "1")
    spec = spec_from_op("conv2d", (64, 64, 3, 3), True, (8, 64, 28, 28), padding=1)
    kernel = convgen.compile(spec, (8, 64, 28, 28), "float32", target="cuda",
                             plan="wgmma_gemm")
    assert kernel.plan.algorithm == "wgmma_gemm" and kernel.target.cuda.name == "sm_90a"
    assert kernel.target.arch_flags == nvcc_arch_flags("sm_90a")


def test_sm90a_is_not_offered_where_it_cannot_run(monkeypatch):
    monkeypatch.setenv("CONVGEN_CUDA_TF32", "1")
    for arch in ("sm_80", "sm_90"):
        monkeypatch.setenv("CONVGEN_CUDA_ARCH", arch)
        target = get_target("cuda")
        assert convgen.api.choose_plan(workload("conv2d", "float32"),
                                       target=target).algorithm != "wgmma_gemm"
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90a")
    target = get_target("cuda")
    for layer in ("conv2d_reflect_grouped", "upconv", "conv3d", "depthwise"):
        assert convgen.api.choose_plan(workload(layer, "float32"),
                                       target=target).algorithm != "wgmma_gemm"


def test_the_calibration_table_describes_the_templates(monkeypatch):
    """The planner's registers and loop counts (calibration.json) are what ptxas and the SASS
    say of the kernels the templates make now: two tiles recompiled and compared."""
    from convgen.cuda import calibrate, calibration

    if not HAVE_SASS:
        pytest.skip("cuobjdump is absent (the test extra installs nvidia-cuda-cuobjdump)")
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90")
    for tile, warp in (((128, 64, 32), (32, 64)), ((64, 64, 16), (32, 32))):
        recorded = calibration.lookup("tf32", tile, warp)
        assert recorded, f"calibration.json lacks tf32 {tile} {warp}"
        fresh = calibrate.measure(CudaPlan("implicit_gemm", tile, warp, 3, 1, "tf32",
                                           32 * (tile[0] // warp[0]) * (tile[1] // warp[1])),
                                  "sm_90")
        assert fresh["fits_budget"] == recorded["fits_budget"], (tile, fresh, recorded)
        assert abs(fresh["registers"] - recorded["registers"]) <= 8, (tile, fresh, recorded)
        assert abs(fresh["loop"] / fresh["multiplies"]
                   - recorded["loop"] / recorded["multiplies"]) <= 0.5, (tile, fresh, recorded)
