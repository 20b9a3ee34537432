"""Weighted reduction shared by every loss module, with mmdetection's semantics.

Every loss in :mod:`assignlab.losses` is written as a *pure elementwise function* (one value per
element or per row, no reduction) plus a thin :class:`torch.nn.Module` that applies an optional
weight and one of four reductions. :func:`weight_reduce` is that last step:

=============================  =========================================================
call                           result
=============================  =========================================================
``reduction="none"``           ``loss * weight`` (elementwise)
``reduction="sum"``            ``sum(loss * weight)``
``reduction="mean"``           ``mean(loss * weight)`` (over all elements)
``"mean"`` + ``avg_factor=A``  ``sum(loss * weight) / (A + eps32)``, eps32 = float32 eps
=============================  =========================================================

The last row is the detection normalisation ("divide by the number of positives"); the float32
``eps`` (1.19e-7) is what mmdetection adds, so an ``avg_factor`` of 0 gives 0 instead of NaN.

Example::

    loss   = [1.0, 2.0, 4.0]      weight = [1.0, 0.0, 0.5]
    none   -> [1.0, 0.0, 2.0]     sum -> 3.0     mean -> 1.0
    mean, avg_factor=2 -> 3.0 / (2 + 1.19e-7) = 1.49999991
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["REDUCTIONS", "ElementwiseLoss", "finite", "weight_reduce"]

REDUCTIONS = ("none", "mean", "sum")
_EPS32 = float(torch.finfo(torch.float32).eps)


def finite(name: str, value: float) -> float:
    """``float(value)``; ``ValueError`` naming ``name`` when it is NaN or infinite (the loss
    constructors validate every float hyper-parameter with it)."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return v


def weight_reduce(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Apply ``weight`` (broadcast against ``loss``) and reduce (see the module table).

    A ``weight`` with one dimension fewer than ``loss`` is broadcast over the last axis of
    ``loss`` (a per-prior weight for a ``(N, C)`` classification loss).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        if weight.dim() == loss.dim() - 1:
            weight = weight.unsqueeze(-1)
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean() if loss.numel() else loss.sum()
        if reduction == "sum":
            return loss.sum()
        return loss
    if reduction == "mean":
        return loss.sum() / (avg_factor + _EPS32)
    if reduction == "none":
        return loss
    raise ValueError("avg_factor can only be used with reduction='mean' (or 'none')")


class ElementwiseLoss(nn.Module):
    """Base of the loss modules: ``forward(pred, target, weight, reduction_override, avg_factor)``.

    Subclasses implement :meth:`elementwise` (unreduced loss) and hold their hyper-parameters.
    ``loss_weight`` multiplies the result, ``reduction`` is the default reduction.
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.loss_weight = finite("loss_weight", loss_weight)

    def elementwise(self, pred: Tensor, target, **kwargs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(
        self,
        pred: Tensor,
        target,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        loss = self.elementwise(pred, target)
        red = reduction_override or self.reduction
        return self.loss_weight * weight_reduce(loss, weight, red, avg_factor)

    def extra_repr(self) -> str:
        hp = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"}
        return ", ".join(f"{k}={v!r}" for k, v in hp.items())
