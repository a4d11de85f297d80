"""Achieved bandwidth of every fused op on every backend, against the copy ceiling of the same run.

Usage::

    python benchmarks/ops/op_bandwidth.py --device cuda --json ops.json --markdown ops.md
    python benchmarks/ops/op_bandwidth.py --device cpu           # the CPU rehearsal's sizes

Per (op, backend, shape): seconds per call, the bytes the call must move at least (each input
read once, each output written once), GB/s = bytes / seconds, and that as a fraction of the
device-to-device copy bandwidth measured at the start of the same process
(``mplfast.perf.measure_copy_bandwidth``, bytes read + written, like the ops' counts).

Timing (CUDA): the calls are issued back to back, ``iters`` of them between two CUDA events, no
host synchronisation inside (a sync per call adds the host's launch latency to every call: for
grad_dot on ResNet-50, ~70 µs of GPU time, that is as much as the kernel); ``iters`` is sized
so one repeat takes >= 20 ms, and the median of 5 repeats is reported. When the host issues
calls slower than the GPU finishes them, that loop measures the host: so each op is also
captured once in a CUDA graph and its replays are timed the same way (``graph`` column; empty
when the call cannot be captured). CPU: the same loop under ``time.perf_counter``.

Shapes are the op benchmarks' (benchmarks/ops/bench_*.py): soft-CE and UDA (8192, 32000) bf16
on CUDA, (4096, 1000) fp32 on CPU; grad_dot over ResNet-50's parameter list (CUDA) or
WRN-28-2's (both), grad_dot_delta over WRN-28-2's; the augmentation writing the step's 960
images (B = 64, μ = 7) at 32×32.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import mplfast
from mplfast import perf

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent))

import _tables  # noqa: E402

from _common import backward_extra_bytes, event_time  # noqa: E402


def _available(op: str, device: torch.device) -> dict[str, bool | str]:
    from mplfast import _backends as B

    out: dict[str, bool | str] = {}
    for name in B.OPS[op].backends:
        try:
            B.resolve_backend(name, device, op)
            out[name] = True
        except Exception as exc:  # noqa: BLE001
            out[name] = str(exc).split("\n")[0]
    return out


def graph_time(fn: Callable[[], Any], device: torch.device, *, min_s: float = 0.02, repeats: int = 5) -> float:
    """Seconds per replay of ``fn`` captured in one CUDA graph (warmed up on a side stream first)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return event_time(g.replay, device, min_s=min_s, repeats=repeats)


def cases(device: torch.device, size: str) -> list[dict[str, Any]]:
    """(op, backend, shape, bytes, fn) for every op x backend available here."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    out: list[dict[str, Any]] = []
    full = size == "full"
    n, c = (8192, 32000) if full else (4096, 1000)
    dt = torch.bfloat16 if full else torch.float32
    z = (torch.randn(n, c, generator=gen) * 3).to(device=device, dtype=dt)
    y = torch.randint(0, c, (n,), generator=gen).to(device)
    w = (torch.randn(n, c, generator=gen) * 12).to(device=device, dtype=dt)
    el = z.element_size()
    extra = backward_extra_bytes(z.numel(), el) if device.type == "cuda" else 0
    zg = z.detach().clone().requires_grad_()

    def soft_ce(b: str) -> Callable[[], Any]:
        def f() -> None:
            zg.grad = None
            mplfast.soft_cross_entropy(zg, y, label_smoothing=0.1, backend=b).backward()
        return f

    def uda(b: str) -> Callable[[], Any]:
        def f() -> None:
            zg.grad = None
            mplfast.uda_loss(w, zg, temperature=0.7, threshold=0.6, backend=b)[0].backward()
        return f

    shape = f"{n}x{c} {str(dt).replace('torch.', '')}"
    for op, key, make, nbytes in (("soft_ce fwd+bwd", "soft_cross_entropy", soft_ce, 2 * z.numel() * el + extra),
                                  ("uda fwd+bwd", "uda_loss", uda, 3 * z.numel() * el + extra)):
        for b, ok in _available(key, device).items():
            out.append({"op": op, "backend": b, "shape": shape, "bytes": nbytes,
                        "fn": make(b) if ok is True else None, "why": ok})
    models = ["resnet50", "wrn28_2"] if full else ["wrn28_2"]
    for model in models:
        shapes = [p.shape for p in mplfast.create_model(model, 1000 if model == "resnet50" else 10).parameters()]
        xs, ys, olds = ([torch.randn(s, generator=gen).to(device) for s in shapes] for _ in range(3))
        numel = sum(x.numel() for x in xs)
        sh = f"{model} params ({len(shapes)} tensors, {numel / 1e6:.2f} M) fp32"
        for op, args, k in (("grad_dot", (xs, ys), 2), ("grad_dot_delta", (xs, ys, olds), 3)):
            if op == "grad_dot_delta" and model != "wrn28_2":
                continue
            fn = getattr(mplfast, op)
            for b, ok in _available(op, device).items():
                out.append({"op": op, "backend": b, "shape": sh, "bytes": k * numel * 4,
                            "fn": (lambda fn=fn, a=args, b=b: fn(*a, backend=b)) if ok is True else None,
                            "why": ok})
    # the augmentation: the step's strong view of B(1+2mu) images (u8 read, fp32 written)
    from mplfast.augment import Policy, augment_view

    nimg = 64 * 15 if full else 64
    images = torch.randint(0, 256, (4096 if full else 256, 32, 32, 3), generator=gen, dtype=torch.uint8).to(device)
    index = torch.randperm(images.shape[0], generator=gen)[:nimg].to(device)
    buf = torch.empty(nimg, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    pol = Policy(32, 32, True, n_ops=2, magnitude=16.0, cutout=0.5)
    for b, ok in _available("augment", device).items():
        if b == "reference":  # image by image with host reads: the definition, not a candidate
            ok = "not timed: the per-image reference is the definition, not a candidate"
        def aug(b: str = b) -> None:
            augment_view(buf, images, index, pol, seed=0, step=1, view=2, id_offset=0,
                         mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), backend=b)
        out.append({"op": "augment strong", "backend": b, "shape": f"{nimg}x32x32x3 u8 -> fp32",
                    "bytes": nimg * 32 * 32 * 3 * (1 + 4), "fn": aug if ok is True else None, "why": ok})
    return out


def measure(device: torch.device, size: str, *, log: Callable[[str], None] = print,
            json_path: str | None = None, min_s: float | None = None) -> dict[str, Any]:
    """Time every case; rewrite ``json_path`` after each, so a run cut short keeps its rows."""
    copy = perf.measure_copy_bandwidth(device)
    res: dict[str, Any] = {"device": str(device), "copy": copy, "rows": []}
    log(f"copy ceiling: {copy['bytes_per_s'] / 1e9:.1f} GB/s (read + write)")
    min_s = min_s if min_s is not None else 0.02
    for case in cases(device, size):
        row = {k: v for k, v in case.items() if k not in ("fn", "why")}
        if case["fn"] is None:
            row["status"] = f"not run: {case['why']}"
        else:
            try:
                sec = event_time(case["fn"], device, min_s=min_s, repeats=5 if device.type == "cuda" else 3)
                row.update(status="ok", seconds=sec, gb_per_s=case["bytes"] / sec / 1e9,
                           fraction_of_copy=case["bytes"] / sec / copy["bytes_per_s"])
                if device.type == "cuda":
                    try:
                        gs = graph_time(case["fn"], device, min_s=min_s)
                        row.update(graph_seconds=gs, graph_gb_per_s=case["bytes"] / gs / 1e9)
                    except Exception as exc:  # noqa: BLE001 - e.g. a host sync inside the call
                        row["graph_error"] = f"{type(exc).__name__}: {exc}"[:200]
            except Exception as exc:  # noqa: BLE001 - one op failing must not hide the others
                row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:300])
        res["rows"].append(row)
        log(row_line(row))
        if json_path:
            Path(json_path).write_text(json.dumps(res, indent=1))
    return res


def row_line(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['op']:>16} {r['backend']:>9} {r['shape']}: {r['status']} {r.get('error', '')}"
    g = f", graph {r['graph_gb_per_s']:.1f} GB/s" if "graph_gb_per_s" in r else ""
    return (f"{r['op']:>16} {r['backend']:>9} {r['shape']}: {r['seconds'] * 1e6:9.1f} us/call "
            f"{r['gb_per_s']:8.1f} GB/s ({100 * r['fraction_of_copy']:.1f}% of copy){g}")


markdown = _tables.ops_markdown  # torch-free, for the suite's summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=("full", "tiny"), default=None, help="default: full on CUDA, tiny on CPU")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--min-seconds", type=float, default=None, help="time per repeat (default 0.02)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    size = args.size or ("full" if device.type == "cuda" else "tiny")
    t0 = time.perf_counter()
    res = measure(device, size, json_path=args.json, min_s=args.min_seconds)
    res["seconds"] = time.perf_counter() - t0
    _tables.write_results(res, markdown(res), args.json, args.markdown)
    return 0 if all(r["status"] != "failed" for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
