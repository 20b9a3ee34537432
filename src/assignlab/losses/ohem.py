"""Dense online hard example mining (OHEM) over priors.

Shrivastava, Gupta, Girshick, "Training Region-based Object Detectors with Online Hard Example
Mining", CVPR 2016; the dense form with a fixed negative:positive ratio is SSD's "hard negative
mining" (Liu et al., ECCV 2016, sec. 2.2: "at most 3:1").

Per image, every positive is kept, and among the negatives (neither positive nor ignored) only the
``k`` with the highest loss, where::

    k = min(max(floor(neg_pos_ratio * num_pos), min_negatives), num_negatives)

Every other prior gets weight 0 (ignored priors always do). ``min_negatives`` keeps some
background supervision in images without positives. Ties between equal losses go to the lower
prior index (stable sort), so the selection is deterministic.

Worked example, one image, 6 priors, ratio 3, min_negatives 0::

    loss      [0.9, 0.1, 0.5, 0.7, 0.2, 0.3]
    positive  [ F,   T,   F,   F,   F,   F ]   -> num_pos 1, k = 3
    ignore    [ T,   F,   F,   F,   F,   F ]   (prior 0 is ignored despite its high loss)
    negatives ranked by loss: 3 (0.7), 2 (0.5), 5 (0.3), 4 (0.2)
    weight    [ 0,   1,   1,   1,   0,   1 ]

Vectorised over the batch: one sort per image row, no Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Assignment
from .reduce import finite

__all__ = ["OHEM", "ohem_weights"]


def ohem_weights(
    loss: Tensor,
    positive: Tensor,
    ignore: Tensor | None = None,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 0,
) -> Tensor:
    """``(B, N)`` float weights: 1 on positives and on the hardest negatives, 0 elsewhere.

    Args:
        loss: ``(B, N)`` per-prior loss used to rank negatives (detached here).
        positive: ``(B, N)`` bool. ignore: ``(B, N)`` bool or None.
        neg_pos_ratio: negatives kept per positive (3 in SSD).
        min_negatives: negatives kept per image at least (when it has that many).
    """
    if finite("neg_pos_ratio", neg_pos_ratio) < 0:
        raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    if finite("min_negatives", min_negatives) < 0:
        raise ValueError(f"min_negatives must be >= 0, got {min_negatives}")
    negative = ~positive if ignore is None else ~(positive | ignore)
    num_pos = positive.sum(dim=1)
    num_neg = negative.sum(dim=1)
    k = torch.floor(num_pos.to(torch.float64) * neg_pos_ratio).long()
    k = torch.minimum(k.clamp(min=min_negatives), num_neg)
    score = torch.where(negative, loss.detach(), torch.full_like(loss, float("-inf"), dtype=loss.dtype))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    ar = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank.scatter_(1, order, ar)
    keep_neg = negative & (rank < k.unsqueeze(1))
    return (positive | keep_neg).to(loss.dtype)


class OHEM:
    """Configured hard-negative miner: ``OHEM(neg_pos_ratio=3.0, min_negatives=0)(loss, assignment)``
    returns the ``(B, N)`` weights of :func:`ohem_weights` for that assignment."""

    def __init__(self, neg_pos_ratio: float = 3.0, min_negatives: int = 0) -> None:
        if finite("neg_pos_ratio", neg_pos_ratio) < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        if finite("min_negatives", min_negatives) < 0:
            raise ValueError(f"min_negatives must be >= 0, got {min_negatives}")
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.min_negatives = int(min_negatives)

    def __call__(self, loss: Tensor, assignment: Assignment) -> Tensor:
        return ohem_weights(loss, assignment.positive, assignment.ignore, self.neg_pos_ratio, self.min_negatives)

    def __repr__(self) -> str:
        return f"OHEM(neg_pos_ratio={self.neg_pos_ratio}, min_negatives={self.min_negatives})"
