"""Generated image folders and tiny training runs on them, for the eval/export/predict tests.

Imported as ``from imagefolder_fixtures import ...`` (tests/ is on sys.path, no package)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# tiny, fast settings; the digits preset keeps the model small whatever the data, and the
# TrainConfig default validation split (which the digits preset turns off) is put back
TINY = ["--preset", "digits", "--val-fraction", "0.1",
        "--set", "model_kwargs={width: 8}", "--set", "batch_size=8",
        "--set", "mu=2", "--set", "log_interval=2", "--set", "warmup_steps=1",
        "--set", "progress=plain", "--set", "finetune_epochs=0", "--set", "tensorboard=false"]


def write_flat_folder(root: Path, classes: tuple[str, ...] = ("ant", "bee", "cat"),
                      per_class: int = 20, size: int = 16, seed: int = 0, ext: str = "png") -> Path:
    """ROOT/<class>/*.png: class c has mean brightness 40 + 80 c plus noise (learnable)."""
    from PIL import Image

    rs = np.random.RandomState(seed)
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(rs.randint(-30, 31, (size, size, 3)) + 40 + 80 * (ci % 3), 1, 255)
            Image.fromarray(arr.astype(np.uint8)).save(d / f"{c}_{i}.{ext}")
    return root


def train_args(data: Path, out: Path, *extra: str, steps: int = 6, labels: int = 6,
               image_size: int = 16) -> list[str]:
    return ["train", "--dataset", "imagefolder", "--data", str(data), "--out", str(out),
            "--steps", str(steps), "--labels", str(labels), "--set", f"image_size={image_size}",
            *TINY, *extra]


def one_line_error(rc: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mplfast: error:"), err
    return lines[0]


def files_in(out: Path) -> set[str]:
    return set(os.listdir(out))
