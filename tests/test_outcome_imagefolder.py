"""Outcome tests of `mplfast train` on a user's own image folder: a run that is not learning
must say so while it runs (docs/recipe-imagefolder.md has the seeded comparison of the default
command with `--method supervised`, which is too slow for this suite on 2 CPU cores)."""
from __future__ import annotations

import numpy as np

from mplfast.cli import main


def test_a_run_at_chance_warns(tmp_path, capsys):
    """Images that carry no class (noise, the same for every class): the headline model stays
    at chance, and the run says so at its first evaluation past a quarter of the steps."""
    from PIL import Image

    rs = np.random.RandomState(0)
    for c in ("a", "b", "c"):
        (tmp_path / "noise" / c).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rs.randint(0, 256, (8, 8, 3)).astype(np.uint8)).save(
                tmp_path / "noise" / c / f"{i}.png")
    rc = main(["train", "--dataset", "imagefolder", "--data", str(tmp_path / "noise"),
               "--out", str(tmp_path / "run"), "--steps", "8", "--set", "eval_interval=4",
               "--set", "image_size=8", "--set", "progress=plain", "--set", "tensorboard=false",
               "--set", "plot=false", "--set", "model_kwargs={width: 8}"])
    assert rc == 0
    out = capsys.readouterr().out
    warnings = [ln for ln in out.splitlines() if "chance for 3 classes" in ln]
    assert len(warnings) == 1, out
    assert "at step 4" in warnings[0] and "--method supervised" in warnings[0]
