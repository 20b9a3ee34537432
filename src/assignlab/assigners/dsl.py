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
differs from mmdet's by ulps). The dynamic k is selected sparsely
(:func:`~._dynamic_k.select_dynamic_k`): every GT's k comes from the pairs whose boxes overlap (an
overlap index, not all pairs); its choice is searched among its overlapping pairs within ``R =
ceil(soft_center_radius) + 2`` strides of its centre, which suffices when the ``k``-th is cheaper
than every other pair can be: at IoU 0 at least ``min class cost at IoU 0 + 3 * -log(1e-7)``
(the centre cost is positive), farther at least ``the other classes' background cost + 10 ** (R -
soft_center_radius)`` (``>= 100``); otherwise among all its overlapping pairs, and in the rare
last case among all priors. The decisions are those of the dense rule; exact ties go to the lower
prior index (priors) and the lower GT index (conflicts). Time and memory grow linearly with ``G``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ._dynamic_k import (
    PairCosts,
    Scratch,
    any_inside,
    empty_iou_assignment,
    iou_assignment,
    prepare_predictions,
    select_dynamic_k,
)
from .base import Assigner, check_scores_are, positive_int

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
        positive_int("topk", topk)
        if iou_weight < 0:
            raise ValueError(f"iou_weight must be >= 0, got {iou_weight}")
        check_scores_are(scores_are)
        self.soft_center_radius = float(soft_center_radius)
        self.topk = int(topk)
        self.iou_weight = float(iou_weight)
        self.scores_are = scores_are

    def _soft_cls(self, ious: Tensor, a: Tensor, b: Tensor, p: Tensor, rest: Tensor) -> Tensor:
        """Soft-label BCE for the GT's class, ``BCE(s, IoU) * |IoU - p| ** 2``, + the background cost
        of the other classes (``a, b, p``: the class's tables of :meth:`_tables`)."""
        if self.scores_are == "logits":
            cost = torch.neg(ious).add_(1).mul_(a).sub_(b)  # (1 - y) * x - log_sigmoid(x)
        else:
            cost = torch.sub(ious, 1).mul_(a)  # (y - 1) * log(1 - p) - y * log(p)
            cost.sub_(b * ious)
        d = torch.sub(ious, p)
        return cost.mul_(d.mul_(d)).add_(rest)

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
        scratch = Scratch(device).configure(B, max(c.stop - c.start for c in chunks), N, dtype)
        nan = torch.full((), float("nan"), dtype=dtype, device=device)

        # candidates = centre strictly inside some real GT (NaN edges for padded rows)
        candidates = torch.zeros(B, N, dtype=torch.bool, device=device)
        for sl in chunks:
            x1, y1, x2, y2 = (torch.where(gt.mask[:, sl], gt_boxes[:, sl, i], nan) for i in range(4))
            candidates |= any_inside(priors, x1, y1, x2, y2, scratch)
        del scratch
        gt_valid = gt.mask & candidates.any(dim=1, keepdim=True)
        (ta, tb, tp), rest = self._tables(scores, candidates)

        # pair costs: soft-label class cost + iou_weight * -log(IoU + eps) (as log(IoU + eps) *
        # -iou_weight, the same bits) + 10 ** (|prior - GT centre| / stride - soft_center_radius)
        centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2.0  # (B, G, 2)
        cx, cy = centre[..., 0].reshape(-1), centre[..., 1].reshape(-1)
        img = torch.arange(B, device=device)[:, None]
        lab = torch.where(gt.mask, gt.labels, 0)  # padded GTs read class 0 (finite) ...
        off = ((img * C + lab) * N).reshape(-1)
        off_rest = ((img * (C + 1) + torch.where(gt.mask, gt.labels, C)) * N).reshape(-1)  # ... and inf from ``rest``
        flat = [t.reshape(-1) for t in (ta, tb, tp)]
        flat_rest = rest.reshape(-1)
        px = priors.points[:, 0].to(dtype).contiguous()
        py = priors.points[:, 1].to(dtype).contiguous()
        stride = priors.strides.to(device=device, dtype=dtype)

        def cost(rows: Tensor, n: Tensor, ious: Tensor, in_window: bool) -> Tensor:
            ti = off.take(rows) + n
            a_, b_, p_ = (t.take(ti) for t in flat)
            c = self._soft_cls(ious, a_, b_, p_, flat_rest.take(off_rest.take(rows) + n))
            c.add_(torch.add(ious, IOU_EPS).log_().mul_(-self.iou_weight))
            d = torch.sub(px.take(n), cx.take(rows)).pow_(2)  # rows and n broadcast to the pairs' shape
            d.add_(torch.sub(py.take(n), cy.take(rows)).pow_(2))
            d.sqrt_().div_(stride.take(n)).sub_(self.soft_center_radius)
            return c.add_(torch.pow(10, d))

        tabs = [t.view(B * C, N) for t in (ta, tb, tp)]
        rest_rows = rest.view(B * (C + 1), N)
        row_tab, row_rest = torch.div(off, N, rounding_mode="floor"), torch.div(off_rest, N, rounding_mode="floor")

        def cost_all(rows: Tensor, ious: Tensor) -> Tensor:  # all priors of the rows: table rows
            ti = row_tab.index_select(0, rows)
            a_, b_, p_ = (t.index_select(0, ti) for t in tabs)
            c = self._soft_cls(ious, a_, b_, p_, rest_rows.index_select(0, row_rest.index_select(0, rows)))
            c.add_(torch.add(ious, IOU_EPS).log_().mul_(-self.iou_weight))
            d = torch.sub(px, cx.index_select(0, rows)[:, None]).pow_(2)
            d.add_(torch.sub(py, cy.index_select(0, rows)[:, None]).pow_(2))
            d.sqrt_().div_(stride).sub_(self.soft_center_radius)
            return c.add_(torch.pow(10, d))

        # which pairs to evaluate first: the overlapping ones within R = ceil(soft_center_radius) + 2
        # strides of the GT centre (in x and y). Bounds of the others (a small margin covers the
        # rounding): with IoU 0, the class cost at IoU 0 + log(eps) * -iou_weight (the centre cost
        # is positive); farther, the other classes' background cost + log(1 + eps) * -iou_weight
        # + 10 ** (R - soft_center_radius)
        R = math.ceil(self.soft_center_radius) + 2
        reach = stride * R

        def near(rows: Tensor, n: Tensor) -> Tensor:
            r = reach.take(n)
            ok = torch.sub(px.take(n), cx.take(rows)).abs_() <= r
            return ok.logical_and_(torch.sub(py.take(n), cy.take(rows)).abs_() <= r)

        def iou_cost(iou: float) -> float:  # the IoU cost term in float64 on the host (no device
            # read-back); within an ulp of the pairs' own, far inside the bounds' 1e-4 margin
            return -self.iou_weight * math.log(iou + IOU_EPS)

        at_zero = self._soft_cls(torch.zeros_like(ta), ta, tb, tp, rest.view(B, C + 1, N)[:, :C].reshape(B * C, N))
        zero_iou = at_zero.view(B, C, N).amin(dim=2).double() + iou_cost(0.0)  # (B, C)
        far = rest.view(B, C + 1, N)[:, :C].amin(dim=2).double() + (iou_cost(1.0) + 10.0 ** (R - self.soft_center_radius))
        zero_iou = zero_iou.mul_(1 - 1e-4).sub_(1e-4).to(dtype).gather(1, lab)
        far = far.mul_(1 - 1e-4).sub_(1e-4).to(dtype).gather(1, lab)
        pc = PairCosts(
            gt_boxes=gt_boxes, gt_valid=gt_valid, pred_boxes=boxes_p, candidates=candidates, cost=cost,
            bound=torch.minimum(zero_iou, far), bound_zero_iou=zero_iou, near=near, cost_all=cost_all,
            base_size=float(min(priors.level_strides)),
        )
        gt_index = select_dynamic_k(pc, min(self.topk, N), chunks, self.max_pairs)
        return iou_assignment(gt_index, gt_boxes, boxes_p, candidates)
