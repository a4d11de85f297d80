"""``torchrun --nproc_per_node 2 -m mplfast train`` with gloo on CPU completes; rank 0 alone writes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_torchrun_two_gloo_ranks(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = str(tmp_path / "run")
    torchrun = shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc_per_node", "2", "-m", "mplfast", "train",
           "--steps", "6", "--device", "cpu", "--out", out,
           "--set", "model_kwargs={width: 4}", "--set", "log_interval=2", "--set", "eval_interval=3",
           "--set", "ckpt_interval=4", "--set", "finetune_epochs=1",
           "--set", "finetune_batch_size=26", "--set", "progress=plain"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert s["world_size"] == 2
    assert s["steps"] == 6 and "finetune_acc" in s
    # exactly one writer: one "done" line, one record per logged step
    assert p.stdout.count("done: mpl on digits") == 1
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))
             if json.loads(line)["phase"] == "train"]
    assert steps == [2, 4, 6]
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
