"""Two ranks under torchrun (gloo, CPU), DDP-wrapped models: identical h and parameters.

This file is both the pytest test and (run as a script by torchrun) the worker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

STEPS = 3
CONFIGS = [
    dict(meta_signal="loss_diff"),
    dict(meta_signal="grad_dot", meta_sign=-1, meta_baseline_decay=0.5, pseudo_label="sample"),
    dict(meta_signal="loss_diff", pseudo_label="soft", grad_clip=1.0),
]


def _worker(out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from mplfast import MPLConfig, MPLStep, create_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    with open(os.path.join(os.path.dirname(out_path), f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    results = []
    for kw in CONFIGS:
        torch.manual_seed(0)  # same initial weights on every rank
        T = create_model("small_cnn", 5, in_chans=1, width=4, dropout=0.1)
        S = create_model("small_cnn", 5, in_chans=1, width=4, dropout=0.1)
        T, S = DDP(T), DDP(S)
        cfg = MPLConfig(precision="fp32", threshold=0.3, **kw)
        step = MPLStep(T, S, torch.optim.SGD(T.parameters(), lr=0.05, momentum=0.9, nesterov=True),
                       torch.optim.SGD(S.parameters(), lr=0.05, momentum=0.9, nesterov=True), cfg,
                       seed=rank)
        torch.manual_seed(10 + rank)  # different dropout masks per rank
        hs, local = [], []
        for i in range(STEPS):
            g = torch.Generator().manual_seed(1000 * rank + i)  # different data per rank
            buf = torch.randn(4 + 2 * 6, 1, 8, 8, generator=g)
            y = torch.randint(0, 5, (4,), generator=g)
            m = step(buf[:4], y, buf[4:10], buf[10:])
            hs.append(float(m["h"]))
            local.append(float(m["student_loss_l_old"] - m["student_loss_l_new"]))
        params = torch.cat([p.detach().reshape(-1) for p in list(T.parameters()) + list(S.parameters())])
        results.append({"h": hs, "local_diff": local, "params": params.tolist()})
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    dist.barrier()
    # Skip the interpreter's teardown: torch 2.13's gloo process group can deadlock there (the
    # main thread, holding the GIL, joins a gloo thread that waits for the GIL to free an
    # all-gather's tensors), leaving a rank alive after torchrun has gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _kill_if_worker(pid: int) -> None:
    """SIGKILL ``pid`` if it still is one of this file's ranks (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if __file__.encode() not in f.read():
                return
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


@pytest.mark.slow
def test_two_ranks_agree(tmp_path):
    out = tmp_path / "ranks.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Output to files, not pipes: a rank that outlived torchrun would hold a pipe open and hang
    # the read. Each rank records its pid (torchrun starts them in sessions of their own), so
    # whatever is left after a timeout can be killed.
    log = tmp_path / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             __file__, str(out)],
            env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for p in tmp_path.glob("rank*.pid"):
                _kill_if_worker(int(p.read_text()))
            proc.wait()
    text = log.read_text()[-3000:]
    assert rc is not None, "torchrun did not finish in 180 s:\n" + text
    assert rc == 0, text
    r0, r1 = json.loads(out.read_text())
    for kw, a, b in zip(CONFIGS, r0, r1):
        assert a["h"] == b["h"], kw  # bitwise: h is all-reduced before use
        assert a["params"] == b["params"], kw  # bitwise: DDP + identical h
        assert any(h != 0.0 for h in a["h"]), kw
        assert a["local_diff"] != b["local_diff"], kw  # the ranks really saw different data
        if kw == CONFIGS[0]:  # loss_diff, sign +1, no baseline: h = mean over ranks
            for h, la, lb in zip(a["h"], a["local_diff"], b["local_diff"]):
                assert abs(h - (la + lb) / 2) < 1e-6


if __name__ == "__main__":
    _worker(sys.argv[1])
