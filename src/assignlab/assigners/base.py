"""The one interface every assigner follows.

An assigner is a small class whose constructor holds (validated) configuration and whose call
maps ``(priors, gt, **predictions)`` to an :class:`~assignlab.core.Assignment`. Static assigners
ignore predictions; prediction-aware ones (``requires_predictions = True``) need
``pred_boxes`` ``(B, N, 4)`` xyxy pixels and ``pred_scores`` ``(B, N, C)`` (detached).

Every subclass constructor rejects a NaN or infinite *scalar* argument (``square_scale=nan``,
``alpha=inf``, ``topk=inf``, ...) with a ``ValueError`` naming the parameter, before its own checks
run: :meth:`Assigner.__init_subclass__` wraps it with :func:`check_finite_args`. Sequences are the
subclass's business (FCOS' ``regress_ranges`` legitimately end at ``inf``).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers

from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors

__all__ = [
    "Assigner",
    "call_assigner",
    "check_finite_args",
    "check_gt_labels",
    "check_predictions",
    "check_scores_are",
    "finite",
    "positive",
    "positive_int",
    "unit_interval",
]


def call_assigner(assigner, priors: Priors, gt: GroundTruth, pred_boxes: Tensor | None = None,
                  pred_scores: Tensor | None = None) -> Assignment:
    """Call ``assigner`` as a training step does: the (detached) predictions go to it only when it
    declares ``requires_predictions`` (the prediction-aware ones and YOLOv5 with ``ignore_iou`` /
    ``dedup="best_pred_iou"``); static assigners see priors and GTs only."""
    if getattr(assigner, "requires_predictions", False):
        if pred_boxes is None or pred_scores is None:
            raise ValueError(f"{type(assigner).__name__} is prediction-aware: pass pred_boxes and pred_scores")
        return assigner(priors, gt, pred_boxes=pred_boxes.detach(), pred_scores=pred_scores.detach())
    return assigner(priors, gt)


class Assigner:
    """Base class: configuration only. Subclasses implement ``__call__``."""

    #: True when the assigner reads the network's current predictions.
    requires_predictions: bool = False
    #: True when ``Assignment.matches`` can hold several GTs per prior.
    many_to_many: bool = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = check_finite_args(cls.__init__)

    def __init__(self, max_pairs: int = DEFAULT_MAX_PAIRS) -> None:
        finite("max_pairs", max_pairs)
        if int(max_pairs) <= 0:
            raise ValueError(f"max_pairs must be positive, got {max_pairs}")
        self.max_pairs = int(max_pairs)

    def __call__(self, priors: Priors, gt: GroundTruth, **predictions: Tensor) -> Assignment:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


# -- constructor validation ---------------------------------------------------------------------
# Each helper raises ValueError naming the parameter and returns the converted value. NaN and
# infinities fail every check (the comparisons are written as ``not <ok>``).


def _is_scalar(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite(name: str, value: float) -> float:
    """``value`` unchanged if it is not a real scalar or is a finite one; NaN / +-inf fail.

    Example: ``finite("alpha", 0.5)`` -> 0.5; ``finite("alpha", float("nan"))`` -> ``ValueError:
    alpha must be a finite number, got nan``.
    """
    if _is_scalar(value) and not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def check_finite_args(init):
    """Wrap a constructor so that every real scalar argument (positional, keyword or ``**kwargs``;
    not ``bool``) is checked with :func:`finite` before the constructor runs. Arguments that do not
    bind to the signature are left to the constructor (its own ``TypeError``)."""
    if getattr(init, "_checks_finite", False):
        return init
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError:
            return init(self, *args, **kwargs)
        for i, (name, value) in enumerate(bound.arguments.items()):
            if i == 0:  # self
                continue
            kind = sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                for k, v in value.items():
                    finite(k, v)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                for j, v in enumerate(value):
                    finite(f"{name}[{j}]", v)
            else:
                finite(name, value)
        return init(self, *args, **kwargs)

    wrapper._checks_finite = True
    return wrapper


def positive_int(name: str, value: float) -> int:
    """``int(value)`` of a whole number ``>= 1`` (``3`` and ``3.0`` pass, ``2.5``, ``0``, NaN and
    inf fail)."""
    if (_is_scalar(value) and not math.isfinite(float(value))) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def positive(name: str, value: float) -> float:
    """``float(value)`` of a finite number ``> 0``."""
    if not (float(value) > 0 and math.isfinite(float(value))):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
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
