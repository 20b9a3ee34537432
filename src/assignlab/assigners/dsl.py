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
regions are not used (as in mmdet).

Implementation: batched over images with ``(B, G)`` padded GTs, in GT chunks under ``max_pairs``
(identical results), no loop over images or GTs. Only the GT's class depends on the IoU, so the
classification cost is the summed background cost of the *other* classes (a per-class table) plus
one soft-label term per pair -- no ``(B, G, N, C)`` tensor (float32 rounding of the class sum
differs from mmdet's by ulps). Dynamic k and the resolution of priors chosen several times work as
in :mod:`.simota`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ._dynamic_k import (
    FAR,
    ScratchOwner,
    any_inside,
    class_rows,
    empty_iou_assignment,
    grid_axes,
    iou_assignment,
    pairwise_iou,
    prepare_predictions,
    scratch_for,
    select_dynamic_k,
)
from .base import Assigner, check_scores_are, positive_int

__all__ = ["DynamicSoftLabelAssigner"]

IOU_EPS = 1e-7


class DynamicSoftLabelAssigner(ScratchOwner, Assigner):
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
        positive_int("topk", topk)
        if iou_weight < 0:
            raise ValueError(f"iou_weight must be >= 0, got {iou_weight}")
        check_scores_are(scores_are)
        self.soft_center_radius = float(soft_center_radius)
        self.topk = int(topk)
        self.iou_weight = float(iou_weight)
        self.scores_are = scores_are

    def _centre_cost(self, priors: Priors, centre: Tensor, out: Tensor, tmp: Tensor) -> Tensor:
        """``10 ** (|prior - GT centre| / stride - soft_center_radius)`` into ``out`` ``(B, g, N)``.

        mmdet's operations: ``((p - c) ** 2).sum(-1).sqrt() / stride``; the squared offsets are
        computed per grid column / row when the level is a grid (same values, fewer operations).
        """
        B, g = centre.shape[:2]
        cx, cy = centre[..., 0], centre[..., 1]
        for li, sl in enumerate(priors.level_slices()):
            grid = grid_axes(priors, li)
            o = out[:, :, sl]
            if grid is not None:
                xs, ys, rows, cols, na = grid
                dx2 = (xs.to(cx.dtype) - cx[..., None]).pow(2)  # (B, g, cols)
                dy2 = (ys.to(cy.dtype) - cy[..., None]).pow(2)  # (B, g, rows)
                torch.add(dx2[..., None, :, None], dy2[..., :, None, None], out=o.view(B, g, rows, cols, na))
            else:
                w = tmp[:, :, sl]
                torch.sub(priors.points[sl, 0].to(cx.dtype), cx[..., None], out=o).pow_(2)
                o.add_(torch.sub(priors.points[sl, 1].to(cy.dtype), cy[..., None], out=w).pow_(2))
            o.sqrt_().div_(priors.level_strides[li])
        out.sub_(self.soft_center_radius)
        return torch.pow(10, out, out=out)

    def _tables(self, scores: Tensor, candidates: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per-class tables for the soft-label classification cost.

        Returns ``([a, b, p], rest)``: ``a, b`` ``(B * C, N)`` the two logs of the BCE (logits:
        ``x`` and ``log_sigmoid(x)``; probabilities: clamped ``log(1 - p)`` and ``log(p)``), ``p``
        the probabilities, and ``rest`` ``(B * (C + 1), N)`` the summed background cost of all
        the *other* classes, ``inf`` for non-candidate priors and in row ``C`` (padded GTs).
        """
        B, N, C = scores.shape
        if self.scores_are == "logits":
            a = scores.transpose(1, 2).contiguous()  # (B, C, N)
            p_t = torch.sigmoid(a)
            b = F.logsigmoid(a)
            bg = a - b  # BCE_with_logits(x, 0) = (1 - 0) * x - log_sigmoid(x)
        else:
            p_t = scores.transpose(1, 2).contiguous()  # (B, C, N)
            a = torch.log1p(-p_t).clamp_(min=-100)
            b = torch.log(p_t).clamp_(min=-100)
            bg = a.neg()  # BCE(p, 0) = -max(log(1 - p), -100)
        bg.mul_(p_t * p_t)  # * |0 - p| ** 2
        total = bg.sum(dim=1, keepdim=True)
        total.masked_fill_(~candidates[:, None, :], float("inf"))
        rest = torch.empty(B, C + 1, N, dtype=scores.dtype, device=scores.device)
        torch.sub(total, bg, out=rest[:, :C])
        rest[:, C] = float("inf")
        return [t.view(B * C, N) for t in (a, b, p_t)], rest.view(B * (C + 1), N)

    @torch.no_grad()
    def __call__(
        self,
        priors: Priors,
        gt: GroundTruth,
        pred_boxes: Tensor | None = None,
        pred_scores: Tensor | None = None,
        **unused: Tensor,
    ) -> Assignment:
        # the logits (or probabilities) as given: the tables below apply the sigmoid themselves
        scores, boxes_p, gt_boxes = prepare_predictions(type(self).__name__, priors, gt, pred_boxes, pred_scores, None)
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        device, dtype, C = gt.device, scores.dtype, scores.shape[-1]
        if G == 0 or N == 0:
            return empty_iou_assignment(B, N, dtype, device)
        chunks = gt_chunks(B, G, N, self.max_pairs)
        scratch = scratch_for(self, device, B, max(c.stop - c.start for c in chunks), N, dtype)
        nan = torch.full((), float("nan"), dtype=dtype, device=device)

        # pass 1: candidates = centre strictly inside some real GT (NaN edges for padded rows)
        candidates = torch.zeros(B, N, dtype=torch.bool, device=device)
        for sl in chunks:
            x1, y1, x2, y2 = (torch.where(gt.mask[:, sl], gt_boxes[:, sl, i], nan) for i in range(4))
            candidates |= any_inside(priors, x1, y1, x2, y2, scratch)
        has_cand = candidates.any(dim=1, keepdim=True)
        tables, rest = self._tables(scores, candidates)
        boxes_c = torch.where(candidates[..., None], boxes_p, torch.full((), FAR, dtype=dtype, device=device))

        def cost_of(sl: slice) -> tuple[Tensor, Tensor]:
            g = sl.stop - sl.start
            gmask = gt.mask[:, sl]
            boxes = gt_boxes[:, sl]
            rows = class_rows(gt.labels[:, sl], gmask, C, 0)  # padded GTs read class 0 (finite)
            rest_rows = class_rows(gt.labels[:, sl], gmask, C + 1, C)  # ... and inf from ``rest``
            ious = pairwise_iou(boxes, boxes_c, out=scratch.get("iou", g), tmp=scratch.get("a", g),
                                tmp2=scratch.get("b", g))
            cost, t = scratch.get("cost", g), scratch.get("a", g)
            t2 = t.view(B * g, N)

            def pick(j: int) -> Tensor:
                if j == 3:
                    return torch.index_select(rest, 0, rest_rows, out=t2).view(B, g, N)
                return torch.index_select(tables[j], 0, rows, out=t2).view(B, g, N)

            # soft-label BCE against y = IoU for the GT's class: BCE(s, IoU) * |IoU - p| ** 2
            if self.scores_are == "logits":
                torch.neg(ious, out=cost).add_(1).mul_(pick(0)).sub_(pick(1))  # (1 - y) * x - log_sigmoid(x)
            else:
                torch.sub(ious, 1, out=cost).mul_(pick(0))  # (y - 1) * log(1 - p) - y * log(p)
                cost.sub_(pick(1).mul_(ious))
            d = torch.sub(ious, pick(2), out=t)
            cost.mul_(d.mul_(d)).add_(pick(3))  # + the other classes' background cost
            # + iou_weight * -log(IoU + eps), as log(IoU + eps) * -iou_weight (same bits)
            cost.add_(torch.add(ious, IOU_EPS, out=t).log_().mul_(-self.iou_weight))
            centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0
            cost.add_(self._centre_cost(priors, centre, t, scratch.get("b", g)))
            return cost, ious

        gt_index = select_dynamic_k(cost_of, chunks, gt.mask & has_cand, min(self.topk, N), N, dtype)
        return iou_assignment(gt_index, gt_boxes, boxes_p, candidates)
