"""Where the CLI, data and safety parts meet (the follow-ups of merging them): the summary's
validation and storage lines, streamed folders with the auto recipe, the seed range, nested
MPL YAML through the safe loader, the subcommand list, and predict's image decoder."""
from __future__ import annotations

import numpy as np
import pytest
from imagefolder_fixtures import one_line_error, write_flat_folder

from mplfast.cli import main
from mplfast.data import dali

QUICK = ["--set", "model_kwargs={width: 4}", "--set", "eval_interval=0", "--set", "plot=false",
         "--set", "tensorboard=false", "--set", "progress=plain", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _block(text: str) -> list[str]:
    lines = text.splitlines()
    end = next(i for i, ln in enumerate(lines) if ln.startswith("  output "))
    return lines[:end + 1]


def test_no_validation_split_is_said_in_the_summary_once(tmp_path, capsys):
    data = write_flat_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data", str(data), "--steps", "2",
                 "--out", str(out), "--val-fraction", "0", *QUICK]) == 0
    text = capsys.readouterr().out
    block = "\n".join(_block(text))
    # 20 images a class, round(20 x 0.2) of each held out for testing, none for validation
    assert "48 train, 0 validation, 12 test, 48 unlabeled" in block, block
    assert "validation none (val_fraction=0): best.pt is not written" in block
    assert text.count("best.pt is not written") == 1
    assert text.count("held in memory") == 1 and "storage    " in block
    assert not (out / "best.pt").exists() and (out / "last.pt").is_file()


@pytest.mark.skipif(not dali.available(), reason="nvidia-dali is not installed")
def test_streamed_folder_with_the_auto_recipe(tmp_path, capsys):
    """No --labels, no --preset: the labeled count is derived from the streamed file lists."""
    import json

    data = write_flat_folder(tmp_path / "imgs", size=12)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "imagefolder", "--data", str(data), "--stream", "--steps",
               "2", "--out", str(out), "--set", "image_size=12", *QUICK])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    block = "\n".join(_block(captured.out))
    assert "preset     auto" in block and "streaming from disk with DALI" in block
    # 60 files: 4 a class to test, 2 a class to validation, 14 a class to train
    assert "42 train, 6 validation, 12 test" in block, block
    assert "labeled    12 (4 per class" in block  # max(4, 42 // 10 // 3) per class
    s = json.load(open(out / "summary.json"))
    assert s["labels"] == 12 and s["train_images"] == 42


@pytest.mark.parametrize("value", ["10" + "0" * 29, "-1", str(2**32)])
def test_seed_out_of_range_is_one_line(capsys, value):
    line = one_line_error(main(["train", "--set", f"seed={value}", "--steps", "1", *QUICK]),
                          capsys.readouterr().err)
    assert "seed must be in [0, 2^32)" in line
    assert main(["train", "--set", f"seed={2**32 - 1}", "--print-config"]) == 0


def test_nested_mpl_yaml_goes_through_the_safe_loader():
    """A string given for ``mpl`` is parsed by mplfast.safe_yaml (bounded depth, no tags)."""
    from mplfast.errors import UserError
    from mplfast.train.config import TrainConfig, apply_overrides

    cfg = apply_overrides(TrainConfig(), {"mpl": "{threshold: 0.5}"})
    assert cfg.mpl.threshold == 0.5
    for bad in ("[" * 3000, "!!python/object/apply:os.system ['true']", "{a: *b}"):
        with pytest.raises(UserError, match="mpl: expected a mapping"):
            apply_overrides(TrainConfig(), {"mpl": bad})


def test_subcommand_list_names_every_subcommand():
    from mplfast.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(sub.metavar.strip("{}").split(",")) == sorted(sub.choices)


def test_predict_decodes_with_the_image_checks(tmp_path):
    """predict reads images as the image-folder loader does: only JPEG/PNG (a GIF named .png
    is refused, naming the file), 16-bit PNGs scaled rather than clipped."""
    from PIL import Image

    from mplfast.errors import UserError
    from mplfast.train.predict import load_image

    gif = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(gif, format="GIF")
    with pytest.raises(UserError, match=r"a\.png: not a JPEG or PNG image \(it is GIF\)"):
        load_image(gif, (4, 4), 3)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(deep)
    arr = load_image(deep, (3, 5), 3)
    assert arr.shape == (3, 5, 3) and arr.dtype == np.uint8 and int(arr.min()) == 255
    assert load_image(deep, (3, 5), 1).shape == (3, 5, 1)
