"""Where a repeated CPU ``grad_dot`` call's time goes: the public call (a plan hit: per-tensor
checks, then the kernel) and the bare kernel (``_C.grad_dot_cpu`` on the plan's pointer lists)
on 2 and 1 threads, over WRN-28-2's 80 parameter shapes (1.47 M fp32, 11.8 MB read per call);
the difference is the Python side. Interleaved rounds of 20 calls; min and median per call.
Compare the kernel with ``benchmarks/ops/dot_ceiling.c`` (what one core reads per second at this
working-set size).

Run:  python benchmarks/ops/grad_dot_breakdown.py [ROUNDS]
"""
import statistics, sys, time
import torch
import mplfast
from mplfast.ops.grad_dot import native

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
shapes = [p.shape for p in mplfast.create_model("wrn28_2", 10).parameters()]
xs = [torch.randn(sh, generator=g) for sh in shapes]
ys = [torch.randn(sh, generator=g) for sh in shapes]
for _ in range(2):  # the second call over the same lists makes their plan
    mplfast.grad_dot(xs, ys, backend="native")
plan = native._PLANS[tuple(map(id, (xs, ys)))]
lib, ptrs, sizes, codes = plan.lib, plan.ptrs, plan.sizes[0], plan.codes
kernel = lambda n: lib.grad_dot_cpu(ptrs[0], ptrs[1], [], sizes, codes, n)
total = float(mplfast.grad_dot(xs, ys, backend="native"))
assert abs(kernel(2) - total) <= 1e-5 * abs(total) and kernel(1) == kernel(2)  # same bits on 1 and 2 threads


cases = {
    "public grad_dot (plan hit)": lambda: mplfast.grad_dot(xs, ys, backend="native"),
    "bare kernel, 2 threads": lambda: kernel(2),
    "bare kernel, 1 thread": lambda: kernel(1),
}
times = {name: [] for name in cases}
for _ in range(rounds):
    for name, fn in cases.items():
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        times[name].append((time.perf_counter() - t0) / 20)
nbytes = 2 * 4 * sum(sizes)
for name, ts in times.items():
    lo, med = min(ts), statistics.median(ts)
    print(f"{name:28s} min {lo * 1e6:7.1f} us  median {med * 1e6:7.1f} us  {nbytes / lo / 1e9:5.1f} GB/s by the min")
public, bare = (statistics.median(times[k]) for k in ("public grad_dot (plan hit)", "bare kernel, 2 threads"))
print(f"Python side of the public call (median difference): {(public - bare) * 1e6:.1f} us")
