"""``SupervisedStep``: one labeled-only update (the supervised baseline and the finetune stage).

Shaped like ``MPLStep`` (call it with a batch, get 0-dim tensor metrics, ``state_dict``), so the
driver runs every phase with the same loop.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mplfast.precision import autocast


def without_dropout(model: nn.Module) -> nn.Module:
    """Replace every dropout module of ``model`` by ``nn.Identity``, in place; returns ``model``.

    The finetune stage trains without dropout, as the PyTorch port does (``model.drop =
    nn.Identity()`` before finetuning; its WRN's only dropout is that dense one, as in
    mplfast's models). Dropout modules hold no parameters or buffers, so the state dict and
    checkpoints are unchanged.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.dropout._DropoutNd):
            setattr(model, name, nn.Identity())
        else:
            without_dropout(child)
    return model


class SupervisedStep:
    """CE_eps(model(x), y); backward; optional clipping; optimizer, scheduler and EMA steps.

    fp16 uses a GradScaler (a skipped step leaves the model unchanged, as in MPLStep); bf16 and
    fp32 need none. No host sync in the hot path.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 scheduler: Any = None, ema: Any = None, label_smoothing: float = 0.0,
                 grad_clip: float | None = None, precision: str = "fp32",
                 device: torch.device = torch.device("cpu")) -> None:
        from mplfast.ops import soft_cross_entropy

        self._ce = soft_cross_entropy
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.label_smoothing, self.grad_clip = label_smoothing, grad_clip
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.t = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self.model.train()
        with autocast(self.precision, self.device):
            logits = self.model(x)
        # At least float32 (a float64 model keeps float64; half-precision logits are widened).
        loss = self._ce(logits.to(torch.promote_types(logits.dtype, torch.float32)), y,
                        label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, self.t)
        self.t += 1
        return {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        """Counter and grad scaler (model/optimizer/scheduler/EMA are saved by their owners)."""
        return {"t": self.t, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.scaler.load_state_dict(state["scaler"])
