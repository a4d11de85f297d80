"""`mplfast export` writes safetensors + JSON that need nothing but mplfast to load, and
`mplfast predict` gives the same probabilities as the trained model on the evaluation path."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from imagefolder_fixtures import one_line_error, train_args, write_flat_folder

from mplfast.cli import main
from mplfast.data.imagefolder import CorruptImageWarning
from mplfast.train.export import load_export
from mplfast.train.model_file import load_models


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("exp")
    data = write_flat_folder(base / "flat", size=12)
    out = base / "run"
    assert main(train_args(data, out, image_size=12)) == 0
    return data, out


def test_export_files_and_description(run, tmp_path, capsys):
    from safetensors.torch import load_file

    _, out = run
    w = tmp_path / "model.safetensors"
    assert main(["export", str(out), "--out", str(w)]) == 0
    meta = json.load(open(tmp_path / "model.json"))
    for key in ("model", "model_kwargs", "class_names", "mean", "std", "image_size",
                "num_classes", "in_chans"):
        assert key in meta, key
    # input_size: the depth fitted to the 12 px folder, which rebuilding the model needs
    assert meta["model"] == "small_cnn" and meta["model_kwargs"] == {"width": 8, "input_size": 12}
    assert meta["class_names"] == ["ant", "bee", "cat"] and meta["image_size"] == [12, 12]
    saved = load_models(str(out / "best.pt"))
    assert meta["source"]["weights"] == saved["headline"] == "ema"
    assert meta["mean"] == pytest.approx(saved["mean"])
    sd = load_file(str(w))
    for k, v in saved["models"]["ema"].items():
        assert torch.equal(sd[k], v), k
    # the weights file alone suffices (description embedded), and so does the JSON
    (tmp_path / "model.json").rename(tmp_path / "moved.json")
    m1, meta1 = load_export(str(w))
    (tmp_path / "moved.json").rename(tmp_path / "model.json")
    m2, _ = load_export(str(tmp_path / "model.json"))
    x = torch.randn(4, 3, 12, 12)
    assert torch.equal(m1(x), m2(x)) and meta1["class_names"] == meta["class_names"]
    assert main(["export", str(out), "--out", str(tmp_path / "t.safetensors"),
                 "--model", "teacher"]) == 0
    assert json.load(open(tmp_path / "t.json"))["source"]["weights"] == "teacher"


def test_predict_matches_the_evaluation_path(run, tmp_path, capsys, monkeypatch):
    """Probabilities from predict == softmax of the model on the normalized eval batches
    (PIL decode on both sides, so the pixels are the same)."""
    from mplfast.data import dali
    from mplfast.data.imagefolder import decode_pil

    data, out = run
    monkeypatch.setattr(dali, "available", lambda: False)
    w = tmp_path / "m.safetensors"
    assert main(["export", str(out), "--out", str(w)]) == 0
    model, meta = load_export(str(w))
    files = sorted((data / "bee").glob("*.png"))[:5]
    x = decode_pil(files, 12)
    from mplfast.train.predict import normalize

    ref = torch.softmax(model(normalize(x, meta["mean"], meta["std"])), 1)
    # the batcher's eval normalization is the same arithmetic
    from mplfast.augment.reference import normalize_constants

    sc, sh = normalize_constants(meta["mean"], meta["std"])
    ref2 = torch.softmax(model((x.float() * sc + sh).permute(0, 3, 1, 2)), 1)
    assert torch.allclose(ref, ref2)
    capsys.readouterr()
    assert main(["predict", str(w), *map(str, files), "--format", "json", "--top-k", "3"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["path"] for g in got] == [str(f) for f in files]
    for g, r in zip(got, ref):
        top = g["top"]
        assert len(top) == 3 and [t["index"] for t in top] == r.argsort(descending=True).tolist()
        assert [t["probability"] for t in top] == pytest.approx(r.sort(descending=True).values
                                                                .tolist(), abs=1e-5)
        assert top[0]["class"] == meta["class_names"][top[0]["index"]]


def test_predict_formats_and_sources(run, tmp_path, capsys):
    data, out = run
    w = tmp_path / "m.safetensors"
    assert main(["export", str(out), "--out", str(w)]) == 0
    capsys.readouterr()
    # a folder of images, text output: one line per image with k classes
    assert main(["predict", str(w), str(data / "cat"), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20 and all(ln.count(",") == 1 for ln in lines)
    # CSV chosen from --output's suffix; a run folder and a model file work as sources too
    for src in (str(w), str(out), str(out / "last.pt")):
        dest = tmp_path / "p.csv"
        assert main(["predict", src, str(data / "ant" / "ant_0.png"), "--output", str(dest)]) == 0
        rows = list(csv.DictReader(open(dest)))
        assert len(rows) == 3 and [r["rank"] for r in rows] == ["1", "2", "3"]
        assert {r["class"] for r in rows} == {"ant", "bee", "cat"}
        assert sum(float(r["probability"]) for r in rows) == pytest.approx(1, abs=1e-4)


def test_predict_and_export_bad_inputs_one_line(run, tmp_path, capsys):
    data, out = run
    w = tmp_path / "m.safetensors"
    assert main(["export", str(out), "--out", str(w)]) == 0
    capsys.readouterr()
    img = str(data / "ant" / "ant_0.png")
    notimg = tmp_path / "notes.png"
    notimg.write_text("hello")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 20)
    cases = [
        (["predict", str(tmp_path / "missing.safetensors"), img], "not found"),
        (["predict", str(w), str(tmp_path / "nope.jpg")], "image not found"),
        (["predict", str(w), str(notimg)], "notes.png"),
        (["predict", str(broken), img], "broken.safetensors"),
        (["predict", str(w), img, "--top-k", "0"], "top-k"),
        (["predict", str(w), img, "--output", str(tmp_path / "no" / "dir.csv")], "cannot write"),
        (["predict", str(tmp_path), img], "best.pt"),
        (["export", str(out), "--out", str(tmp_path / "m.pt")], ".safetensors"),
        (["export", str(tmp_path / "nothing"), "--out", str(w)], "not found"),
        (["export", str(out), "--out", str(tmp_path / "no" / "m.safetensors")], "does not exist"),
    ]
    # weights that do not fit the described model: the key named
    from safetensors.torch import load_file, save_file

    sd = load_file(str(w))
    key = next(k for k in sd if k.endswith("weight") and sd[k].dim() == 4)
    sd[key] = sd[key][:1].clone()
    bad_w = tmp_path / "bad.safetensors"
    save_file(sd, str(bad_w), metadata={"mplfast": json.dumps(json.load(open(tmp_path / "m.json")))})
    cases.append((["predict", str(bad_w), img], f"{key} has shape"))
    for argv, expect in cases:
        line = one_line_error(main(argv), capsys.readouterr().err)
        assert expect in line, (argv, line)


def _export(run, tmp_path, capsys):
    w = tmp_path / "m.safetensors"
    assert main(["export", str(run[1]), "--out", str(w)]) == 0
    capsys.readouterr()
    return w


def test_predict_skips_an_unreadable_file_with_one_line_each(run, tmp_path, capsys):
    """One corrupt image in a folder costs only its own prediction (as in training): a line on
    stderr naming it, exit 0; --strict refuses; every file unreadable is an error."""
    data, _ = run
    w = _export(run, tmp_path, capsys)
    folder = tmp_path / "photos"
    folder.mkdir()
    for f in sorted((data / "bee").glob("*.png"))[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "bad1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "bad2.jpg").write_text("not a jpeg")
    # the console path: the skip lines are what the user sees on stderr
    p = subprocess.run([sys.executable, "-m", "mplfast", "predict", str(w), str(folder)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 3 and "bad" not in p.stdout
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(err) == 2 and "Traceback" not in p.stderr, p.stderr
    assert "bad1.png" in err[0] and "bad2.jpg" in err[1]
    assert all(ln.startswith("mplfast: warning: skipping") for ln in err), err
    dest = tmp_path / "p.json"
    with pytest.warns(CorruptImageWarning) as caught:
        assert main(["predict", str(w), str(folder), "--output", str(dest)]) == 0
    assert len(caught) == 2 and len(json.load(open(dest))) == 3
    assert "3 predictions written" in capsys.readouterr().out
    line = one_line_error(main(["predict", str(w), str(folder), "--strict"]), capsys.readouterr().err)
    assert "bad1.png" in line
    with pytest.warns(CorruptImageWarning):
        rc = main(["predict", str(w), str(folder / "bad1.png"), str(folder / "bad2.jpg")])
    line = one_line_error(rc, capsys.readouterr().err)
    assert "none of the 2 image files could be read" in line


def test_predict_names_each_file_once(run, tmp_path, capsys, monkeypatch):
    """A file named twice (or named and inside a folder also given) is predicted once, in the
    order of its first mention."""
    data, _ = run
    w = _export(run, tmp_path, capsys)
    monkeypatch.chdir(data)
    a, b = "ant/ant_0.png", str(data / "bee" / "bee_1.png")
    assert main(["predict", str(w), a, b, "./ant/ant_0.png", str(data / "ant" / "ant_0.png"),
                 b, "--format", "json"]) == 0
    assert [g["path"] for g in json.loads(capsys.readouterr().out)] == [a, b]
    assert main(["predict", str(w), b, "bee", "--format", "json"]) == 0
    paths = [g["path"] for g in json.loads(capsys.readouterr().out)]
    assert paths[0] == b and len(paths) == 20 and len(set(paths)) == 20
