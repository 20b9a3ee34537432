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
swapped to foreground -- looked up per GT by row, so no ``(B, G, N, C)`` tensor is built (the sum
over classes is therefore rounded differently from mmdet's, by float32 ulps). The dynamic k is
vectorised: one ``topk(candidate_topk)`` of each GT's cost and the mask ``rank < k_g``
(``k_g <= candidate_topk``); priors chosen several times are resolved on the ``(B, G *
candidate_topk)`` chosen positions only. Non-candidates get an infinite cost and an IoU of 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ._dynamic_k import (
    FAR,
    Scratch,
    ScratchOwner,
    any_inside,
    class_rows,
    empty_iou_assignment,
    iou_assignment,
    pairwise_iou,
    points_inside,
    prepare_predictions,
    scratch_for,
    select_dynamic_k,
)
from .base import Assigner, check_scores_are, positive_int

__all__ = ["SimOTAAssigner"]

_FLAVOURS = {
    # flavour: (penalty, iou eps, candidates also from the box test)
    "mmdet": (1e5, 1e-7, True),
    "yolox": (1e6, 1e-8, False),
}


class SimOTAAssigner(ScratchOwner, Assigner):
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
    def _geometry(self, priors: Priors, boxes: Tensor, gmask: Tensor, scratch: Scratch,
                  need_central: bool = True, need_candidates: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """``(candidates (B, N), central (B, g, N))`` for a GT chunk.

        ``candidates``: in some GT box or some centre region (mmdet), or in some centre region
        (yolox). ``central`` (the pair pays no penalty): in the box AND in the centre region
        (mmdet), i.e. inside their intersection, or in the centre region (yolox). Strict tests
        ``p > edge``, equal bit for bit to mmdet's ``p - edge > 0``. Padded rows get NaN edges,
        which contain nothing.
        """
        g = boxes.shape[1]
        nan = torch.full((), float("nan"), dtype=boxes.dtype, device=boxes.device)
        x1, y1, x2, y2 = (torch.where(gmask, boxes[..., i], nan) for i in range(4))
        cx = (x1 + x2) / 2.0
        cy = (y1 + y2) / 2.0
        regions = []
        for stride in priors.level_strides:
            # mmdet: gt_cx - center_radius * stride (a float32 product), etc.
            rad = torch.full((), stride, dtype=boxes.dtype, device=boxes.device) * self.center_radius
            regions.append((cx - rad, cy - rad, cx + rad, cy + rad))
        mmdet = _FLAVOURS[self.flavour][2]
        candidates = central = None
        if need_candidates:
            candidates = any_inside(priors, x1, y1, x2, y2, scratch, per_level=regions)
            if mmdet:
                candidates |= any_inside(priors, x1, y1, x2, y2, scratch)
        if need_central:
            if mmdet:  # inside both = inside the intersection of the box and the centre region
                regions = [(torch.maximum(x1, l), torch.maximum(y1, t), torch.minimum(x2, r), torch.minimum(y2, b))
                           for l, t, r, b in regions]
            central = points_inside(priors, x1, y1, x2, y2, scratch.get("central", g, torch.bool),
                                    scratch.get("btmp", g, torch.bool), per_level=regions)
        return candidates, central

    def _cost(self, gt_boxes: Tensor, rows: Tensor, table: Tensor, boxes_c: Tensor, central: Tensor,
              scratch: Scratch) -> tuple[Tensor, Tensor]:
        """``(cost, ious)`` ``(B, g, N)`` of a GT chunk (``rows``: its class-table rows)."""
        B, g = gt_boxes.shape[:2]
        N = boxes_c.shape[1]
        ious = pairwise_iou(gt_boxes, boxes_c, out=scratch.get("iou", g), tmp=scratch.get("a", g),
                            tmp2=scratch.get("b", g))
        cost = scratch.get("cost", g)
        torch.index_select(table, 0, rows, out=cost.view(B * g, N))  # cls_weight * BCE cost (inf: no candidate)
        # + iou_weight * -log(IoU + eps), as log(IoU + eps) * -iou_weight (same bits)
        cost.add_(torch.add(ious, self.iou_eps, out=scratch.get("a", g)).log_().mul_(-self.iou_weight))
        pen = torch.add(cost, self.penalty, out=scratch.get("a", g))
        torch.where(central, cost, pen, out=cost)
        return cost, ious

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
        scratch = scratch_for(self, device, B, max(c.stop - c.start for c in chunks), N, dtype)

        # pass 1: candidates (union over the real GTs)
        candidates = torch.zeros(B, N, dtype=torch.bool, device=device)
        for sl in chunks:
            candidates |= self._geometry(priors, gt_boxes[:, sl], gt.mask[:, sl], scratch, need_central=False)[0]
        has_cand = candidates.any(dim=1, keepdim=True)

        # per-class cost table (B, C + 1, N): BCE of the prior's probabilities against each class's
        # one-hot label (= sum of every class as background, with that class swapped to foreground);
        # row C (padded GTs) and non-candidate priors are +inf
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
        table = table.view(B * (C + 1), N)
        # non-candidates predict a far-away point: IoU 0 with every GT, so they add nothing to k
        boxes_c = torch.where(candidates[..., None], boxes_p, torch.full((), FAR, dtype=dtype, device=device))

        def cost_of(sl: slice) -> tuple[Tensor, Tensor]:
            gmask = gt.mask[:, sl]
            central = self._geometry(priors, gt_boxes[:, sl], gmask, scratch, need_candidates=False)[1]
            rows = class_rows(gt.labels[:, sl], gmask, C + 1, C)
            return self._cost(gt_boxes[:, sl], rows, table, boxes_c, central, scratch)

        # pass 2: costs, dynamic k, each GT's cheapest priors; pass 3: priors chosen by several
        # GTs go to the GT of lowest cost over all GTs
        gt_index = select_dynamic_k(cost_of, chunks, gt.mask & has_cand, min(self.candidate_topk, N), N, dtype)
        return iou_assignment(gt_index, gt_boxes, boxes_p, candidates)
