"""How every mplfast Triton kernel is started (one place, so the rules hold for all of them):

* inside the device guard of the tensors it reads: Triton's launcher takes the *current* CUDA
  device and its stream, so a kernel on ``cuda:1`` tensors launched while ``cuda:0`` is current
  would run on the wrong device (or race on device 0's stream);
* through ``torch.library.wrap_triton`` when torch has it (torch >= 2.6), so a launcher called
  inside a ``torch.library.triton_op`` can be traced by ``torch.compile`` / ``make_fx``; eagerly it
  is a plain launch. Older torch: a direct launch;
* with ``enable_fp_fusion`` passed explicitly: Triton's default changes in 3.10, and the
  augmentation kernel must not contract a*b+c into an FMA (it promises bit equality).

Also the tile switch: under ``TRITON_INTERPRET=1`` the launchers pick bigger tiles than on a GPU
(the interpreter pays per program and per op), unless ``MPLFAST_TRITON_TILES=gpu``, which makes
them use exactly the GPU's tile configuration so the GPU code paths run in CPU tests.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, ContextManager

import torch

try:  # torch >= 2.6
    from torch.library import wrap_triton as _wrap_triton
except ImportError:  # pragma: no cover - older torch: launch directly
    _wrap_triton = None

__all__ = ["device_guard", "launch", "interpreter_tiles"]


def _fix_interpreter_index() -> None:
    """Triton's interpreter up to 3.6 turns a scalar tensor into a Python int with
    ``int(handle.data)``, where ``data`` is a 1-element 1-d array; NumPy 2.4 refuses that
    (``TypeError: only 0-dimensional arrays can be converted to Python scalars``), which fails
    every interpreted kernel that indexes or loops with a tensor scalar. Later Triton squeezes the
    array first; this does the same for the versions that do not (found by reading the
    interpreter's own source, not by version number). A no-op for a compiled launch."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import inspect

    try:
        from triton.runtime import interpreter as ti

        src = inspect.getsource(ti._patch_lang_tensor)
    except (ImportError, AttributeError, OSError, TypeError):  # another layout: nothing to fix
        return
    if "int(self.handle.data)" not in src or getattr(ti._patch_lang_tensor, "_mplfast_fixed", False):
        return
    original = ti._patch_lang_tensor

    def patched(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._mplfast_fixed = True  # type: ignore[attr-defined]
    ti._patch_lang_tensor = patched


_fix_interpreter_index()

_WRAPPED: dict[int, tuple[Any, Any]] = {}


def interpreter_tiles() -> bool:
    """True when the launchers should use the interpreter's (larger) tiles: TRITON_INTERPRET=1
    and not MPLFAST_TRITON_TILES=gpu. Read at every launch, so tests can switch it."""
    return (os.environ.get("TRITON_INTERPRET") == "1"
            and os.environ.get("MPLFAST_TRITON_TILES", "").lower() != "gpu")


def device_guard(device: torch.device) -> ContextManager[Any]:
    """``torch.cuda.device(device)`` for a CUDA device (makes it current, and with it its current
    stream), a no-op context otherwise."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _is_triton_kernel(kernel: Any) -> bool:
    from triton.runtime import Autotuner, JITFunction

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        InterpretedFunction = JITFunction  # noqa: N806
    return isinstance(kernel, (JITFunction, Autotuner, InterpretedFunction))


def _wrapped(kernel: Any) -> Any:
    """wrap_triton(kernel), made once per kernel object (a test double that is no triton kernel
    is launched as it is)."""
    hit = _WRAPPED.get(id(kernel))
    if hit is not None and hit[0] is kernel:
        return hit[1]
    w = _wrap_triton(kernel) if _wrap_triton is not None and _is_triton_kernel(kernel) else kernel
    _WRAPPED[id(kernel)] = (kernel, w)  # holds the kernel: its id is never reused
    return w


def launch(kernel: Any, grid: tuple[int, ...], device: torch.device, *args: Any,
           fp_fusion: bool, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` on ``device`` with ``enable_fp_fusion=fp_fusion``."""
    with device_guard(device):
        _wrapped(kernel)[grid](*args, enable_fp_fusion=fp_fusion, **kwargs)
