"""The GPU suite's correctness gate (benchmarks/gate.py), its summary (suite_summary.py), the op
bandwidth script and the suite's layout, checked on CPU.

A gate that cannot fail is worthless: each kind of check is run once on a planted bug (a step
whose student lr is 1 % off, a soft-CE backend whose loss and gradient are 1 % off) and must
fail it, and once without, where it must pass.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from _native_cases import native_required

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import gate  # noqa: E402
import step_throughput as st  # noqa: E402
import suite_summary  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (shared 2-core machines: OpenMP waiting for busy cores is slow)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _quiet(_: str) -> None:
    pass


def test_step_gate_passes_equal_steps_and_catches_a_planted_student_lr():
    ok = gate.step_checks(gate.GateConfig(device="cpu"), _quiet, variants={"eager", "mplfast-eager"})["variants"]
    assert ok["eager"]["status"] == "ok", ok["eager"].get("problems")
    assert ok["mplfast-eager"]["status"] == "ok", ok["mplfast-eager"].get("problems")
    # the port and MPLStep in its configuration agree far inside the fp32 tolerance
    assert ok["eager"]["updates"]["teacher"]["overall"] < 1e-4  # measured 2e-6
    assert ok["eager"]["metrics"]["h"]["value"] != 0.0  # the MPL term acted
    bad = gate.step_checks(gate.GateConfig(device="cpu", plant="student-lr"), _quiet,
                           variants={"mplfast-eager"})["variants"]["mplfast-eager"]
    assert bad["status"] == "FAILED"
    # 1 % of the student's lr: L_new moves by 5e-4, the MPL loss by 8e-3, far past 1e-5 ...
    assert any(p.startswith("student_loss_l_new") for p in bad["problems"]), bad["problems"]
    assert bad["metrics"]["student_loss_l_new"]["err"] > 10 * gate.TOLERANCES["fp32"].loss  # 5e-4
    assert max(m["err"] for m in bad["metrics"].values()) > 100 * gate.TOLERANCES["fp32"].loss  # 8e-3
    # ... and the student's update by 1e-2 (what the Δθ tolerance sits at)
    assert bad["updates"]["student"]["overall"] == pytest.approx(1e-2, rel=0.2)


def test_compare_step_flags_non_finite_results_and_each_metric():
    before = {"teacher": {"w": torch.zeros(3)}, "student": {"w": torch.zeros(3)}}
    ref = {"metrics": {"student_loss_l_old": 2.0, "h": 0.1, "teacher_loss": 3.0},
           "teacher": {"w": torch.ones(3)}, "student": {"w": torch.ones(3)}}
    same = gate.compare_step(ref, ref, before, gate.TOLERANCES["fp32"])
    assert same["ok"] and not same["problems"]
    run = {"metrics": {"student_loss_l_old": 2.0, "h": 0.1 + 2e-4, "teacher_loss": float("nan")},
           "teacher": {"w": torch.tensor([1.0, 1.0, float("inf")])}, "student": {"w": torch.ones(3)}}
    c = gate.compare_step(run, ref, before, gate.TOLERANCES["fp32"])
    text = " ".join(c["problems"])
    assert not c["ok"] and "h " in text and "teacher_loss" in text and "teacher Δθ" in text
    assert "student" not in text


def test_per_tensor_update_error_uses_the_tensors_share_for_tiny_updates():
    """A tensor whose reference update is ~0 (a batch-norm bias behind another batch norm) is
    judged against its share of the whole update, not against its own near-zero update."""
    before = {"big": torch.zeros(100), "tiny": torch.zeros(4)}
    ref = {"big": torch.ones(100), "tiny": torch.full((4,), 1e-9)}
    run = {"big": torch.ones(100), "tiny": torch.full((4,), 1e-6)}
    u = gate.compare_updates(before, run, ref)
    assert u["per_param"]["tiny"] == pytest.approx(2 * (1e-6 - 1e-9) / (10 * (4 / 104) ** 0.5), rel=1e-3)
    run["tiny"] = torch.full((4,), 0.5)  # a real error in a small tensor still shows
    assert gate.compare_updates(before, run, ref)["per_param"]["tiny"] > 0.1


@native_required
def test_op_gate_passes_every_backend_and_catches_a_perturbed_one():
    # 72 images: the reference writes the first 64 (gate.REF_IMAGES), the others all 72
    small = dict(device="cpu", ce_shape=(256, 50), aug_images=72)
    rows = gate.op_checks(gate.GateConfig(**small), _quiet)
    ran = [r for r in rows if not r["status"].startswith("not run")]
    assert {(r["op"], r["backend"]) for r in ran} >= {("soft_ce", "native"), ("uda", "native"),
                                                      ("grad_dot", "native"), ("grad_dot_delta", "native"),
                                                      ("augment", "native"), ("augment", "torch")}
    assert all(r["status"] == "ok" for r in ran), [r for r in ran if r["status"] != "ok"]
    res = gate.run_gate(gate.GateConfig(**small, plant="soft-ce"), steps=False, log=_quiet)
    assert not res["ok"]
    # every non-reference soft-CE backend that ran (native; Triton too under TRITON_INTERPRET=1)
    planted = sorted(("soft_ce", r["backend"]) for r in ran if r["op"] == "soft_ce" and r["backend"] != "reference")
    assert res["invalid_ops"] == planted and ("soft_ce", "native") in planted
    assert res["failures"] and res["failures"][0].startswith("op soft_ce [native]")
    md = gate.gate_markdown(res)
    assert md.startswith("gate: FAILED (op soft_ce [native]")


@pytest.mark.slow
def test_compiled_step_gate_on_cpu():
    """mplfast-inductor's check as the CPU rehearsal runs it (aot_eager: Dynamo + AOTAutograd,
    warm-up steps, the state put back in place, then the compared step): bit-identical to eager."""
    res = gate.step_checks(gate.GateConfig(device="cpu"), _quiet, variants={"mplfast-inductor", "mplfast"})
    v = res["variants"]
    assert v["mplfast-inductor"]["status"] == "ok", v["mplfast-inductor"].get("problems")
    assert v["mplfast-inductor"]["info"]["compile"] == "aot_eager"
    assert v["mplfast-inductor"]["updates"]["student"]["overall"] == 0.0
    assert v["mplfast"]["status"] == "not run: needs CUDA"  # never reported as ok without CUDA
    assert 0.0 < res["mask_rate"] < 1.0  # the threshold splits the rows: UDA's mask is exercised


def test_kernel_categories_on_realistic_names():
    cases = {
        # cuDNN convolutions (their names carry "gemm" too)
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
        "sm80_xmma_wgrad_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
        "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nchw_tilesize": "convolution",
        "void cudnn::cnn::conv2d_grouped_direct_kernel<false, true, false, false, 0, 0, int>": "convolution",
        "aten::mkldnn_convolution": "convolution",
        # cuBLAS / cuBLASLt / CUTLASS GEMMs (the classifier, the grad of its weight)
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1": "matrix product",
        "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN": "matrix product",
        "ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn": "matrix product",
        "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>": "matrix product",
        "void gemv2T_kernel_val<int, int, float, float, float, 128, 16, 4, 4, false>": "matrix product",
        "aten::addmm": "matrix product",
        # mplfast's own kernels: Triton (jit function names), native CUDA, CPU autograd functions
        "_soft_ce_kernel": "mplfast", "_uda_kernel": "mplfast", "_multi_dot_kernel": "mplfast",
        "_augment_kernel": "mplfast",
        "void mplfast::(anonymous namespace)::soft_ce_kernel<__nv_bfloat16, float, 8, true>": "mplfast",
        "void grad_dot_partials(Table, double*)": "mplfast",
        "SoftCEEager": "mplfast", "mplfast::grad_dot": "mplfast",
        # batch norm (cuDNN's and torch's), Inductor's Triton, optimizer, layout
        "void cudnn::bn_fw_tr_1C11_kernel_NCHW<__nv_bfloat16, float, 512, true, 1>": "batch norm",
        "void at::native::batch_norm_collect_statistics_channels_last_kernel": "batch norm",
        "triton_poi_fused__native_batch_norm_legit_functional_leaky_relu_0": "fused Triton",
        "triton_tem_fused_addmm_3": "matrix product",
        "triton_red_fused_add_mul_sum_12": "fused Triton",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedSgdMathFunctor>": "optimizer",
        "void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false>": "copy / layout",
        "Memcpy DtoD (Device -> Device)": "copy / layout",
    }
    got = {name: st._category(name) for name in cases}
    wrong = {n: g for n, g in got.items() if not g.startswith(cases[n])}
    assert not wrong, wrong


def _write_suite_files(tmp_path: Path, gate_res: dict | None) -> tuple[Path, Path, Path]:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir(parents=True)
    out.mkdir(parents=True)
    status = work / "status.tsv"
    status.write_text("env\tok\t3\ngate\tfailed rc=1\t90\nstep\tok\t40\n")
    if gate_res is not None:
        (out / "gate.json").write_text(json.dumps(gate_res))
        (work / "gate.md").write_text(gate.gate_markdown(gate_res) if "ok" in gate_res else "x\n")
    row = dict(mu=7, ok=True, steps_per_s=10.0, images_per_s=1.0, ms_per_step=100.0, peak_mem_bytes=2**30,
               mfu=0.1, compile="c", precision="bf16")
    (out / "step.json").write_text(json.dumps({"results": [
        dict(row, variant="eager", batch_size=64), dict(row, variant="mplfast", batch_size=64),
        dict(row, variant="mplfast-graph", batch_size=64)]}))
    (out / "ops.json").write_text(json.dumps({"device": "cuda:0", "copy": {"bytes_per_s": 3e12}, "rows": [
        {"op": "soft_ce fwd+bwd", "backend": "triton", "shape": "8192x32000 bf16", "status": "ok",
         "seconds": 1e-3, "gb_per_s": 1048.6, "fraction_of_copy": 0.35},
        {"op": "soft_ce fwd+bwd", "backend": "native", "shape": "8192x32000 bf16", "status": "ok",
         "seconds": 1e-3, "gb_per_s": 1048.6, "fraction_of_copy": 0.35}]}))
    return work, out, status


def test_summary_starts_with_the_verdict_and_marks_failed_variants_invalid(tmp_path):
    res = {"ok": False, "device": "cuda", "model": "wrn28_2", "batch_size": 64, "mu": 7,
           "failures": ["step mplfast: student Δθ rel err 3e-01 > 1.2e-01"],
           "invalid_ops": [["soft_ce", "native"]],
           "steps": {"threshold": 0.5, "mask_rate": 0.5, "variants": {
               "eager": {"status": "ok"}, "mplfast": {"status": "FAILED", "problems": ["x"]},
               "mplfast-graph": {"status": "not run: needs CUDA"}}}}
    text = suite_summary.summarize(*_write_suite_files(tmp_path, res))
    assert text.startswith("gate: FAILED (step mplfast: student")
    assert "| eager | 64 | 7 | 10.00 |" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| mplfast")}
    assert rows["mplfast"].endswith("INVALID (failed the gate) |")
    assert "unchecked (not run: needs CUDA)" in rows["mplfast-graph"]
    ops = [line for line in text.splitlines() if line.startswith("| soft_ce fwd+bwd")]
    assert "INVALID" in ops[1] and "INVALID" not in ops[0]  # native failed, triton passed
    assert "| 1048.6 |" in ops[0] and "| 0.350 |" in ops[0]


def test_summary_without_a_finished_gate_never_says_ok(tmp_path):
    assert suite_summary.summarize(*_write_suite_files(tmp_path / "a", None)).startswith("gate: not run (failed rc=1)")
    text = suite_summary.summarize(*_write_suite_files(tmp_path / "b", {"partial": True, "steps": {}}))
    assert text.startswith("gate: FAILED (incomplete")
    assert "unchecked (the gate did not reach it)" in text
    assert "Unchecked: the gate's op checks did not run" in text


def test_suite_runs_the_gate_first_and_only_cuda_test_modules():
    """Stage order (what must be learned first), sm_90-only build, and the CUDA test list."""
    text = (BENCH / "gpu_suite.sh").read_text()
    order = re.findall(r"^run_stage (\w+) (\d+) (\d+)", text, flags=re.M)
    assert [o[0] for o in order] == ["env", "build", "gate", "ceilings", "opsbench", "step", "variants",
                                     "tests", "extras"]
    caps = {name: int(cap) for name, cap, _ in order}
    # without the build, the stages that must run fit the device budget (README: GPU suite)
    assert sum(caps[s] for s in ("env", "gate", "ceilings", "opsbench", "step", "variants")) <= 330
    assert "MPLFAST_CUDA_ARCHS=${MPLFAST_CUDA_ARCHS:-90-real}" in text
    tests = re.search(r'CUDA_TESTS="([^"]+)"', text).group(1).split()
    root = BENCH.parent
    assert tests and all((root / t).is_file() for t in tests), [t for t in tests if not (root / t).is_file()]
    assert "tests/test_step_cuda_graph.py" in tests and "tests/ops/test_soft_ce_triton.py" in tests


@pytest.mark.slow
@native_required
def test_op_bandwidth_script_on_cpu(tmp_path):
    """benchmarks/ops/op_bandwidth.py end to end at the CPU size: every op x backend row, GB/s and
    the fraction of the same run's copy ceiling, the markdown table the summary embeds."""
    sys.path.insert(0, str(BENCH / "ops"))
    import op_bandwidth

    js, md = tmp_path / "ops.json", tmp_path / "ops.md"
    assert op_bandwidth.main(["--device", "cpu", "--json", str(js), "--markdown", str(md),
                              "--min-seconds", "0.001"]) == 0
    res = json.loads(js.read_text())
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    assert {r["op"] for r in ok} == {"soft_ce fwd+bwd", "uda fwd+bwd", "grad_dot", "grad_dot_delta", "augment strong"}
    assert all(r["gb_per_s"] > 0 and r["fraction_of_copy"] == pytest.approx(
        r["gb_per_s"] * 1e9 / res["copy"]["bytes_per_s"]) for r in ok)
    assert "| soft_ce fwd+bwd | native | 4096x1000 float32 |" in md.read_text()
