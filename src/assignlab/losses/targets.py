"""Dense classification targets and weights from an :class:`~assignlab.core.Assignment`.

Every classification loss in this package takes a ``(B, N, C)`` target in [0, 1]. This module
builds it from the assignment alone, so any assigner combines with any loss:

* the assigned class of a positive gets ``quality`` (soft target: IoU, alignment metric, ...) or
  1 (hard target), every other entry 0;
* the per-prior weight is ``cls_weight`` (0 on ignored priors, so they contribute nothing).

Example, one image, three priors, two classes::

    gt_index  [ 1, -1,  0]      labels of the GTs [0, 1]   quality [0.8, 0.0, 0.6]
    ignore    [ F,  T,  F]      cls_weight        [1.0, 0.0, 1.0]
    soft targets  [[0.0, 0.8], [0.0, 0.0], [0.6, 0.0]]
    hard targets  [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Assignment, GroundTruth

__all__ = ["class_one_hot", "classification_targets"]


def class_one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(..., C)`` one-hot of integer ``labels``; any value outside ``[0, C)`` (the background
    index ``C``, or ``-1``) gives an all-zero row. Pure comparison, no host sync."""
    classes = torch.arange(num_classes, device=labels.device)
    return (labels.unsqueeze(-1) == classes).to(dtype)


def classification_targets(
    assignment: Assignment,
    gt: GroundTruth,
    num_classes: int,
    soft: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(B, N, C)`` targets: ``quality`` (``soft=True``) or 1 at the assigned class of each
    positive, 0 elsewhere (see the module docstring)."""
    labels = assignment.labels(gt, background=num_classes)
    onehot = class_one_hot(labels, num_classes, dtype)
    value = assignment.quality if soft else assignment.positive
    return onehot * value.to(dtype).unsqueeze(-1)
