"""Whole-step CUDA-graph capture for ``MPLStep(..., cuda_graph=True)``.

After ``warmup`` eager steps (run on a side stream, as CUDA-graph capture asks), one call of
the step's body (``MPLStep._step``: spec steps 1-10, both forwards, both backwards, both
optimizer steps) is captured into one ``torch.cuda.CUDAGraph``; every later call is one
``replay()``. What changes from step to step reaches the graph through device tensors only:

- the inputs: the same four tensors every call (static buffers; a batcher's ``out=`` writes
  each batch into them). Other tensors are refused with a ValueError, on every device, so
  code written on a CPU machine keeps working on a GPU;
- learning rates: the optimizers hold them as tensors (``lr=torch.tensor(...)``), which the
  schedulers update in place between replays; the UDA ramp reads a device step counter;
- dropout: the masks that L_new replays from L_old's forward (and the soft-label JVP from the
  update forward) come from pairs of cloned CUDA generator states registered with the graph:
  both members of a pair start equal and draw the same amount every step, so they stay equal;
- the student's EMA and the schedulers run after each replay (host-side decay and lr
  arithmetic; the student's weights do not change after its own step, so the EMA sees the
  same weights as in the eager order).

Refused combinations (ValueError, one line each): fp16 (a GradScaler reads its inf check on
the host every step), any precision but bf16 on CUDA, DDP-wrapped models or a distributed run
(the gradient hooks and the h all-reduce run on the host), optimizers that are not capturable
(``torch.optim.SGD`` needs ``fused=True``: its foreach and per-parameter paths turn a tensor
lr into a host number; others need ``capturable=True``), a scheduler over a float lr (it would
be frozen into the graph), and ``l_old_forward="concat"`` with an EMA (its L_new forward
updates the batch-norm buffers after the EMA has copied them). Without a CUDA device the
step warns once and runs eagerly.

Never run on a GPU so far: the CPU tests cover validation, refusals and the fallback.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from mplfast.step import MPLStep


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))


def check_capturable(step: "MPLStep") -> None:
    """Raise ValueError (one line) for a setting a whole-step CUDA graph cannot hold."""
    cfg = step.cfg
    if cfg.precision == "fp16" or step.precision == "fp16":
        raise ValueError("MPLStep: cuda_graph=True cannot run fp16: its GradScaler reads the "
                         "inf check on the host every step, a sync a CUDA graph cannot hold; "
                         "use precision='bf16'")
    if step.device.type == "cuda" and step.precision != "bf16":
        raise ValueError(f"MPLStep: cuda_graph=True captures bf16 steps only, precision is "
                         f"{step.precision!r}; use precision='bf16'")
    if _is_ddp(step.teacher) or _is_ddp(step.student) or (
            torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        raise ValueError("MPLStep: cuda_graph=True does not capture distributed runs (DDP's "
                         "gradient hooks and the h all-reduce run on the host)")
    if cfg.l_old_forward == "concat" and step.student_ema is not None:
        raise ValueError("MPLStep: cuda_graph=True with l_old_forward='concat' and a student "
                         "EMA is not supported (the EMA runs after the graph, but 'concat' "
                         "moves the batch-norm buffers after the EMA has copied them)")
    for name, opt, sched in (("teacher", step.teacher_optimizer, step.teacher_scheduler),
                             ("student", step.student_optimizer, step.student_scheduler)):
        for group in opt.param_groups:
            if isinstance(opt, torch.optim.SGD):
                if not group.get("fused"):
                    raise ValueError(f"MPLStep: cuda_graph=True needs a capturable {name} "
                                     "optimizer: torch.optim.SGD(..., fused=True) (its foreach "
                                     "and per-parameter paths read a tensor lr on the host)")
            elif "capturable" in opt.defaults:
                if not group.get("capturable"):
                    raise ValueError(f"MPLStep: cuda_graph=True needs a capturable {name} "
                                     f"optimizer: {type(opt).__name__}(..., capturable=True)")
            else:
                raise ValueError(f"MPLStep: cuda_graph=True: the {name} optimizer "
                                 f"{type(opt).__name__} is not known to be capturable; use "
                                 "torch.optim.SGD(fused=True) or one with capturable=True")
            lr = group["lr"]
            if isinstance(lr, Tensor) and step.device.type == "cuda" and lr.device != step.device:
                raise ValueError(f"MPLStep: cuda_graph=True needs the {name} optimizer's tensor lr "
                                 f"on {step.device}, got {lr.device}")
            if sched is not None and not isinstance(lr, Tensor):
                raise ValueError(f"MPLStep: cuda_graph=True with a {name} scheduler needs a "
                                 "tensor lr (lr=torch.tensor(0.05, device=...)): a float lr is "
                                 "frozen into the graph at capture")


class _GraphSafePair:
    """Two cloned states of the device's default generator: ``first()`` draws from one,
    ``replay()`` from the other. They start equal and draw the same amount every step (the
    same forward twice), so the replayed forward gets the first one's dropout masks, eagerly
    and under graph replay alike (both are registered with the graph)."""

    def __init__(self, device: torch.device) -> None:
        self.gen = torch.cuda.default_generators[device.index or 0]
        self.a = self.gen.clone_state()
        self.b = self.gen.clone_state()

    @contextlib.contextmanager
    def _use(self, state: torch.Generator) -> Iterator[None]:
        live = self.gen.graphsafe_get_state()
        self.gen.graphsafe_set_state(state)
        try:
            yield
        finally:
            self.gen.graphsafe_set_state(live)

    def first(self) -> contextlib.AbstractContextManager:
        return self._use(self.a)

    def replay(self) -> contextlib.AbstractContextManager:
        return self._use(self.b)


class GraphedStep:
    """Runs an ``MPLStep``'s calls: eager warm-up, one capture, then replays (CUDA), or
    eagerly with a one-time warning (no CUDA device). Built by ``MPLStep`` itself."""

    def __init__(self, step: "MPLStep", warmup: int = 3) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"MPLStep: cuda_graph_warmup must be an integer >= 1, got {warmup!r}")
        check_capturable(step)
        self.step, self.warmup = step, warmup
        self.calls = 0
        self._inputs: tuple[Tensor, ...] | None = None
        self.graph: Any = None
        self.outputs: dict[str, Tensor] | None = None
        self.active = step.device.type == "cuda" and torch.cuda.is_available()
        if not self.active:
            warnings.warn(f"MPLStep: cuda_graph=True needs a CUDA device, the models are on "
                          f"{step.device.type}; running the step eagerly", RuntimeWarning,
                          stacklevel=3)
            return
        self._pairs: list[_GraphSafePair] = []
        self._next_pair = 0
        step._rng_replay = self._rng_pair  # type: ignore[method-assign]
        step._ema_in_step = False
        step._t_dev = torch.full((), step.t, dtype=torch.float32, device=step.device)

    def _rng_pair(self) -> _GraphSafePair:
        # The same call order every step: pair i serves the i-th replayed forward of a step.
        if self._next_pair == len(self._pairs):
            if self.graph is not None:
                raise RuntimeError("MPLStep: the captured step asked for a new RNG pair")
            self._pairs.append(_GraphSafePair(self.step.device))
        pair = self._pairs[self._next_pair]
        self._next_pair += 1
        return pair

    def _check_static(self, inputs: tuple[Tensor, ...]) -> None:
        key = tuple((t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device) for t in inputs)
        if self._inputs is None:
            self._inputs, self._key = inputs, key
        elif key != self._key:
            raise ValueError("MPLStep: cuda_graph=True needs the same four input tensors every "
                             "call (static buffers): write each batch into them, e.g. with the "
                             "batcher's batch(step, out=buffer)")

    def __call__(self, *inputs: Tensor) -> dict[str, Tensor]:
        self._check_static(inputs)
        step = self.step
        if not self.active:
            out = step._step(*inputs)
            step._after_step()
            return out
        self._next_pair = 0
        # Everything on the step's device: the warm-up side stream, the capture (whose stream,
        # memory pool and kernels follow the *current* device, not the tensors') and the replay.
        # With another device current, capture would record on that device's stream.
        with torch.cuda.device(step.device):
            if self.calls < self.warmup:
                side = torch.cuda.Stream(step.device)
                side.wait_stream(torch.cuda.current_stream(step.device))
                with torch.cuda.stream(side):
                    out = step._step(*inputs)
                torch.cuda.current_stream(step.device).wait_stream(side)
            else:
                if self.graph is None:
                    self._capture(inputs)
                self.graph.replay()
                out = self.outputs
        self.calls += 1
        step._after_step()
        return dict(out)  # the graph's static outputs: overwritten by the next replay

    def _capture(self, inputs: tuple[Tensor, ...]) -> None:
        step = self.step
        graph = torch.cuda.CUDAGraph()
        for pair in self._pairs:
            graph.register_generator_state(pair.a)
            graph.register_generator_state(pair.b)
        if step.cfg.pseudo_label == "sample":
            graph.register_generator_state(step.generator)
        torch.cuda.synchronize(step.device)
        with torch.cuda.graph(graph):
            self.outputs = step._step(*inputs)
        self.graph = graph
