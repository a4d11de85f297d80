"""Shared by the pytest-benchmark suites: one recorder of timings, and the speed-up ratios
computed from it at the end of the session, whatever order the tests ran in (or whether some
were deselected).

A suite records each benchmark's min and mean round time under (group, name) with
``ratios.record(benchmark, group, name)`` and declares the ratios it cares about with
``ratios.target(group, fast, base, minimum)``. After the last test, the terminal summary prints
every declared ratio whose two timings exist; with ``MPLFAST_BENCH_ASSERT=1`` a ratio below its
minimum makes the session fail (off by default: shared CPUs are noisy).
"""
from __future__ import annotations

import os

import pytest


class Ratios:
    def __init__(self) -> None:
        self.times: dict[tuple[str, str], tuple[float, float]] = {}  # (group, name) -> (min, mean) s
        self.extra: dict[tuple[str, str], str] = {}  # (group, name) -> note (e.g. GB/s)
        self.targets: list[tuple[str, str, str, float | None]] = []
        self.notes: list[str] = []

    def record(self, benchmark, group: str, name: str, note: str | None = None) -> None:
        if benchmark.stats is None:  # --benchmark-disable: the function ran once, untimed
            return
        st = benchmark.stats.stats
        self.times[(group, name)] = (st.min, st.mean)
        if note:
            self.extra[(group, name)] = note

    def target(self, group: str, fast: str, base: str, minimum: float | None = None) -> None:
        if (group, fast, base, minimum) not in self.targets:
            self.targets.append((group, fast, base, minimum))

    def lines(self) -> tuple[list[str], list[str]]:
        lines, missed = [], []
        for group, fast, base, minimum in self.targets:
            if (group, fast) not in self.times or (group, base) not in self.times:
                continue
            fmin, fmean = self.times[(group, fast)]
            bmin, bmean = self.times[(group, base)]
            r_min, r_mean = bmin / fmin, bmean / fmean
            tail = f"  (target >= {minimum}x)" if minimum else ""
            if (group, fast) in self.extra:
                tail += f"  {fast}: {self.extra[(group, fast)]}"
            lines.append(f"{group:40s} {fast:10s} vs {base:10s}: {r_min:5.2f}x by min, {r_mean:5.2f}x by mean "
                         f"[{fast} {fmin * 1e3:.3f} ms, {base} {bmin * 1e3:.3f} ms min]{tail}")
            if minimum and r_min < minimum:
                missed.append(lines[-1])
        return lines, missed


_RATIOS = Ratios()


@pytest.fixture(scope="session")
def ratios() -> Ratios:
    return _RATIOS


def pytest_collect_file(file_path, parent):
    """Collect benchmarks/ops/bench_<op>.py when a directory is given (``pytest benchmarks/``);
    a file named on the command line is collected by pytest itself."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and file_path.parent.name == "ops" and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter) -> None:
    lines, missed = _RATIOS.lines()
    if not lines and not _RATIOS.notes:
        return
    terminalreporter.section("speed-up ratios (this run)")
    for line in _RATIOS.notes + lines:
        terminalreporter.write_line(line)
    if missed and os.environ.get("MPLFAST_BENCH_ASSERT") == "1":
        terminalreporter.write_line("targets missed:\n" + "\n".join(missed), red=True)


def pytest_sessionfinish(session, exitstatus) -> None:
    _, missed = _RATIOS.lines()
    if missed and os.environ.get("MPLFAST_BENCH_ASSERT") == "1" and exitstatus == 0:
        session.exitstatus = 1
