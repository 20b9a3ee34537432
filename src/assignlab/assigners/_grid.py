"""Private helpers of the static assigners (MaxIoU, TopK, ATSS, FCOS).

Two ideas make these assigners cheap on a batch:

**Grid factorisation.** Priors made by :func:`~assignlab.core.make_priors` sit on a regular grid
per level: the x-interval of a prior box depends only on its (column, anchor), the y-interval only
on its (row, anchor). Every axis-aligned quantity (the intersection width with a GT, the distance of
the prior center to a GT edge, ...) is therefore computed once per column and once per row, and
only the final combination (``inter = wx * wy``) is done densely, by broadcasting::

    level with rows=2, cols=3, na=1, one GT
    wx (per column) [4, 6, 0]       wy (per row) [5, 2]
    inter = wy[:, None] * wx[None, :] = [[20, 30, 0],
                                         [ 8, 12, 0]]   -> flattened row-major = prior order

The arithmetic per pair is the same as the dense formula (``min(x2) - max(x1)`` clamped, times the
same for y), so the IoU is bit-identical to :func:`assignlab.core.boxes.batched_box_iou` (tested).
Priors without a known grid (``Priors.from_tensors``) take the dense path, one "column" and one
"row" per prior.

**Running reductions over GT chunks.** A ``(B, G, N)`` tensor never exists: GTs are walked in
chunks under ``max_pairs`` and each cross-GT decision (best GT of a prior) is merged into ``(B, N)``
accumulators with an explicit tie rule, so chunked and unchunked results are identical.

Pairwise tensors here are laid out ``(B, n, g)`` (GTs innermost): reducing over GTs for every prior
(the hot reduction of MaxIoU / FCOS) is then a contiguous inner reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import Assignment, GroundTruth, Priors, chunk_slices
from ..core.boxes import valid_box_mask

__all__ = [
    "LevelLayout",
    "empty_static_result",
    "static_inputs",
    "level_layouts",
    "sanitize_gt",
    "level_iou",
    "ignored_priors",
    "merge_best",
    "sort_key",
    "key_index",
]


@dataclass(frozen=True)
class LevelLayout:
    """Where a level's priors are and, when known, how they factorise into a grid.

    ``rows == 0`` means "no known grid": the level is processed densely.
    """

    start: int
    stop: int
    rows: int = 0
    cols: int = 0
    na: int = 1

    @property
    def n(self) -> int:
        return self.stop - self.start

    @property
    def grid(self) -> bool:
        return self.rows > 0

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    def col_priors(self, device: torch.device) -> Tensor:
        """``(cols * na,)`` one prior per (column, anchor): those of row 0."""
        return self.start + torch.arange(self.cols * self.na, device=device)

    def row_priors(self, device: torch.device) -> Tensor:
        """``(rows * na,)`` one prior per (row, anchor): those of column 0."""
        r = torch.arange(self.rows, device=device)[:, None] * (self.cols * self.na)
        return (self.start + r + torch.arange(self.na, device=device)).reshape(-1)

    def col_points(self, device: torch.device) -> Tensor:
        """``(cols,)`` indices of the anchor-0 prior of each column of row 0."""
        return self.start + torch.arange(self.cols, device=device) * self.na

    def row_points(self, device: torch.device) -> Tensor:
        """``(rows,)`` indices of the anchor-0 prior of each row of column 0."""
        return self.start + torch.arange(self.rows, device=device) * (self.cols * self.na)


def level_layouts(priors: Priors) -> list[LevelLayout]:
    """One :class:`LevelLayout` per level; grid when the level shape is recorded and consistent."""
    out = []
    shapes = priors.level_shapes or ((0, 0),) * len(priors.num_level_priors)
    nas = priors.num_anchors or (1,) * len(priors.num_level_priors)
    for s, (rows, cols), na in zip(priors.level_slices(), shapes, nas):
        n = s.stop - s.start
        if rows > 0 and cols > 0 and na > 0 and rows * cols * na == n:
            out.append(LevelLayout(s.start, s.stop, int(rows), int(cols), int(na)))
        else:
            out.append(LevelLayout(s.start, s.stop))
    return out


def sanitize_gt(gt: GroundTruth, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes, areas, valid)``: a GT is valid when its mask is set and its box is finite with
    positive width and height. Invalid rows get the box ``(0, 0, 0, 0)`` and area 1, whose IoU with
    every prior is exactly 0 (no NaN whatever the padding holds)."""
    boxes = gt.boxes.to(dtype)
    valid = gt.mask & valid_box_mask(boxes)
    boxes = torch.where(valid[..., None], boxes, torch.zeros((), dtype=dtype, device=boxes.device))
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    area = torch.where(valid, area, torch.ones((), dtype=dtype, device=boxes.device))
    return boxes, area, valid


def level_iou(
    prior_boxes: Tensor,
    prior_area: Tensor,
    lay: LevelLayout,
    gt_boxes: Tensor,
    gt_area: Tensor,
    out: Tensor | None = None,
    work: Tensor | None = None,
) -> Tensor:
    """IoU ``(B, n, g)`` between the level's priors and a GT chunk ``(B, g, 4)`` (areas ``(B, g)``).

    ``inter / (area_gt + area_prior - inter)`` with torchvision's operation order (bit-identical to
    :func:`~assignlab.core.boxes.batched_box_iou`, transposed). ``out`` / ``work``: optional
    contiguous buffers of at least ``B * n * g`` elements (result / scratch), so that a caller
    walking several levels and chunks does not pay for fresh allocations each time.
    """
    B, g = gt_boxes.shape[:2]
    n = lay.n
    dev, dtype = prior_boxes.device, prior_boxes.dtype
    size = B * n * g
    out = torch.empty(size, dtype=dtype, device=dev) if out is None else out[:size]
    work = torch.empty(size, dtype=dtype, device=dev) if work is None else work[:size]
    gx1, gy1, gx2, gy2 = (gt_boxes[..., i].reshape(B, 1, 1, g) for i in range(4))
    if lay.grid:
        xb = prior_boxes[lay.col_priors(dev)].reshape(1, lay.cols, lay.na, 4)
        yb = prior_boxes[lay.row_priors(dev)].reshape(1, lay.rows, lay.na, 4)
        # (B, cols, na, g) and (B, rows, na, g)
        wx = (torch.minimum(gx2, xb[..., 2, None]) - torch.maximum(gx1, xb[..., 0, None])).clamp_(min=0)
        wy = (torch.minimum(gy2, yb[..., 3, None]) - torch.maximum(gy1, yb[..., 1, None])).clamp_(min=0)
        # (B, 1, cols, na, g) * (B, rows, 1, na, g) -> (B, rows, cols, na, g) = prior order
        torch.mul(wx[:, None], wy[:, :, None], out=out.view(B, lay.rows, lay.cols, lay.na, g))
    else:
        pb = prior_boxes[lay.slice].reshape(1, n, 1, 4)
        gx1, gy1, gx2, gy2 = (t.reshape(B, 1, g) for t in (gx1, gy1, gx2, gy2))
        wx = (torch.minimum(gx2, pb[..., 2]) - torch.maximum(gx1, pb[..., 0])).clamp_(min=0)
        wy = (torch.minimum(gy2, pb[..., 3]) - torch.maximum(gy1, pb[..., 1])).clamp_(min=0)
        torch.mul(wx, wy, out=out.view(B, n, g))
    inter = out.view(B, n, g)
    union = work.view(B, n, g)
    torch.add(gt_area.reshape(B, 1, g), prior_area[lay.slice].reshape(1, n, 1), out=union)
    union.sub_(inter)
    return inter.div_(union)


def prior_areas(prior_boxes: Tensor) -> Tensor:
    return (prior_boxes[:, 2] - prior_boxes[:, 0]) * (prior_boxes[:, 3] - prior_boxes[:, 1])


def ignored_priors(
    prior_boxes: Tensor, gt: GroundTruth, thr: float, wrt_candidates: bool, max_pairs: int
) -> Tensor | None:
    """``(B, N)`` bool: priors whose intersection-over-foreground with some ignore region exceeds
    ``thr``, or ``None`` when ignoring is off (``thr <= 0``) or there are no ignore regions.

    ``wrt_candidates=True``: ``inter / area(prior)`` (a prior mostly inside a crowd box);
    ``False``: ``inter / area(ignore box)`` (a prior covering most of it). The denominator is
    clamped at 1e-6 like mmdetection's ``bbox_overlaps(mode="iof")``.
    """
    if thr <= 0 or not gt.has_ignore:
        return None
    assert gt.ignore is not None and gt.ignore_mask is not None
    B, I_ = gt.ignore.shape[:2]
    N = prior_boxes.shape[0]
    ign = gt.ignore.to(prior_boxes.dtype)
    out = torch.zeros(B, N, dtype=torch.bool, device=prior_boxes.device)
    p = prior_boxes[None, :, None, :]  # (1, N, 1, 4)
    for sl in chunk_slices(I_, B * N, max_pairs):
        ib = ign[:, None, sl, :]  # (B, 1, i, 4)
        wx = (torch.minimum(ib[..., 2], p[..., 2]) - torch.maximum(ib[..., 0], p[..., 0])).clamp_(min=0)
        wy = (torch.minimum(ib[..., 3], p[..., 3]) - torch.maximum(ib[..., 1], p[..., 1])).clamp_(min=0)
        inter = wx.mul_(wy)  # (B, N, i)
        if wrt_candidates:
            denom = prior_areas(prior_boxes)[None, :, None]
        else:
            denom = ((ib[..., 2] - ib[..., 0]) * (ib[..., 3] - ib[..., 1]))  # (B, 1, i)
        iof = inter / denom.clamp(min=1e-6)
        hit = (iof > thr) & gt.ignore_mask[:, None, sl]
        out |= hit.any(dim=2)
    return out


def merge_best(
    best_val: Tensor, best_gt: Tensor, prior: Tensor, val: Tensor, gt_idx: Tensor
) -> tuple[Tensor, Tensor]:
    """Merge candidate matches into the running per-prior best (higher value wins, ties -> lower GT).

    ``best_val`` / ``best_gt`` ``(B, N)`` (``-inf`` / ``-1`` where nothing yet); ``prior``, ``val``,
    ``gt_idx`` ``(B, M)`` candidate rows (``val = -inf`` for rows that are not candidates). The
    chunks must arrive in increasing GT order: across chunks an equal value keeps the earlier (lower)
    GT, inside a chunk the lowest GT index among the equal best values is taken.
    """
    neg_inf = torch.full_like(best_val, float("-inf"))
    cbest = neg_inf.scatter_reduce(1, prior, val, reduce="amax", include_self=True)
    hit = (val == torch.gather(cbest, 1, prior)) & (val > float("-inf"))
    big = torch.iinfo(torch.long).max
    cgt = torch.full_like(best_gt, big).scatter_reduce(
        1, prior, torch.where(hit, gt_idx, big), reduce="amin", include_self=True
    )
    upd = cbest > best_val
    return torch.where(upd, cbest, best_val), torch.where(upd, cgt, best_gt)


_LOW32 = 0xFFFFFFFF


def sort_key(values: Tensor, index: Tensor) -> Tensor:
    """int64 key ordering by ``values`` (non-negative floats or +inf), then by ``index`` (< 2**32).

    A non-negative float32's bit pattern read as an integer is monotonic in its value, so
    ``bits << 32 | index`` sorts exactly like the pair ``(value, index)``: a deterministic
    "smallest value, ties to the lowest index" ``topk`` in one call. Other float dtypes are rounded
    to float32 first.
    """
    key = values.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return key.bitwise_left_shift_(32).bitwise_or_(index)


def key_index(key: Tensor) -> Tensor:
    """The index packed in a :func:`sort_key`."""
    return key & _LOW32


def empty_static_result(gt: GroundTruth, num_priors: int) -> Assignment:
    """All-negative result of a static assigner (no GT or no prior), with zero ``overlaps``."""
    B, dev = gt.batch_size, gt.boxes.device
    res = Assignment.empty(B, num_priors, device=dev)
    return res.replace(extras={"overlaps": torch.zeros(B, num_priors, dtype=gt.boxes.dtype, device=dev)})


def static_inputs(priors: Priors, gt: GroundTruth, square_scale: float):
    """The common start of a static IoU assigner: working dtype, prior boxes ``(N, 4)`` (anchors or
    ``square_scale * stride`` squares) and their areas, and the sanitised GTs (boxes, areas, valid)."""
    dtype = gt.boxes.dtype if gt.boxes.is_floating_point() else torch.float32
    pboxes = priors.boxes(square_scale).to(device=gt.boxes.device, dtype=dtype)
    gboxes, garea, valid = sanitize_gt(gt, dtype)
    return dtype, pboxes, prior_areas(pboxes), gboxes, garea, valid
