"""Max-IoU assignment with positive / negative thresholds (Faster R-CNN RPN, RetinaNet).

Ren, He, Girshick, Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
Networks", NeurIPS 2015 (Sec. 3.1.2: an anchor is positive when its IoU with some GT is above 0.7,
or when it has the highest IoU with a GT; negative when its IoU is below 0.3 for all GTs; the rest
does not contribute). Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection",
ICCV 2017 (Sec. 4, "anchors are assigned to GT boxes using an IoU threshold of 0.5; and to
background if their IoU is in [0, 0.4)"; anchors in [0.4, 0.5) are ignored).

For every prior ``n`` let ``m_n = max_g IoU(n, g)`` over the image's valid GTs and ``g*_n`` the
arg-max (lowest GT index on ties). With ``pos_iou_thr = t+`` and ``neg_iou_thr = t-`` (or a range
``(lo, hi)``):

1. ``m_n >= t+``                          -> positive for ``g*_n``
2. ``t- > m_n >= 0`` (``hi > m_n >= lo``) -> negative
3. otherwise                              -> ignored (the band ``[t-, t+)``)
4. low-quality matches (``match_low_quality``): every GT ``g`` whose best IoU ``M_g = max_n IoU(n,
   g)`` satisfies ``M_g >= min_pos_iou`` takes the priors where ``IoU(n, g) == M_g`` exactly (all of
   them with ``gt_max_assign_all``, else the first), overriding steps 1-3. When several GTs claim
   the same prior here the **last** GT index wins (mmdetection loops over GTs in order).

Worked example (mmdetection's unit test; ``t+ = t- = 0.5``, ``min_pos_iou = 0``)::

    priors  p0 [0, 0, 10, 10]   p1 [10, 10, 20, 20]   p2 [5, 5, 15, 15]   p3 [32, 32, 38, 42]
    GTs     g0 [0, 0, 10, 9]    g1 [0, 10, 10, 19]

    IoU     g0:  0.90  0.00  0.1176  0.00      -> M_g0 = 0.90 at p0
            g1:  0.00  0.00  0.1515  0.00      -> M_g1 = 0.1515 at p2
    m_n          0.90  0.00  0.1515  0.00
    steps 1-3    g0    neg   neg     neg
    step 4       g0    neg   g1      neg       (p2 is g1's best prior: low-quality positive)

With the RPN thresholds (``t+ = 0.7, t- = 0.3, min_pos_iou = 0.3``) the same GT g1 would get no
low-quality match (0.1515 < 0.3) and p2 would be a negative.

Deliberate divergence from mmdetection (issue #8289): a GT whose best IoU is 0 (far from every
prior, or zero width) takes *no* low-quality match; mmdetection gives it every prior with IoU 0,
i.e. almost the whole image. Zero-area, non-finite and masked-out GTs never match.

Ignore regions (``gt.ignore``, ``ignore_iof_thr > 0``): a prior whose intersection over
foreground with some ignore box exceeds the threshold gets IoU -1 with every GT, so it cannot be
positive (not even a low-quality match) nor negative: it is ignored. The foreground is the prior
(``ignore_wrt_candidates=True``) or the ignore box (``False``). Images without a valid GT are all
negative and their ignore regions are not applied (as in mmdetection).

Outputs: hard targets (``quality`` 1 on positives). ``extras["max_overlaps"]`` ``(B, N)`` is
``m_n`` for every prior (-1 on priors removed by an ignore region, 0 in images without GT), and
``extras["overlaps"]`` the IoU of each positive with its assigned GT (0 elsewhere)::

    gt_index        [[ 0, -1,  1, -1]]
    positive        [[ T,  F,  T,  F]]
    max_overlaps    [[0.90, 0.00, 0.1515, 0.00]]
    overlaps        [[0.90, 0.00, 0.1515, 0.00]]

Anchor-free priors are matched with ``priors.boxes(square_scale)`` squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ..core.chunking import CACHE_PAIRS
from ._grid import (
    LOW32,
    ignored_priors,
    iou_runs,
    level_iou,
    level_layouts,
    plan_windows,
    prior_areas,
    sanitize_gt,
    sort_key_into,
    unpack_best,
    use_windows,
    window_iou,
    window_prior_index,
)
from .base import Assigner, unit_interval

__all__ = ["MaxIoUAssigner"]


class MaxIoUAssigner(Assigner):
    """Threshold assignment on the IoU between priors and GTs (see module docstring).

    Args:
        pos_iou_thr: a prior whose best IoU is ``>=`` this is positive (0.5 RetinaNet, 0.7 RPN).
        neg_iou_thr: a prior whose best IoU is in ``[0, neg_iou_thr)`` is negative; a pair
            ``(lo, hi)`` means ``[lo, hi)``. Priors between this and ``pos_iou_thr`` are ignored.
        min_pos_iou: smallest IoU a low-quality (best-prior-of-a-GT) match may have.
        match_low_quality: give every GT its best prior(s) even below ``pos_iou_thr``.
        gt_max_assign_all: in the low-quality step give a GT *all* priors tied at its best IoU
            (else only the first).
        ignore_iof_thr: ignore-region threshold on intersection-over-foreground; ``<= 0`` is off.
        ignore_wrt_candidates: foreground = the prior (True) or the ignore box (False).
        square_scale: side, in strides, of the square boxes used for anchor-free priors.
        max_pairs: memory budget, see :func:`assignlab.core.gt_chunks`.
    """

    def __init__(
        self,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float | Sequence[float] = 0.4,
        min_pos_iou: float = 0.0,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
        ignore_iof_thr: float = -1.0,
        ignore_wrt_candidates: bool = True,
        square_scale: float = 8.0,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        super().__init__(max_pairs)
        unit_interval("pos_iou_thr", pos_iou_thr)
        if isinstance(neg_iou_thr, (int, float)):
            lo, hi = 0.0, float(neg_iou_thr)
        else:
            neg = tuple(float(v) for v in neg_iou_thr)
            if len(neg) != 2:
                raise ValueError(f"neg_iou_thr must be a number or a (lo, hi) pair, got {neg_iou_thr!r}")
            lo, hi = neg
        if not (0.0 <= lo <= hi <= float(pos_iou_thr)):
            raise ValueError(
                f"neg_iou_thr must satisfy 0 <= lo <= hi <= pos_iou_thr, got {neg_iou_thr!r} "
                f"with pos_iou_thr={pos_iou_thr}"
            )
        unit_interval("min_pos_iou", min_pos_iou, closed_low=True)
        if float(square_scale) <= 0:
            raise ValueError(f"square_scale must be positive, got {square_scale}")
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = neg_iou_thr if isinstance(neg_iou_thr, (int, float)) else (lo, hi)
        self.min_pos_iou = float(min_pos_iou)
        self.match_low_quality = bool(match_low_quality)
        self.gt_max_assign_all = bool(gt_max_assign_all)
        self.ignore_iof_thr = float(ignore_iof_thr)
        self.ignore_wrt_candidates = bool(ignore_wrt_candidates)
        self.square_scale = float(square_scale)
        self._neg_range = (lo, hi)
        # tests: True forces the dense (B, g, N) path on the CPU, False the window path; None picks
        # by size (a single image of ~100 GTs is faster dense: fewer operations)
        self._dense: bool | None = None

    def __call__(self, priors: Priors, gt: GroundTruth, **predictions: Tensor) -> Assignment:
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        dev = gt.boxes.device
        if G == 0 or N == 0:
            res = Assignment.empty(B, N, device=dev)
            zeros = torch.zeros(B, N, dtype=gt.boxes.dtype, device=dev)
            return res.replace(extras={"max_overlaps": zeros, "overlaps": zeros.clone()})

        dtype = gt.boxes.dtype if gt.boxes.is_floating_point() else torch.float32
        pboxes = priors.boxes(self.square_scale).to(device=dev, dtype=dtype)
        parea = prior_areas(pboxes)
        gboxes, garea, valid = sanitize_gt(gt, dtype)
        has_gt = valid.any(dim=1)  # (B,)
        ignored = ignored_priors(pboxes, gt, self.ignore_iof_thr, self.ignore_wrt_candidates, self.max_pairs)
        if ignored is not None:
            ignored = ignored & has_gt[:, None]
        layouts = [lay for lay in level_layouts(priors) if lay.n > 0]
        small = B * G * N <= CACHE_PAIRS
        if use_windows(layouts, dev, dtype) and not (self._dense or (self._dense is None and small)):
            runs = iou_runs(pboxes, layouts, gboxes)
            if runs is not None:
                return self._windows(pboxes, layouts, runs, gboxes, garea, valid, has_gt, ignored)

        best_val = torch.full((B, N), float("-inf"), dtype=dtype, device=dev)
        best_gt = torch.zeros(B, N, dtype=torch.long, device=dev)
        lq_gt = torch.full((B, N), -1, dtype=torch.long, device=dev)
        gt_max = torch.zeros(B, G, dtype=dtype, device=dev)

        chunks = gt_chunks(B, G, N, self.max_pairs)
        gmax_chunk = max(c.stop - c.start for c in chunks)
        # one buffer holds every level's IoU of a chunk (level l at [B*g*start, B*g*stop)), one is
        # scratch; both reused across chunks
        buf = torch.empty(B * N * gmax_chunk, dtype=dtype, device=dev)
        work = torch.empty(B * max(lay.n for lay in layouts) * gmax_chunk, dtype=dtype, device=dev)
        for sl in chunks:
            g0, g = sl.start, sl.stop - sl.start
            gb, ga, gv = gboxes[:, sl], garea[:, sl], valid[:, sl]
            ious = []
            cmax = None
            for lay in layouts:
                iou = level_iou(pboxes, parea, lay, gb, ga, out=buf[B * g * lay.start :], work=work)  # (B, n, g)
                if ignored is not None:
                    iou.masked_fill_(ignored[:, lay.slice, None], -1.0)
                # best GT of each prior (first index on ties), merged with earlier chunks (strict >)
                v, i = iou.max(dim=2)
                upd = v > best_val[:, lay.slice]
                best_val[:, lay.slice] = torch.where(upd, v, best_val[:, lay.slice])
                best_gt[:, lay.slice] = torch.where(upd, i + g0, best_gt[:, lay.slice])
                m = iou.amax(dim=1)  # (B, g) best prior IoU of each GT on this level
                cmax = m if cmax is None else torch.maximum(cmax, m)
                ious.append(iou)
            assert cmax is not None
            gt_max[:, sl] = cmax
            if not self.match_low_quality:
                continue
            # bug #8289 fix: a GT whose best IoU is 0 gets nothing
            ok = gv & (cmax >= self.min_pos_iou) & (cmax > 0)
            gidx = torch.arange(g0, g0 + g, device=dev)
            if self.gt_max_assign_all:
                thr = torch.where(ok, cmax, float("inf")).reshape(B, 1, g)
                w = (gidx + 1).to(dtype)  # exact in float for any realistic GT count
                for lay, iou in zip(layouts, ious):
                    # last GT (highest index) whose best IoU this prior reaches exactly; in place,
                    # the IoU of this chunk is not needed any more
                    last = iou.eq_(thr).mul_(w).amax(dim=2).long() - 1
                    lq_gt[:, lay.slice] = torch.maximum(lq_gt[:, lay.slice], last)
            else:
                # first prior reaching each GT's best IoU, over the levels in order
                arg = torch.zeros(B, g, dtype=torch.long, device=dev)
                amx = torch.full((B, g), float("-inf"), dtype=dtype, device=dev)
                for lay, iou in zip(layouts, ious):
                    v, i = iou.max(dim=1)
                    upd = v > amx
                    amx = torch.where(upd, v, amx)
                    arg = torch.where(upd, i + lay.start, arg)
                src = torch.where(ok, gidx[None].expand(B, g), -1)
                lq_gt.scatter_reduce_(1, arg, src, reduce="amax", include_self=True)
            del ious

        return self._finish(best_val, best_gt, lq_gt, gt_max, has_gt)

    def _finish(self, best_val: Tensor, best_gt: Tensor, lq_gt: Tensor, gt_max: Tensor, has_gt: Tensor) -> Assignment:
        max_ov = torch.where(has_gt[:, None], best_val, 0.0)
        lo, hi = self._neg_range
        is_lq = lq_gt >= 0
        is_pos = (max_ov >= self.pos_iou_thr) & has_gt[:, None]
        gt_index = torch.where(is_lq, lq_gt, torch.where(is_pos, best_gt, -1))
        positive = gt_index >= 0
        negative = ((max_ov >= lo) & (max_ov < hi)) | ~has_gt[:, None]
        ignore = ~positive & ~negative
        lq_iou = torch.gather(gt_max, 1, lq_gt.clamp(min=0))
        overlaps = torch.where(is_lq, lq_iou, torch.where(positive, max_ov, 0.0))
        return Assignment.from_gt_index(
            gt_index, ignore=ignore, extras={"max_overlaps": max_ov, "overlaps": overlaps}
        )

    def _windows(
        self, pboxes: Tensor, layouts: list, runs: list, gboxes: Tensor, garea: Tensor, valid: Tensor,
        has_gt: Tensor, ignored: Tensor | None,
    ) -> Assignment:
        """The CPU path over each GT's windows of overlapping priors (see ``_grid``): every prior
        outside a GT's windows has IoU 0 with it, so the per-prior best GT, each GT's best IoU and
        its low-quality priors are all found among the window entries. Same outputs as the dense path.

        The per-prior best (IoU, lowest GT) is one packed int64 key (:func:`sort_key`) reduced with
        ``scatter_reduce(amax)``, so the order of the chunks does not matter. Zero and negative
        (ignored, -1) IoUs pack to keys that never decide anything: the threshold tests need > 0."""
        B, G = valid.shape
        N = pboxes.shape[0]
        dev, dtype = pboxes.device, pboxes.dtype
        chunks = plan_windows(runs, layouts, valid, min(self.max_pairs, CACHE_PAIRS))
        best_key = torch.full((B * N,), -1, dtype=torch.long, device=dev)
        lq_gt = torch.full((B * N,), -1, dtype=torch.long, device=dev)
        gt_max = torch.zeros(B * G, dtype=dtype, device=dev)
        # -1 on ignored priors, +inf elsewhere: ``minimum`` applies it (torch.where / masked_fill
        # are 20x slower than min / max on the CPU)
        cap = None if ignored is None else torch.where(ignored, -1.0, float("inf")).to(dtype).reshape(-1)
        # buffers for the largest chunk, reused by every chunk and level
        size = max((ch.image.shape[0] * max(r * c * lay.na for (r, c), lay in zip(ch.sizes, layouts)) for ch in chunks),
                   default=0)
        fbuf = torch.empty(4 * size, dtype=dtype, device=dev)  # 3 levels of IoU + scratch
        ibuf = torch.empty(6 * size, dtype=torch.long, device=dev)  # 3 levels of prior index + key / src
        for ch in chunks:
            gb, ga = gboxes[ch.image, ch.gt], garea[ch.image, ch.gt]  # (S, 4), (S,)
            low = LOW32 - ch.gt[:, None]
            parts = []
            cmax = None
            for lv, lay in enumerate(layouts):
                if 0 in ch.sizes[lv]:
                    continue
                iou = window_iou(pboxes, lay, ch, lv, gb, ga, out=fbuf[lv * size :], work=fbuf[3 * size :])  # (S, K)
                pid = window_prior_index(lay, ch, lv, N, out=ibuf[lv * size :])  # (S, K) image * N + prior
                if cap is not None:
                    torch.minimum(iou, cap.index_select(0, pid.view(-1)).view_as(iou), out=iou)
                key = sort_key_into(iou, low, ibuf[3 * size :])
                best_key.scatter_reduce_(0, pid.view(-1), key.view(-1), reduce="amax")
                m = iou.amax(dim=1)  # > 0: the GT's best IoU on this level
                cmax = m if cmax is None else torch.maximum(cmax, m)
                parts.append((iou, pid))
            assert cmax is not None  # every chunk GT has a non-empty window
            flat_gt = ch.image * G + ch.gt
            gt_max[flat_gt] = cmax
            if not self.match_low_quality:
                continue
            ok = (cmax >= self.min_pos_iou) & (cmax > 0)
            if self.gt_max_assign_all:
                thr = torch.where(ok, cmax, float("inf"))[:, None]
                last = ch.gt[:, None] + 1
                for iou, pid in parts:
                    # GT index + 1 where the prior reaches the GT's best IoU, else 0 (integer ops:
                    # torch.where is slow on the CPU), minus 1; the last GT (highest index) wins
                    src = ibuf[3 * size :][: iou.numel()].view(iou.shape)
                    src.copy_(iou == thr).neg_().bitwise_and_(last).sub_(1)
                    lq_gt.scatter_reduce_(0, pid.view(-1), src.view(-1), reduce="amax")
            else:
                # first prior reaching the GT's best IoU, levels in order (strict >), then prior order
                amx = torch.full_like(cmax, float("-inf"))
                arg = torch.zeros_like(ch.gt)
                for iou, pid in parts:
                    v, i = iou.max(dim=1)  # first maximal entry = lowest prior index
                    upd = v > amx
                    amx = torch.where(upd, v, amx)
                    arg = torch.where(upd, pid.gather(1, i[:, None])[:, 0], arg)
                lq_gt.scatter_reduce_(0, arg, torch.where(ok, ch.gt, -1), reduce="amax")
        _, best_val, best_gt = unpack_best(best_key.view(B, N), dtype)
        if ignored is not None:
            best_val = best_val.masked_fill(ignored, -1.0)
        return self._finish(best_val, best_gt.clamp(min=0), lq_gt.view(B, N), gt_max.view(B, G), has_gt)
