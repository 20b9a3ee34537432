"""Varifocal Loss (Zhang, Wang, Dayoub, Sunderhauf, "VarifocalNet: An IoU-aware Dense Object
Detector", CVPR 2021), eq. (2)::

    VFL(p, q) = -q * (q log p + (1 - q) log(1 - p))      if q > 0   (positive, q = IoU target)
              = -alpha * p**gamma * log(1 - p)            if q = 0   (negative)

with ``alpha = 0.75`` and ``gamma = 2``. Unlike focal loss, positives are *not* down-weighted by
their easiness: they are weighted by their own target IoU ``q`` (``iou_weighted=True``), so
high-quality positives dominate; only negatives get the focal factor. Both branches are
``weight * BCE(x, q)``::

    weight = q                              on positives  (1 with iou_weighted=False)
           = alpha * |sigmoid(x) - q|**gamma on negatives (q = 0: alpha * p**gamma)

Example: a positive with q = 0.9 predicted at p = 0.5: 0.9 * BCE(0.5 vs 0.9) = 0.9 * 0.6931 = 0.624;
a negative at p = 0.5: 0.75 * 0.25 * 0.6931 = 0.130.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .focal import modulating_pow
from .reduce import ElementwiseLoss, finite

__all__ = ["VarifocalLoss", "varifocal_loss"]


def varifocal_loss(
    logits: Tensor, target: Tensor, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True
) -> Tensor:
    """Elementwise VFL, ``target`` the IoU-aware soft target of the same shape as ``logits``."""
    target = target.to(logits.dtype)
    pos = target > 0
    neg_w = alpha * modulating_pow((logits.sigmoid() - target).abs(), gamma)  # finite gradient at sigma == q
    pos_w = target if iou_weighted else torch.ones_like(target)
    weight = torch.where(pos, pos_w, neg_w)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


class VarifocalLoss(ElementwiseLoss):
    """Module form: ``VarifocalLoss(alpha=0.75, gamma=2.0, iou_weighted=True)``."""

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                 reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        alpha, gamma = finite("alpha", alpha), finite("gamma", gamma)
        if gamma < 0 or alpha < 0:
            raise ValueError(f"alpha and gamma must be >= 0, got alpha={alpha}, gamma={gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.iou_weighted = bool(iou_weighted)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return varifocal_loss(pred, target, self.alpha, self.gamma, self.iou_weighted)
