"""The reproducibility record of a run: what produced it, on what, with which command.

Written into ``summary.json`` (key ``provenance``) and as the comment header of the run's
``config.yaml``. Every probe is best-effort: a missing tool or file is recorded as such, never
an error (a record must not be why a run fails).
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from typing import Any, Sequence

# the CPU flags that decide which kernels and which torch code paths run
_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "amx_tile", "amx_bf16", "asimd", "sve")


def _run(cmd: Sequence[str], cwd: str | None = None) -> str | None:
    try:
        p = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_commit() -> str | None:
    """``<sha>`` (``+dirty`` if modified) of the checkout mplfast was imported from, if any."""
    import mplfast

    src = os.path.dirname(os.path.dirname(os.path.abspath(mplfast.__file__)))
    if not os.path.exists(os.path.join(src, ".git")):
        return None
    sha = _run(["git", "rev-parse", "HEAD"], cwd=src)
    if sha is None:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src)
    return sha + ("+dirty" if dirty else "")


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    for dist in {"dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"),
                 }.get(module, (module,)):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def cpu_info() -> dict[str, Any]:
    """Model name and the relevant feature flags (Linux /proc/cpuinfo; else platform)."""
    model, flags = None, []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    have = set(val.split())
                    flags = [fl for fl in _CPU_FLAGS if fl in have]
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "flags": flags,
            "cores": os.cpu_count()}


def gpu_info() -> dict[str, Any] | None:
    """Name, capability and driver of each visible GPU, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {"devices": names, "cuda_runtime": torch.version.cuda,
            "driver": driver.splitlines()[0] if driver else None}


def native_build() -> dict[str, Any] | str:
    """The compile-time flags of ``mplfast._C`` (its ``with_*`` attributes), or why it is absent."""
    from mplfast import _native  # the one module that imports the extension

    try:
        _C = _native.lib()
    except Exception as e:  # not built, or failed to load: say so, never fail a run over it
        return f"not available ({type(e).__name__})"
    return {k: getattr(_C, k) for k in sorted(dir(_C))
            if not k.startswith("_") and isinstance(getattr(_C, k), (bool, int, str))}


def image_decoder(dataset: str) -> str:
    """The decoder that turns the data set's files into pixels."""
    if dataset != "imagefolder":
        return "none (arrays loaded from the data set's own files)"
    try:
        from mplfast.data import dali

        return "DALI" if dali.available() else "PIL"
    except ImportError:
        return "PIL"


def record(dataset: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The full reproducibility record of a run on ``dataset``."""
    import torch

    import mplfast

    argv = list(sys.argv) if argv is None else list(argv)
    return {
        "mplfast": mplfast.__version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "dali": _version("dali"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "gpu": gpu_info(),
        "native_build": native_build(),
        "decoder": image_decoder(dataset),
        "command": shlex.join(argv),
    }


def header_commands(config_path: str) -> list[str]:
    """The ``command:`` and ``resumed:`` lines of a run's config.yaml header, in order (the
    history of a run whose checkpoint predates ``commands``); [] if there is none."""
    found: list[str] = []
    try:
        with open(config_path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                for tag in ("# command: ", "# resumed: "):
                    if line.startswith(tag):
                        found.append(line[len(tag):].rstrip("\n"))
    except (OSError, UnicodeDecodeError):
        pass
    return found


def continued(rec: dict[str, Any], earlier: Sequence[str]) -> dict[str, Any]:
    """The record of a resumed run: ``command`` stays the command that started it, and
    ``resumed`` lists every command that continued it, this one last. ``earlier``: the run's
    commands so far (empty: ``rec`` is a fresh run's and is returned as is)."""
    if not earlier:
        return rec
    return {**rec, "command": earlier[0], "resumed": [*earlier[1:], rec["command"]]}


def header(rec: dict[str, Any]) -> str:
    """The record as YAML comment lines (the header of a run's config.yaml)."""
    cpu = rec["cpu"]
    gpu = rec["gpu"]
    lines = [
        f"mplfast {rec['mplfast']}" + (f" (git {rec['git_commit']})" if rec["git_commit"] else ""),
        f"command: {rec['command']}",
        *(f"resumed: {c}" for c in rec.get("resumed", [])),
        f"torch {rec['torch']}, triton {rec['triton']}, DALI {rec['dali']}, "
        f"Python {rec['python']} on {rec['platform']}",
        f"CPU: {cpu['model']} ({cpu['cores']} cores; flags {' '.join(cpu['flags']) or 'n/a'})",
        "GPU: " + ("none" if gpu is None else
                   f"{', '.join(gpu['devices'])} (driver {gpu['driver']}, CUDA {gpu['cuda_runtime']})"),
        f"mplfast._C: {rec['native_build']}",
        f"image decoder: {rec['decoder']}",
    ]
    return "".join(f"# {ln}\n" for ln in lines)
