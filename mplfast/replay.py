"""Replaying a forward's random draws (dropout masks) in a later forward.

MPL compares the student's loss on labeled data before and after its update, L_old and L_new;
for h = L_old - L_new to see only the update, both forwards must drop the same units. The soft
meta-gradient's JVP likewise repeats the update's forward. Two ways, one interface (``first()``
is the context of the forward whose draws are kept, ``replay()`` of the one that repeats them):

- ``StateReplay`` (eager): saves the RNG state before the first forward and restores it, on a
  forked stream, around the replay. Exact for any random op, written in any way. Dynamo cannot
  trace RNG-state reads (it graph-breaks on ``torch.get_rng_state``), and a compiled graph
  that draws from Inductor's own seeds repeats the masks only if both forwards happen to draw
  them alike.
- ``RecordedReplay`` (inside ``torch.compile``): a ``TorchFunctionMode`` that keeps the random
  tensors themselves. The first forward records what ``F.dropout`` and torch's random
  primitives (``torch.rand``, ``Tensor.bernoulli_``, ...) draw; the replay hands the same
  tensors back in the same order. It traces as one graph, and the masks are ordinary tensors
  in it, whatever the backend's RNG. ``F.dropout`` is computed here as ATen computes it on CPU
  (``empty_like(x).bernoulli_(1 - p)``, scaled by ``1 / (1 - p)``, times x), so a recorded CPU
  forward gives the same values as the plain one from the same RNG state.

``replay_for(device)`` picks: recorded under ``torch.compile``, the RNG state otherwise.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["StateReplay", "RecordedReplay", "replay_for"]


class StateReplay:
    """Saves the RNG state (CPU, and the CUDA device's) at construction; ``replay()`` restores it
    on a forked stream, so the replayed forward redraws the first one's masks and the live
    stream is left where the first forward left it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def first(self) -> contextlib.AbstractContextManager:
        """The forward whose masks are replayed later runs on the live RNG stream."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # leaves the live stream untouched
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


# Random primitives whose results are recorded and handed back: (out-of-place, in-place).
_DRAWS: tuple[Callable, ...] = (
    torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
    torch.randperm, torch.bernoulli, torch.multinomial, torch.normal, torch.poisson,
    Tensor.bernoulli, Tensor.multinomial,
)
_DRAWS_INPLACE: tuple[Callable, ...] = (
    Tensor.bernoulli_, Tensor.uniform_, Tensor.normal_, Tensor.random_, Tensor.exponential_,
    Tensor.geometric_, Tensor.cauchy_, Tensor.log_normal_,
)
# Dropout variants whose noise ATen draws inside one C++ op (not recorded: raise, never guess).
_UNSUPPORTED = (F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


def _dropout_args(args: tuple, kwargs: dict) -> tuple[Tensor, float, bool, bool]:
    names = ("input", "p", "training", "inplace")
    values: list[Any] = [None, 0.5, True, False]
    for i, a in enumerate(args):
        values[i] = a
    for k, v in kwargs.items():
        values[names.index(k)] = v
    return values[0], float(values[1]), bool(values[2]), bool(values[3])


class _Recorder(TorchFunctionMode):
    def __init__(self, draws: list[tuple[Callable, Tensor]], replay: bool) -> None:
        super().__init__()
        self.draws, self.replaying, self.next = draws, replay, 0

    def _take(self, func: Callable, like: tuple[int, ...] | None) -> Tensor:
        if self.next >= len(self.draws):
            raise RuntimeError("mplfast: the replayed forward draws more random tensors than the "
                               "first one did (the two forwards must run the same code)")
        kind, t = self.draws[self.next]
        self.next += 1
        if kind is not func or (like is not None and tuple(t.shape) != like):
            raise RuntimeError(f"mplfast: the replayed forward's random draw {self.next} "
                               f"({getattr(func, '__name__', func)}) differs from the first forward's")
        return t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            x, p, training, inplace = _dropout_args(args, kwargs)
            if p < 0.0 or p > 1.0:
                return func(*args, **kwargs)  # F.dropout's own error
            if not training or p == 0.0:
                return x
            if p == 1.0:
                noise = torch.zeros((), dtype=x.dtype, device=x.device)
            elif self.replaying:
                noise = self._take(F.dropout, tuple(x.shape))
            else:
                noise = torch.empty_like(x).bernoulli_(1.0 - p)
                noise.div_(1.0 - p)
                self.draws.append((F.dropout, noise))  # internal: nobody else can mutate it
            return x.mul_(noise) if inplace else x * noise
        if func in _DRAWS or func in _DRAWS_INPLACE:
            if not self.replaying:
                out = func(*args, **kwargs)
                self.draws.append((func, out.clone()))  # the caller may change its copy in place
                return out
            if func in _DRAWS_INPLACE:
                target = args[0]
                return target.copy_(self._take(func, tuple(target.shape)))
            drawn = self._take(func, None)
            out = kwargs.get("out")
            return out.copy_(drawn) if out is not None else drawn.clone()
        if func in _UNSUPPORTED and kwargs.get("training", args[2] if len(args) > 2 else True):
            raise NotImplementedError(
                f"mplfast: {func.__name__} cannot be replayed inside torch.compile (its noise is "
                "drawn inside one ATen op); use nn.Dropout / F.dropout in the student, or run the "
                "MPL step eagerly")
        return func(*args, **kwargs)


class RecordedReplay:
    """Keeps the random tensors of the ``first()`` forward and hands them back, in order, to the
    ``replay()`` forward (which draws nothing from the RNG). Traceable by ``torch.compile``."""

    def __init__(self) -> None:
        self.draws: list[tuple[Callable, Tensor]] = []

    def first(self) -> contextlib.AbstractContextManager:
        self.draws.clear()
        return _Recorder(self.draws, replay=False)

    def replay(self) -> contextlib.AbstractContextManager:
        return _Recorder(self.draws, replay=True)


def replay_for(device: torch.device) -> StateReplay | RecordedReplay:
    """``RecordedReplay`` while ``torch.compile`` traces, ``StateReplay`` in eager mode."""
    if torch.compiler.is_compiling():
        return RecordedReplay()
    return StateReplay(device)
