"""The one interface every assigner follows.

An assigner is a small class whose constructor holds (validated) configuration and whose call
maps ``(priors, gt, **predictions)`` to an :class:`~assignlab.core.Assignment`. Static assigners
ignore predictions; prediction-aware ones (``requires_predictions = True``) need
``pred_boxes`` ``(B, N, 4)`` xyxy pixels and ``pred_scores`` ``(B, N, C)`` (detached).
"""

from __future__ import annotations

from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors

__all__ = [
    "Assigner",
    "check_gt_labels",
    "check_predictions",
    "check_scores_are",
    "positive",
    "positive_int",
    "unit_interval",
]


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


# -- constructor validation ---------------------------------------------------------------------
# Each helper raises ValueError naming the parameter and returns the converted value. NaN fails
# every float check (the comparisons are written as ``not <ok>``).


def positive_int(name: str, value: float) -> int:
    """``int(value)`` of a whole number ``>= 1`` (``3`` and ``3.0`` pass, ``2.5`` and ``0`` fail)."""
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def positive(name: str, value: float) -> float:
    """``float(value)`` of a number ``> 0``."""
    if not float(value) > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


def unit_interval(name: str, value: float, *, closed_low: bool = False, closed_high: bool = True) -> float:
    """``float(value)`` of a number in the unit interval, by default ``(0, 1]``.

    ``closed_low`` / ``closed_high`` include 0 / 1: e.g. ``unit_interval("eps", eps, closed_high=False)``
    asks for ``(0, 1)``, ``unit_interval("alpha", alpha, closed_low=True)`` for ``[0, 1]``.
    """
    v = float(value)
    low_ok = 0.0 <= v if closed_low else 0.0 < v
    high_ok = v <= 1.0 if closed_high else v < 1.0
    if not (low_ok and high_ok):
        interval = ("[" if closed_low else "(") + "0, 1" + ("]" if closed_high else ")")
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return v


def check_scores_are(scores_are: str) -> str:
    """``scores_are`` must be ``"probabilities"`` or ``"logits"``."""
    if scores_are not in ("probabilities", "logits"):
        raise ValueError(f"scores_are must be 'probabilities' or 'logits', got {scores_are!r}")
    return scores_are


# -- call-time validation -------------------------------------------------------------------------


def check_gt_labels(gt: GroundTruth, num_classes: int, message: str) -> None:
    """``ValueError(message)`` when a real (unmasked) GT label is outside ``[0, num_classes)``.

    Validation, not hot path: one host sync, skipped when the batch has no GT slot.
    """
    if gt.max_boxes and bool((((gt.labels < 0) | (gt.labels >= num_classes)) & gt.mask).any()):
        raise ValueError(message)


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
