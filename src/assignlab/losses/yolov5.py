"""YOLOv5's ``ComputeLoss`` over the sparse match rows of :class:`~assignlab.assigners.yolov5.YOLOv5Assigner`.

Reference: G. Jocher et al., YOLOv5 (Ultralytics, 2020, doi:10.5281/zenodo.3908559),
``utils/loss.py::ComputeLoss.__call__``. YOLOv5 lets one GT train several priors and one prior
train several GTs; the loss iterates over the match *rows*, duplicates included, so this module
reads ``Assignment.matches`` rather than the dense one-GT-per-prior view. Per level ``l`` with rows
``R_l`` (pairs of a prior and a GT)::

    lbox_l = mean_{r in R_l} (1 - CIoU(pred_box_r, gt_box_r))
    lcls_l = mean_{r in R_l, c} BCE(cls_logit_{r,c}, cp if c == class_r else cn)     (only if C > 1)
    tobj   = (1 - gr) + gr * CIoU.detach().clamp(0)  at every matched prior, 0 elsewhere
    lobj_l = mean_{all priors of level l, all images} BCE(obj_logit, tobj)

    loss_items = (box * sum_l lbox_l,  obj * sum_l balance[l] * lobj_l,  cls * sum_l lcls_l)
    total      = sum(loss_items) * batch_size

with YOLOv5's ``hyp.scratch`` gains ``box = 0.05, obj = 1.0, cls = 0.5``, ``balance = (4.0, 1.0,
0.4)``, ``gr = 1.0``, label smoothing ``eps`` giving ``cp = 1 - eps / 2, cn = eps / 2``. The CIoU is
Ultralytics' ``bbox_iou(..., CIoU=True)`` (no IoU gate, ``eps = 1e-7``), evaluated here in each
row's local grid frame (box minus the prior centre, divided by the stride), which is what the
reference's cell-relative ``pxy, pwh`` amount to and keeps float32 rounding at the reference's level.

Worked example, one level, one image, two rows of the same GT with CIoU 0.8 and 0.6, all class /
objectness logits 0, C = 2, and 8 priors on the level::

    lbox = mean(0.2, 0.4) = 0.3            -> box item 0.05 * 0.3 = 0.015
    lcls = log 2 = 0.6931 (every element)  -> cls item 0.5 * 0.6931 = 0.3466
    tobj has 0.8, 0.6 at the two priors; BCE(0, t) = log 2 for any t -> lobj = 0.6931
                                           -> obj item 1.0 * 4.0 * 0.6931 = 2.7726

Contested priors (several GTs at one prior): the reference keeps whichever ``tobj`` write lands
last (``index_put_`` with duplicate indices, unspecified order). We take the **maximum** over the
rows (deterministic; the reference's ``sort_obj_iou=True``). See
:func:`~assignlab.losses.objectness.scatter_objectness_target`.

Any assigner: an assignment without ``matches`` (every assigner but YOLOv5's) is read as one row
per positive prior (its ``gt_index``, weight ``box_weight``), computed densely; ignored priors
(``assignment.ignore``) are left out of the objectness mean, as in both paths. This is "YOLOv5's
loss with another sample selection" (issue #8's comparison of assigners under one loss).

Not reproduced: ``autobalance`` (YOLOv5 adapts ``balance`` during training; off by default there).
Match weights (the assigner's ``distance_weighting`` variant; 1 for YOLOv5) weight each row's box
and class terms; the objectness target is not weighted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Assignment, GroundTruth, Priors
from .detection import _local
from .focal import sigmoid_focal_loss
from .iou import ULTRALYTICS_CIOU, complete_iou
from .objectness import YOLOV5_BALANCE, level_balanced_mean, scatter_objectness_target
from .reduce import finite
from .targets import class_one_hot

__all__ = ["YOLOv5Loss"]


def _level_mean(values: Tensor, level: Tensor, num_levels: int) -> Tensor:
    """Per-level mean of row values ``(M,)`` (levels without rows: 0), summed over levels."""
    sums = torch.zeros(num_levels, dtype=values.dtype, device=values.device).index_add_(0, level, values)
    counts = torch.zeros(num_levels, dtype=values.dtype, device=values.device).index_add_(
        0, level, torch.ones_like(values))
    return (sums / counts.clamp(min=1)).sum()


class YOLOv5Loss:
    """YOLOv5 ``ComputeLoss`` (see the module docstring).

    Args:
        box, obj, cls: hyp gains (``hyp.scratch``: 0.05, 1.0, 0.5).
        balance: objectness weight per level; must match the number of levels.
        gr: IoU blend of the objectness target (1.0: target = CIoU).
        label_smoothing: ``eps`` of the class targets (0).
        fl_gamma: > 0 switches class and objectness BCE to focal loss (alpha 0.25), as YOLOv5.
        cls_pw, obj_pw: BCE positive weights (1.0).
        multiply_batch: return ``total * batch_size`` like the reference (True).

    Call: ``loss(out, pred_boxes, priors, gt, assignment) -> (total, parts)`` with ``out`` a
    :class:`~assignlab.models.HeadOutput` (``cls (B, N, C)``, ``obj (B, N)``), ``pred_boxes``
    ``(B, N, 4)`` decoded xyxy px (differentiable), ``assignment.matches`` the YOLOv5 rows (or, when
    ``None``, one row per positive of the dense assignment).
    ``parts`` = ``{"box", "obj", "cls"}`` after the gains, detached (YOLOv5's ``loss_items``).
    """

    def __init__(
        self,
        box: float = 0.05,
        obj: float = 1.0,
        cls: float = 0.5,
        balance: Sequence[float] = YOLOV5_BALANCE,
        gr: float = 1.0,
        label_smoothing: float = 0.0,
        fl_gamma: float = 0.0,
        cls_pw: float = 1.0,
        obj_pw: float = 1.0,
        multiply_batch: bool = True,
    ) -> None:
        for name, v in (("box", box), ("obj", obj), ("cls", cls), ("fl_gamma", fl_gamma),
                        ("cls_pw", cls_pw), ("obj_pw", obj_pw)):
            if finite(name, v) < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not 0.0 <= gr <= 1.0:
            raise ValueError(f"gr must be in [0, 1], got {gr}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        balance = [finite(f"balance[{i}]", b) for i, b in enumerate(balance)]
        if not balance or any(b < 0 for b in balance):
            raise ValueError(f"balance must be non-empty and non-negative, got {tuple(balance)}")
        self.box, self.obj, self.cls = float(box), float(obj), float(cls)
        self.balance = tuple(float(b) for b in balance)
        self.gr = float(gr)
        self.label_smoothing = float(label_smoothing)
        self.fl_gamma = float(fl_gamma)
        self.cls_pw, self.obj_pw = float(cls_pw), float(obj_pw)
        self.multiply_batch = bool(multiply_batch)

    def __repr__(self) -> str:
        return (f"YOLOv5Loss(box={self.box}, obj={self.obj}, cls={self.cls}, balance={self.balance}, "
                f"gr={self.gr}, label_smoothing={self.label_smoothing}, fl_gamma={self.fl_gamma})")

    def _bce(self, logits: Tensor, target: Tensor, pos_weight: float) -> Tensor:
        if self.fl_gamma > 0:
            return sigmoid_focal_loss(logits, target, alpha=0.25, gamma=self.fl_gamma)
        pw = None if pos_weight == 1.0 else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)

    def row_ciou(self, pred_boxes: Tensor, priors: Priors, gt: GroundTruth, assignment: Assignment) -> Tensor:
        """CIoU ``(M,)`` of every match row's predicted box with its GT, in the row's grid frame."""
        m = assignment.matches
        b, p, g = m.batch, m.prior, m.gt
        dtype = pred_boxes.dtype
        origin = priors.points.to(device=pred_boxes.device, dtype=dtype)[p].repeat(1, 2)
        s = priors.strides.to(device=pred_boxes.device, dtype=dtype)[p, None]
        pb = (pred_boxes[b, p] - origin) / s
        tb = (gt.boxes[b, g].to(dtype) - origin) / s
        return complete_iou(pb, tb, **ULTRALYTICS_CIOU)

    def objectness_target(self, row_ciou: Tensor, assignment: Assignment) -> Tensor:
        """Dense ``(B, N)`` objectness target (max over the rows of a prior)."""
        m = assignment.matches
        value = (1.0 - self.gr) + self.gr * row_ciou.detach().clamp(min=0)
        return scatter_objectness_target(assignment.shape, m.batch, m.prior, value, dtype=row_ciou.dtype)

    def dense_terms(self, out, pred_boxes: Tensor, priors: Priors, gt: GroundTruth, assignment: Assignment,
                    levels: Tensor, L: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(lbox, tobj (B, N), lcls)`` with one row per positive prior (assignments without
        ``matches``): the same per-level means as the row path, computed densely (no host sync)."""
        B, N, C = out.cls.shape
        pos = assignment.positive
        dtype = pred_boxes.dtype
        gi = assignment.gt_index.clamp(min=0)
        points = priors.points.to(device=pred_boxes.device, dtype=dtype)
        strides = priors.strides.to(device=pred_boxes.device, dtype=dtype)
        unit = torch.tensor([-0.5, -0.5, 0.5, 0.5], dtype=dtype, device=pred_boxes.device)
        tb = torch.gather(gt.boxes.to(dtype), 1, gi[..., None].expand(B, N, 4))
        m = pos[..., None]
        # non-positive rows get a unit box: finite, and masked out of every term below
        ciou = complete_iou(torch.where(m, _local(pred_boxes, points, strides), unit),
                            torch.where(m, _local(tb, points, strides), unit), **ULTRALYTICS_CIOU)
        w = assignment.box_weight.to(dtype)
        ones = (1.0,) * L
        lbox, _ = level_balanced_mean((1.0 - ciou) * w, levels, ones, ~pos)
        value = (1.0 - self.gr) + self.gr * ciou.detach().clamp(min=0)
        tobj = torch.where(pos, value, torch.zeros_like(value))
        if C > 1:
            cn = 0.5 * self.label_smoothing
            labels = torch.gather(gt.labels, 1, gi).clamp(0, C - 1)  # padded rows may hold anything
            t = class_one_hot(labels, C, out.cls.dtype) * (1.0 - 2 * cn) + cn
            cls_el = self._bce(out.cls, t, self.cls_pw).mean(dim=-1)  # (B, N)
            lcls, _ = level_balanced_mean(cls_el * w.to(cls_el.dtype), levels, ones, ~pos)
        else:
            lcls = out.cls.sum() * 0.0
        return lbox, tobj, lcls

    def __call__(self, out, pred_boxes: Tensor, priors: Priors, gt: GroundTruth,
                 assignment: Assignment) -> tuple[Tensor, dict[str, Tensor]]:
        m = assignment.matches
        if out.obj is None:
            raise ValueError("YOLOv5Loss needs an objectness head (out.obj is None)")
        B, N, C = out.cls.shape
        if pred_boxes.shape != (B, N, 4):
            raise ValueError(f"pred_boxes must be {(B, N, 4)}, got {tuple(pred_boxes.shape)}")
        L = len(priors.num_level_priors)
        if len(self.balance) != L:
            raise ValueError(f"balance has {len(self.balance)} entries but the priors have {L} levels")
        levels = priors.levels.to(pred_boxes.device)
        if m is None:
            lbox, tobj, lcls = self.dense_terms(out, pred_boxes, priors, gt, assignment, levels, L)
            obj_el = self._bce(out.obj, tobj.to(out.obj.dtype), self.obj_pw)
            lobj, _ = level_balanced_mean(obj_el, levels, self.balance, assignment.ignore)
            return self._total(lbox, lobj, lcls, B)
        row_level = levels[m.prior]
        w = m.weight.to(pred_boxes.dtype)

        ciou = self.row_ciou(pred_boxes, priors, gt, assignment)
        lbox = _level_mean((1.0 - ciou) * w, row_level, L)

        tobj = self.objectness_target(ciou, assignment)
        obj_el = self._bce(out.obj, tobj.to(out.obj.dtype), self.obj_pw)
        lobj, _ = level_balanced_mean(obj_el, levels, self.balance, assignment.ignore)

        if C > 1:
            cn = 0.5 * self.label_smoothing
            cp = 1.0 - cn
            onehot = class_one_hot(gt.labels[m.batch, m.gt], C, out.cls.dtype)
            t = onehot * (cp - cn) + cn
            cls_el = self._bce(out.cls[m.batch, m.prior], t, self.cls_pw)  # (M, C)
            lcls = _level_mean(cls_el.mean(dim=1) * w.to(cls_el.dtype), row_level, L)
        else:
            lcls = out.cls.sum() * 0.0

        return self._total(lbox, lobj, lcls, B)

    def _total(self, lbox: Tensor, lobj: Tensor, lcls: Tensor, B: int) -> tuple[Tensor, dict[str, Tensor]]:
        items = {"box": lbox * self.box, "obj": lobj * self.obj, "cls": lcls * self.cls}
        total = items["box"] + items["obj"] + items["cls"]
        if self.multiply_batch:
            total = total * B
        return total, {k: v.detach() for k, v in items.items()}
