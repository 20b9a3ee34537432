"""Loss normalisation, made explicit and selectable, and a monitor of the balance between loss parts.

Dense detectors sum their per-prior losses and divide by a *normaliser*; which one matters as much
as the loss weights, and the references disagree:

================  =====================================================  ========================
mode              normaliser (per batch)                                 used by
================  =====================================================  ========================
``num_pos``       number of positive priors, at least 1                  RetinaNet, FCOS, ATSS, GFL (mmdet ``avg_factor``)
``target_sum``    sum of the soft targets (``Assignment.quality``), >= 1  Ultralytics YOLOv8 (``target_scores_sum``)
``none``          1 (plain sums)                                         --
================  =====================================================  ========================

Optionally the normaliser is an exponential moving average over iterations (Detectron2's RetinaNet
``loss_normalizer_momentum = 0.9``), which removes the batch-to-batch noise of a small positive
count: ``ema <- m * ema + (1 - m) * value``, started at the first value seen.

Worked example, a batch with 3 positives of quality 0.9, 0.5, 0.2::

    num_pos    -> 3.0        target_sum -> max(1.6, 1) = 1.6
    EMA (m=0.9), next batch with 13 positives: 0.9 * 3 + 0.1 * 13 = 4.0

:class:`LossBalanceMonitor` keeps running averages of the parts a loss returns
(``box`` / ``obj`` or ``quality`` / ``cls`` / ``dfl``) and reports each part with its share of the
total, so a run whose box loss is 1% of the total (or 99%) is visible at a glance.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..core import Assignment
from .reduce import finite

__all__ = ["NORMALIZE_MODES", "LossBalanceMonitor", "Normalizer", "raw_normalizer"]

NORMALIZE_MODES = ("num_pos", "target_sum", "none")


def raw_normalizer(assignment: Assignment, mode: str = "num_pos") -> Tensor:
    """The normaliser of one batch (0-d float tensor, no host sync, not clamped)."""
    if mode == "num_pos":
        return assignment.positive.sum().to(torch.float32)
    if mode == "target_sum":
        return assignment.quality.sum().to(torch.float32)
    if mode == "none":
        return torch.ones((), dtype=torch.float32, device=assignment.positive.device)
    raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")


class Normalizer:
    """``Normalizer(mode, ema_momentum=None, min_value=1.0, distributed=True)``; call it with an
    assignment to get the (detached) normaliser of this batch.

    Args:
        mode: ``num_pos`` | ``target_sum`` | ``none`` (see the module table).
        ema_momentum: ``None`` for the per-batch value, else ``m`` in [0, 1) for a running average
            (updated at each call while ``training`` is True; :meth:`reset` forgets it).
        min_value: lower bound of the returned value (1.0, so an image without positives
            gives finite losses).
        distributed: average the per-batch value over processes when ``torch.distributed`` is
            initialised (mmdetection's ``reduce_mean``), so every rank divides by the same value.
    """

    def __init__(self, mode: str = "num_pos", ema_momentum: float | None = None, min_value: float = 1.0,
                 distributed: bool = True) -> None:
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")
        if ema_momentum is not None and not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
        if finite("min_value", min_value) < 0:
            raise ValueError(f"min_value must be >= 0, got {min_value}")
        self.mode = mode
        self.ema_momentum = ema_momentum
        self.min_value = float(min_value)
        self.distributed = distributed
        self.training = True
        self._ema: Tensor | None = None

    def reset(self) -> None:
        self._ema = None

    @property
    def ema(self) -> Tensor | None:
        """The current running value (None before the first call or without EMA)."""
        return self._ema

    def __call__(self, assignment: Assignment) -> Tensor:
        value = raw_normalizer(assignment, self.mode).detach()
        if self.distributed and dist.is_available() and dist.is_initialized():
            value = value.clone()
            dist.all_reduce(value)
            value = value / dist.get_world_size()
        if self.ema_momentum is not None and self.mode != "none":
            if self._ema is None:
                ema = value
            else:
                m = self.ema_momentum
                ema = m * self._ema.to(value.device) + (1 - m) * value
            if self.training:
                self._ema = ema
            value = ema
        return value.clamp(min=self.min_value)

    def __repr__(self) -> str:
        return (f"Normalizer(mode={self.mode!r}, ema_momentum={self.ema_momentum}, "
                f"min_value={self.min_value})")


class LossBalanceMonitor:
    """Running averages of loss parts and their shares of the total.

    ``update(parts)`` takes the ``{name: scalar tensor}`` dict a loss returns (detached; kept as
    tensors, so no host sync per step). ``report()`` gives floats: each part, ``total`` and
    ``ratio/<part>`` = part / total. ``momentum=None`` averages uniformly over all updates, a
    float in [0, 1) is an exponential average.

    Example::

        m = LossBalanceMonitor()
        m.update({"box": torch.tensor(1.0), "cls": torch.tensor(3.0)})
        m.report()  # {'box': 1.0, 'cls': 3.0, 'total': 4.0, 'ratio/box': 0.25, 'ratio/cls': 0.75, 'steps': 1}
    """

    def __init__(self, momentum: float | None = None, warn_ratio: float = 0.95) -> None:
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1) or None, got {momentum}")
        self.momentum = momentum
        self.warn_ratio = finite("warn_ratio", warn_ratio)
        self.reset()

    def reset(self) -> None:
        self._avg: dict[str, Tensor] = {}
        self._count: dict[str, int] = {}
        self.steps = 0

    def update(self, parts: dict[str, Tensor | float]) -> None:
        self.steps += 1
        for k, v in parts.items():
            t = v.detach().float() if isinstance(v, Tensor) else torch.tensor(float(v))
            n = self._count[k] = self._count.get(k, 0) + 1
            if k not in self._avg:
                self._avg[k] = t.clone()
            elif self.momentum is None:
                self._avg[k] = self._avg[k] + (t - self._avg[k]) / n
            else:
                self._avg[k] = self.momentum * self._avg[k] + (1 - self.momentum) * t

    def report(self) -> dict[str, float]:
        vals = {k: float(v) for k, v in self._avg.items()}
        total = sum(vals.values())
        out: dict[str, float] = dict(vals)
        out["total"] = total
        for k, v in vals.items():
            out[f"ratio/{k}"] = v / total if total else 0.0
        out["steps"] = self.steps
        return out

    def warnings(self) -> list[str]:
        """Messages for parts that dominate (share above ``warn_ratio``) or vanish (below
        ``1 - warn_ratio`` of the total while others are non-zero)."""
        rep = self.report()
        msgs = []
        names = [k for k in self._avg if rep[k] != 0 or rep["total"] == 0]
        for k in names:
            r = rep[f"ratio/{k}"]
            if len(names) > 1 and r > self.warn_ratio:
                msgs.append(f"loss part {k!r} is {r:.1%} of the total")
            elif len(names) > 1 and rep["total"] > 0 and r < 1 - self.warn_ratio:
                msgs.append(f"loss part {k!r} is only {r:.2%} of the total")
        return msgs

    def format(self) -> str:
        rep = self.report()
        return "  ".join(f"{k} {rep[k]:.4g} ({rep[f'ratio/{k}']:.0%})" for k in self._avg)
