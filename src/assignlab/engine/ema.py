"""Exponential moving average (EMA) of model weights, with YOLOv5's decay ramp.

After every optimizer step each floating-point parameter and buffer ``e`` of the EMA copy moves
toward the model's ``m``::

    d = decay * (1 - exp(-updates / tau))       # ramp: small d early, so the EMA tracks the model
    e = d * e + (1 - d) * m                     # (tau = 0: constant d = decay)

Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. Worked example, ``decay = 0.9``,
``tau = 0``: ``e = 1.0``, ``m = 3.0`` -> ``e = 0.9 * 1 + 0.1 * 3 = 1.2``; with ``tau = 2`` the
first update uses ``d = 0.9 * (1 - exp(-1/2)) = 0.35412`` -> ``e = 0.35412 + 0.64588 * 3 = 2.29177``.

Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J. Control
Optim. 1992; the ramp follows Ultralytics YOLOv5 ``utils/torch_utils.py::ModelEMA``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class ModelEMA:
    """EMA copy of a model (``self.module``, eval mode, no gradients).

    Args:
        model: the model to track (a DDP wrapper is unwrapped).
        decay: asymptotic decay ``d``.
        tau: ramp time constant in updates (0 = no ramp).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay used by the ``updates``-th update (1-based)."""
        if self.tau == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step toward ``model``'s current weights."""
        self.updates += 1
        d = self.decay_at(self.updates)
        msd = unwrap_model(model).state_dict()
        ema_f, mod_f = [], []
        for k, e in self.module.state_dict().items():
            m = msd[k].detach()
            if e.dtype.is_floating_point:
                ema_f.append(e)
                mod_f.append(m.to(e.dtype))
            else:
                e.copy_(m)
        if ema_f:
            torch._foreach_mul_(ema_f, d)
            torch._foreach_add_(ema_f, mod_f, alpha=1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
