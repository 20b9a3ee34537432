"""Binary cross-entropy with logits over per-class sigmoid scores (the ``"bce"`` classification loss).

``loss = -(t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))``, computed stably by
:func:`torch.nn.functional.binary_cross_entropy_with_logits`; ``t`` may be soft (Ultralytics trains
YOLOv8 with the normalised alignment metric of TAL as ``t``). Example::

    x = [0.0, 30.0, -30.0]   t = [1.0, 1.0, 1.0]
    loss = [0.6931, 9.4e-14, 30.0]     # finite for saturated logits
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .reduce import ElementwiseLoss
from .targets import class_one_hot

__all__ = ["BCEWithLogitsLoss", "bce_with_logits"]


def bce_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Elementwise BCE. ``target`` of the same shape (hard or soft), or integer class ids with
    one dimension fewer (``C`` = background, all-zero row)."""
    if not target.is_floating_point() and target.dim() == logits.dim() - 1:
        target = class_one_hot(target, logits.shape[-1], logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")


class BCEWithLogitsLoss(ElementwiseLoss):
    """Module form of :func:`bce_with_logits` (weights / reductions as in :mod:`.reduce`)."""

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return bce_with_logits(pred, target)
