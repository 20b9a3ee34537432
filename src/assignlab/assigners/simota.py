"""SimOTA: YOLOX's simplified optimal-transport assignment.

Ge, Liu, Wang, Li, Sun, "YOLOX: Exceeding YOLO Series in 2021", arXiv:2107.08430 (2021), Sec. 2.2
("SimOTA"), which simplifies OTA (Ge et al., CVPR 2021). For each GT ``g`` and candidate prior
``n`` the pairwise cost is (YOLOX eq. 1)::

    c[g, n] = cls_weight * L_cls(p_n, y_g) + iou_weight * -log(IoU(box_n, g) + eps) + P * [n not central to g]

with ``L_cls`` the binary cross-entropy of the predicted class *probabilities* ``p_n`` (C
classes) against the GT's one-hot label (summed over classes), and ``P`` a large penalty. Each
GT then takes its ``k_g`` cheapest candidates, where the *dynamic k* is

    k_g = max(1, int(sum of the top ``candidate_topk`` IoUs of g over all candidates)),

and a prior chosen by several GTs keeps the one of lowest cost over *all* GTs.

Two flavours (same algorithm, different geometry and constants):

=================  ====================================  ======================================
                   ``flavour="mmdet"`` (default)         ``flavour="yolox"``
=================  ====================================  ======================================
reference          mmdetection 3.3.0 ``SimOTAAssigner``  Megvii YOLOX ``get_assignments``
centre region      ``center_radius`` strides (2.5)        ``center_radius`` strides (use 1.5)
candidates         centre strictly inside *some* GT box   centre strictly inside *some* GT's
                   or *some* GT's centre region          centre region
penalty ``P``      1e5 unless in box AND in centre       1e6 unless in the centre region
IoU eps            1e-7                                  1e-8
=================  ====================================  ======================================

:meth:`SimOTAAssigner.yolox` builds the YOLOX configuration (``center_radius=1.5``).

Worked example (mmdet flavour, stride 8, ``center_radius=2.5``): a GT ``[100, 100, 140, 120]`` has
its centre at (120, 110); the centre region is ``120 +- 20`` by ``110 +- 20``, i.e.
``[100, 90, 140, 130]``. A prior at (104, 92) is in the centre region but not in the box (92 <
100): it is a candidate, but its cost gets +1e5, so it is only chosen when ``k_g`` exceeds the
number of priors that are both in the box and in the centre region. A prior at (132, 134) is in
neither and is not a candidate of this GT (unless another GT makes it one, in which case it pays
the penalty here too).

Example tensors (one image, one GT, three candidates, ``candidate_topk=10``)::

    ious  [[0.90, 0.60, 0.20]]   -> sum 1.70 -> k = 1
    cost  [[0.80, 1.90, 5.30]]   -> the GT takes prior 0
    gt_index [0, -1, -1]; quality [0.90, 0, 0]

Outputs: ``gt_index``; ``quality`` = IoU of the positive's *predicted* box with its GT (mmdet's
``YOLOXHead`` trains the class score of a positive toward ``onehot * IoU``; its objectness target
is 1 on positives); ``box_weight`` 1 on positives.
``extras["overlaps"]`` = the same IoU (0 off the positives), ``extras["candidates"]`` = the
``(B, N)`` candidate mask. Ignore regions are not used (as in mmdet). An image with no real GT or
no candidate is all negative.

Implementation: batched over images with ``(B, G)`` padded GTs, in GT chunks under ``max_pairs``
(identical results), no loop over images or GTs. The classification cost comes from a per-class
table ``(B, C + 1, N)`` -- the BCE of a prior if every class were background, with one class
swapped to foreground -- looked up per pair, so no ``(B, G, N, C)`` tensor is built (the sum over
classes is therefore rounded differently from mmdet's, by float32 ulps). The dynamic k is selected
sparsely (:func:`~._dynamic_k.select_dynamic_k`): every GT's k comes from the pairs whose boxes
overlap (an overlap index, not all pairs); its choice is searched among its central priors first
(found per grid level by ``searchsorted``), which suffices when the ``k``-th is cheaper than
``min class cost + 3 * -log(1 + eps) + P`` (a bound of every non-central pair); otherwise among
all its overlapping pairs too (bound ``min class cost + 3 * -log(eps) + P``), and in the rare last
case among all priors. The decisions are those of the dense rule; exact ties go to the lower
prior index (priors) and the lower GT index (conflicts). Time and memory grow linearly with ``G``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ._dynamic_k import (
    PairCosts,
    Scratch,
    any_inside,
    empty_iou_assignment,
    grid_window,
    iou_assignment,
    prepare_predictions,
    select_dynamic_k,
)
from .base import Assigner, check_scores_are, positive_int

__all__ = ["SimOTAAssigner"]

_FLAVOURS = {
    # flavour: (penalty, iou eps, candidates also from the box test)
    "mmdet": (1e5, 1e-7, True),
    "yolox": (1e6, 1e-8, False),
}


class SimOTAAssigner(Assigner):
    """SimOTA dynamic-k assignment (YOLOX). See the module docstring.

    Args:
        center_radius: half size of the centre region, in strides of the prior's level.
        candidate_topk: how many top IoUs are summed to get each GT's dynamic k.
        iou_weight: weight of the ``-log(IoU)`` cost.
        cls_weight: weight of the classification (BCE) cost.
        flavour: ``"mmdet"`` (mmdetection 3.3.0) or ``"yolox"`` (the original YOLOX code).
        penalty: cost added to non-central pairs; ``None`` takes the flavour's (1e5 / 1e6).
        iou_eps: epsilon of ``-log(IoU + eps)``; ``None`` takes the flavour's (1e-7 / 1e-8).
        scores_are: ``"probabilities"`` (mmdet / YOLOX pass probabilities) or ``"logits"``.
        max_pairs: memory budget (prior x GT pairs per intermediate tensor).
    """

    requires_predictions = True

    def __init__(
        self,
        center_radius: float = 2.5,
        candidate_topk: int = 10,
        iou_weight: float = 3.0,
        cls_weight: float = 1.0,
        flavour: str = "mmdet",
        penalty: float | None = None,
        iou_eps: float | None = None,
        scores_are: str = "probabilities",
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        super().__init__(max_pairs)
        if not center_radius > 0:
            raise ValueError(f"center_radius must be positive, got {center_radius}")
        positive_int("candidate_topk", candidate_topk)
        if iou_weight < 0:
            raise ValueError(f"iou_weight must be >= 0, got {iou_weight}")
        if cls_weight < 0:
            raise ValueError(f"cls_weight must be >= 0, got {cls_weight}")
        if flavour not in _FLAVOURS:
            raise ValueError(f"flavour must be one of {sorted(_FLAVOURS)}, got {flavour!r}")
        check_scores_are(scores_are)
        pen, eps, _ = _FLAVOURS[flavour]
        if penalty is not None and not penalty > 0:
            raise ValueError(f"penalty must be positive, got {penalty}")
        if iou_eps is not None and not iou_eps > 0:
            raise ValueError(f"iou_eps must be positive, got {iou_eps}")
        self.center_radius = float(center_radius)
        self.candidate_topk = int(candidate_topk)
        self.iou_weight = float(iou_weight)
        self.cls_weight = float(cls_weight)
        self.flavour = flavour
        self.penalty = float(pen if penalty is None else penalty)
        self.iou_eps = float(eps if iou_eps is None else iou_eps)
        self.scores_are = scores_are

    @classmethod
    def yolox(cls, **overrides) -> SimOTAAssigner:
        """The original YOLOX configuration: ``flavour="yolox"``, ``center_radius=1.5``."""
        kw = dict(center_radius=1.5, candidate_topk=10, iou_weight=3.0, cls_weight=1.0, flavour="yolox")
        kw.update(overrides)
        return cls(**kw)

    # -- geometry -------------------------------------------------------------------------
    def _geometry(
        self, priors: Priors, boxes: Tensor, gmask: Tensor
    ) -> tuple[tuple[Tensor, ...], list[tuple[Tensor, ...]], list[tuple[Tensor, ...]]]:
        """``(box edges, centre regions, central rectangles)`` of the GTs ``(B, g, 4)``, per level.

        Candidates: a prior centre in some GT box or some centre region (mmdet), or in some centre
        region (yolox). Central (the pair pays no penalty): in the box AND in the centre region
        (mmdet), i.e. inside their intersection, or in the centre region (yolox). All tests are
        strict, ``p > edge``, equal bit for bit to mmdet's ``p - edge > 0``. Padded rows get NaN
        edges, which contain nothing.
        """
        nan = torch.full((), float("nan"), dtype=boxes.dtype, device=boxes.device)
        x1, y1, x2, y2 = (torch.where(gmask, boxes[..., i], nan) for i in range(4))
        cx = (x1 + x2) / 2.0
        cy = (y1 + y2) / 2.0
        regions = []
        for stride in priors.level_strides:
            # mmdet: gt_cx - center_radius * stride (a float32 product), etc.
            rad = torch.full((), stride, dtype=boxes.dtype, device=boxes.device) * self.center_radius
            regions.append((cx - rad, cy - rad, cx + rad, cy + rad))
        central = regions
        if _FLAVOURS[self.flavour][2]:  # inside both = inside the intersection
            central = [(torch.maximum(x1, l), torch.maximum(y1, t), torch.minimum(x2, r), torch.minimum(y2, b))
                       for l, t, r, b in regions]
        return (x1, y1, x2, y2), regions, central

    def _candidates(self, priors: Priors, gt_boxes: Tensor, gt: GroundTruth, chunks: list[slice]) -> Tensor:
        """``(B, N)``: centre in some box or centre region (mmdet), in some centre region (yolox)."""
        B, N = gt.batch_size, priors.num_priors
        scratch = Scratch(gt_boxes.device).configure(B, max(c.stop - c.start for c in chunks), N, gt_boxes.dtype)
        candidates = torch.zeros(B, N, dtype=torch.bool, device=gt_boxes.device)
        for sl in chunks:
            box, regions, _ = self._geometry(priors, gt_boxes[:, sl], gt.mask[:, sl])
            candidates |= any_inside(priors, *box, scratch, per_level=regions)
            if _FLAVOURS[self.flavour][2]:
                candidates |= any_inside(priors, *box, scratch)
        return candidates

    def _class_table(self, probs: Tensor, candidates: Tensor) -> Tensor:
        """``(B, C + 1, N)``: ``cls_weight * BCE`` of each prior's probabilities against each class's
        one-hot label (= every class as background, with that class swapped to foreground); row
        ``C`` (padded GTs) and non-candidate priors ``+inf``."""
        B, N, C = probs.shape
        dtype, device = probs.dtype, probs.device
        p_t = torch.empty(B, C, N, dtype=dtype, device=device).copy_(probs.transpose(1, 2))  # own copy: edited below
        log_pos = torch.log(p_t).clamp_(min=-100)  # -BCE(p, 1), clamped as F.binary_cross_entropy
        log_neg = p_t.neg_().log1p_().clamp_(min=-100)  # -BCE(p, 0)
        bg = log_neg.sum(dim=1, keepdim=True).neg_()  # (B, 1, N) cost if every class were background
        table = torch.empty(B, C + 1, N, dtype=dtype, device=device)
        # swap the GT's class to foreground: + BCE(p, 1) - BCE(p, 0) = log(1 - p) - log(p)
        torch.sub(log_neg, log_pos, out=table[:, :C]).add_(bg)
        del log_neg, log_pos, p_t, bg
        if self.cls_weight != 1.0:
            table[:, :C] *= self.cls_weight
        # + inf (never chosen) for the priors that are no candidate (after the weight: 0 * inf)
        off = torch.zeros(B, 1, N, dtype=dtype, device=device).masked_fill_(~candidates[:, None, :], float("inf"))
        table[:, :C] += off
        table[:, C] = float("inf")
        return table

    # -- main -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        priors: Priors,
        gt: GroundTruth,
        pred_boxes: Tensor | None = None,
        pred_scores: Tensor | None = None,
        **unused: Tensor,
    ) -> Assignment:
        probs, boxes_p, gt_boxes = prepare_predictions(
            type(self).__name__, priors, gt, pred_boxes, pred_scores, self.scores_are
        )
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        device, dtype, C = gt.device, probs.dtype, probs.shape[-1]
        if G == 0 or N == 0:
            return empty_iou_assignment(B, N, dtype, device)
        chunks = gt_chunks(B, G, N, self.max_pairs)
        candidates = self._candidates(priors, gt_boxes, gt, chunks)
        gt_valid = gt.mask & candidates.any(dim=1, keepdim=True)
        table = self._class_table(probs, candidates)

        # pair costs: table + iou_weight * -log(IoU + eps) (as log(IoU + eps) * -iou_weight, the
        # same bits), + penalty unless central. Central rectangles per (GT, level), flat.
        _, _, central = self._geometry(priors, gt_boxes, gt.mask)
        L = len(central)
        rect = [torch.stack([e[k] for e in central], -1).reshape(-1) for k in range(4)]  # (B * G * L,)
        labels = torch.where(gt.mask, gt.labels, C)  # row C: padded GTs (inf)
        row_off = ((torch.arange(B, device=device)[:, None] * (C + 1) + labels) * N).reshape(-1)
        flat_table = table.reshape(-1)
        px = priors.points[:, 0].to(dtype).contiguous()
        py = priors.points[:, 1].to(dtype).contiguous()
        levels = priors.levels.to(device)

        def cost(rows: Tensor, n: Tensor, iou: Tensor, in_window: bool) -> Tensor:
            c = flat_table.take(row_off.take(rows) + n)  # rows and n broadcast to the pairs' shape
            c.add_(torch.add(iou, self.iou_eps).log_().mul_(-self.iou_weight))
            if in_window:  # the window is the central rectangle
                return c
            li = rows * L + levels.take(n)
            x, y = px.take(n), py.take(n)
            ok = (x > rect[0].take(li)) & (y > rect[1].take(li)) & (rect[2].take(li) > x) & (rect[3].take(li) > y)
            return torch.where(ok, c, c + self.penalty)

        tab_rows = table.view(B * (C + 1), N)
        row_tab = torch.div(row_off, N, rounding_mode="floor")
        rect_rows = [r.view(B * G, L) for r in rect]
        level_slices = priors.level_slices()

        def cost_all(rows: Tensor, iou: Tensor) -> Tensor:  # all priors of the rows: table rows
            c = tab_rows.index_select(0, row_tab.index_select(0, rows))
            c.add_(torch.add(iou, self.iou_eps).log_().mul_(-self.iou_weight))
            e = [r.index_select(0, rows) for r in rect_rows]  # (f, L) central rectangles
            ok = torch.empty(c.shape, dtype=torch.bool, device=device)
            for li, sl in enumerate(level_slices):
                x, y = px[sl], py[sl]
                o = ok[:, sl]
                torch.gt(x, e[0][:, li : li + 1], out=o)
                o &= y > e[1][:, li : li + 1]
                o &= e[2][:, li : li + 1] > x
                o &= e[3][:, li : li + 1] > y
            return torch.where(ok, c, c + self.penalty)

        # bounds (with a small margin for the rounding): a non-central pair costs at least
        # min_n(table) + log(1 + eps) * -iou_weight + penalty (IoU <= 1), and at least
        # min_n(table) + log(eps) * -iou_weight + penalty if its IoU is 0
        min_cls = table.amin(dim=2).double()  # (B, C + 1)

        def bound(iou: float) -> Tensor:
            at = torch.full((), iou, dtype=dtype, device=device).add_(self.iou_eps).log_().mul_(-self.iou_weight)
            b = (min_cls + at.double() + self.penalty).mul_(1 - 1e-6).sub_(1e-6)
            return b.to(dtype).gather(1, labels)

        pc = PairCosts(
            gt_boxes=gt_boxes, gt_valid=gt_valid, pred_boxes=boxes_p, candidates=candidates, cost=cost,
            bound=bound(1.0), bound_zero_iou=bound(0.0), cost_all=cost_all,
            window=lambda sl: grid_window(priors, [tuple(e[:, sl] for e in r) for r in central], gt_valid[:, sl]),
            base_size=float(min(priors.level_strides)),
        )
        gt_index = select_dynamic_k(pc, min(self.candidate_topk, N), chunks, self.max_pairs)
        return iou_assignment(gt_index, gt_boxes, boxes_p, candidates)
