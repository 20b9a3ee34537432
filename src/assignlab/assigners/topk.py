"""Top-k IoU assignment: every GT takes its ``k`` best-overlapping priors.

A fixed number of positives per object, whatever its size, as in the anchor-matching analyses of
Zhang, Chi, Yao, Lei, Li, "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection", CVPR 2020 (Sec. 3.3 discusses the top-k rule that ATSS
refines with an adaptive IoU threshold), and Zhang, Zhu, Lei, Shi, Wang, Li, "S3FD: Single Shot
Scale-invariant Face Detector", ICCV 2017 (Sec. 3.2, scale compensation: small faces get their
best ``N`` anchors so they are not starved by a fixed IoU threshold).

For every GT ``g``: the ``k`` priors with the highest ``IoU(prior, g)`` (over all levels) are its
candidates; those with ``IoU > min_iou`` are positive. A prior claimed by several GTs goes to the
one with the higher IoU (ties: lower GT index). Everything else is negative; there is no ignore
band.

Worked example, ``k = 2``, ``min_iou = 0``, five priors and two GTs::

    IoU     g0:  0.70  0.55  0.20  0.00  0.00    -> top-2 = p0, p1
            g1:  0.00  0.60  0.00  0.05  0.01    -> top-2 = p1, p3
    p1 is claimed by g0 (0.55) and g1 (0.60)    -> g1
    gt_index     [ 0,  1, -1,  1, -1]
    overlaps     [0.70, 0.60, 0.00, 0.05, 0.00]

A small GT thus gets ``k`` positives just like a large one, even when its best IoU is only 0.05
(raise ``min_iou`` to drop such weak matches). Priors tied at the ``k``-th place are taken in
prior order (lowest index first): anchor-free squares of ``8 * stride`` often contain a small GT
entirely and then share the same IoU ``area(g) / area(prior)``.

Outputs: hard targets (``quality`` 1); ``extras["overlaps"]`` ``(B, N)`` is the IoU of each
positive with its GT, 0 elsewhere. Anchor-free priors are matched with ``priors.boxes(square_scale)``
squares of ``square_scale * stride``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ..core.chunking import CACHE_PAIRS
from ._grid import (
    SMALL_DENSE,
    empty_static_result,
    iou_runs,
    key_index,
    level_iou,
    level_layouts,
    merge_best,
    plan_windows,
    sort_key,
    sort_key_into,
    static_inputs,
    unpack_best,
    use_windows,
    window_iou,
    window_prior_index,
)
from .base import Assigner, positive_int, unit_interval

__all__ = ["TopKAssigner"]

_LOW32 = 0xFFFFFFFF


class TopKAssigner(Assigner):
    """Each GT takes its ``k`` highest-IoU priors (see module docstring).

    Args:
        k: positives per GT (fewer when priors are shared or their IoU is ``<= min_iou``).
        min_iou: a candidate needs ``IoU > min_iou`` to be positive.
        square_scale: side, in strides, of the square boxes used for anchor-free priors.
        max_pairs: memory budget, see :func:`assignlab.core.gt_chunks`.
    """

    def __init__(
        self, k: int = 9, min_iou: float = 0.0, square_scale: float = 8.0, max_pairs: int = DEFAULT_MAX_PAIRS
    ) -> None:
        super().__init__(max_pairs)
        positive_int("k", k)
        unit_interval("min_iou", min_iou, closed_low=True, closed_high=False)
        if float(square_scale) <= 0:
            raise ValueError(f"square_scale must be positive, got {square_scale}")
        self.k = int(k)
        self.min_iou = float(min_iou)
        self.square_scale = float(square_scale)
        # tests: True forces the dense path on the CPU, False the sparse one; None picks by size
        # (below SMALL_DENSE pairs, e.g. one image of 10 GTs, the dense path has fewer operations)
        self._dense: bool | None = None

    def __call__(self, priors: Priors, gt: GroundTruth, **predictions: Tensor) -> Assignment:
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        dev = gt.boxes.device
        if G == 0 or N == 0:
            return empty_static_result(gt, N)

        dtype, pboxes, parea, gboxes, garea, valid = static_inputs(priors, gt, self.square_scale)
        layouts = [lay for lay in level_layouts(priors) if lay.n > 0]
        k = min(self.k, N)
        dense = self._dense if self._dense is not None else B * G * N < SMALL_DENSE
        if use_windows(layouts, dev, dtype) and not dense:
            runs = iou_runs(pboxes, layouts, gboxes)
            if runs is not None:
                return self._windows(pboxes, layouts, runs, gboxes, garea, valid, k)

        chunks = gt_chunks(B, G, N, self.max_pairs)
        gmax_chunk = max(c.stop - c.start for c in chunks)
        nmax = max(lay.n for lay in layouts)
        buf = torch.empty(B * nmax * gmax_chunk, dtype=dtype, device=dev)
        work = torch.empty_like(buf)
        best_val = torch.full((B, N), float("-inf"), dtype=dtype, device=dev)
        best_gt = torch.full((B, N), -1, dtype=torch.long, device=dev)
        for sl in chunks:
            g = sl.stop - sl.start
            keys = []
            for lay in layouts:
                iou = level_iou(pboxes, parea, lay, gboxes[:, sl], garea[:, sl], out=buf, work=work)  # (B, n, g)
                # rank by (IoU descending, prior index ascending): exact and deterministic on ties
                rev = _LOW32 - torch.arange(lay.start, lay.stop, device=dev).reshape(1, lay.n, 1)
                keys.append(sort_key(iou, rev).topk(min(k, lay.n), dim=1).values)
            # the k best over all levels are among the k best of each level
            key = torch.cat(keys, dim=1).topk(k, dim=1).values  # (B, k, g)
            idx = _LOW32 - key_index(key)
            v = (key >> 32).to(torch.int32).view(torch.float32).to(dtype)
            pos = (v > self.min_iou) & valid[:, None, sl]
            val = torch.where(pos, v, float("-inf"))
            gidx = torch.arange(sl.start, sl.stop, device=dev).reshape(1, 1, g).expand(B, k, g)
            best_val, best_gt = merge_best(
                best_val, best_gt, idx.reshape(B, -1), val.reshape(B, -1), gidx.reshape(B, -1)
            )

        positive = best_val > float("-inf")
        gt_index = torch.where(positive, best_gt, -1)
        overlaps = torch.where(positive, best_val, 0.0)
        return Assignment.from_gt_index(gt_index, extras={"overlaps": overlaps})

    def _windows(
        self, pboxes: Tensor, layouts: list, runs: list, gboxes: Tensor, garea: Tensor, valid: Tensor, k: int
    ) -> Assignment:
        """The CPU path over each GT's windows of overlapping priors (see ``_grid``). A prior outside
        the windows has IoU 0 with the GT and can never be a positive (``IoU > min_iou >= 0``), so the
        positives among the top-k of the windows are those of the top-k of all priors (same
        deterministic order: IoU, then prior index). Collisions: one packed (IoU, lowest GT) key per
        prior reduced with ``scatter_reduce(amax)``. Same outputs as the dense path."""
        B, G = valid.shape
        N = pboxes.shape[0]
        dev, dtype = pboxes.device, pboxes.dtype
        chunks = plan_windows(runs, layouts, valid, min(self.max_pairs, CACHE_PAIRS))
        best_key = torch.full((B * N,), -1, dtype=torch.long, device=dev)
        size = max((ch.image.shape[0] * max(r * c * lay.na for (r, c), lay in zip(ch.sizes, layouts)) for ch in chunks),
                   default=0)
        fbuf = torch.empty(2 * size, dtype=dtype, device=dev)
        ibuf = torch.empty(2 * size, dtype=torch.long, device=dev)
        for ch in chunks:
            gb, ga = gboxes[ch.image, ch.gt], garea[ch.image, ch.gt]  # (S, 4), (S,)
            keys = []
            for lv, lay in enumerate(layouts):
                if 0 in ch.sizes[lv]:
                    continue
                iou = window_iou(pboxes, lay, ch, lv, gb, ga, out=fbuf, work=fbuf[size:])  # (S, K)
                pid = window_prior_index(lay, ch, lv, N, out=ibuf)  # (S, K) image * N + prior
                # rank by (IoU descending, prior ascending); inside a row the image is fixed, so the
                # flat index orders like the prior index
                key = sort_key_into(iou, pid.neg_().add_(_LOW32), ibuf[size:])
                keys.append(key.topk(min(k, key.shape[1]), dim=1).values)
            key = torch.cat(keys, dim=1)
            key = key.topk(min(k, key.shape[1]), dim=1).values  # (S, k)
            idx = _LOW32 - key_index(key)  # flat image * N + prior
            v = (key >> 32).to(torch.int32).view(torch.float32)
            cand = sort_key(v, _LOW32 - ch.gt[:, None])
            cand = torch.where(v > self.min_iou, cand, -1)
            best_key.scatter_reduce_(0, idx.view(-1), cand.view(-1), reduce="amax")
        positive, best_val, best_gt = unpack_best(best_key.view(B, N), dtype)
        return Assignment.from_gt_index(best_gt, extras={"overlaps": best_val})
