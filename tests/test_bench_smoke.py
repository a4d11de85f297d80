"""Smoke tests for the step benchmark (benchmarks/step_throughput.py, eager_reference.py) on CPU.

They run the benchmark's own code path at a tiny size so it cannot rot between GPU sessions,
and check that the eager reference computes the MPL step of the spec (the port's variant), so
the speed-up the benchmark reports compares equal work.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _native_cases import native_required

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


er = _load("eager_reference")
st = _load("step_throughput")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a loaded shared machine OpenMP workers waiting for busy cores
    made these runs up to 10x slower; one thread is fast and steady. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mplfast_unavailable() -> str | None:
    try:
        from mplfast import MPLStep  # noqa: F401
        from mplfast.data import ImageDataset, MPLBatcher  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"mplfast step or batcher not importable yet: {exc}"
    return None


def _tiny_models(seed: int = 0):
    from mplfast.models import create_model

    torch.manual_seed(seed)
    t = create_model("wrn", 5, depth=10, widen_factor=1)
    s = create_model("wrn", 5, depth=10, widen_factor=1)
    return t, s


def test_randaugment_and_views_are_valid_images():
    images, labels = st.synthetic_images(8, 32, 10, seed=1)
    unl = er.UnlabeledSet(images)
    weak, strong = unl[3]
    assert weak.shape == strong.shape == (3, 32, 32) and weak.dtype == torch.float32
    assert torch.isfinite(strong).all() and not torch.equal(weak, strong)
    # every op of the pool runs at the recipe's magnitude (16 > the nominal 10) on a real image
    from PIL import Image

    img = Image.fromarray(images[0])
    for name, op in er._RANDAUG_OPS:
        out = op(img, 16.0)
        assert out.size == img.size and out.mode == "RGB", name
    with pytest.raises(ValueError):
        er.RandAugmentPIL(n=2, m=16, cutout=1.5)


def test_eager_data_batches_have_the_port_shapes():
    images, labels = st.synthetic_images(40, 32, 10, seed=2)
    data = er.make_eager_data(images, labels, np.arange(10), batch_size=4, mu=3, workers=0, seed=0)
    x_l, y_l = next(data.labeled)
    x_uw, x_us = next(data.unlabeled)
    assert x_l.shape == (4, 3, 32, 32) and y_l.shape == (4,) and y_l.dtype == torch.int64
    assert x_uw.shape == x_us.shape == (12, 3, 32, 32)
    for _ in range(5):  # crosses the labeled loader's epoch end (10 // 4 = 2 batches)
        next(data.labeled)
    with pytest.raises(ValueError, match="uint8"):
        er.make_eager_data(images.astype(np.float32), labels, np.arange(10), batch_size=4, mu=3, workers=0, seed=0)


def test_eager_step_follows_the_port():
    """h = L_new - L_old (the port's sign), L_new is the student's loss after its update, and
    both models move."""
    teacher, student = _tiny_models()
    ref = er.EagerMPL(teacher, student, "cpu", er.EagerConfig(warmup_steps=0, student_wait_steps=0))
    g = torch.Generator().manual_seed(3)
    x_l, x_uw, x_us = (torch.randn(n, 3, 16, 16, generator=g) for n in (4, 8, 8))
    y_l = torch.randint(0, 5, (4,), generator=g)
    t0 = copy.deepcopy(teacher.state_dict())
    out = ref.step(x_l, y_l, x_uw, x_us)
    assert torch.allclose(out["h"], out["student_loss_l_new"] - out["student_loss_l_old"])
    student.train()
    with torch.no_grad():
        expect_new = torch.nn.functional.cross_entropy(student(x_l), y_l)
    # same student, but batch-norm statistics moved by one more forward: close, not equal
    assert torch.allclose(out["student_loss_l_new"], expect_new, rtol=1e-2)
    assert not torch.equal(t0["fc.weight"], teacher.state_dict()["fc.weight"])
    assert ref.t == 1 and ref.amp is False


def test_eager_reference_matches_mplstep_port_settings():
    """The eager reference and MPLStep with the port's settings (student label from the weak
    view, h = L_new - L_old) produce the same parameters: the benchmark compares equal work."""
    try:
        from mplfast import MPLConfig, MPLStep, ModelEMA, param_groups, warmup_cosine_schedule
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"MPLStep not importable yet: {exc}")
    teacher, student = _tiny_models(5)
    t2, s2 = copy.deepcopy(teacher), copy.deepcopy(student)
    cfg = er.EagerConfig(warmup_steps=2, student_wait_steps=1, total_steps=20, uda_steps=3)
    ref = er.EagerMPL(teacher, student, "cpu", cfg)
    kw = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    t_opt = torch.optim.SGD(param_groups(t2, cfg.weight_decay, decay_biases=True), **kw)
    s_opt = torch.optim.SGD(param_groups(s2, cfg.weight_decay, decay_biases=True), **kw)
    step = MPLStep(t2, s2, t_opt, s_opt,
                   MPLConfig(temperature=cfg.temperature, threshold=0.3, lambda_u=cfg.lambda_u,
                             uda_steps=cfg.uda_steps, label_smoothing=cfg.label_smoothing,
                             pseudo_label_view="weak", meta_sign=-1, precision="fp32",
                             l_old_forward="concat"),
                   teacher_scheduler=warmup_cosine_schedule(t_opt, warmup_steps=2, total_steps=20),
                   student_scheduler=warmup_cosine_schedule(s_opt, warmup_steps=2, total_steps=20, wait_steps=1),
                   student_ema=ModelEMA(s2, cfg.ema))
    ref.cfg.threshold = 0.3  # some rows kept, some masked: the UDA mask is exercised
    g = torch.Generator().manual_seed(7)
    for _ in range(3):  # 16x16 inputs keep it fast; the WRN pools globally
        x_l, x_uw, x_us = (torch.randn(n, 3, 16, 16, generator=g) for n in (4, 8, 8))
        y_l = torch.randint(0, 5, (4,), generator=g)
        a = ref.step(x_l, y_l, x_uw, x_us)
        b = step(x_l, y_l, x_uw, x_us)
        # meta_sign=-1 makes MPLStep's h the port's L_new - L_old
        torch.testing.assert_close(b["h"].float(), a["h"].float(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b["mask_rate"].float(), a["mask_rate"].float())
    for (n, p), q in zip(teacher.named_parameters(), t2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=f"teacher {n}")
    for (n, p), q in zip(student.named_parameters(), s2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=f"student {n}")


def test_step_throughput_runs_both_variants_tiny(tmp_path):
    """The benchmark script end to end at the tiny CPU size: JSON, markdown table, profile."""
    out_json, out_md, prof_md = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "p.md"
    rc = st.main(["--device", "cpu", "--preset", "tiny", "--variants", "eager", "mplfast",
                  "--steps", "1", "--warmup", "1", "--num-images", "32", "--json", str(out_json),
                  "--markdown", str(out_md), "--profile", "eager", "--profile-out", str(prof_md)])
    res = json.loads(out_json.read_text())
    by = {r["variant"]: r for r in res["results"]}
    assert set(by) == {"eager", "mplfast"}
    e = by["eager"]
    assert e["ok"], e.get("traceback")
    assert e["steps_per_s"] > 0 and e["student_param_change"] > 0 and e["finite"]
    # FLOPs per step = F * (7B + 9 mu B) with F the WRN-10-1 forward FLOPs per image
    assert e["flops_per_step"] == pytest.approx(e["forward_flops_per_image"] * (7 * 2 + 9 * 2 * 2))
    assert 0 < e["mfu"] < 1
    assert res["ceilings"]["matmul"]["flops_per_s"] > 0 and res["ceilings"]["copy"]["bytes_per_s"] > 0
    assert "| eager | 2 | 2 |" in out_md.read_text()
    assert "aten::" in prof_md.read_text()
    reason = _mplfast_unavailable()
    if reason is None:
        assert by["mplfast"]["ok"], by["mplfast"].get("traceback")
        assert rc == 0
    else:
        assert not by["mplfast"]["ok"] and by["mplfast"]["error"]
        pytest.skip(f"eager path checked; {reason}")


def test_summary_markdown_reports_speedup_and_failures():
    out = {"results": [
        {"variant": "eager", "batch_size": 64, "mu": 7, "ok": True, "steps_per_s": 10.0, "images_per_s": 5120.0,
         "ms_per_step": 100.0, "peak_mem_bytes": 2**30, "mfu": 0.01, "compile": "eager", "precision": "fp16"},
        {"variant": "mplfast", "batch_size": 64, "mu": 7, "ok": True, "steps_per_s": 55.0, "images_per_s": 28160.0,
         "ms_per_step": 18.2, "peak_mem_bytes": 2**29, "mfu": 0.05, "compile": "reduce-overhead", "precision": "bf16"},
        {"variant": "mplfast", "batch_size": 128, "mu": 7, "ok": False, "error": "RuntimeError: boom"}]}
    md = st.summary_markdown(out)
    assert "| mplfast | 64 | 7 | 55.00 |" in md and "| 5.50 |" in md
    assert "failed: RuntimeError: boom" in md


def test_variant_specs_order_headline_pairs_first():
    import argparse

    args = argparse.Namespace(preset="full", steps=None, warmup=None, repeats=None, workers=None, mu=None,
                              num_images=None, num_labels=None, eager_steps=7, device="cuda",
                              compile_mode="reduce-overhead", seed=0, batch_sizes=[64, 128],
                              variants=["eager", "mplfast", "mplfast-eager", "mplfast-inductor@64"])
    cfgs = st.configs_from_args(args)
    assert [(c.variant, c.batch_size) for c in cfgs] == [
        ("eager", 64), ("mplfast", 64), ("eager", 128), ("mplfast", 128),
        ("mplfast-eager", 64), ("mplfast-eager", 128), ("mplfast-inductor", 64)]
    assert [c.steps for c in cfgs if c.variant == "eager"] == [7, 7]
    assert all(c.steps == st.PRESETS["full"]["steps"] for c in cfgs if c.variant != "eager")
    args.variants = ["fastest"]
    with pytest.raises(SystemExit, match="unknown variant"):
        st.configs_from_args(args)


def test_kernel_rows_cuda_branch_with_a_fake_profile():
    """The CUDA-only part of the breakdown (kernels by device time, launches per step), checked
    without a GPU on hand-made profiler events."""
    from types import SimpleNamespace as E

    class Prof:
        def key_averages(self):
            return [
                E(key="sm90_xmma_fprop_implicit_gemm_bf16", count=40, device_type="DeviceType.CUDA",
                  self_device_time_total=6000.0, self_cpu_time_total=0.0),
                E(key="triton_poi_fused_add_leaky_relu_0", count=20, device_type="DeviceType.CUDA",
                  self_device_time_total=2000.0, self_cpu_time_total=0.0),
                E(key="aten::convolution", count=40, device_type="DeviceType.CPU",
                  self_device_time_total=0.0, self_cpu_time_total=900.0),
                E(key="cudaLaunchKernel", count=100, device_type="DeviceType.CPU",
                  self_device_time_total=0.0, self_cpu_time_total=500.0),
                E(key="cudaGraphLaunch", count=6, device_type="DeviceType.CPU",
                  self_device_time_total=0.0, self_cpu_time_total=50.0),
            ]

    rows = st.kernel_rows(Prof(), torch.device("cuda"), steps=2)
    assert [r["name"] for r in rows["all"]] == ["sm90_xmma_fprop_implicit_gemm_bf16",
                                                "triton_poi_fused_add_leaky_relu_0"]
    assert rows["all"][0]["us_per_step"] == 3000.0 and rows["all"][0]["pct"] == pytest.approx(75.0)
    assert rows["all"][0]["category"].startswith("convolution")
    assert rows["all"][1]["category"].startswith("fused Triton")
    assert rows["launches_per_step"] == {"kernel": 50.0, "graph": 3.0}
    md = st.kernel_markdown(rows, 0.008, torch.device("cuda"), st.BenchConfig(), 10)
    assert "50 kernels, 3 graph replays" in md and "device busy 50% of wall" in md


@pytest.mark.slow
def test_pytest_benchmark_step_suite_runs_disabled(tmp_path):
    """benchmarks/test_bench_step.py itself (CI collects only tests/): collected and run once at
    the tiny CPU size with --benchmark-disable, in a subprocess so its sys.path and the
    benchmark plugin's state stay out of this session."""
    import os
    import subprocess

    env = dict(os.environ, MPLFAST_BENCH_DEVICE="cpu", MPLFAST_BENCH_SIZE="tiny",
               MPLFAST_BENCH_VARIANTS="eager,mplfast", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", str(BENCH / "test_bench_step.py"),
                           "--benchmark-disable", "-p", "no:cacheprovider", "--rootdir", str(BENCH.parent)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 passed" in proc.stdout


@pytest.mark.slow
def test_ops_benchmarks_run_disabled(tmp_path):
    """benchmarks/ops/bench_*.py (collected only when named): each benchmark body runs once with
    --benchmark-disable (correctness asserts included), in a subprocess; the ratios summary of
    benchmarks/conftest.py must not need any test order. torch.compile's variant is skipped here
    (compile time, not the benchmark, would dominate)."""
    import os
    import subprocess

    files = sorted(str(p) for p in (BENCH / "ops").glob("bench_*.py"))
    assert [Path(f).name for f in files] == ["bench_grad_dot.py", "bench_soft_ce.py", "bench_uda.py"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *files, "--benchmark-disable",
                           "-k", "not torch_compile and not busy", "-p", "no:cacheprovider",
                           "--rootdir", str(BENCH.parent)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


@native_required
@pytest.mark.parametrize("script, args, expect", [
    ("interleaved.py", ["2", "no", "1", "dot"], ["grad_dot WRN-28-2 (80 tensors) threads=2", "checked path (no plan)"]),
    ("grad_dot_breakdown.py", ["1"], ["bare kernel, 2 threads", "Python side of the public call"]),
])
def test_cpu_op_timing_scripts_run(tmp_path, script, args, expect):
    """benchmarks/ops/interleaved.py and grad_dot_breakdown.py, one round each (their own
    correctness asserts included: the fused value against the loop, the bare kernel against the
    public call, 1 thread against 2), so that the scripts behind RESULTS.md cannot rot."""
    import subprocess

    proc = subprocess.run([sys.executable, str(BENCH / "ops" / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in expect:
        assert line in proc.stdout, proc.stdout
