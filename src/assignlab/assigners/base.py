"""The one interface every assigner follows.

An assigner is a small class whose constructor holds (validated) configuration and whose call
maps ``(priors, gt, **predictions)`` to an :class:`~assignlab.core.Assignment`. Static assigners
ignore predictions; prediction-aware ones (``requires_predictions = True``) need
``pred_boxes`` ``(B, N, 4)`` xyxy pixels and ``pred_scores`` ``(B, N, C)`` (detached).
"""

from __future__ import annotations

from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors

__all__ = ["Assigner", "check_predictions"]


class Assigner:
    """Base class: configuration only. Subclasses implement ``__call__``."""

    #: True when the assigner reads the network's current predictions.
    requires_predictions: bool = False
    #: True when ``Assignment.matches`` can hold several GTs per prior.
    many_to_many: bool = False

    def __init__(self, max_pairs: int = DEFAULT_MAX_PAIRS) -> None:
        if int(max_pairs) <= 0:
            raise ValueError(f"max_pairs must be positive, got {max_pairs}")
        self.max_pairs = int(max_pairs)

    def __call__(self, priors: Priors, gt: GroundTruth, **predictions: Tensor) -> Assignment:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def check_predictions(
    priors: Priors, gt: GroundTruth, pred_boxes: Tensor | None, pred_scores: Tensor | None, name: str
) -> None:
    """Clear errors for missing or mis-shaped predictions."""
    if pred_boxes is None or pred_scores is None:
        raise ValueError(f"{name} is prediction-aware: pass pred_boxes=(B, N, 4) and pred_scores=(B, N, C)")
    B, N = gt.batch_size, priors.num_priors
    if pred_boxes.shape != (B, N, 4):
        raise ValueError(f"{name}: pred_boxes must be {(B, N, 4)}, got {tuple(pred_boxes.shape)}")
    if pred_scores.dim() != 3 or pred_scores.shape[:2] != (B, N):
        raise ValueError(f"{name}: pred_scores must be (B={B}, N={N}, C), got {tuple(pred_scores.shape)}")
