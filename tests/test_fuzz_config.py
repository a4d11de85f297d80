"""Fuzz the YAML config loader and ``--set KEY=VALUE`` (hypothesis): any text gives a config or
one ``mplfast: error:`` line with exit 2; never a traceback, never a constructed object.

The CLI calls end with ``--steps=-1``, which validation always refuses after every layer has
been parsed, so each example costs milliseconds and never trains."""
from __future__ import annotations

import os
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mplfast.errors import UserError
from mplfast.train import config as C
from untrusted_helpers import assert_one_line

FUZZ = settings(max_examples=250, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

MARKER = os.path.join(tempfile.gettempdir(), f"mplfast-fuzz-yaml-marker-{os.getpid()}")
TAGS = ["!!python/object:os.system", f"!!python/object/apply:os.system ['touch {MARKER}']",
        "!!python/name:os.system", "!!python/object/new:builtins.exec",
        f"!!python/object/apply:builtins.exec [\"open('{MARKER}','w')\"]", "!!binary", "!!set",
        "!!timestamp", "!!float", "!!int", "!!str", "!!map", "!!seq", "!!omap", "!!null", "!foo",
        "&a", "*a", "<<:", "? "]
SCALARS = ["1", "-1", "0", "1e-3", "3e5", ".inf", "-.inf", ".nan", "true", "no", "null", "~",
           "2001-13-45", "2001-12-14t21:59:43.10-05:00", "0x1F", "0o17", "1_000", "'x'", '"y"',
           "[]", "{}", "[1, 2]", "{a: 1}", "{width: 8}", "|", ">", "---", "...", "%YAML 1.1",
           "9" * 40, "-" + "9" * 40, "small_cnn", "mpl", "cpu"]
KEYS = list(C.FIELD_NAMES) + ["not_a_field", "", "mpl", "preset", "1", "?"]

token = st.sampled_from(TAGS + SCALARS + [":", ",", "[", "]", "{", "}", "\n", "  ", "- ", "#"])
value = st.one_of(st.lists(token, max_size=6).map(" ".join),
                  st.text(max_size=30), st.sampled_from(SCALARS))
yaml_doc = st.one_of(
    st.lists(st.tuples(st.sampled_from(KEYS), value), max_size=6).map(
        lambda kv: "\n".join(f"{k}: {v}" for k, v in kv)),
    st.lists(token, max_size=25).map("".join),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin1")),
)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from mplfast.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def cfg_path():
    d = tempfile.mkdtemp(prefix="mplfast-fuzz-")
    yield os.path.join(d, "c.yaml")
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    os.rmdir(d)


@FUZZ
@given(doc=yaml_doc)
@example(doc="seed: 2001-13-45")
@example(doc="steps: " + "[" * 3000)
@example(doc="model_kwargs: {a: &a [1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a],"
             " c: &c [*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c],"
             " e: &e [*d,*d,*d,*d,*d,*d,*d,*d], f: [*e,*e,*e,*e,*e,*e,*e,*e]}")
@example(doc=f"seed: !!python/object/apply:os.system ['touch {MARKER}']")
@example(doc="\x00\xff")
@example(doc="1: ")
@example(doc="preset: !!timestamp")
@example(doc="seed: !!timestamp x")
@example(doc="null: 3\n")
def test_fuzz_config_file(doc, cfg_path, capsys):
    with open(cfg_path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(doc)
    rc, err = _cli(["train", "--config", cfg_path, "--steps=-1"], capsys)
    assert_one_line(rc, err)
    assert not os.path.exists(MARKER)


@FUZZ
@given(key=st.sampled_from(KEYS), val=value)
@example(key="seed", val="[" * 3000)
@example(key="model_kwargs", val="{a: 2001-13-45}")
@example(key="seed", val=f"!!python/object/apply:os.system ['touch {MARKER}']")
@example(key="steps", val="=")
def test_fuzz_set_option(key, val, capsys):
    rc, err = _cli(["train", "--set", f"{key}={val}", "--steps=-1"], capsys)
    assert_one_line(rc, err)
    assert not os.path.exists(MARKER)


@FUZZ
@given(doc=yaml_doc)
def test_fuzz_resolve_library(doc, cfg_path):
    """The library path: ``resolve`` returns a validated config or raises UserError (one line)."""
    with open(cfg_path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(doc)
    try:
        cfg = C.resolve(config_file=cfg_path)
    except UserError as e:
        assert "\n" not in str(e)
    else:
        yaml.safe_dump(cfg.to_dict())  # what the run writes first: must stay cheap and plain
    assert not os.path.exists(MARKER)


def test_python_tags_construct_nothing(tmp_path, capsys):
    """Each tag that could build an object, as a whole file and as a --set value."""
    marker = tmp_path / "M"
    for tag in (f"!!python/object/apply:os.system ['touch {marker}']",
                f"!!python/object/apply:builtins.exec [\"open('{marker}','w')\"]",
                "!!python/object/new:os.system", "!!python/name:os.system", "!!python/module:os"):
        p = tmp_path / "c.yaml"
        p.write_text(f"seed: {tag}\n")
        assert_one_line(*_cli(["train", "--config", str(p), "--steps=-1"], capsys))
        assert_one_line(*_cli(["train", "--set", f"model_kwargs={{a: {tag}}}", "--steps=-1"], capsys))
    assert not marker.exists()


def test_yaml_failures_found_by_fuzzing_are_one_line(tmp_path, capsys):
    """Kept from the fuzzer: a timestamp with month 13 (ValueError), deep nesting
    (RecursionError) and an alias bomb were tracebacks or an exponential copy before."""
    for doc, expect in (("seed: 2001-13-45", "month must be in 1..12"),
                        ("steps: " + "[" * 3000, "nested deeper"),
                        ("seed: !!timestamp x", "AttributeError"),
                        ("model_kwargs: {a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a],"
                         " c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c],"
                         " e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}", "aliases")):
        p = tmp_path / "c.yaml"
        p.write_text(doc)
        assert_one_line(*_cli(["train", "--config", str(p), "--steps=-1"], capsys), expect)
    p.write_text("1: x\n")  # an int key: difflib's "did you mean" raised TypeError
    assert_one_line(*_cli(["train", "--config", str(p), "--steps=-1"], capsys), "not a field name")
    assert_one_line(*_cli(["train", "--set", "seed=" + "[" * 3000, "--steps=-1"], capsys), "seed")
    assert_one_line(*_cli(["train", "--set", "model_kwargs={a: 2001-13-45}", "--steps=-1"], capsys),
                    "model_kwargs")


def test_python_tag_subprocess(tmp_path):
    """The real console path: a config file whose tag would call os.system."""
    import subprocess
    import sys

    marker = tmp_path / "M"
    p = tmp_path / "c.yaml"
    p.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    r = subprocess.run([sys.executable, "-m", "mplfast", "train", "--config", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert_one_line(r.returncode, r.stderr, "cannot parse config file")
    assert not marker.exists()
