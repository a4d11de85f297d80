"""In-memory vs streamed image folders: the automatic choice from decoded size vs available
memory, the --stream/--no-stream overrides, the clear line without DALI, and a streamed run
(DALI CPU pipelines)."""
from __future__ import annotations

import json

import pytest
from imagefolder_fixtures import one_line_error, train_args, write_flat_folder

from mplfast.cli import main
from mplfast.data import dali, stream
from mplfast.data.stream import LOAD_FACTOR, MEMORY_HEADROOM, decide_stream, decoded_bytes
from mplfast.errors import UserError


def test_decoded_bytes():
    assert decoded_bytes(300, 32) == 300 * 32 * 32 * 3
    assert decoded_bytes(1_281_167, 224) == 1_281_167 * 224 * 224 * 3  # ImageNet: ~193 GB


def test_automatic_choice_threshold():
    need = decoded_bytes(1000, 64)
    edge = int(LOAD_FACTOR * need / MEMORY_HEADROOM)  # exactly enough memory
    assert not decide_stream(None, 1000, 64, available=edge, dali_ok=True).stream
    c = decide_stream(None, 1000, 64, available=edge - 1, dali_ok=True)
    assert c.stream and "streaming from disk with DALI" in c.reason and "12.3 MB" in c.reason
    c = decide_stream(None, 1000, 64, available=10**12, dali_ok=True)
    assert not c.stream and "held in memory" in c.reason
    # unknown memory: hold in memory, and say how to stream
    assert not decide_stream(None, 1000, 64, available=None, dali_ok=True).stream


def test_overrides_and_missing_dali():
    assert decide_stream(True, 10, 8, available=10**12, dali_ok=True).stream
    assert not decide_stream(False, 10**6, 224, available=10**6, dali_ok=False).stream
    with pytest.raises(UserError, match="--stream needs NVIDIA DALI"):
        decide_stream(True, 10, 8, available=10**12, dali_ok=False)
    with pytest.raises(UserError, match="install NVIDIA DALI"):
        decide_stream(None, 10**6, 224, available=10**6, dali_ok=False)


def test_available_memory_is_read():
    avail = stream.available_memory()
    assert avail is None or avail > 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_flat_folder(tmp_path_factory.mktemp("st") / "flat", per_class=12, size=12,
                             ext="jpg")


def test_stream_without_dali_is_one_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dali, "available", lambda: False)
    line = one_line_error(main(train_args(data, tmp_path / "r", "--stream", image_size=12)),
                          capsys.readouterr().err)
    assert "--stream needs NVIDIA DALI" in line


def test_stream_needs_imagefolder(capsys):
    line = one_line_error(main(["train", "--stream", "--steps", "1"]), capsys.readouterr().err)
    assert "imagefolder" in line


@pytest.mark.skipif(not dali.available(), reason="nvidia-dali is not installed")
@pytest.mark.parametrize("how", ["flag", "auto"])
def test_streamed_run_trains_and_evaluates(data, tmp_path, monkeypatch, capsys, how):
    extra = ["--stream"] if how == "flag" else []
    if how == "auto":  # pretend the machine has 10 kB free: the folder must be streamed
        monkeypatch.setattr(stream, "available_memory", lambda: 10_000)
    out = tmp_path / "run"
    rc = main(train_args(data, out, *extra, "--set", "eval_interval=2", steps=4, image_size=12))
    printed = capsys.readouterr().out
    assert rc == 0
    assert "streaming from disk with DALI" in printed
    s = json.load(open(out / "summary.json"))
    # 36 images: 2 per class to test (round(12 * 0.2)), 1 per class to val
    assert (s["test_images"], s["val_images"], s["train_images"]) == (6, 3, 27)
    assert (out / "best.pt").is_file() and (out / "confusion.png").is_file()
    monkeypatch.setattr(stream, "available_memory", lambda: 10**12)
    # the in-memory path on the same folder draws the same splits
    out2 = tmp_path / "mem"
    assert main(train_args(data, out2, "--no-stream", steps=1, image_size=12)) == 0
    assert "held in memory (--no-stream)" in capsys.readouterr().out
    s2 = json.load(open(out2 / "summary.json"))
    assert (s2["test_images"], s2["val_images"], s2["train_images"]) == (6, 3, 27)


@pytest.mark.skipif(not dali.available(), reason="nvidia-dali is not installed")
def test_streamed_eval_batches_equal_in_memory_ones(data):
    """Same splits, same files in the same order, same decode+resize, same normalization (the
    statistics sample covers all 27 training images here)."""
    import dataclasses

    import torch

    from mplfast.train import builders
    from mplfast.train.config import resolve
    from mplfast.train.distributed import DistInfo

    cfg = resolve(preset="digits", flags={"dataset": "imagefolder", "data": str(data),
                                          "labels": 6, "image_size": 12, "stream": True},
                  sets=["val_fraction=0.1"])
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    st = builders.build_data(cfg, info)
    mem = builders.build_data(dataclasses.replace(cfg, stream=False), info)
    assert st.stream and not mem.stream
    assert st.dataset.mean == pytest.approx(mem.dataset.mean)
    assert torch.equal(st.labeled_idx, mem.labeled_idx)
    for split in ("test", "val", "train"):
        xs, ys = zip(*st.batcher.eval_batches(split, batch_size=5))
        xm, ym = zip(*mem.batcher.eval_batches(split, batch_size=7))
        assert torch.equal(torch.cat(ys), torch.cat(ym)), split
        assert torch.allclose(torch.cat(xs), torch.cat(xm), atol=1e-5), split
    x_l, y_l, x_uw, x_us = st.batcher.batch(0)
    assert x_l.shape == (16, 3, 12, 12) and x_us.shape == (48, 3, 12, 12)  # digits: B 16, mu 3
    x, y = st.batcher.labeled_batch(0, 4)
    assert x.shape == (4, 3, 12, 12) and set(y.tolist()) <= {0, 1, 2}


def test_stream_dataset_has_shape_only_arrays(tmp_path):
    import torch

    from mplfast.data.splits import carve_validation

    ds = stream.StreamDataset("imagefolder", 2, ("a", "b"), (0.5,) * 3, (0.2,) * 3, 16,
                              [tmp_path / "x.jpg"] * 5, torch.tensor([0, 1, 0, 1, 0]),
                              [tmp_path / "y.jpg"] * 2, torch.tensor([0, 1]))
    assert ds.train_images.shape == (5, 16, 16, 3) and ds.train_images.device.type == "meta"
    assert ds.test_images.shape == (2, 16, 16, 3) and ds.image_shape == (16, 16, 3)
    assert carve_validation(ds, 0.5, seed=0) is ds  # file lists are split when loaded
