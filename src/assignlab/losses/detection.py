"""``DetectionLoss``: the dense detection loss that combines any assigner with any loss.

It reads only the :class:`~assignlab.core.Assignment` (``positive``, ``ignore``, ``quality``,
``box_weight``, ``cls_weight``, ``gt_index``), never re-running assignment. For a batch of ``B``
images, ``N`` priors and ``C`` classes, with ``Z`` the normaliser (:mod:`.normalize`)::

    box  = sum_{positives} box_weight * (1 - IoU_kind(pred_box, gt_box)) / Z
    dfl  = sum_{positives} box_weight * mean_{4 sides} DFL(side logits, side target) / Z   (reg_max > 0)
    cls  = sum_{priors, classes} cls_weight * L_cls(cls_logit, target) / Z
    obj  = sum_l level_balance[l] * mean_{level l, not ignored} BCE(obj_logit, obj_target)  (obj head)
    total = w_box * box + w_obj * obj + w_cls * cls + w_dfl * dfl

* ``L_cls`` is ``bce`` | ``focal`` | ``qfl`` | ``vfl`` (:data:`~assignlab.losses.LOSSES`); its
  target is ``quality`` at the assigned class of a positive and 0 elsewhere (soft target; 1 for
  hard assigners). With an objectness head the class loss covers the positives only (YOLOv5 /
  YOLOX: background is the objectness' job); without one it covers every non-ignored prior.
* ``obj_target`` is the positive's predicted-box CIoU with its GT (clamped at 0, detached, blended
  ``(1 - gr) + gr * IoU``, YOLOv5) when ``iou_target_objectness``, else ``quality``.
* Box losses are computed in each prior's local frame (box minus the prior centre, over the
  stride): IoU losses are scale and translation invariant, and this keeps float32 rounding and
  the ``eps`` of every level alike (Ultralytics evaluates CIoU in grid units too).
* Ignored priors contribute to no term. Non-positive rows are replaced by a unit box before the
  IoU and DFL computations (no host sync, and garbage predictions there cannot produce NaN).
* With no positives, or every prior ignored, all terms are finite (``Z >= 1``, empty means are 0).

Presets: ``normalize="target_sum"``, ``cls_loss="bce"``, ``box_loss="ciou"`` with a TAL
(ultralytics flavour) assignment is YOLOv8's ``v8DetectionLoss``
(:func:`~assignlab.losses.ultralytics.v8_detection_loss`; checked against the conformance
fixture ``v8_loss_320``). The exact YOLOv5 loss over many-to-many match rows is
:class:`~assignlab.losses.yolov5.YOLOv5Loss`.

Worked example (normalize ``num_pos``, bce, weights 1, no obj head): 2 priors, 1 class, prior 0
positive with quality 1 and box loss 0.25, prior 1 negative; all class logits 0 ->
``Z = 1``, ``box = 0.25``, ``cls = (BCE(0, 1) + BCE(0, 0)) / 1 = 2 * 0.6931 = 1.3863``.

``parts`` are the *weighted* terms (detached), so they add up to ``total``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor

from ..core import Assignment, GroundTruth, Priors
from .bce import BCEWithLogitsLoss
from .focal import FocalLoss
from .gfl import QualityFocalLoss, distances_to_dfl_target, distribution_focal_loss
from .iou import BOX_LOSSES, ULTRALYTICS_CIOU, box_iou_loss, check_ciou_kwargs
from .normalize import NORMALIZE_MODES, Normalizer
from .objectness import YOLOV5_BALANCE, iou_objectness_target, level_balanced_mean
from .ohem import OHEM
from .reduce import ElementwiseLoss, finite
from .targets import classification_targets
from .varifocal import VarifocalLoss

__all__ = [
    "DEFAULT_WEIGHTS",
    "LOSSES",
    "LOSS_PRESETS",
    "V8_PRESET",
    "DetectionLoss",
    "HeadOutputLike",
    "build_cls_loss",
]

#: Name -> classification loss class (the CLI's ``--cls-loss``).
LOSSES: dict[str, type[ElementwiseLoss]] = {
    "bce": BCEWithLogitsLoss,
    "focal": FocalLoss,
    "qfl": QualityFocalLoss,
    "vfl": VarifocalLoss,
}

#: Default part weights: Ultralytics' gains (box 7.5, cls 0.5, dfl 1.5) and YOLOv5's obj 1.0.
DEFAULT_WEIGHTS = {"box": 7.5, "obj": 1.0, "cls": 0.5, "dfl": 1.5}
PARTS = ("box", "obj", "cls", "dfl")

#: ``DetectionLoss`` keyword arguments of YOLOv8's ``v8DetectionLoss`` (see :mod:`.ultralytics`).
V8_PRESET = {
    "cls_loss": "bce",
    "box_loss": "ciou",
    "obj_loss": False,
    "weights": {"box": 7.5, "cls": 0.5, "dfl": 1.5, "obj": 0.0},
    "normalize": "target_sum",
    "ciou_kwargs": dict(ULTRALYTICS_CIOU),
    "box_eps": ULTRALYTICS_CIOU["eps"],
}


def _yolov5_loss(**kwargs):
    from .yolov5 import YOLOv5Loss

    return YOLOv5Loss(**kwargs)


#: Named loss configurations for the CLI / engine: a dict = ``DetectionLoss`` keyword arguments
#: (the four classification losses with the defaults, and ``v8``), a callable = a factory of a
#: loss with the same call signature (``yolov5``: :class:`~.yolov5.YOLOv5Loss`, which needs the
#: many-to-many ``matches`` of the YOLOv5 assigner).
LOSS_PRESETS: dict[str, object] = {
    "bce": {"cls_loss": "bce"},
    "focal": {"cls_loss": "focal"},
    "qfl": {"cls_loss": "qfl"},
    "vfl": {"cls_loss": "vfl"},
    "v8": V8_PRESET,
    "yolov5": _yolov5_loss,
}


class HeadOutputLike(Protocol):
    """What the loss reads from :class:`assignlab.models.HeadOutput`."""

    cls: Tensor
    box: Tensor
    obj: Tensor | None
    kind: str
    reg_max: int


def build_cls_loss(name: str, **kwargs) -> ElementwiseLoss:
    """Instantiate a classification loss by its :data:`LOSSES` name."""
    if name not in LOSSES:
        raise ValueError(f"cls_loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name](**kwargs)


def _local(boxes: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """Boxes ``(B, N, 4)`` in each prior's frame: ``(box - centre) / stride``."""
    return (boxes - points.repeat(1, 2)) / strides[:, None]


class DetectionLoss:
    """Dense detection loss over an :class:`~assignlab.core.Assignment` (module docstring).

    Args:
        cls_loss: ``bce`` | ``focal`` | ``qfl`` | ``vfl``.
        box_loss: ``ciou`` | ``giou`` | ``diou`` | ``iou``.
        obj_loss: ``None`` uses objectness when the head has it; ``True`` requires it; ``False``
            never uses it.
        weights: part weights (missing keys take :data:`DEFAULT_WEIGHTS`).
        normalize: ``num_pos`` | ``target_sum`` | ``none`` (:class:`~.normalize.Normalizer`).
        iou_target_objectness: objectness target = predicted-box CIoU (True) or ``quality``.
        gr: IoU blend of the objectness target.
        level_balance: objectness weight per level (one per level of the priors).
        normalizer_ema: momentum of a running-average normaliser (``None``: per batch).
        ohem_ratio: when set, dense OHEM (:mod:`.ohem`): only the hardest ``ohem_ratio`` negatives
            per positive (at least ``ohem_min_negatives``) per image keep their class loss (no obj
            head) or objectness loss (obj head).
        cls_kwargs: hyper-parameters of the classification loss (e.g. ``{"gamma": 1.5}``).
        ciou_kwargs: CIoU variant (default Ultralytics'; see :mod:`.iou`).
    """

    def __init__(
        self,
        cls_loss: str = "bce",
        box_loss: str = "ciou",
        obj_loss: bool | None = None,
        weights: Mapping[str, float] | None = None,
        normalize: str = "num_pos",
        iou_target_objectness: bool = True,
        gr: float = 1.0,
        level_balance: Sequence[float] = YOLOV5_BALANCE,
        normalizer_ema: float | None = None,
        ohem_ratio: float | None = None,
        ohem_min_negatives: int = 0,
        cls_kwargs: Mapping | None = None,
        ciou_kwargs: Mapping | None = None,
        box_eps: float = 1e-7,
    ) -> None:
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        w = dict(DEFAULT_WEIGHTS)
        for k, v in (weights or {}).items():
            if k not in PARTS:
                raise ValueError(f"weights: unknown part {k!r} (parts: {PARTS})")
            if finite(f"weights[{k!r}]", v) < 0:
                raise ValueError(f"weights[{k!r}] must be >= 0, got {v}")
            w[k] = float(v)
        if not 0.0 <= gr <= 1.0:
            raise ValueError(f"gr must be in [0, 1], got {gr}")
        level_balance = [finite(f"level_balance[{i}]", b) for i, b in enumerate(level_balance)]
        for name, v in (("normalizer_ema", normalizer_ema), ("ohem_ratio", ohem_ratio),
                        ("ohem_min_negatives", ohem_min_negatives)):
            if v is not None:
                finite(name, v)
        if not level_balance or any(b < 0 for b in level_balance):
            raise ValueError(f"level_balance must be non-empty and non-negative, got {tuple(level_balance)}")
        self.cls_loss_name = cls_loss
        self.cls_loss = build_cls_loss(cls_loss, **dict(cls_kwargs or {}))
        self.box_loss = box_loss
        self.box_eps = finite("box_eps", box_eps)
        self.ciou_kwargs = check_ciou_kwargs(ULTRALYTICS_CIOU if ciou_kwargs is None else ciou_kwargs, "ciou_kwargs")
        self.ciou_kwargs.pop("eps", None)
        self.obj_loss = obj_loss
        self.weights = w
        self.normalizer = Normalizer(normalize, ema_momentum=normalizer_ema)
        self.iou_target_objectness = bool(iou_target_objectness)
        self.gr = float(gr)
        self.level_balance = tuple(float(b) for b in level_balance)
        self.ohem = None if ohem_ratio is None else OHEM(ohem_ratio, ohem_min_negatives)

    @property
    def normalize(self) -> str:
        return self.normalizer.mode

    def __repr__(self) -> str:
        return (f"DetectionLoss(cls_loss={self.cls_loss_name!r}, box_loss={self.box_loss!r}, "
                f"obj_loss={self.obj_loss}, weights={self.weights}, normalize={self.normalize!r}, "
                f"iou_target_objectness={self.iou_target_objectness}, gr={self.gr}, "
                f"level_balance={self.level_balance}, ohem={self.ohem})")

    def train(self, mode: bool = True) -> DetectionLoss:
        """Whether the normaliser's running average is updated (like ``nn.Module.train``)."""
        self.normalizer.training = mode
        return self

    def eval(self) -> DetectionLoss:
        return self.train(False)

    # ------------------------------------------------------------------------------ parts
    def box_terms(self, out: HeadOutputLike, pred_boxes: Tensor, priors: Priors, gt: GroundTruth,
                  assignment: Assignment) -> tuple[Tensor, Tensor, Tensor]:
        """Unnormalised ``(sum box loss, sum dfl loss, target boxes (B, N, 4))``."""
        pos = assignment.positive
        dtype = pred_boxes.dtype
        points = priors.points.to(device=pred_boxes.device, dtype=dtype)
        strides = priors.strides.to(device=pred_boxes.device, dtype=dtype)
        tboxes = assignment.target_boxes(gt).to(dtype)
        unit = torch.tensor([-0.5, -0.5, 0.5, 0.5], dtype=dtype, device=pred_boxes.device)
        m = pos.unsqueeze(-1)
        pb = torch.where(m, _local(pred_boxes, points, strides), unit)
        tb = torch.where(m, _local(tboxes, points, strides), unit)
        kw = self.ciou_kwargs if self.box_loss == "ciou" else {}
        per = box_iou_loss(pb, tb, self.box_loss, self.box_eps, **kw)
        bw = assignment.box_weight.to(dtype)
        box_sum = torch.where(pos, per * bw, torch.zeros_like(per)).sum()
        dfl_sum = box_sum.new_zeros(())
        R = int(getattr(out, "reg_max", 0) or 0)
        if R > 0:
            logits = out.box.reshape(*out.box.shape[:-1], 4, R + 1)
            target = distances_to_dfl_target(points, tboxes, strides, R)
            d = distribution_focal_loss(logits, target.to(logits.dtype)).mean(dim=-1)
            dfl_sum = torch.where(pos, d * bw.to(d.dtype), torch.zeros_like(d)).sum()
        return box_sum, dfl_sum, tboxes

    def __call__(self, out: HeadOutputLike, pred_boxes: Tensor, priors: Priors, gt: GroundTruth,
                 assignment: Assignment) -> tuple[Tensor, dict[str, Tensor]]:
        B, N, C = out.cls.shape
        if assignment.shape != (B, N):
            raise ValueError(f"assignment is {assignment.shape} but the head output has (B, N) = {(B, N)}")
        if pred_boxes.shape != (B, N, 4):
            raise ValueError(f"pred_boxes must be {(B, N, 4)}, got {tuple(pred_boxes.shape)}")
        if priors.num_priors != N:
            raise ValueError(f"priors has {priors.num_priors} priors, the head output {N}")
        use_obj = out.obj is not None if self.obj_loss is None else bool(self.obj_loss)
        if use_obj and out.obj is None:
            raise ValueError("obj_loss=True but the head output has no objectness (out.obj is None)")
        R = int(getattr(out, "reg_max", 0) or 0)
        if R > 0 and out.box.shape[-1] != 4 * (R + 1):
            raise ValueError(f"reg_max={R} needs box logits of size {4 * (R + 1)}, got {out.box.shape[-1]}")

        z = self.normalizer(assignment)
        pos, ign = assignment.positive, assignment.ignore
        box_sum, dfl_sum, tboxes = self.box_terms(out, pred_boxes, priors, gt, assignment)

        # classification
        target = classification_targets(assignment, gt, C, soft=True, dtype=out.cls.dtype)
        cls_el = self.cls_loss.elementwise(out.cls, target)  # (B, N, C)
        cls_w = assignment.cls_weight.to(cls_el.dtype)
        if use_obj:
            cls_w = torch.where(pos, cls_w, torch.zeros_like(cls_w))
        elif self.ohem is not None:
            cls_w = cls_w * self.ohem(cls_el.sum(dim=-1), assignment)
        cls_sum = torch.where(cls_w.unsqueeze(-1) > 0, cls_el * cls_w.unsqueeze(-1), torch.zeros_like(cls_el)).sum()

        # objectness
        obj = out.cls.new_zeros(())
        if use_obj:
            L = len(priors.num_level_priors)
            if len(self.level_balance) != L:
                raise ValueError(f"level_balance has {len(self.level_balance)} entries, the priors {L} levels")
            if self.iou_target_objectness:
                t_obj = iou_objectness_target(pred_boxes, tboxes, pos, self.gr)
            else:
                t_obj = assignment.quality
            t_obj = torch.where(pos, t_obj.to(out.obj.dtype), torch.zeros_like(out.obj))
            obj_el = torch.nn.functional.binary_cross_entropy_with_logits(out.obj, t_obj, reduction="none")
            excl = ign
            if self.ohem is not None:
                excl = excl | (self.ohem(obj_el, assignment) == 0)
            obj, _ = level_balanced_mean(obj_el, priors.levels, self.level_balance, excl)

        w = self.weights
        parts = {
            "box": w["box"] * box_sum / z.to(box_sum.dtype),
            "obj": w["obj"] * obj,
            "cls": w["cls"] * cls_sum / z.to(cls_sum.dtype),
            "dfl": w["dfl"] * dfl_sum / z.to(dfl_sum.dtype),
        }
        total = parts["box"] + parts["obj"].to(parts["box"].dtype) + parts["cls"].to(parts["box"].dtype) \
            + parts["dfl"].to(parts["box"].dtype)
        return total, {k: v.detach() for k, v in parts.items()}
