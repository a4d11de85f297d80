"""Image-folder layouts (flat ImageFolder, train/val, train/val/test, train only), the seeded
class-balanced splits, and the refusals that name classes by name."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mplfast.cli import main
from mplfast.data import load_dataset
from mplfast.data.imagefolder import scan_imagefolder
from mplfast.data.splits import carve_validation, check_labels_per_class, holdout_split
from mplfast.errors import UserError


def _img(path: Path, value: int, size: int = 10) -> None:
    from PIL import Image

    rs = np.random.RandomState(value)
    arr = np.clip(rs.randint(0, 50, (size, size, 3)) + value, 1, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _tree(root: Path, counts: dict[str, int], sub: str = "") -> Path:
    for ci, (c, n) in enumerate(counts.items()):
        for i in range(n):
            _img(root / sub / c / f"{i}.png", 20 + 60 * ci + i)
    return root


def _one_line_error(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- flat layout ------------------------------------------------------------------------------
def test_flat_layout_holds_out_a_seeded_class_balanced_test_split(tmp_path):
    _tree(tmp_path, {"cat": 10, "dog": 20, "emu": 5})
    ds = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert ds.class_names == ("cat", "dog", "emu")
    # round(n * 0.2) per class: 2, 4, 1 held out
    assert torch.bincount(ds.test_labels, minlength=3).tolist() == [2, 4, 1]
    assert torch.bincount(ds.train_labels, minlength=3).tolist() == [8, 16, 4]
    again = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert torch.equal(again.test_images, ds.test_images)  # same split every time
    # no test image is also a training image (images are all distinct here)
    tr = {bytes(x.numpy().tobytes()) for x in ds.train_images}
    assert not any(bytes(x.numpy().tobytes()) in tr for x in ds.test_images)
    half = load_dataset("imagefolder", str(tmp_path), image_size=8, test_fraction=0.5)
    assert torch.bincount(half.test_labels, minlength=3).tolist() == [5, 10, 2]


def test_hidden_folders_and_files_are_not_classes(tmp_path):
    _tree(tmp_path, {"a": 4, "b": 4})
    _img(tmp_path / ".ipynb_checkpoints" / "x.png", 3)
    _img(tmp_path / ".cache" / "y.png", 4)
    _img(tmp_path / "a" / ".ipynb_checkpoints" / "a-checkpoint.png", 5)
    _img(tmp_path / "a" / ".hidden.png", 6)
    scan = scan_imagefolder(tmp_path)
    assert scan.classes == ["a", "b"] and scan.layout == "flat"
    assert len(scan.train_files) == 8
    assert not any("checkpoint" in str(f) or "/." in str(f) for f in scan.train_files)


def test_one_class_is_refused_by_name(tmp_path, capsys):
    root = _tree(tmp_path / "d", {"only": 6})
    _img(root / ".ipynb_checkpoints" / "x.png", 3)  # hidden: does not count as a 2nd class
    with pytest.raises(UserError, match="only one class folder \\('only'\\)"):
        load_dataset("imagefolder", str(root))
    line = _one_line_error(["train", "--dataset", "imagefolder", "--data", str(root),
                            "--preset", "digits", "--labels", "2", "--steps", "1",
                            "--out", str(tmp_path / "run")], capsys)
    assert "'only'" in line and "at least 2" in line
    assert not (tmp_path / "run" / "best.pt").exists()


def test_empty_class_folder_is_named(tmp_path):
    _tree(tmp_path, {"cat": 4, "dog": 4})
    (tmp_path / "zebra").mkdir()
    (tmp_path / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="'zebra'"):
        load_dataset("imagefolder", str(tmp_path))


def test_single_image_class_cannot_be_split_named(tmp_path):
    _tree(tmp_path, {"cat": 4, "rare": 1})
    with pytest.raises(UserError, match="'rare'.*fewer than 2 images"):
        load_dataset("imagefolder", str(tmp_path))


def test_val_without_train_is_refused(tmp_path):
    _tree(tmp_path, {"a": 3, "b": 3}, "val")
    with pytest.raises(UserError, match="no train/ folder"):
        load_dataset("imagefolder", str(tmp_path))


# ---- split layouts ----------------------------------------------------------------------------
def test_train_val_layout_still_works(tmp_path):
    _tree(tmp_path, {"cat": 5, "dog": 4}, "train")
    _tree(tmp_path, {"cat": 2, "dog": 3}, "val")
    for split in ("train", "val"):  # a notebook's checkpoint folder is not a class
        _img(tmp_path / split / ".ipynb_checkpoints" / "x.png", 7)
    ds = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert ds.class_names == ("cat", "dog") and ds.val_images is None
    assert ds.train_labels.tolist() == [0] * 5 + [1] * 4
    assert ds.test_labels.tolist() == [0] * 2 + [1] * 3


def test_train_val_test_layout_gives_a_validation_split(tmp_path):
    _tree(tmp_path, {"cat": 5, "dog": 4}, "train")
    _tree(tmp_path, {"cat": 2, "dog": 2}, "val")
    _tree(tmp_path, {"cat": 1, "dog": 3}, "test")
    ds = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert ds.val_labels.tolist() == [0, 0, 1, 1]
    assert ds.test_labels.tolist() == [0, 1, 1, 1]
    # carve_validation keeps a data set's own validation split
    assert carve_validation(ds, 0.3, seed=0) is ds


def test_train_only_layout_holds_out_test(tmp_path):
    _tree(tmp_path, {"cat": 5, "dog": 5}, "train")
    ds = load_dataset("imagefolder", str(tmp_path), image_size=8)
    assert ds.test_labels.tolist() == [0, 1] and ds.train_labels.numel() == 8


@pytest.mark.parametrize("val_classes,expect", [
    ({"cat": 2, "dog": 2, "yak": 1}, "'yak' are in .*val but not in .*train"),
    ({"cat": 2}, "'dog' of .*train are missing from .*val"),
])
def test_class_mismatch_between_train_and_val_named(tmp_path, val_classes, expect, capsys):
    root = _tree(tmp_path / "d", {"cat": 4, "dog": 4}, "train")
    _tree(root, val_classes, "val")
    with pytest.raises(UserError, match=expect):
        load_dataset("imagefolder", str(root))
    line = _one_line_error(["train", "--dataset", "imagefolder", "--data", str(root),
                            "--preset", "digits", "--labels", "2", "--steps", "1",
                            "--out", str(tmp_path / "run")], capsys)
    assert ("'yak'" in line) or ("'dog'" in line)


def test_val_class_with_no_images_named(tmp_path):
    _tree(tmp_path, {"cat": 4, "dog": 4}, "train")
    _tree(tmp_path, {"cat": 2}, "val")
    (tmp_path / "val" / "dog").mkdir()
    with pytest.raises(UserError, match="'dog'.*no readable test images"):
        load_dataset("imagefolder", str(tmp_path))


# ---- splits -----------------------------------------------------------------------------------
def test_holdout_split_properties():
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 4, (203,), generator=g)
    names = ["w", "x", "y", "z"]
    for frac in (0.1, 0.25, 0.5):
        keep, held = holdout_split(labels, frac, names, seed=3)
        assert torch.equal(torch.sort(torch.cat([keep, held])).values, torch.arange(203))
        for c in range(4):
            n = int((labels == c).sum())
            assert int((labels[held] == c).sum()) == max(1, round(n * frac))
        k2, h2 = holdout_split(labels, frac, names, seed=3)
        assert torch.equal(h2, held)
        _, h3 = holdout_split(labels, frac, names, seed=4)
        assert not torch.equal(h3, held)  # seeded
    keep, held = holdout_split(labels, 0.0, names, seed=0)
    assert held.numel() == 0 and keep.numel() == 203


def test_labels_per_class_error_names_the_class():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 10)
    with pytest.raises(UserError, match="'bee' has 2"):
        check_labels_per_class(labels, 9, ["ant", "bee", "cow"])
    check_labels_per_class(labels, 6, ["ant", "bee", "cow"])  # 2 per class fits


def test_validation_split_is_never_trained_on(tmp_path):
    """The val images leave the training pool: neither labeled nor unlabeled draws reach them."""
    from mplfast.train import builders
    from mplfast.train.config import resolve
    from mplfast.train.distributed import DistInfo

    _tree(tmp_path, {"cat": 10, "dog": 10, "emu": 10})
    cfg = resolve(preset="digits", flags={"dataset": "imagefolder", "data": str(tmp_path),
                                          "labels": 6, "image_size": 8, "val_fraction": 0.25})
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    b = builders.build_data(cfg, info)
    ds = b.dataset
    # 30 images: 6 test (0.2), then 2 of each class's 8 to val
    assert ds.val_labels.numel() == 6 and ds.train_labels.numel() == 18
    val_rows = {x.numpy().tobytes() for x in ds.val_images}
    assert not any(x.numpy().tobytes() in val_rows for x in b.batcher.unlabeled_images)
    assert not any(x.numpy().tobytes() in val_rows for x in ds.train_images[b.labeled_idx])
    # and 0 means no validation split
    cfg0 = resolve(preset="digits", flags={"dataset": "imagefolder", "data": str(tmp_path),
                                           "labels": 6, "image_size": 8, "val_fraction": 0.0})
    assert builders.build_data(cfg0, info).dataset.val_images is None


# ---- MPLFAST_DATA -----------------------------------------------------------------------------
def test_mplfast_data_is_the_default_data_root(tmp_path, monkeypatch, capsys):
    from mplfast.train.config import resolve

    _tree(tmp_path / "imgs", {"cat": 4, "dog": 4})
    monkeypatch.setenv("MPLFAST_DATA", str(tmp_path / "imgs"))
    cfg = resolve(preset="digits", flags={"dataset": "imagefolder"})
    assert cfg.data == str(tmp_path / "imgs")  # recorded: the run reproduces without it
    assert resolve(preset="digits").data is None  # digits needs no data root
    explicit = resolve(preset="digits", flags={"dataset": "imagefolder",
                                               "data": str(tmp_path / "imgs")})
    assert explicit.data == str(tmp_path / "imgs")
    monkeypatch.setenv("MPLFAST_DATA", str(tmp_path / "missing"))
    line = _one_line_error(["train", "--dataset", "imagefolder", "--preset", "digits",
                            "--out", str(tmp_path / "run")], capsys)
    assert "MPLFAST_DATA" in line and "missing" in line
    monkeypatch.delenv("MPLFAST_DATA")
    line = _one_line_error(["train", "--dataset", "imagefolder", "--preset", "digits",
                            "--out", str(tmp_path / "run")], capsys)
    assert "--data" in line and "MPLFAST_DATA" in line
    assert os.path.exists(tmp_path / "imgs")
