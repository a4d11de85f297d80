"""How mplfast registers the Triton custom ops: ``torch.library.triton_op`` when torch has it
(>= 2.6; Inductor then sees the kernels), else an opaque ``custom_op`` with an explicit fake.

Under Triton's CPU interpreter (``TRITON_INTERPRET=1``) the op is the opaque ``custom_op`` too:
``wrap_triton`` hands an interpreted kernel back unwrapped, so ``triton_op``'s fake-tensor
tracing would run the interpreter on fake tensors (it fails), and an AOT trace would drop the
launch. Opaque, the op is traced through its fake and runs the interpreter only on real tensors,
which is what lets ``torch.library.opcheck`` and ``torch.compile`` test it on CPU.

Registering a ``triton_op`` imports triton and parts of Inductor (about 1.5 s) to scan the
launcher's source, so it happens on first use, not at ``import mplfast``; on a machine where the
Triton backend can run on CUDA it happens at import, so that a first call inside
``torch.compile`` finds the op already registered.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import torch

__all__ = ["LazyTritonOp"]


def _triton_on_cuda() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


class LazyTritonOp:
    """A Triton custom op registered on first ``get()`` (or now, when CUDA and triton are there)."""

    def __init__(self, qualname: str, fn: Callable[..., Any], *, fake: Callable[..., Any],
                 backward: Callable[..., Any] | None = None,
                 setup_context: Callable[..., Any] | None = None) -> None:
        self.qualname = qualname
        self._args = (fn, fake, backward, setup_context)
        self._op: Any = None
        if _triton_on_cuda():
            self.get()

    def get(self) -> Any:
        """The registered op (a ``CustomOpDef``)."""
        if self._op is None:
            fn, fake, backward, setup_context = self._args
            if hasattr(torch.library, "triton_op") and os.environ.get("TRITON_INTERPRET") != "1":
                op = torch.library.triton_op(self.qualname, fn, mutates_args=())
            else:
                op = torch.library.custom_op(self.qualname, fn, mutates_args=())
                op.register_fake(fake)
            if backward is not None:
                op.register_autograd(backward, setup_context=setup_context)
            self._op = op
        return self._op
