"""README's test command (``pytest -q`` from the repository root) leaves the work tree as it found
it, in CI or not: nothing new, ignored files and empty folders included (pytest-benchmark makes
an empty ``.benchmarks/`` at start-up, which ``git status`` alone does not show)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> set[str]:
    """Every path under root except .git, folders included."""
    out = set()
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".git"]
        rel = Path(d).relative_to(root)
        out.update(str(rel / x) + "/" for x in dirs)
        out.update(str(rel / x) for x in files)
    return out


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("ci", [False, True], ids=["local", "ci"])
def test_pytest_session_leaves_the_tree_unchanged(tmp_path, ci):
    """A copy of the test configuration (pyproject.toml, .gitignore, tests/conftest.py) with one
    trivial test, as a git repository: ``pytest -q`` there changes neither ``git status
    --ignored`` nor the file tree."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    for rel in ("pyproject.toml", ".gitignore", "tests/conftest.py"):
        shutil.copy(ROOT / rel, repo / rel)
    (repo / "tests" / "test_tiny.py").write_text("def test_tiny():\n    assert 1 + 1 == 2\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tree")
    before = (_git(repo, "status", "--ignored", "--porcelain"), _tree(repo))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci:
        env["CI"] = "true"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
    after = (_git(repo, "status", "--ignored", "--porcelain"), _tree(repo))
    assert after == before, sorted(after[1] ^ before[1])
