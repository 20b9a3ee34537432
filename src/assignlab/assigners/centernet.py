"""CenterNet: one positive per object at its center cell, Gaussian heatmap soft negatives.

Zhou, Wang, Kraehenbuehl, "Objects as Points", arXiv:1904.07850, 2019 (Sec. 3, Eq. 1); the
radius rule comes from Law & Deng, "CornerNet: Detecting Objects as Paired Keypoints", ECCV 2018.

Every GT ``g`` of class ``c`` is one keypoint: the cell ``(floor(cx / s), floor(cy / s))`` of its
center on a level of stride ``s``. The classification target is a per-class heatmap ``Y`` with a
Gaussian splat around each keypoint, combined by element-wise maximum over GTs of a class::

    Y[x, y, c] = max_g exp(-((x - px_g)^2 + (y - py_g)^2) / (2 sigma_g^2)),   |x - px_g|, |y - py_g| <= r_g
    sigma_g = (2 r_g + 1) / 6                                                   (CenterNet code)

The peak is exactly 1 at the center cell, the window is the ``(2r+1) x (2r+1)`` square around it
(0 outside). The penalty-reduced focal loss (Eq. 1) treats the peak as the positive and uses
``(1 - Y)^4`` to down-weight the negatives near it, so the heatmap is returned as the *soft
negative target* in ``extras["heatmap"]`` ``(B, N, C)``.

**Radius.** ``r = max(0, floor(gaussian_radius(ceil(h), ceil(w), min_overlap)))`` with ``h, w`` the
box size in cells of its level (CenterNet's ``ctdet`` rounding). :func:`gaussian_radius` is
CornerNet's three-case quadratic (corners moved inward / outward / one in one out) exactly as
the public CenterNet and CornerNet code computes it, including its well-known quirk of dividing
every root by 2 instead of ``2a`` (which makes the third case the binding one for most boxes)::

    case 1: a=1,     b=h+w,           c=w h (1-m)/(1+m)   r1 = (b + sqrt(b^2 - 4ac)) / 2
    case 2: a=4,     b=2(h+w),        c=(1-m) w h         r2 = (b + sqrt(b^2 - 4ac)) / 2
    case 3: a=4m,    b=-2m(h+w),      c=(m-1) w h         r3 = (b + sqrt(b^2 - 4ac)) / 2
    radius = min(r1, r2, r3)

Worked example: a 10 x 10 cell box, ``m = 0.7``: r1 = 19.08, r2 = 36.73, r3 = 2.73 -> r = 2,
``sigma = 5/6``; the heatmap is 1 at the center, ``exp(-0.72) = 0.487`` one cell away,
``exp(-1.44) = 0.237`` diagonally, ``exp(-5.76) = 0.0032`` at the window corner ``(+-2, +-2)``
and 0 three cells away.

**Levels.** The original uses one output map (stride 4). Here, by default, every GT goes to the
finest level (smallest stride); ``level=l`` picks one level; ``size_ranges=[(lo, hi), ...]`` (one
range per level, in level order) sends each GT to the first level with ``lo < max(w, h) / 2 <= hi``
(in pixels, i.e. the largest center-to-edge distance, the quantity FCOS's regress ranges bound),
or to the first level when below every range and to the last when above. The other levels get
no heatmap for that GT.

**Edge cases.** GT boxes are clipped to the image (``priors.image_size``) first (CenterNet clips to
the output map); a GT that vanishes by clipping gets no target. A center outside the grid is
clamped to the nearest cell. When two GTs share a center cell on the same level, the cell goes to
the *smaller* GT (by clipped area; ties to the lower GT index); the other GT has no positive, but
its Gaussian is still in the heatmap of its class.

**Cost.** A GT's Gaussian touches only its ``(2r+1)^2`` window, so the heatmap is built from
``(B, G, (2R+1)^2)`` window tensors (``R`` the largest radius, 11 for 640 px images) amax-scattered
into the heatmap, not from ``(B, G, N)`` distances (16 x 1000 GTs x 8400 priors: 0.2 s instead of
10 s). Priors without grid shapes (``Priors.from_tensors``) use the dense path, chunked by ``max_pairs``.

Output (all ``(B, N)``): ``positive`` on the center cells, ``gt_index`` there, ``quality`` 1,
``box_weight`` 1, ``cls_weight`` 1 everywhere (no ignore). ``extras["heatmap"]`` ``(B, N, C)``;
``extras["overlaps"]`` IoU of the positive prior's box (``priors.boxes(square_scale)``) with its
GT. CenterNet is anchor-free: priors with several anchors per location raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, chunk_slices, devices, gt_chunks
from ..core.boxes import aligned_box_iou
from ._grid import gather_boxes
from .base import Assigner, check_gt_labels, positive, unit_interval

__all__ = ["CenterNetAssigner", "gaussian_radius"]


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CornerNet / CenterNet Gaussian radius of boxes of size ``height x width`` (element-wise).

    Same formula and rounding-free output as the public reference code (see module docstring);
    callers floor it. ``height`` and ``width`` are in heatmap cells.

    Example::

        >>> gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]))
        tensor([2.7332])
    """
    h, w, m = height, width, float(min_overlap)
    b1 = h + w
    c1 = w * h * (1 - m) / (1 + m)
    r1 = (b1 + torch.sqrt((b1**2 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - m) * w * h
    r2 = (b2 + torch.sqrt((b2**2 - 16 * c2).clamp(min=0))) / 2
    a3 = 4 * m
    b3 = -2 * m * (h + w)
    c3 = (m - 1) * w * h
    r3 = (b3 + torch.sqrt((b3**2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


class CenterNetAssigner(Assigner):
    """Center-cell positives and Gaussian heatmap targets (see module docstring).

    Args:
        min_overlap: ``m`` of the radius rule, in (0, 1) (CenterNet: 0.7; mmdet's head uses 0.3).
        level: the single level every GT goes to; ``None`` = the finest level. Exclusive with
            ``size_ranges``.
        size_ranges: one ``(lo, hi)`` pixel range of ``max(w, h) / 2`` per level.
        num_classes: heatmap channels ``C``. When ``None``: ``pred_scores.shape[-1]`` if
            predictions are passed, else ``max(label) + 1`` of the batch (one host sync).
        square_scale: side of the square prior boxes used for ``extras["overlaps"]``, in strides.
        max_pairs: memory budget (prior x GT pairs per intermediate tensor).

    Raises:
        ValueError: a bad parameter (named); priors with several anchors per location; ``level``
            or ``size_ranges`` not matching the priors' levels; a GT label outside ``[0, C)``.
    """

    def __init__(
        self,
        min_overlap: float = 0.7,
        level: int | None = None,
        size_ranges: Sequence[tuple[float, float]] | None = None,
        num_classes: int | None = None,
        square_scale: float = 8.0,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        unit_interval("min_overlap", min_overlap, closed_high=False)
        if level is not None and (int(level) != level or int(level) < 0):
            raise ValueError(f"level must be a non-negative integer or None, got {level}")
        if level is not None and size_ranges is not None:
            raise ValueError("level and size_ranges are exclusive: give one of them")
        if size_ranges is not None:
            size_ranges = tuple((float(lo), float(hi)) for lo, hi in size_ranges)
            if not size_ranges or any(not lo < hi for lo, hi in size_ranges):
                raise ValueError(f"size_ranges must be non-empty (lo, hi) pairs with lo < hi, got {size_ranges}")
        if num_classes is not None and (int(num_classes) != num_classes or int(num_classes) < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        positive("square_scale", square_scale)
        super().__init__(max_pairs)
        self.min_overlap = float(min_overlap)
        self.level = None if level is None else int(level)
        self.size_ranges = size_ranges
        self.num_classes = None if num_classes is None else int(num_classes)
        self.square_scale = float(square_scale)
        self._static_window = False  # tests: force the sync-free window bound on the CPU

    # -- helpers ---------------------------------------------------------------------------------
    def _num_classes(self, gt: GroundTruth, pred_scores: Tensor | None) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if pred_scores is not None:
            return int(pred_scores.shape[-1])
        if gt.max_boxes == 0 or not bool(gt.mask.any()):
            return 1
        return int(gt.labels[gt.mask].max()) + 1

    def _gt_levels(self, priors: Priors, boxes: Tensor) -> Tensor:
        """``(B, G)`` level of every GT."""
        L = len(priors.num_level_priors)
        B, G = boxes.shape[:2]
        if self.size_ranges is None:
            if self.level is None:
                lvl = min(range(L), key=lambda i: priors.level_strides[i])
            else:
                lvl = self.level
                if lvl >= L:
                    raise ValueError(f"level={lvl} but the priors have {L} levels")
            return torch.full((B, G), lvl, dtype=torch.long, device=boxes.device)
        if len(self.size_ranges) != L:
            raise ValueError(f"size_ranges has {len(self.size_ranges)} ranges but the priors have {L} levels")
        rng = torch.tensor(self.size_ranges, dtype=boxes.dtype, device=boxes.device)  # (L, 2)
        size = torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) / 2  # (B, G)
        inside = (size[..., None] > rng[:, 0]) & (size[..., None] <= rng[:, 1])  # (B, G, L)
        first = inside.long().argmax(dim=-1)  # first matching level (0 when none)
        fallback = torch.where(size <= rng[0, 0], 0, L - 1)
        return torch.where(inside.any(dim=-1), first, fallback)

    @staticmethod
    def _grid_extent(priors: Priors) -> tuple[Tensor, Tensor]:
        """``(L,)`` columns and rows of every level's grid."""
        device = priors.device
        if all(r > 0 and c > 0 for r, c in priors.level_shapes):
            cols = torch.tensor([c for _, c in priors.level_shapes], device=device)
            rows = torch.tensor([r for r, _ in priors.level_shapes], device=device)
            return cols, rows
        ext = []
        for sl in priors.level_slices():  # loop over levels only
            g = priors.grid_xy[sl]
            ext.append(g.max(dim=0).values + 1 if g.shape[0] else torch.ones(2, dtype=torch.long, device=device))
        e = torch.stack(ext)  # (L, 2) (cols, rows)
        return e[:, 0], e[:, 1]

    @staticmethod
    def _full_grid(priors: Priors) -> bool:
        """Whether prior ``level_start + row * cols + col`` is the cell ``(col, row)`` of its level
        (``make_priors`` order, one prior per location), so a GT's window can be indexed directly."""
        shapes = priors.level_shapes
        return len(shapes) == len(priors.num_level_priors) and all(
            r > 0 and c > 0 and n == r * c for (r, c), n in zip(shapes, priors.num_level_priors, strict=True)
        )

    def _window_radius(self, priors: Priors, radius: Tensor) -> int:
        """An integer ``R >= `` every GT's radius: the half-side of the offset window shared by all GTs
        (any such ``R`` gives the same result; a larger one only costs time).

        On the CPU it is the exact maximum radius (reading it is free). On other devices, when boxes
        are clipped to the image, it is a bound known without a device-to-host sync: the radius grows
        with ``h`` and ``w``, so it is at most that of an image-sized box on the finest level (``+ 1``
        absorbs rounding). Without an image size the maximum is read (one sync)."""
        H, W = priors.image_size
        if (not devices.sync_free(radius.device) and not self._static_window) or not (H > 0 and W > 0):
            return int(radius.max()) if radius.numel() else 0
        s = min(priors.level_strides)
        h, w = torch.tensor([float(math.ceil(H / s)), float(math.ceil(W / s))], dtype=torch.float64)
        return int(math.floor(float(gaussian_radius(h, w, self.min_overlap)))) + 1

    def _splat_windows(
        self, priors: Priors, lvl: Tensor, cx: Tensor, cy: Tensor, radius: Tensor, two_sigma2: Tensor,
        ok: Tensor, area: Tensor, labels: Tensor, C: int,
    ) -> tuple[Tensor, Tensor]:
        """Heatmap ``(B, C, N)`` and center-cell GT ``(B, N)`` from each GT's ``(2R+1)^2`` window.

        A GT's Gaussian is non-zero only on the ``(2r+1)^2`` cells around its center, so instead of
        a ``(B, G, N)`` distance tensor we enumerate the ``K = (2R+1)^2`` offsets of the largest
        window, mask cells outside the GT's own window or the grid, and ``amax``-scatter the values
        into the flat ``(B, C * N)`` heatmap: ``(B, g, K)`` per GT chunk, ``K << N``. Example: 16
        images x 1000 GTs at 640 px, ``R = 11`` -> ``K = 529`` instead of ``N = 8400``. Values are
        the same floats as the dense formula (``dx, dy`` are the integer offsets), and max / min
        reductions do not depend on order, so the result is identical."""
        B, G = lvl.shape
        N = priors.num_priors
        device, dtype = lvl.device, two_sigma2.dtype
        cols_l = torch.tensor([c for _, c in priors.level_shapes], device=device)
        rows_l = torch.tensor([r for r, _ in priors.level_shapes], device=device)
        starts_l = torch.tensor([0, *priors.num_level_priors[:-1]], device=device).cumsum(0)
        cols, rows, start = cols_l[lvl], rows_l[lvl], starts_l[lvl]  # (B, G)

        # center cells: smallest clipped area wins, ties to the lower GT index (order-free reductions)
        center = start + cy * cols + cx  # (B, G) prior index
        key = torch.where(ok, area, float("inf"))
        best_area = torch.full((B, N), float("inf"), dtype=dtype, device=device)
        best_area.scatter_reduce_(1, center, key, reduce="amin", include_self=True)
        wins = (key < float("inf")) & (key == best_area.gather(1, center))
        gidx = torch.arange(G, device=device).expand(B, G)
        best_gt = torch.full((B, N), G, dtype=torch.long, device=device)
        best_gt.scatter_reduce_(1, center, torch.where(wins, gidx, G), reduce="amin", include_self=True)
        best_gt = torch.where(best_gt < G, best_gt, -1)

        # Gaussian windows. The value at offset (ox, oy) depends only on the GT's integer radius r
        # (sigma is a function of r): one table of exp(-(ox^2 + oy^2) / (2 sigma_r^2)), zero outside
        # the (2r+1)^2 square; row 1 + r for radius r, row 0 all zeros for GTs without a target.
        R = self._window_radius(priors, radius)
        off = torch.arange(-R, R + 1, device=device)  # (S,), S = 2R + 1
        S = off.numel()
        oy, ox = (t.reshape(-1) for t in torch.meshgrid(off, off, indexing="ij"))  # (K,), K = S^2
        d2 = (ox * ox + oy * oy).to(dtype)  # exact integers, as dx * dx + dy * dy
        rr = torch.arange(R + 1, device=device).to(dtype)[:, None]  # (R + 1, 1)
        t2s2 = 2 * ((2 * rr + 1) / 6) ** 2  # same float ops as the per-GT 2 sigma^2
        table = torch.where(torch.maximum(ox.abs(), oy.abs()) <= rr, torch.exp(-d2 / t2s2), 0.0)
        table = torch.cat([table.new_zeros(1, S * S), table])  # (R + 2, K)
        row = torch.where(ok, radius.long() + 1, 0)  # (B, G); R >= radius, so never past the table

        # Cells outside the grid get the value 0 (a no-op for the amax into a heatmap of zeros) and an
        # index clamped into [0, C * N] (slot C * N is a dummy, dropped at the end). The mask is applied
        # by multiplying with 0/1 floats: torch.where / masked_fill are ~20x slower on the CPU.
        heat = torch.zeros(B, C * N + 1, dtype=dtype, device=device)
        corner = labels * N + start + cy * cols + cx  # (B, G) flat heatmap index of the center
        for sl in chunk_slices(G, B * S * S, self.max_pairs):
            g = sl.stop - sl.start
            x, y, c = cx[:, sl, None], cy[:, sl, None], cols[:, sl, None]
            in_x = ((x + off >= 0) & (x + off < c)).to(dtype)  # (B, g, S)
            in_y = ((y + off >= 0) & (y + off < rows[:, sl, None])).to(dtype)
            flat = (corner[:, sl, None] + off * c)[..., :, None] + off  # (B, g, S, S) (row, col offset)
            flat.clamp_(0, C * N)
            val = table.index_select(0, row[:, sl].reshape(-1)).view(B, g, S, S)
            val.mul_(in_y[..., :, None]).mul_(in_x[..., None, :])
            heat.scatter_reduce_(1, flat.view(B, -1), val.view(B, -1), reduce="amax", include_self=True)
        return heat[:, : C * N].view(B, C, N), best_gt

    def _splat_dense(
        self, priors: Priors, lvl: Tensor, cx: Tensor, cy: Tensor, radius: Tensor, two_sigma2: Tensor,
        ok: Tensor, area: Tensor, labels: Tensor, C: int,
    ) -> tuple[Tensor, Tensor]:
        """Same outputs as :meth:`_splat_windows` over ``(B, g, N)`` chunks, for priors whose cells
        cannot be indexed directly (``Priors.from_tensors``: no grid shapes)."""
        B, G = lvl.shape
        N = priors.num_priors
        device, dtype = lvl.device, two_sigma2.dtype
        px = priors.grid_xy[:, 0][None, None, :]  # (1, 1, N)
        py = priors.grid_xy[:, 1][None, None, :]
        plev = priors.levels[None, None, :]
        heat = torch.zeros(B, C, N, dtype=dtype, device=device)
        best_area = torch.full((B, N), float("inf"), dtype=dtype, device=device)
        best_gt = torch.full((B, N), -1, dtype=torch.long, device=device)
        for sl in gt_chunks(B, G, N, self.max_pairs):
            g = sl.stop - sl.start
            dx = px - cx[:, sl, None]  # (B, g, N)
            dy = py - cy[:, sl, None]
            here = (plev == lvl[:, sl, None]) & ok[:, sl, None]
            r = radius[:, sl, None]
            win = here & (dx.abs() <= r) & (dy.abs() <= r)
            d2 = (dx * dx + dy * dy).to(dtype)
            val = torch.where(win, torch.exp(-d2 / two_sigma2[:, sl, None]), 0.0)
            heat.scatter_reduce_(1, labels[:, sl, None].expand(B, g, N), val, reduce="amax", include_self=True)
            center = here & (dx == 0) & (dy == 0)
            key = torch.where(center, area[:, sl, None], float("inf"))
            v, a = key.min(dim=1)  # first min -> lower GT index
            upd = v < best_area  # strict: earlier chunks win ties
            best_area = torch.where(upd, v, best_area)
            best_gt = torch.where(upd, a + sl.start, best_gt)
        return heat, best_gt

    # -- assignment ------------------------------------------------------------------------------
    def __call__(self, priors: Priors, gt: GroundTruth, **predictions: Tensor) -> Assignment:
        if any(na > 1 for na in priors.num_anchors):
            raise ValueError(
                f"CenterNetAssigner is anchor-free: one prior per location expected, got "
                f"{priors.num_anchors} anchors per location"
            )
        pred_scores = predictions.get("pred_scores")
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        device, dtype = gt.boxes.device, gt.boxes.dtype
        C = self._num_classes(gt, pred_scores)
        check_gt_labels(gt, C, f"CenterNetAssigner: GT labels must be in [0, {C})")
        if G == 0 or N == 0:
            res = Assignment.empty(B, N, device=device)
            return res.replace(
                extras={
                    "heatmap": torch.zeros(B, N, C, dtype=torch.float32, device=device),
                    "overlaps": torch.zeros(B, N, dtype=torch.float32, device=device),
                }
            )

        # ---- per-GT quantities (B, G) ---------------------------------------------------------
        boxes = gt.boxes
        H, W = priors.image_size
        if H > 0 and W > 0:
            x1, x2 = boxes[..., 0].clamp(0, W), boxes[..., 2].clamp(0, W)
            y1, y2 = boxes[..., 1].clamp(0, H), boxes[..., 3].clamp(0, H)
            boxes = torch.stack([x1, y1, x2, y2], dim=-1)
        lvl = self._gt_levels(priors, boxes)  # (B, G)
        lstrides = torch.tensor(priors.level_strides, dtype=dtype, device=device)
        st = lstrides[lvl]  # (B, G)
        bw = (boxes[..., 2] - boxes[..., 0]) / st  # cells
        bh = (boxes[..., 3] - boxes[..., 1]) / st
        ok = gt.mask & (bw > 0) & (bh > 0)
        radius = torch.floor(gaussian_radius(torch.ceil(bh), torch.ceil(bw), self.min_overlap)).clamp(min=0)
        radius = torch.where(ok, radius, 0.0)
        two_sigma2 = 2 * ((2 * radius + 1) / 6) ** 2  # (B, G)
        cols, rows = self._grid_extent(priors)
        cx = torch.floor((boxes[..., 0] + boxes[..., 2]) / 2 / st).long()
        cy = torch.floor((boxes[..., 1] + boxes[..., 3]) / 2 / st).long()
        cx = torch.minimum(cx.clamp(min=0), cols[lvl] - 1)
        cy = torch.minimum(cy.clamp(min=0), rows[lvl] - 1)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])

        # ---- heatmap and center cells ----------------------------------------------------------
        labels = gt.labels.clamp(0, C - 1)  # padded rows may hold anything; they add zeros
        args = (priors, lvl, cx, cy, radius, two_sigma2, ok, area, labels, C)
        if self._full_grid(priors):
            heat, best_gt = self._splat_windows(*args)
        else:
            heat, best_gt = self._splat_dense(*args)

        gt_index = best_gt
        positive = gt_index >= 0
        gboxes = gather_boxes(gt.boxes, gt_index.clamp(min=0))  # (B, N, 4)
        pboxes = priors.boxes(self.square_scale).to(dtype)[None]  # (1, N, 4), broadcast
        # finite IoU >= 0 times 1 / 0 (torch.where is ~20x slower than a product on the CPU)
        overlaps = torch.nan_to_num(aligned_box_iou(pboxes, gboxes), nan=0.0).mul_(positive.to(dtype))
        return Assignment.from_gt_index(
            gt_index,
            extras={"heatmap": heat.permute(0, 2, 1).contiguous().float(), "overlaps": overlaps.float()},
        )
