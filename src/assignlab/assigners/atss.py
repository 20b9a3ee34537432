"""ATSS: Adaptive Training Sample Selection.

Zhang, Chi, Yao, Lei, Li, "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection", CVPR 2020 (Sec. 3.3, Algorithm 1).

For every GT ``g``:

1. on every pyramid level take the ``k`` priors whose centers are closest (L2) to the GT center
   (``min(k, priors on the level)``); together they form the candidate set ``C_g``
   (``|C_g| = sum_l min(k, n_l)``, 27 for 3 levels and ``k = 9``);
2. compute the IoU of the candidates' boxes with ``g`` and the adaptive threshold
   ``t_g = mean(IoU) + std(IoU)`` (Algorithm 1, lines 8-10; the *unbiased* std with ``|C_g| - 1``,
   as ``torch.std`` and mmdetection compute it);
3. a candidate is positive iff ``IoU >= t_g`` and its center lies inside ``g`` by more than
   0.01 px on every side.

A prior selected by several GTs goes to the GT with the highest IoU (ties: lower GT index). All
other priors are negatives.

Worked example, one GT and one level of 4 candidates (``k >= 4``)::

    candidate IoUs     0.90   0.15   0.12   0.00
    mean = 0.2925, std (unbiased) = 0.4102    -> t_g = 0.7027
    IoU >= t_g         T      F      F      F
    center inside g    T      T      F      F
    positive           T      F      F      F

The threshold adapts to the GT: a GT that overlaps its candidates well everywhere (high mean, low
std) keeps many; one matched well by a single level (high std) keeps about that level's best.

Ignore regions (``ignore_iof_thr > 0``): a prior whose intersection with some ignore box exceeds
``ignore_iof_thr`` of its own area is ignored and its distance set to infinity, so it is only a
candidate when a level has fewer than ``k`` other priors; if it still ends positive it stays
positive. Images without valid GT are all negative (ignore regions not applied), as in
mmdetection.

Implementation: on grid priors (:func:`~assignlab.core.make_priors`) the ``k`` nearest priors of a
level are found without the ``(B, G, N)`` distance matrix: the ``ceil(k / anchors)`` nearest
columns and rows suffice (a prior outside them has at least ``k`` priors at no larger distance),
so each GT ranks ``k * k`` locations instead of the whole level. Distances are squared distances
``dx * dx + dy * dy`` in float32; ties go to the lower prior index, on both paths. Other priors
(and ignore regions) take the dense path, chunked over GTs under ``max_pairs``.

Outputs: hard targets (``quality`` 1). ``extras["overlaps"]`` ``(B, N)`` holds the IoU of each
positive with its GT, 0 elsewhere (mmdetection's ``max_overlaps`` puts -1e8 there instead)::

    gt_index   [[ 0, -1, -1, -1]]
    overlaps   [[0.90, 0.00, 0.00, 0.00]]

Anchor-free priors use ``priors.boxes(square_scale)``: squares of ``8 * stride`` (ATSS's
``octave_base_scale = 8``), centered on the points.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ._grid import (
    LevelLayout,
    empty_static_result,
    ignored_priors,
    key_index,
    level_layouts,
    merge_best,
    sort_key,
    static_inputs,
)
from .base import Assigner, positive_int

__all__ = ["ATSSAssigner"]

#: a candidate's center must be inside the GT by more than this (pixels), as in mmdetection.
CENTER_EPS = 0.01


class ATSSAssigner(Assigner):
    """Adaptive training sample selection (see module docstring).

    Args:
        topk: candidates per level and GT (9 in the paper).
        ignore_iof_thr: ignore-region threshold on intersection / prior area; ``<= 0`` is off.
        square_scale: side, in strides, of the square boxes used for anchor-free priors.
        max_pairs: memory budget of the dense path, see :func:`assignlab.core.gt_chunks`.
    """

    def __init__(
        self,
        topk: int = 9,
        ignore_iof_thr: float = -1.0,
        square_scale: float = 8.0,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        super().__init__(max_pairs)
        positive_int("topk", topk)
        if float(square_scale) <= 0:
            raise ValueError(f"square_scale must be positive, got {square_scale}")
        self.topk = int(topk)
        self.ignore_iof_thr = float(ignore_iof_thr)
        self.square_scale = float(square_scale)

    def __call__(self, priors: Priors, gt: GroundTruth, **predictions: Tensor) -> Assignment:
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        dev = gt.boxes.device
        if G == 0 or N == 0:
            return empty_static_result(gt, N)

        dtype, pboxes, parea, gboxes, garea, valid = static_inputs(priors, gt, self.square_scale)
        pts = priors.points.to(device=dev, dtype=dtype)
        has_gt = valid.any(dim=1)
        ignored = ignored_priors(pboxes, gt, self.ignore_iof_thr, True, self.max_pairs)
        if ignored is not None:
            ignored = ignored & has_gt[:, None]
        layouts = [lay for lay in level_layouts(priors) if lay.n > 0]
        gcx = (gboxes[..., 0] + gboxes[..., 2]) / 2.0
        gcy = (gboxes[..., 1] + gboxes[..., 3]) / 2.0

        best_val = torch.full((B, N), float("-inf"), dtype=dtype, device=dev)
        best_gt = torch.full((B, N), -1, dtype=torch.long, device=dev)
        for sl in gt_chunks(B, G, N, self.max_pairs):
            g = sl.stop - sl.start
            cx, cy = gcx[:, sl], gcy[:, sl]
            cand = torch.cat(
                [
                    self._grid_candidates(pts, lay, cx, cy)
                    if lay.grid and ignored is None
                    else self._dense_candidates(pts, lay, cx, cy, ignored)
                    for lay in layouts
                ],
                dim=-1,
            )  # (B, g, K) prior indices, level by level, nearest first
            K = cand.shape[-1]
            gb = gboxes[:, sl, None, :]  # (B, g, 1, 4)
            cb = pboxes[cand]  # (B, g, K, 4)
            wx = (torch.minimum(cb[..., 2], gb[..., 2]) - torch.maximum(cb[..., 0], gb[..., 0])).clamp_(min=0)
            wy = (torch.minimum(cb[..., 3], gb[..., 3]) - torch.maximum(cb[..., 1], gb[..., 1])).clamp_(min=0)
            inter = wx * wy
            iou = inter / (parea[cand] + garea[:, sl, None] - inter)  # (B, g, K)
            # mean + unbiased std over the candidates, reduced like mmdetection's (K, G) layout
            # (a single candidate has no std: NaN, nothing passes, as in mmdetection)
            flat = iou.permute(2, 0, 1).reshape(K, B * g)
            std = flat.std(dim=0) if K > 1 else torch.full_like(flat[0], float("nan"))
            thr = (flat.mean(dim=0) + std).reshape(B, g, 1)
            cp = pts[cand]  # (B, g, K, 2)
            inside = torch.stack(
                [cp[..., 0] - gb[..., 0], cp[..., 1] - gb[..., 1], gb[..., 2] - cp[..., 0], gb[..., 3] - cp[..., 1]],
                dim=-1,
            ).amin(dim=-1) > CENTER_EPS
            pos = (iou >= thr) & inside & valid[:, sl, None]
            val = torch.where(pos, iou, float("-inf"))
            gidx = torch.arange(sl.start, sl.stop, device=dev).reshape(1, g, 1).expand(B, g, K)
            best_val, best_gt = merge_best(
                best_val, best_gt, cand.reshape(B, -1), val.reshape(B, -1), gidx.reshape(B, -1)
            )

        positive = best_val > float("-inf")
        gt_index = torch.where(positive, best_gt, -1)
        overlaps = torch.where(positive, best_val, 0.0)
        return Assignment.from_gt_index(gt_index, ignore=ignored, extras={"overlaps": overlaps})

    # -- candidate selection: (B, g, min(k, n_l)) prior indices, nearest first -----------------
    def _grid_candidates(self, pts: Tensor, lay: LevelLayout, gcx: Tensor, gcy: Tensor) -> Tensor:
        B, g = gcx.shape
        dev = pts.device
        k, na = self.topk, lay.na
        X = pts[lay.col_points(dev), 0]  # (cols,)
        Y = pts[lay.row_points(dev), 1]  # (rows,)
        dx = X - gcx[..., None]
        dy = Y - gcy[..., None]
        dx2, dy2 = dx * dx, dy * dy  # (B, g, cols), (B, g, rows)
        m = -(-k // na)  # locations needed for k priors
        kx, ky = min(m, lay.cols), min(m, lay.rows)
        ci = key_index(sort_key(dx2, torch.arange(lay.cols, device=dev)).topk(kx, dim=-1, largest=False).values)
        ri = key_index(sort_key(dy2, torch.arange(lay.rows, device=dev)).topk(ky, dim=-1, largest=False).values)
        d2 = dy2.gather(-1, ri)[..., :, None] + dx2.gather(-1, ci)[..., None, :]  # (B, g, ky, kx)
        loc = ri[..., :, None] * lay.cols + ci[..., None, :]
        pid = (loc[..., None] * na + torch.arange(na, device=dev)).reshape(B, g, -1)
        d2 = d2[..., None].expand(B, g, ky, kx, na).reshape(B, g, -1)
        sel = sort_key(d2, pid).topk(min(k, lay.n), dim=-1, largest=False).values
        return key_index(sel) + lay.start

    def _dense_candidates(
        self, pts: Tensor, lay: LevelLayout, gcx: Tensor, gcy: Tensor, ignored: Tensor | None
    ) -> Tensor:
        p = pts[lay.slice]
        dx = p[:, 0] - gcx[..., None]
        dy = p[:, 1] - gcy[..., None]
        d2 = dx * dx + dy * dy  # (B, g, n)
        if ignored is not None:
            d2 = d2.masked_fill(ignored[:, None, lay.slice], float("inf"))
        key = sort_key(d2, torch.arange(lay.n, device=pts.device))
        sel = key.topk(min(self.topk, lay.n), dim=-1, largest=False).values
        return key_index(sel) + lay.start
