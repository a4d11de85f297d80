"""Interleaved timing of the fused ops (native, CPU) against their baselines, for a loaded machine.

pytest-benchmark times one implementation after the other, so on a shared machine a burst of
load lands on one side only. Here each round times the fused op, then its baseline, back to
back, and the ratios are of the min and of the median over all rounds:

  soft-CE (4096, 1000) fp32 fwd+bwd  vs  F.cross_entropy(...).backward()
  UDA (4096, 1000) fp32 fwd+bwd      vs  the eager composite (mplfast.ops.uda.reference.uda_composite)
  grad_dot over WRN-28-2's parameters (80 tensors, 1.47 M elements) vs a Python loop of (a * b).sum()
      (5 calls per sample): the same two lists every call (MPLStep's parameter and snapshot
      lists; a repeated call reuses its checked plan), and the checked path (no plan)

Run:  python benchmarks/ops/interleaved.py [THREADS] [busy|no] [ROUNDS] [all|ce|uda|dot]
"busy" starts ``python -c "while True: pass"`` (one core taken) for the duration.

The ce and dot cases use only API that trees since 2026-11-24 have, so this file also times an
older tree on the same machine: install it in its own venv and run this file with that venv's
python (trees without grad_dot plans check every call, so the checked-path row is left out).
"""
import statistics, subprocess, sys, time
import torch, torch.nn.functional as F
import mplfast

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
busy = len(sys.argv) > 2 and sys.argv[2] == "busy"
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 60
only = sys.argv[4] if len(sys.argv) > 4 else "all"
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)

def t(fn, k=1):
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k

cases = {}
if only in ("all", "ce"):
    z = (torch.randn(4096, 1000, generator=g) * 3).requires_grad_()
    y = torch.randint(0, 1000, (4096,), generator=g)
    def ce_fused():
        z.grad = None; mplfast.soft_cross_entropy(z, y, backend="native").backward()
    def ce_torch():
        z.grad = None; F.cross_entropy(z, y).backward()
    cases["soft_ce (4096,1000) fwd+bwd"] = (ce_fused, ce_torch, 1)
if only in ("all", "uda"):
    from mplfast.ops.uda.reference import uda_composite
    w = torch.randn(4096, 1000, generator=g) * 3
    s = (torch.randn(4096, 1000, generator=g) * 3).requires_grad_()
    def uda_fused():
        s.grad = None; mplfast.uda_loss(w, s, temperature=0.7, threshold=0.6, backend="native")[0].backward()
    def uda_eager():
        s.grad = None; uda_composite(w, s, 0.7, 0.6)[0].backward()
    cases["uda (4096,1000) fwd+bwd"] = (uda_fused, uda_eager, 1)
if only in ("all", "dot"):
    shapes = [p.shape for p in mplfast.create_model("wrn28_2", 10).parameters()]
    xs = [torch.randn(sh, generator=g) for sh in shapes]
    ys = [torch.randn(sh, generator=g) for sh in shapes]
    def dot_fused():
        return mplfast.grad_dot(xs, ys, backend="native")
    def dot_loop():
        acc = torch.zeros(())
        for a, b in zip(xs, ys):
            acc = acc + (a * b).sum()
        return acc
    assert abs(float(dot_fused()) - float(dot_loop())) < 1e-2 * max(1, abs(float(dot_loop())))
    cases[f"grad_dot WRN-28-2 ({len(xs)} tensors)"] = (dot_fused, dot_loop, 5)
    # The checked path: no plan to reuse (a list of new tensors, e.g. MPLStep's gradients), so
    # the contract checks every tensor.
    try:
        from mplfast.ops.grad_dot.native import forget_plans
    except ImportError:  # an older tree, from before the plans: the row above is its checked path
        forget_plans = None
    if forget_plans is not None:
        def dot_checked():
            forget_plans()
            return mplfast.grad_dot(xs, ys, backend="native")
        cases[f"grad_dot WRN-28-2 ({len(xs)} tensors), checked path (no plan)"] = (dot_checked, dot_loop, 5)

proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
try:
    for name, (a, b, k) in cases.items():
        for _ in range(3):
            a(); b()
        ta, tb = [], []
        for _ in range(rounds):
            ta.append(t(a, k)); tb.append(t(b, k))
        print(f"{name} threads={threads} busy={busy}: fused min {min(ta)*1e3:.3f} ms med {statistics.median(ta)*1e3:.3f} ms | "
              f"baseline min {min(tb)*1e3:.3f} ms med {statistics.median(tb)*1e3:.3f} ms | ratio min {min(tb)/min(ta):.2f}x "
              f"med {statistics.median(tb)/statistics.median(ta):.2f}x", flush=True)
finally:
    if proc:
        proc.kill(); proc.wait()
