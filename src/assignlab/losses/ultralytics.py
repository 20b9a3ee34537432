"""Ultralytics YOLOv8 ``v8DetectionLoss`` as a :class:`~assignlab.losses.detection.DetectionLoss` preset.

Reference: G. Jocher, A. Chaurasia, J. Qiu, *Ultralytics YOLOv8* (2023, software),
``ultralytics/utils/loss.py`` (8.4.x): ``v8DetectionLoss`` + ``BboxLoss`` + ``DFLoss``, on top of
``TaskAlignedAssigner(topk=10, alpha=0.5, beta=6)`` (our
:meth:`~assignlab.assigners.tal.TaskAlignedAssigner.ultralytics`). With ``target_scores`` the
assigner's soft targets (normalised alignment metric at the GT class; our ``quality``) and
``tss = max(sum(target_scores), 1)``::

    box = sum_fg (1 - CIoU(pred, target)) * w / tss        w = target_scores.sum(-1) (= quality = box_weight)
    cls = sum_{all priors, classes} BCE(logit, target_scores) / tss
    dfl = sum_fg mean_{4 sides} DFL(side logits, side distance) * w / tss
    loss = (7.5 * box + 0.5 * cls + 1.5 * dfl) * batch_size

which is exactly ``DetectionLoss(cls_loss="bce", box_loss="ciou", normalize="target_sum")`` with
those weights, Ultralytics' CIoU (no IoU gate, ``eps = 1e-7``) and ``reg_max`` = Ultralytics'
``reg_max - 1`` (16 bins -> our 15; side targets clamped to ``[0, reg_max - 0.01]``). The
conformance case ``v8_loss_320`` checks the three raw terms to ``rtol = atol = 1e-5``.

Ultralytics multiplies the loss by the batch size (its optimiser step then sees a per-image-summed
loss); :class:`V8DetectionLoss` does the same when ``multiply_batch=True``.
"""

from __future__ import annotations

from torch import Tensor

from ..core import Assignment, GroundTruth, Priors
from .detection import V8_PRESET, DetectionLoss, HeadOutputLike

__all__ = ["ULTRALYTICS_WEIGHTS", "V8DetectionLoss", "v8_detection_loss"]

#: Ultralytics' default hyp gains.
ULTRALYTICS_WEIGHTS = dict(V8_PRESET["weights"])


def v8_detection_loss(**overrides) -> DetectionLoss:
    """A :class:`DetectionLoss` configured as ``v8DetectionLoss`` (keyword arguments override)."""
    kw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in V8_PRESET.items()}
    kw.update(overrides)
    return DetectionLoss(**kw)


class V8DetectionLoss:
    """``V8DetectionLoss(multiply_batch=True, **overrides)(out, pred_boxes, priors, gt, assignment)``
    -> ``(total, parts)``; ``parts`` are the gained terms ``{"box", "cls", "dfl", "obj"}`` (obj 0)
    without the batch-size factor (Ultralytics' ``loss.detach()`` divided by the batch size)."""

    def __init__(self, multiply_batch: bool = True, **overrides) -> None:
        self.loss = v8_detection_loss(**overrides)
        self.multiply_batch = bool(multiply_batch)

    def __call__(self, out: HeadOutputLike, pred_boxes: Tensor, priors: Priors, gt: GroundTruth,
                 assignment: Assignment) -> tuple[Tensor, dict[str, Tensor]]:
        total, parts = self.loss(out, pred_boxes, priors, gt, assignment)
        if self.multiply_batch:
            total = total * out.cls.shape[0]
        return total, parts

    def __repr__(self) -> str:
        return f"V8DetectionLoss(multiply_batch={self.multiply_batch}, loss={self.loss!r})"
