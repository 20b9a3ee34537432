"""IoU-family box losses on aligned pairs of ``xyxy`` boxes: ``loss = 1 - similarity``.

=======  =========================================================================  ==========
kind     similarity                                                                 paper
=======  =========================================================================  ==========
iou      ``IoU = inter / (union + eps)``                                            (Yu et al., ACM MM 2016, UnitBox)
giou     ``IoU - (C - union) / C``, ``C`` = area of the smallest enclosing box      Rezatofighi et al., CVPR 2019
diou     ``IoU - rho^2 / c^2``, ``rho`` = centre distance, ``c`` = enclosing diag.  Zheng et al., AAAI 2020
ciou     ``DIoU - alpha * v``, ``v = 4/pi^2 (atan(wg/hg) - atan(w/h))^2``,          Zheng et al., AAAI 2020
         ``alpha = v / ((1 - IoU) + v)`` (treated as a constant, no gradient)
=======  =========================================================================  ==========

GIoU and DIoU are ``torchvision.ops.generalized_box_iou_loss`` / ``distance_box_iou_loss``, which
reproduce mmdetection 3.3.0's ``GIoULoss`` / ``DIoULoss`` to within 6e-8 on the conformance
fixtures, zero-area predictions included. CIoU is written here because two implementations disagree
and both have a defect we must not copy:

* mmdetection (and the journal version of the CIoU paper) only applies the aspect term when
  ``IoU > 0.5`` and clamps CIoU to [-1, 1]; its ``alpha = v / (1 - IoU + v)`` is ``0 / 0 = NaN``
  for identical boxes whose IoU rounds to exactly 1.0 in float32 (fixture
  ``edge_loss_ciou_identical_boxes``). ``torchvision.ops.complete_box_iou_loss`` has no gate and
  is NaN for a zero-area (point) prediction (``atan(0 / 0)``).
* Ultralytics / YOLOv5 (``bbox_iou(..., CIoU=True)``, ``eps = 1e-7``) use
  ``alpha = v / (v - IoU + 1 + eps)``, no gate, no clamp.

:func:`complete_iou` takes both variants as options and is finite for identical boxes (``v = 0``
gives ``alpha = 0``, i.e. CIoU = DIoU, the mathematically intended value) and for zero-area boxes
(``eps`` is added to heights in the aspect term, as both references do). Worked example::

    pred   (0, 0, 10, 10)   target (5, 0, 15, 10)
    IoU = 50 / 150 = 0.3333; enclosing box 15 x 10 -> c^2 = 325; rho^2 = 25 -> DIoU = 0.2564
    same aspect ratio -> v = 0 -> CIoU = DIoU = 0.2564, loss 0.7436
    GIoU: C = 150 = union -> GIoU = IoU = 0.3333
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import distance_box_iou_loss, generalized_box_iou_loss

from .reduce import ElementwiseLoss, finite

__all__ = [
    "BOX_LOSSES",
    "CIoULoss",
    "DIoULoss",
    "GIoULoss",
    "IoULoss",
    "MMDET_CIOU",
    "ULTRALYTICS_CIOU",
    "aligned_iou",
    "box_iou_loss",
    "complete_iou",
]

BOX_LOSSES = ("iou", "giou", "diou", "ciou")

#: mmdetection 3.3.0 ``CIoULoss`` (minus its NaN): eps 1e-6, aspect term only when IoU > 0.5, clamp.
MMDET_CIOU = {"eps": 1e-6, "alpha_iou_threshold": 0.5, "alpha_eps": 0.0, "clamp": True}
#: Ultralytics / YOLOv5 ``bbox_iou(CIoU=True)``: eps 1e-7, ``alpha = v / (v - IoU + 1 + eps)``.
ULTRALYTICS_CIOU = {"eps": 1e-7, "alpha_iou_threshold": None, "alpha_eps": 1e-7, "clamp": False}


def _plain_iou(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    lt = torch.maximum(pred[..., :2], target[..., :2])
    rb = torch.minimum(pred[..., 2:], target[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    ap = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    ag = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
    return inter / (ap + ag - inter + eps)


def complete_iou(
    pred: Tensor,
    target: Tensor,
    eps: float = 1e-7,
    alpha_iou_threshold: float | None = None,
    alpha_eps: float = 1e-7,
    clamp: bool = False,
) -> Tensor:
    """CIoU of aligned ``xyxy`` pairs ``(..., 4) x (..., 4) -> (...)`` (see the module docstring).

    Args:
        eps: added to the union, the squared enclosing diagonal and the heights of the aspect term.
        alpha_iou_threshold: apply the aspect term only where ``IoU > threshold`` (mmdetection: 0.5);
            ``None`` always applies it (paper, Ultralytics).
        alpha_eps: added to the denominator of ``alpha``. Where the denominator is 0 (identical
            boxes with IoU rounded to 1, hence ``v = 0``) ``alpha`` is 0 whatever this value.
        clamp: clamp the result to [-1, 1] (mmdetection).
    """
    lt = torch.maximum(pred[..., :2], target[..., :2])
    rb = torch.minimum(pred[..., 2:], target[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    w1, h1 = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1]
    w2, h2 = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    enc_wh = (torch.maximum(pred[..., 2:], target[..., 2:]) - torch.minimum(pred[..., :2], target[..., :2])).clamp(min=0)
    c2 = enc_wh[..., 0] ** 2 + enc_wh[..., 1] ** 2 + eps
    dx = (target[..., 0] + target[..., 2]) - (pred[..., 0] + pred[..., 2])
    dy = (target[..., 1] + target[..., 3]) - (pred[..., 1] + pred[..., 3])
    rho2 = (dx**2 + dy**2) / 4

    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        denom = (1 - iou) + v + alpha_eps
        ok = denom > 0
        alpha = torch.where(ok, v / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(v))
        if alpha_iou_threshold is not None:
            alpha = alpha * (iou > alpha_iou_threshold).to(alpha.dtype)
    ciou = iou - (rho2 / c2 + alpha * v)
    return ciou.clamp(-1.0, 1.0) if clamp else ciou


def check_ciou_kwargs(kwargs, owner: str = "") -> dict:
    """A copy of CIoU keyword arguments whose numbers are finite (``ValueError`` naming the key,
    as ``owner[key]`` when ``owner`` is given)."""
    out = dict(kwargs)
    for k, v in out.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            finite(f"{owner}[{k!r}]" if owner else k, v)
    return out


def aligned_iou(pred: Tensor, target: Tensor, kind: str = "ciou", eps: float = 1e-7, **ciou_kwargs) -> Tensor:
    """Similarity ``(...)`` of aligned pairs for ``kind`` in ``iou | giou | diou | ciou``
    (``ciou_kwargs`` go to :func:`complete_iou`)."""
    if kind == "ciou":
        return complete_iou(pred, target, eps=eps, **ciou_kwargs)
    return 1 - box_iou_loss(pred, target, kind, eps)


def box_iou_loss(pred: Tensor, target: Tensor, kind: str = "ciou", eps: float = 1e-7, **ciou_kwargs) -> Tensor:
    """Elementwise ``1 - similarity`` of aligned pairs ``(..., 4) -> (...)``."""
    if kind == "iou":
        return 1 - _plain_iou(pred, target, eps)
    if kind == "giou":
        return generalized_box_iou_loss(pred, target, reduction="none", eps=eps)
    if kind == "diou":
        return distance_box_iou_loss(pred, target, reduction="none", eps=eps)
    if kind == "ciou":
        return 1 - complete_iou(pred, target, eps=eps, **ciou_kwargs)
    raise ValueError(f"box loss kind must be one of {BOX_LOSSES}, got {kind!r}")


class IoULoss(ElementwiseLoss):
    """``IoULoss(kind="ciou", eps=1e-7)``: one loss value per box pair. For CIoU, extra keyword
    arguments select the variant (:data:`MMDET_CIOU`, :data:`ULTRALYTICS_CIOU`). A weight of
    shape ``(N, 4)`` is averaged over its last axis (mmdetection convention)."""

    kind = "iou"

    def __init__(self, kind: str | None = None, eps: float = 1e-7, reduction: str = "mean",
                 loss_weight: float = 1.0, **ciou_kwargs) -> None:
        super().__init__(reduction, loss_weight)
        kind = kind or type(self).kind
        if kind not in BOX_LOSSES:
            raise ValueError(f"kind must be one of {BOX_LOSSES}, got {kind!r}")
        if kind != "ciou" and ciou_kwargs:
            raise ValueError(f"{sorted(ciou_kwargs)} only apply to kind='ciou'")
        self.kind = kind
        self.eps = finite("eps", eps)
        self.ciou_kwargs = check_ciou_kwargs(ciou_kwargs)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return box_iou_loss(pred, target, self.kind, self.eps, **self.ciou_kwargs)

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None) -> Tensor:
        if weight is not None and weight.dim() == pred.dim():
            weight = weight.mean(dim=-1)
        return super().forward(pred, target, weight, avg_factor, reduction_override)


class GIoULoss(IoULoss):
    kind = "giou"


class DIoULoss(IoULoss):
    kind = "diou"


class CIoULoss(IoULoss):
    kind = "ciou"
