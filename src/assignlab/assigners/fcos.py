"""FCOS assignment: points inside the object, one pyramid level per object size.

Tian, Shen, Chen, He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019
(Sec. 3.1: a location is positive when it falls into a GT box; Sec. 3.2: level ``i`` regresses
only targets with ``m_{i-1} < max(l*, t*, r*, b*) <= m_i``; an ambiguous location takes the GT of
minimal area, Eq. 1 defines ``l* = x - x0``, ``t* = y - y0``, ``r* = x1 - x``, ``b* = y1 - y``).
Center sampling (FCOS v2 / the paper's "center-ness" discussion, Tian et al., TPAMI 2020, Sec.
3.4): a location must also lie within ``radius * stride`` of the GT center.

For a prior point ``(x, y)`` on a level of stride ``s`` with range ``(lo, hi)`` and a GT
``(x0, y0, x1, y1)``:

* inside:   ``min(l*, t*, r*, b*) > 0``, or with center sampling the same test against the box
  ``[cx - radius*s, cy - radius*s, cx + radius*s, cy + radius*s]`` clipped to the GT;
* in range: ``lo <= max(l*, t*, r*, b*) <= hi`` (inclusive at both ends, as mmdetection tests it);
* among the GTs passing both, the smallest area wins (ties: lower GT index).

Regression ranges: with ``regress_ranges=None`` level ``i`` of stride ``s_i`` gets
``(8 * s_{i-1}, 8 * s_i)``, the first level from -1 and the last to infinity. For strides 8/16/32
that is ``((-1, 64), (64, 128), (128, inf))``; for FCOS's 8..128 it is the paper's
``((-1, 64), (64, 128), (128, 256), (256, 512), (512, inf))``.

Worked example, strides 8/16/32 with default ranges, ``radius = 1.5``, one GT ``[10, 10, 50, 30]``
(center (30, 20), max side 40)::

    point (28, 20) on stride 8:  l*=18 t*=10 r*=22 b*=10  max 22 in [-1, 64]     center box
                                  [18, 10, 42, 30] contains it                    -> positive
    point (44, 20) on stride 8:  inside the GT but outside the center box (x > 42)   -> negative
    point (24, 24) on stride 16: max 26 not in [64, 128]                          -> negative

Outputs: hard targets (``quality`` 1). ``extras["centerness"]`` ``(B, N)`` holds FCOS's
center-ness target ``sqrt(min(l*, r*) / max(l*, r*) * min(t*, b*) / max(t*, b*))`` on positives,
0 elsewhere; ``extras["overlaps"]`` the IoU of each positive's prior box (the anchor, or the
``square_scale * stride`` square of an anchor-free point) with its GT, 0 elsewhere, for comparisons
with the IoU-based assigners. Anchor priors are assigned through their centers (``priors.points``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ..core.boxes import aligned_box_iou
from ..core.chunking import CACHE_PAIRS
from ._grid import (
    LOW32,
    SMALL_DENSE,
    cell_run,
    gather_boxes,
    level_layouts,
    monotone_edges,
    plan_windows,
    sanitize_gt,
    sort_key,
    use_windows,
    window_prior_index,
)
from .base import Assigner

__all__ = ["FCOSAssigner", "default_regress_ranges"]


def default_regress_ranges(level_strides: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """Level ``i`` gets ``(8 * s_{i-1}, 8 * s_i)``, from -1 on the first level and to ``inf`` on
    the last: ``(8, 16, 32) -> ((-1, 64), (64, 128), (128, inf))``."""
    bounds = [8.0 * float(s) for s in level_strides[:-1]]
    return tuple(zip([-1.0] + bounds, bounds + [math.inf]))


class FCOSAssigner(Assigner):
    """FCOS point assignment with per-level size ranges (see module docstring).

    Args:
        regress_ranges: one ``(lo, hi)`` per level, or None for :func:`default_regress_ranges`.
        center_sampling: also require the point within ``radius * stride`` of the GT center.
        radius: center-sampling radius in strides (1.5 in mmdetection's FCOS configs).
        square_scale: side, in strides, of the prior squares used only for ``extras["overlaps"]``.
        max_pairs: memory budget, see :func:`assignlab.core.gt_chunks`.
    """

    def __init__(
        self,
        regress_ranges: Sequence[Sequence[float]] | None = None,
        center_sampling: bool = True,
        radius: float = 1.5,
        square_scale: float = 8.0,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        super().__init__(max_pairs)
        if regress_ranges is not None:
            rr = []
            for r in regress_ranges:
                r = tuple(float(v) for v in r)
                if len(r) != 2 or not r[0] < r[1]:
                    raise ValueError(f"regress_ranges must be (lo, hi) pairs with lo < hi, got {regress_ranges!r}")
                rr.append(r)
            if not rr:
                raise ValueError("regress_ranges must not be empty")
            regress_ranges = tuple(rr)
        if float(radius) <= 0:
            raise ValueError(f"radius must be positive, got {radius}")
        if float(square_scale) <= 0:
            raise ValueError(f"square_scale must be positive, got {square_scale}")
        self.regress_ranges = regress_ranges
        self.center_sampling = bool(center_sampling)
        self.radius = float(radius)
        self.square_scale = float(square_scale)
        # tests: True forces the dense path on the CPU, False the sparse one; None picks by size
        # (below SMALL_DENSE pairs, e.g. one image of 10 GTs, the dense path has fewer operations)
        self._dense: bool | None = None

    def level_ranges(self, priors: Priors) -> tuple[tuple[float, float], ...]:
        """The ``(lo, hi)`` range of each level of ``priors``."""
        if self.regress_ranges is None:
            return default_regress_ranges(priors.level_strides)
        if len(self.regress_ranges) != len(priors.num_level_priors):
            raise ValueError(
                f"regress_ranges has {len(self.regress_ranges)} levels but the priors have "
                f"{len(priors.num_level_priors)}"
            )
        return self.regress_ranges

    def _axis(self, p: Tensor, a0: Tensor, a1: Tensor, stride: float, lo: float, hi: float) -> tuple[Tensor, Tensor]:
        """One axis: coordinates ``p`` and GT edges ``a0``/``a1`` broadcast together (``(1, m, 1)``
        and ``(B, 1, g)`` -> ``(B, m, g)``): (inside [and distance <= hi], distance >= lo)."""
        d0, d1 = p - a0, a1 - p
        dmax = torch.maximum(d0, d1)
        if self.center_sampling:
            c = (a0 + a1) / 2
            r = stride * self.radius
            c0 = torch.maximum(c - r, a0)
            c1 = torch.minimum(c + r, a1)
            inside = torch.minimum(p - c0, c1 - p) > 0
        else:
            inside = torch.minimum(d0, d1) > 0
        return inside & (dmax <= hi), dmax >= lo

    def __call__(self, priors: Priors, gt: GroundTruth, **predictions: Tensor) -> Assignment:
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        dev = gt.boxes.device
        ranges = self.level_ranges(priors)
        if G == 0 or N == 0:
            res = Assignment.empty(B, N, device=dev)
            zeros = torch.zeros(B, N, dtype=gt.boxes.dtype, device=dev)
            return res.replace(extras={"centerness": zeros, "overlaps": zeros.clone()})

        dtype = gt.boxes.dtype if gt.boxes.is_floating_point() else torch.float32
        pts = priors.points.to(device=dev, dtype=dtype)
        gboxes, garea, valid = sanitize_gt(gt, dtype)
        garea = torch.where(valid, garea, float("inf"))  # invalid GTs can never be the smallest
        layouts = level_layouts(priors)

        best_gt = None
        dense = self._dense if self._dense is not None else B * G * N < SMALL_DENSE
        if use_windows(layouts, dev, dtype) and not dense:
            best_gt = self._windows(priors, layouts, ranges, pts, gboxes, garea, valid)
        if best_gt is None:
            best_gt = self._dense_best(priors, layouts, ranges, pts, gboxes, garea)
        positive = best_gt >= 0
        gt_index = best_gt
        box = gather_boxes(gboxes, gt_index.clamp(min=0))  # (B, N, 4)
        l_, t_ = pts[:, 0] - box[..., 0], pts[:, 1] - box[..., 1]
        r_, b_ = box[..., 2] - pts[:, 0], box[..., 3] - pts[:, 1]
        lr = torch.minimum(l_, r_) / torch.maximum(l_, r_).clamp(min=1e-12)
        tb = torch.minimum(t_, b_) / torch.maximum(t_, b_).clamp(min=1e-12)
        centerness = torch.where(positive, (lr * tb).clamp(min=0).sqrt(), 0.0)
        pboxes = priors.boxes(self.square_scale).to(device=dev, dtype=dtype)
        iou = aligned_box_iou(pboxes[None], box, eps=1e-9)
        overlaps = torch.where(positive, iou, 0.0)
        return Assignment.from_gt_index(gt_index, extras={"centerness": centerness, "overlaps": overlaps})

    def _runs(self, p: Tensor, a0: Tensor, a1: Tensor, stride: float) -> tuple[Tensor, Tensor]:
        """First index and length of the run of grid coordinates ``p`` ``(m,)`` (increasing) strictly
        inside each GT's interval ``(a0, a1)`` ``(B, G)`` (the center-sampling box when enabled), the
        only ones :meth:`_axis` can accept: same float operations as there."""
        if self.center_sampling:
            c = (a0 + a1) / 2
            r = stride * self.radius
            a0, a1 = torch.maximum(c - r, a0), torch.minimum(c + r, a1)
        return cell_run(p[:, None], p[:, None], a0, a1)

    def _windows(self, priors: Priors, layouts: list, ranges, pts: Tensor, gboxes: Tensor, garea: Tensor,
                 valid: Tensor) -> Tensor | None:
        """CPU path: a point can be positive for a GT only inside the GT (or its center-sampling box),
        a run of columns times a run of rows per level, so only those windows are tested (with the same
        float operations as the dense path). The smallest area wins, ties to the lowest GT index: one
        packed (area, GT) key per point reduced with ``scatter_reduce(amin)``. ``None`` when a level's
        points are not increasing (then the dense path runs)."""
        B, G = valid.shape
        N = pts.shape[0]
        dev = pts.device
        runs, coords = [], []
        for lay, stride in zip(layouts, priors.level_strides):
            X = pts[lay.col_points(dev), 0]
            Y = pts[lay.row_points(dev), 1]
            if not (monotone_edges(X[:, None], X[:, None]) and monotone_edges(Y[:, None], Y[:, None])):
                return None
            c0, nc = self._runs(X, gboxes[..., 0], gboxes[..., 2], stride)
            r0, nr = self._runs(Y, gboxes[..., 1], gboxes[..., 3], stride)
            runs.append((r0, nr, c0, nc))
            coords.append((X, Y))
        big = torch.iinfo(torch.long).max
        best = torch.full((B * N,), big, dtype=torch.long, device=dev)
        for ch in plan_windows(runs, layouts, valid, min(self.max_pairs, CACHE_PAIRS)):
            gb = gboxes[ch.image, ch.gt]  # (S, 4)
            x0, y0, x1, y1 = (gb[:, i, None] for i in range(4))  # (S, 1)
            key = sort_key(garea[ch.image, ch.gt], ch.gt)[:, None, None]  # (S, 1, 1): area, then GT
            for lv, (lay, (lo, hi), stride, (X, Y)) in enumerate(zip(layouts, ranges, priors.level_strides, coords)):
                wr, wc = ch.sizes[lv]
                if wr == 0 or wc == 0:
                    continue
                px = X[ch.col0[lv][:, None] + torch.arange(wc, device=dev)]  # (S, wc)
                py = Y[ch.row0[lv][:, None] + torch.arange(wr, device=dev)]  # (S, wr)
                okx, lox = self._axis(px, x0, x1, stride, lo, hi)
                oky, loy = self._axis(py, y0, y1, stride, lo, hi)
                cand = (oky[:, :, None] & okx[:, None]) & (loy[:, :, None] | lox[:, None])  # (S, wr, wc)
                k = torch.where(cand, key, big)
                if lay.na > 1:
                    k = k[..., None].expand(-1, -1, -1, lay.na)
                pid = window_prior_index(lay, ch, lv, N)
                best.scatter_reduce_(0, pid.view(-1), k.reshape(-1), reduce="amin")
        best = best.view(B, N)
        return torch.where(best < big, best & LOW32, -1)

    def _dense_best(self, priors: Priors, layouts: list, ranges, pts: Tensor, gboxes: Tensor, garea: Tensor) -> Tensor:
        B, G = gboxes.shape[:2]
        N = pts.shape[0]
        dev, dtype = pts.device, pts.dtype
        best_area = torch.full((B, N), float("inf"), dtype=dtype, device=dev)
        best_gt = torch.full((B, N), -1, dtype=torch.long, device=dev)
        for sl in gt_chunks(B, G, N, self.max_pairs):
            g = sl.stop - sl.start
            x0, y0, x1, y1 = (gboxes[:, sl, i].reshape(B, 1, g) for i in range(4))
            ga = garea[:, sl].reshape(B, 1, g)
            for lay, (lo, hi), stride in zip(layouts, ranges, priors.level_strides):
                if lay.n == 0:
                    continue
                if lay.grid:
                    okx, lox = self._axis(pts[lay.col_points(dev), 0][None, :, None], x0, x1, stride, lo, hi)  # (B, cols, g)
                    oky, loy = self._axis(pts[lay.row_points(dev), 1][None, :, None], y0, y1, stride, lo, hi)  # (B, rows, g)
                    cand = (oky[:, :, None] & okx[:, None]) & (loy[:, :, None] | lox[:, None])  # (B, rows, cols, g)
                    cost = torch.where(cand, ga[:, None], float("inf"))
                    v, i = cost.min(dim=-1)  # (B, rows, cols), first (lowest) GT on ties
                    v = v[..., None].expand(B, lay.rows, lay.cols, lay.na).reshape(B, lay.n)
                    i = i[..., None].expand(B, lay.rows, lay.cols, lay.na).reshape(B, lay.n)
                else:
                    p = pts[lay.slice]
                    okx, lox = self._axis(p[None, :, 0, None], x0, x1, stride, lo, hi)  # (B, n, g)
                    oky, loy = self._axis(p[None, :, 1, None], y0, y1, stride, lo, hi)
                    cand = okx & oky & (lox | loy)
                    v, i = torch.where(cand, ga, float("inf")).min(dim=-1)
                upd = v < best_area[:, lay.slice]
                best_area[:, lay.slice] = torch.where(upd, v, best_area[:, lay.slice])
                best_gt[:, lay.slice] = torch.where(upd, i + sl.start, best_gt[:, lay.slice])

        return torch.where(best_area < float("inf"), best_gt, -1)
