"""YOLO-style objectness: BCE of every prior's objectness logit against an IoU-valued target, averaged
per pyramid level and weighted per level.

Target (YOLOv5 ``utils/loss.py``, ``ComputeLoss``; the "IoU-aware" objectness of YOLOv3 follow-ups)::

    positive prior: t = (1 - gr) + gr * max(CIoU(pred_box, gt_box), 0)     (CIoU detached)
    negative prior: t = 0
    ignored prior : no loss

``gr`` (YOLOv5 ``model.gr = 1.0``) blends a hard target 1 (``gr = 0``) with the IoU (``gr = 1``), so a
positive whose predicted box is poor is asked for a low objectness. Example: CIoU 0.7 and
``gr = 0.5`` -> ``t = 0.5 + 0.35 = 0.85``; CIoU -0.2 -> clamped to 0 -> ``t = 0.5``.

Loss::

    L_obj = sum_l balance[l] * mean_{priors of level l, all images, not ignored} BCE(logit, t)

with YOLOv5's ``balance = (4.0, 1.0, 0.4)`` for strides 8 / 16 / 32 (the fine level has 16x the
priors of the coarse one, each mostly background). Worked example, two levels with 2 priors each,
one image, all logits 0 (then BCE = log 2 = 0.6931 whatever the target)::

    target [1, 0 | 0, 0], balance (4, 1) -> 4 * 0.6931 + 1 * 0.6931 = 3.4657

Contested cells: in YOLOv5 one prior can be matched to several GTs (neighbour cells, several
anchors); ``tobj[b, a, gj, gi] = iou`` is an ``index_put_`` with duplicate indices, so the value kept
is whichever write lands last, an unspecified order (``sort_obj_iou=True`` sorts so the highest IoU
is written last). :func:`scatter_objectness_target` is deterministic: a contested prior takes the
**maximum** target of its matches, i.e. YOLOv5's ``sort_obj_iou=True`` result. Duplicate matches of
the same GT at one prior give the same value, so the rule only matters for cells shared by
different GTs. The dense path (:func:`iou_objectness_target`) uses the one GT per prior that the
:class:`~assignlab.core.Assignment` chose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Priors
from .iou import ULTRALYTICS_CIOU, complete_iou
from .reduce import finite

__all__ = [
    "YOLOV5_BALANCE",
    "ObjectnessLoss",
    "iou_objectness_target",
    "level_balanced_bce",
    "level_balanced_mean",
    "scatter_objectness_target",
]

YOLOV5_BALANCE = (4.0, 1.0, 0.4)


def _ciou_target(pred_boxes: Tensor, target_boxes: Tensor, gr: float) -> Tensor:
    iou = complete_iou(pred_boxes.detach(), target_boxes.detach(), **ULTRALYTICS_CIOU).clamp(min=0)
    return (1.0 - gr) + gr * iou


def iou_objectness_target(pred_boxes: Tensor, target_boxes: Tensor, positive: Tensor, gr: float = 1.0) -> Tensor:
    """Dense ``(B, N)`` objectness target (detached): ``(1 - gr) + gr * CIoU.clamp(0)`` on
    positives, 0 elsewhere. ``pred_boxes`` / ``target_boxes`` ``(B, N, 4)`` xyxy (any unit)."""
    if not 0.0 <= gr <= 1.0:
        raise ValueError(f"gr must be in [0, 1], got {gr}")
    # non-positive rows are replaced by a unit box so garbage predictions cannot produce NaN
    unit = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=pred_boxes.dtype, device=pred_boxes.device)
    m = positive.unsqueeze(-1)
    t = _ciou_target(torch.where(m, pred_boxes, unit), torch.where(m, target_boxes.to(pred_boxes.dtype), unit), gr)
    return torch.where(positive, t, torch.zeros_like(t))


def scatter_objectness_target(
    shape: tuple[int, int], batch: Tensor, prior: Tensor, value: Tensor, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Sparse match rows -> dense ``(B, N)`` target; a prior hit by several rows keeps the maximum
    ``value`` (deterministic; YOLOv5 ``sort_obj_iou=True``), priors without rows 0."""
    B, N = shape
    out = torch.zeros(B * N, dtype=dtype, device=value.device)
    if batch.numel():
        out = out.scatter_reduce(0, batch * N + prior, value.detach().to(dtype), reduce="amax", include_self=True)
    return out.view(B, N)


def level_balanced_mean(
    loss: Tensor,
    levels: Tensor,
    balance: Sequence[float],
    ignore: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``sum_l balance[l] * mean(loss)`` over each level's non-ignored priors of all images.

    loss ``(B, N)`` elementwise; levels ``(N,)`` long level of each prior; ignore ``(B, N)`` bool.
    Returns ``(loss, per_level_mean (L,))``. A level whose priors are all ignored contributes 0.
    Ignored entries are replaced (not multiplied), so a non-finite loss there cannot leak.
    """
    L = len(balance)
    valid = torch.ones_like(loss, dtype=torch.bool) if ignore is None else ~ignore
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    lv = levels.to(loss.device).expand_as(loss).reshape(-1)
    sums = torch.zeros(L, dtype=loss.dtype, device=loss.device).index_add_(0, lv, loss.reshape(-1))
    counts = torch.zeros(L, dtype=loss.dtype, device=loss.device).index_add_(0, lv, valid.reshape(-1).to(loss.dtype))
    means = sums / counts.clamp(min=1)
    w = torch.as_tensor(list(balance), dtype=loss.dtype, device=loss.device)
    return (w * means).sum(), means


def level_balanced_bce(
    logits: Tensor,
    target: Tensor,
    levels: Tensor,
    balance: Sequence[float],
    ignore: Tensor | None = None,
    pos_weight: float | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`level_balanced_mean` of ``BCE(logits, target)`` (``(B, N)`` each); ``pos_weight``
    is BCE's weight of the positive term (YOLOv5 ``obj_pw``)."""
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none", pos_weight=pw)
    return level_balanced_mean(bce, levels, balance, ignore)


class ObjectnessLoss:
    """``ObjectnessLoss(balance=(4.0, 1.0, 0.4), iou_target=True, gr=1.0)``.

    Call ``loss(obj_logits, priors, positive, ignore, pred_boxes=None, target_boxes=None,
    quality=None)`` -> ``(loss, per_level_mean)``. With ``iou_target`` the target of a positive is
    its predicted box's clamped CIoU blended by ``gr`` (needs the boxes); otherwise it is
    ``quality`` (the assigner's soft target; 1 for hard assigners).
    """

    def __init__(self, balance: Sequence[float] = YOLOV5_BALANCE, iou_target: bool = True, gr: float = 1.0) -> None:
        balance = [finite(f"balance[{i}]", b) for i, b in enumerate(balance)]
        if not balance or any(b < 0 for b in balance):
            raise ValueError(f"balance must be non-empty and non-negative, got {tuple(balance)}")
        if not 0.0 <= gr <= 1.0:
            raise ValueError(f"gr must be in [0, 1], got {gr}")
        self.balance = tuple(float(b) for b in balance)
        self.iou_target = bool(iou_target)
        self.gr = float(gr)

    def target(self, positive: Tensor, pred_boxes: Tensor | None = None, target_boxes: Tensor | None = None,
               quality: Tensor | None = None) -> Tensor:
        if self.iou_target:
            if pred_boxes is None or target_boxes is None:
                raise ValueError("iou_target=True needs pred_boxes and target_boxes")
            return iou_objectness_target(pred_boxes, target_boxes, positive, self.gr)
        if quality is None:
            return positive.float()
        return torch.where(positive, quality, torch.zeros_like(quality))

    def __call__(self, obj_logits: Tensor, priors: Priors, positive: Tensor, ignore: Tensor | None = None,
                 pred_boxes: Tensor | None = None, target_boxes: Tensor | None = None,
                 quality: Tensor | None = None) -> tuple[Tensor, Tensor]:
        nl = len(priors.num_level_priors)
        if nl != len(self.balance):
            raise ValueError(f"balance has {len(self.balance)} entries but the priors have {nl} levels")
        t = self.target(positive, pred_boxes, target_boxes, quality)
        return level_balanced_bce(obj_logits, t, priors.levels, self.balance, ignore)

    def __repr__(self) -> str:
        return f"ObjectnessLoss(balance={self.balance}, iou_target={self.iou_target}, gr={self.gr})"
