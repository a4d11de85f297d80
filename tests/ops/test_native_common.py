"""Native extension as a whole: argument errors, status, the CPU thread pool
(csrc/common/parallel.cpp) and the CUDA in-place gradient scale (csrc/common/device.cu)."""
from __future__ import annotations

import pytest
import torch

from _native_cases import gpu, logits as _logits, nat, native, native_required

pytestmark = native_required


def test_errors(seeded):
    z = _logits(seeded, 4, 5, torch.float32)
    y = torch.randint(0, 5, (4,), generator=seeded)
    with pytest.raises(ValueError, match="class index out of range"):
        native.soft_ce_forward(z, torch.tensor([0, 1, 5, 2]), 0.0, 1.0)
    with pytest.raises(ValueError, match="class index out of range"):
        native.soft_ce_forward(z, torch.tensor([0, -1, 2, 2]), 0.0, None)
    with pytest.raises(ValueError, match="mixed devices"):
        native.soft_ce_forward(z, y.to("meta"), 0.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        native.soft_ce_forward(z, y[:3], 0.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        native.soft_ce_forward(z, torch.rand(4, 6), 0.0, 1.0)
    with pytest.raises(TypeError, match="unsupported dtype"):
        native.soft_ce_forward(z.to(torch.int32), y, 0.0, 1.0)
    with pytest.raises(TypeError, match="int64"):
        native.soft_ce_forward(z, y.to(torch.int32), 0.0, 1.0)
    with pytest.raises(ValueError, match="2-D"):
        native.soft_ce_forward(z[0], y, 0.0, 1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        native.soft_ce_forward(z, y, 1.5, 1.0)
    with pytest.raises(ValueError, match="no classes"):
        native.soft_ce_forward(torch.empty(3, 0), torch.zeros(3, dtype=torch.int64), 0.0, 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        native.soft_ce_forward(z.tolist(), y, 0.0, 1.0)

    w = _logits(seeded, 4, 5, torch.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        native.uda_forward(w, z[:, :4], 1.0, 0.5, 1.0)
    with pytest.raises(TypeError, match="dtype mismatch"):
        native.uda_forward(w, z.double(), 1.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        native.uda_forward(w, z, 0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="threshold"):
        native.uda_forward(w, z, 1.0, 1.5, 1.0)
    with pytest.raises(ValueError, match="mixed devices"):
        native.uda_forward(w, z.to("meta"), 1.0, 0.5, 1.0)

    xs = [torch.randn(s, generator=seeded) for s in (3, 4)]
    with pytest.raises(ValueError, match="list-length mismatch"):
        native.grad_dot(xs, xs[:1])
    with pytest.raises(ValueError, match="list-length mismatch"):
        native.grad_dot_delta(xs, xs, xs[:1])
    with pytest.raises(ValueError, match="shape mismatch"):
        native.grad_dot(xs, [xs[0], torch.randn(5)])
    with pytest.raises(TypeError, match="dtype mismatch"):
        native.grad_dot(xs, [xs[0], xs[1].half()])
    with pytest.raises(TypeError, match="unsupported dtype"):
        native.grad_dot([torch.ones(3, dtype=torch.int64)], [torch.ones(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="mixed devices"):
        native.grad_dot(xs, [xs[0], xs[1].to("meta")])
    with pytest.raises(TypeError, match="sequence"):
        native.grad_dot(xs[0], xs[0])


def test_status_and_no_denormal_flush():
    st = nat.status()
    assert st["cpu"] is True
    assert st["cuda"] is True or (isinstance(st["cuda"], str) and st["cuda"])
    # -ffast-math must stay a compile flag: linking crtfastmath would set FTZ/DAZ process-wide
    # when _C is imported, silently changing torch's numerics.
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert float(tiny * 1.0) != 0.0


def test_status_when_extension_missing(monkeypatch, seeded):
    """Without _C every primitive raises RuntimeError carrying the load failure's reason."""
    monkeypatch.setattr(nat, "_C", None)
    monkeypatch.setattr(nat, "_IMPORT_ERROR", "mplfast._C failed to load (ImportError: test)")
    nat._cuda_status.cache_clear()
    try:
        st = nat.status()
        assert st["cpu"] == st["cuda"] == "mplfast._C failed to load (ImportError: test)"
        z = _logits(seeded, 2, 3, torch.float32)
        with pytest.raises(RuntimeError, match="ImportError: test"):
            native.soft_ce_forward(z, torch.tensor([0, 1]), 0.0, 1.0)
        with pytest.raises(RuntimeError, match="ImportError: test"):
            native.grad_dot([z], [z])
    finally:
        nat._cuda_status.cache_clear()


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_cuda_scale_inplace(seeded, dtype):
    """scale_inplace_cuda equals torch's grad * grad_out bit for bit, leaves the data untouched
    when the scale is exactly 1, propagates NaN, and handles odd sizes and misaligned starts."""
    from mplfast import _C

    codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
    stream = torch.cuda.current_stream().cuda_stream
    for n, offset in ((1, 0), (7, 1), (4099, 0), (1_000_003, 3)):
        base = torch.randn(n + offset, generator=seeded, dtype=torch.float64).to(dtype).cuda()
        g = base[offset:]
        for sdt in (torch.float32, torch.float64, dtype):
            for value in (1.0, 0.37, -2.5, float("nan")):
                s = torch.tensor(value, dtype=sdt, device="cuda")
                x = g.clone()
                _C.scale_inplace_cuda(x.data_ptr(), codes[dtype], x.numel(), s.data_ptr(), codes[sdt], stream)
                expected = g * s
                assert torch.equal(x.view(torch.uint8), expected.to(dtype).view(torch.uint8)) or (
                    value != value and bool(torch.isnan(x).all())), (n, offset, sdt, value)


def _pool_work(seed: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=gen) for s in (300_000, 70_001, 5)]
    z = _logits(gen, 300, 700, torch.float32)
    y = torch.randint(0, 700, (300,), generator=gen)
    return float(native.grad_dot(xs, xs)), float(native.soft_ce_forward(z, y, 0.1, 1.0)[0].sum())


def test_cpu_thread_pool_concurrent_callers():
    """The CPU kernels' worker pool (csrc/common/parallel.cpp) gives every caller its own result
    when several Python threads call at once (the GIL is released)."""
    from concurrent.futures import ThreadPoolExecutor

    nthreads = torch.get_num_threads()
    torch.set_num_threads(max(2, nthreads))
    try:
        expected = [_pool_work(s) for s in range(6)]
        with ThreadPoolExecutor(4) as ex:
            for _ in range(3):
                assert list(ex.map(_pool_work, range(6))) == expected
    finally:
        torch.set_num_threads(nthreads)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_cpu_thread_pool_in_a_forked_child(seeded):
    """After fork (DataLoader workers) the parent's pool workers do not exist in the child; the
    kernels must still finish there, on 2 threads, with the parent's result. (The child calls
    _C directly: torch's own OpenMP ops may hang in a forked child, which is not ours to test.)"""
    import os
    import struct
    import time

    from mplfast import _C

    xs = [torch.randn(s, generator=seeded) for s in (300_000, 70_001, 5)]
    args = ([t.data_ptr() for t in xs], [t.data_ptr() for t in xs], [], [t.numel() for t in xs], [0, 0, 0])
    expected = _C.grad_dot_cpu(*args, 2)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, just the kernels
        try:
            os.write(w, struct.pack("d", _C.grad_dot_cpu(*args, 2)))
        finally:
            os._exit(0)
    os.close(w)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("grad_dot_cpu hung in a forked child")
        data = os.read(r, 8)
    finally:
        os.close(r)
    assert struct.unpack("d", data)[0] == expected


_AVOIDANCE_SCRIPT = r"""
import os, sys, time, torch
from mplfast import _C

allowed = os.sched_getaffinity  # of a thread, by its id (Linux)

def worker():
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().strip() == "mplfast-pool":
                return int(tid)

xs = [torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))]
args = ([xs[0].data_ptr()], [xs[0].data_ptr()], [], [xs[0].numel()], [0])
expected = _C.grad_dot_cpu(*args, 1)

def calls_until(ok):
    # The worker sets its mask when it joins a job; it may sleep through a few.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert _C.grad_dot_cpu(*args, 2) == expected  # same bits on 1 and 2 threads
        if ok():
            return True
    return False

everything = os.sched_getaffinity(0)
_C.grad_dot_cpu(*args, 2)  # the pool is made by an unpinned caller
deadline = time.monotonic() + 20
while (tid := worker()) is None and time.monotonic() < deadline:
    time.sleep(0.01)  # the thread names itself once it runs
assert tid is not None, "no mplfast-pool thread"
a, b = sorted(everything)[:2]
for cpu in (a, b, a):  # the caller moves: the worker's mask follows it
    os.sched_setaffinity(0, {cpu})  # this thread only (Linux)
    assert calls_until(lambda: allowed(tid) == everything - {cpu}), (cpu, allowed(tid))
# Someone else pins the worker (taskset -a): that mask is kept, never widened again.
os.sched_setaffinity(tid, {a})
os.sched_setaffinity(0, {b})
for _ in range(20):
    _C.grad_dot_cpu(*args, 2)
assert allowed(tid) == {a}, allowed(tid)
print("ok")
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux") or len(__import__("os").sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_cpu_pool_worker_keeps_off_the_callers_cpu():
    """A pool worker never shares the CPU its caller posted the job from (the caller computes
    too; sharing halved the speed, parallel.cpp): its allowed CPUs are its own less the caller's,
    they follow the caller when it moves, and a mask someone else set is respected. In a fresh
    interpreter, so that pinning its main thread touches no other test."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _AVOIDANCE_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
