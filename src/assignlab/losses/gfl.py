"""Generalized Focal Loss: Quality Focal Loss and Distribution Focal Loss (Li, Wang, Wu, Chen, Hu,
Li, Tang, Yang, "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for Dense
Object Detection", NeurIPS 2020).

Quality Focal Loss (QFL, eq. 5) trains the class score to *be* the localisation quality ``y``
(the IoU of the predicted box with its GT on positives, 0 on negatives)::

    QFL(x, y) = -|y - sigma|**beta * ((1 - y) * log(1 - sigma) + y * log(sigma)),  sigma = sigmoid(x)

with ``beta = 2``. A negative (``y = 0``) reduces to ``sigma**beta * BCE(x, 0)``, a focal loss
without ``alpha``. Example: a positive with IoU 0.8 predicted at ``sigma = 0.5`` weighs
``|0.8 - 0.5|^2 = 0.09`` times ``BCE = 0.6931`` -> 0.0624; predicted at 0.8 its loss is
``0 * BCE = 0``, the minimum (QFL is minimised at ``sigma = y``, not at 1).

Distribution Focal Loss (DFL, eq. 6) regresses a box side as a discrete distribution over
``reg_max + 1`` integer bins ``0..reg_max`` (in stride units). A continuous target ``y`` between
bins ``y_l = floor(y)`` and ``y_r = y_l + 1`` is split between them::

    DFL(S, y) = -((y_r - y) * log S[y_l] + (y - y_l) * log S[y_r]),   S = softmax(logits)

Example: ``y = 2.3`` -> ``0.7 * CE(bin 2) + 0.3 * CE(bin 3)``. The distance decoded from the
distribution is its expectation, :func:`dfl_integral` (``sum_i i * S[i]``), which equals ``y``
when ``S[2] = 0.7`` and ``S[3] = 0.3``.

``reg_max`` convention (mmdetection's and :class:`assignlab.models.HeadOutput`'s): there are
``reg_max + 1`` bins, distances lie in ``[0, reg_max]``. Ultralytics' ``reg_max = 16`` means 16
bins, i.e. our ``reg_max = 15``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .focal import modulating_pow
from .reduce import ElementwiseLoss, finite, weight_reduce
from .targets import class_one_hot

__all__ = [
    "DistributionFocalLoss",
    "QualityFocalLoss",
    "dfl_integral",
    "distances_to_dfl_target",
    "distribution_focal_loss",
    "quality_focal_loss",
    "qfl_dense_target",
]


def qfl_dense_target(labels: Tensor, scores: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``(label, score)`` tuple form of a QFL target as a dense ``(N, C)`` tensor: ``score`` at
    ``label``, 0 elsewhere; ``label == num_classes`` (or any out-of-range id) is background."""
    return class_one_hot(labels, num_classes, dtype) * scores.to(dtype).unsqueeze(-1)


def quality_focal_loss(logits: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Elementwise QFL (``(..., C)``, not summed over classes), ``target`` a dense soft target
    in [0, 1] of the same shape (see :func:`qfl_dense_target` for the tuple form).

    One formula covers positives and negatives: ``BCE(x, y) * |y - sigmoid(x)|**beta``.
    """
    target = target.to(logits.dtype)
    scale = modulating_pow((target - logits.sigmoid()).abs(), beta)  # finite gradient at sigma == y
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * scale


class QualityFocalLoss(ElementwiseLoss):
    """Module form of QFL with mmdetection's output convention: :meth:`forward` sums over the
    classes (one value per prior) before weighting / reducing. ``target`` is a dense ``(N, C)``
    tensor or a ``(labels, scores)`` tuple."""

    def __init__(self, beta: float = 2.0, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        beta = finite("beta", beta)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def elementwise(self, pred: Tensor, target) -> Tensor:
        if isinstance(target, (tuple, list)):
            labels, scores = target
            target = qfl_dense_target(labels, scores, pred.shape[-1], pred.dtype)
        return quality_focal_loss(pred, target, self.beta)

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None) -> Tensor:
        loss = self.elementwise(pred, target).sum(dim=-1)
        red = reduction_override or self.reduction
        return self.loss_weight * weight_reduce(loss, weight, red, avg_factor)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """DFL per distribution: ``logits (..., n_bins)``, continuous ``target (...)`` in bin units.

    ``target`` is clamped to ``[0, n_bins - 1]``; a target exactly on the last bin puts all its
    weight there (mmdetection requires ``target < reg_max`` instead). Returns ``(...)``.
    """
    n_bins = logits.shape[-1]
    if n_bins < 2:
        raise ValueError(f"DFL needs at least 2 bins, got logits with {n_bins}")
    t = target.to(logits.dtype).clamp(0, n_bins - 1)
    left = t.floor().long().clamp(max=n_bins - 2)
    right = left + 1
    w_left = right.to(t.dtype) - t
    w_right = t - left.to(t.dtype)
    logp = F.log_softmax(logits, dim=-1)
    lp_left = torch.gather(logp, -1, left.unsqueeze(-1)).squeeze(-1)
    lp_right = torch.gather(logp, -1, right.unsqueeze(-1)).squeeze(-1)
    return -(lp_left * w_left + lp_right * w_right)


class DistributionFocalLoss(ElementwiseLoss):
    """Module form of :func:`distribution_focal_loss` (one value per row of ``pred``)."""

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return distribution_focal_loss(pred, target)


def dfl_integral(logits: Tensor, reg_max: int) -> Tensor:
    """Decode DFL logits ``(..., 4 * (reg_max + 1))`` (sides l, t, r, b, bins consecutive) to the
    expected distances ``(..., 4)`` in bin (stride) units, each in ``[0, reg_max]``.

    Example (reg_max = 2): side logits ``[0, 0, -inf]`` -> softmax ``[0.5, 0.5, 0]`` -> 0.5.
    """
    n = reg_max + 1
    if logits.shape[-1] != 4 * n:
        raise ValueError(f"expected {4 * n} = 4 * (reg_max + 1) logits in the last dim, got {logits.shape[-1]}")
    prob = logits.reshape(*logits.shape[:-1], 4, n).softmax(dim=-1)
    proj = torch.arange(n, dtype=prob.dtype, device=prob.device)
    return (prob * proj).sum(dim=-1)


def distances_to_dfl_target(
    points: Tensor, boxes: Tensor, strides: Tensor, reg_max: int, eps: float = 0.01
) -> Tensor:
    """Distances ``(l, t, r, b)`` from each point to the sides of its box, in stride units,
    clamped to ``[0, reg_max - eps]`` (so the right bin ``floor(d) + 1`` exists).

    points ``(N, 2)`` px, boxes ``(..., N, 4)`` xyxy px, strides ``(N,)`` -> ``(..., N, 4)``.
    Example: point (12, 12), stride 8, box (0, 4, 40, 20) -> (1.5, 1.0, 3.5, 1.0).
    This is mmdetection's ``bbox2distance(points, box / stride, reg_max, eps=0.01)`` and
    Ultralytics' ``bbox2dist`` (with our ``reg_max`` = theirs - 1).
    """
    s = strides.to(boxes.dtype).unsqueeze(-1)
    p = points.to(boxes.dtype)
    lt = (p - boxes[..., :2]) / s
    rb = (boxes[..., 2:] - p) / s
    return torch.cat([lt, rb], dim=-1).clamp(0, reg_max - eps)
