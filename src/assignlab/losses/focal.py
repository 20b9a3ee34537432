"""Sigmoid focal loss (Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection",
ICCV 2017), eq. (5)::

    p_t     = p * t + (1 - p) * (1 - t)            p = sigmoid(x)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    FL      = alpha_t * (1 - p_t) ** gamma * BCE(x, t)

with ``alpha = 0.25`` and ``gamma = 2``. The easy examples (``p_t`` near 1: the vast majority of
background priors) are down-weighted by ``(1 - p_t) ** gamma``. Worked example, one background
prior predicted at ``p = 0.1`` and one positive at ``p = 0.9``::

    background: alpha_t = 0.75, (1 - p_t)^2 = 0.1^2 = 0.01, BCE = 0.1054 -> 0.00079
    positive:   alpha_t = 0.25, (1 - p_t)^2 = 0.01,         BCE = 0.1054 -> 0.00026

Targets may be hard (0/1) or soft (in [0, 1]); both use the same formula, which is what
mmdetection's ``py_sigmoid_focal_loss`` and ``torchvision.ops.sigmoid_focal_loss`` compute (we call
the latter). Integer class ids (``C`` = background) are one-hot encoded first. Ignored priors
contribute nothing: give them weight 0 (``Assignment.cls_weight`` already is).

Exponents below 1: the modulating factor ``(1 - p_t) ** gamma`` is exactly 0 for a saturated
correct prediction (``sigmoid(30) == 1.0`` in float32), where autograd's derivative of ``x ** gamma``
is ``gamma * 0 ** (gamma - 1) = inf`` for ``0 < gamma < 1``; times the zero derivative of ``p_t`` it
is NaN. :func:`modulating_pow` (also used by QFL and VFL) takes the gradient 0 there, and the focal
loss is then computed here instead of by torchvision (same formula; ``gamma = 0`` or ``>= 1`` still
call torchvision, whose gradients are finite). Example, ``gamma = 0.5``, logit 30, target 1: loss
0, gradient 0 (NaN before).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

from .reduce import ElementwiseLoss, finite
from .targets import class_one_hot

__all__ = ["FocalLoss", "modulating_pow", "sigmoid_focal_loss"]


def modulating_pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for a modulating factor ``base >= 0``, with gradient 0 (not NaN)
    where ``base`` is 0 (see the module docstring); a negative ``base`` (rounding) counts as 0.

    Forward values equal ``base.pow(exponent)`` (``0 ** 0 = 1``). Example: ``modulating_pow(
    tensor([0.0, 0.25]), 0.5)`` -> ``[0.0, 0.5]``, gradient ``[0.0, 1.0]``.
    """
    if exponent == 0:
        return torch.ones_like(base)
    pos = base > 0
    safe = torch.where(pos, base, torch.ones_like(base))
    return torch.where(pos, safe.pow(exponent), torch.zeros_like(base))


def sigmoid_focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Elementwise sigmoid focal loss, same shape as ``logits`` ``(..., C)``.

    ``target``: same shape (hard or soft), or integer class ids ``(...)`` with ``C`` meaning
    background. ``alpha < 0`` disables the class balancing factor (torchvision convention).
    """
    if not target.is_floating_point() and target.dim() == logits.dim() - 1:
        target = class_one_hot(target, logits.shape[-1], logits.dtype)
    target = target.to(logits.dtype)
    if gamma == 0 or gamma >= 1:
        return _tv_sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    p = logits.sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * modulating_pow(1 - p_t, gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss


class FocalLoss(ElementwiseLoss):
    """Module form: ``FocalLoss(alpha=0.25, gamma=2.0)(pred, target, weight, avg_factor)``.

    ``weight`` may be per prior ``(N,)`` (broadcast over classes) or elementwise ``(N, C)``.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        alpha, gamma = finite("alpha", alpha), finite("gamma", gamma)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if alpha > 1:
            raise ValueError(f"alpha must be <= 1 (negative disables it), got {alpha}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return sigmoid_focal_loss(pred, target, self.alpha, self.gamma)
