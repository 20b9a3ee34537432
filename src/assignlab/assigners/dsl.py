"""Dynamic soft-label assignment (RTMDet).

Lyu, Zhang, Huang, Ma, Zhang, Chen, "RTMDet: An Empirical Study of Designing Real-Time Object
Detectors", arXiv:2212.07784 (2022), Sec. 3.3 ("dynamic soft label assignment"), eq. (2)-(5); the
reference implementation is mmdetection 3.3.0 ``DynamicSoftLabelAssigner``, which this module
reproduces exactly.

Candidates are the priors whose centre lies strictly inside *some* GT box. For a GT ``g`` and a
candidate ``n`` with predicted box ``b_n`` and class scores ``s_n`` (C classes)::

    IoU      = IoU(b_n, g)
    C_cls    = sum_c BCE(s_n[c], y[c]) * |y[c] - sigmoid(s_n[c])|**2,  y = onehot(label_g) * IoU   (eq. 3)
    C_reg    = -log(IoU + 1e-7) * iou_weight                                                       (eq. 4)
    C_center = 10 ** (|center(n) - center(g)| / stride_n - soft_center_radius)                     (eq. 5)
    cost     = C_cls + C_reg + C_center

i.e. the classification cost is a quality-focal-style BCE against the *soft* label (the IoU), so a
confident prediction with a poor box is not cheap. Then the SimOTA dynamic-k rule: ``k_g = max(1,
int(sum of the top-``topk`` IoUs of g over the candidates))``; each GT takes its ``k_g`` cheapest
candidates; a prior chosen by several GTs keeps the GT of lowest cost over all GTs.

Worked example of the centre prior (stride 8, ``soft_center_radius=3``): a prior 8 px from the GT
centre has distance 1 stride -> ``10 ** (1 - 3) = 0.01``; at 4 strides it is ``10 ** 1 = 10``, which
outweighs any plausible classification or IoU cost, so far-off priors are effectively excluded.

Example tensors (one GT, two candidates, ``topk=13``)::

    ious [[0.85, 0.40]] -> k = max(1, int(1.25)) = 1
    cost [[1.20, 4.70]] -> gt_index [0, -1]; quality [0.85, 0]

Scores: mmdet's RTMDet passes **logits** (``scores_are="logits"``, the default; the assigner
applies the sigmoid); pass ``scores_are="probabilities"`` when the scores are already sigmoided
(then ``BCE`` is the probability form, with torch's log clamp at -100).

Outputs: ``quality`` = the IoU soft label of each positive (RTMDet's classification target);
``box_weight`` 1 on positives; ``extras["overlaps"]`` = that IoU, ``extras["candidates"]`` the
``(B, N)`` candidate mask. An image with no real GT or no candidate is all negative. Ignore
regions are not used (as in mmdet). Batched over images and GT chunks under ``max_pairs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ._dynamic_k import (
    DynamicKResolver,
    aligned_iou,
    dynamic_k_select,
    gather_class_columns,
    pairwise_iou,
    prepare_scores,
)
from .base import Assigner, check_predictions

__all__ = ["DynamicSoftLabelAssigner"]

IOU_EPS = 1e-7


class DynamicSoftLabelAssigner(Assigner):
    """RTMDet's dynamic soft-label assigner. See the module docstring.

    Args:
        soft_center_radius: the ``r`` of the soft centre prior ``10 ** (d / stride - r)``.
        topk: how many top IoUs are summed to get each GT's dynamic k.
        iou_weight: weight of the ``-log(IoU)`` cost.
        scores_are: ``"logits"`` (mmdet default) or ``"probabilities"``.
        max_pairs: memory budget (prior x GT pairs per intermediate tensor).
    """

    requires_predictions = True

    def __init__(
        self,
        soft_center_radius: float = 3.0,
        topk: int = 13,
        iou_weight: float = 3.0,
        scores_are: str = "logits",
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        super().__init__(max_pairs)
        if soft_center_radius < 0:
            raise ValueError(f"soft_center_radius must be >= 0, got {soft_center_radius}")
        if int(topk) != topk or topk < 1:
            raise ValueError(f"topk must be a positive integer, got {topk}")
        if iou_weight < 0:
            raise ValueError(f"iou_weight must be >= 0, got {iou_weight}")
        if scores_are not in ("probabilities", "logits"):
            raise ValueError(f"scores_are must be 'probabilities' or 'logits', got {scores_are!r}")
        self.soft_center_radius = float(soft_center_radius)
        self.topk = int(topk)
        self.iou_weight = float(iou_weight)
        self.scores_are = scores_are

    @staticmethod
    def _in_boxes(priors: Priors, boxes: Tensor, gmask: Tensor) -> Tensor:
        px, py = priors.points[:, 0], priors.points[:, 1]
        x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
        inside = torch.minimum(torch.minimum(px - x1, py - y1), torch.minimum(x2 - px, y2 - py)) > 0
        return inside & gmask[:, :, None]

    def _bce(self, scores: Tensor, target: Tensor) -> Tensor:
        if self.scores_are == "logits":
            return F.binary_cross_entropy_with_logits(scores, target, reduction="none")
        return F.binary_cross_entropy(scores, target, reduction="none")

    @torch.no_grad()
    def __call__(
        self,
        priors: Priors,
        gt: GroundTruth,
        pred_boxes: Tensor | None = None,
        pred_scores: Tensor | None = None,
        **unused: Tensor,
    ) -> Assignment:
        check_predictions(priors, gt, pred_boxes, pred_scores, type(self).__name__)
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        device = gt.device
        probs, logits = prepare_scores(pred_scores, self.scores_are)
        dtype = probs.dtype if probs.dtype == torch.float64 else torch.float32
        probs = probs.to(dtype)
        raw = (logits if logits is not None else probs).to(dtype)  # what the BCE takes
        C = probs.shape[-1]
        boxes_p = pred_boxes.detach().to(dtype)
        gt_boxes = gt.boxes.to(dtype)
        if G and bool(((gt.labels < 0) | (gt.labels >= C))[gt.mask].any()):
            raise ValueError(f"DynamicSoftLabelAssigner: a GT label is outside [0, {C}) (pred_scores has {C} classes)")
        zeros_bn = torch.zeros(B, N, dtype=dtype, device=device)
        if G == 0 or N == 0:
            return Assignment.empty(B, N, device=device).replace(
                extras={"overlaps": zeros_bn, "candidates": torch.zeros(B, N, dtype=torch.bool, device=device)}
            )
        chunks = gt_chunks(B, G, N, self.max_pairs)

        # pass 1: candidates = centre strictly inside some real GT
        candidates = torch.zeros(B, N, dtype=torch.bool, device=device)
        for sl in chunks:
            candidates |= self._in_boxes(priors, gt_boxes[:, sl], gt.mask[:, sl]).any(dim=1)

        # classification cost of every class as background (soft label 0): BCE(s, 0) * sigmoid(s)**2
        bg = self._bce(raw, torch.zeros_like(raw)) * (0 - probs).abs().pow(2.0)  # (B, N, C)
        bg_sum = bg.sum(dim=-1)  # (B, N)
        bg_t = bg.transpose(1, 2).contiguous()  # (B, C, N)
        raw_t = raw.transpose(1, 2).contiguous()
        prob_t = probs.transpose(1, 2).contiguous()
        strides = priors.strides.to(dtype)
        pts = priors.points.to(dtype)

        resolver = DynamicKResolver(B, N, dtype, device)
        for sl in chunks:
            gmask = gt.mask[:, sl]
            boxes = gt_boxes[:, sl]
            labels = gt.labels[:, sl]
            # soft centre prior
            centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0  # (B, g, 2)
            dx = pts[:, 0] - centre[..., 0, None]
            dy = pts[:, 1] - centre[..., 1, None]
            dist = (dx.pow(2) + dy.pow(2)).sqrt() / strides
            centre_cost = torch.pow(10, dist - self.soft_center_radius)
            # IoU cost
            ious = pairwise_iou(boxes, boxes_p)
            iou_cost = -torch.log(ious + IOU_EPS) * self.iou_weight
            # soft-label classification cost: swap the GT class's background term for its IoU term
            s_l = gather_class_columns(raw_t, labels)
            p_l = gather_class_columns(prob_t, labels)
            fg = self._bce(s_l, ious) * (ious - p_l).abs().pow(2.0)
            cls_cost = bg_sum[:, None, :] + (fg - gather_class_columns(bg_t, labels))
            cost = cls_cost + iou_cost + centre_cost
            selected, _ = dynamic_k_select(cost, ious, candidates, gmask, self.topk)
            resolver.update(selected, cost, gmask, sl.start)
            del dx, dy, dist, centre_cost, ious, iou_cost, s_l, p_l, fg, cls_cost, cost, selected

        gt_index = resolver.gt_index()
        positive = gt_index >= 0
        assigned = torch.gather(gt_boxes, 1, gt_index.clamp(min=0)[..., None].expand(B, N, 4))
        overlaps = torch.where(positive, aligned_iou(assigned, boxes_p), zeros_bn)
        return Assignment.from_gt_index(
            gt_index,
            quality=overlaps,
            extras={"overlaps": overlaps, "candidates": candidates},
        )
