"""Shared machinery of the prediction-aware "dynamic" assigners (SimOTA, DSL, TAL).

Nothing here is an assigner. These are the batched building blocks that SimOTA
(:mod:`.simota`), the dynamic soft-label assigner (:mod:`.dsl`) and the task-aligned
assigner (:mod:`.tal`) share:

* :func:`pairwise_iou` / :func:`aligned_iou` / :func:`pair_iou`: IoU of GT boxes with predicted
  boxes (all pairs, aligned boxes, flat coordinate lists), with mmdetection's ``BboxOverlaps2D``
  formula (``inter / max(union, eps)``), so values are bit-identical to mmdet's and finite for
  zero-area boxes.
* :func:`points_inside` / :func:`any_inside`: strict "prior centre inside a box" tests for every
  (GT, prior) pair, or OR-ed over the GTs; on grid levels (:func:`~assignlab.core.make_priors`)
  they test rows and columns separately (``(B, g, rows)`` and ``(B, g, cols)``) instead of every
  prior, with the same results.
* :func:`select_dynamic_k`: OTA's dynamic-k rule (below) from *sparse* (GT, prior) pairs, with
  :class:`OverlapIndex` (every overlapping GT / predicted-box pair without testing all of them) and
  :func:`lex_smallest` (the ``q`` cheapest entries of every row, ties to the lower prior index).
* :func:`prepare_predictions`: the common start of a call (prediction checks, one float dtype,
  GT label range); :func:`iou_assignment` / :func:`empty_iou_assignment`: the common result of
  SimOTA and DSL (IoU soft label of each positive).

Shapes: ``B`` images, ``g`` GTs in the current chunk (``G`` in all), ``N`` priors, ``q`` the
number of IoUs summed for the dynamic k (``candidate_topk`` / ``topk``, at most ``N``).

The dynamic-k rule (SimOTA, DSL; mmdetection's ``dynamic_k_matching``), per image, over the
candidate priors (a prior is a candidate of every GT of its image, or of none):

1. ``k_g = max(1, int(sum of the q largest IoUs of GT g))``;
2. GT ``g`` chooses its ``k_g`` cheapest candidates (ties: the lower prior index);
3. a prior chosen by one GT goes to it; chosen by several, to the GT of lowest cost over *all*
   GTs (ties: the lower GT index).

Worked example (one image, q = 3, two GTs, candidates p0..p3)::

    IoU  g0 [0.9, 0.8, 0.0, 0.1]  -> 0.9 + 0.8 + 0.1 = 1.8 -> k = 1
         g1 [0.0, 0.7, 0.6, 0.0]  -> 1.3                   -> k = 1
    cost g0 [0.5, 0.4, 9.0, 7.0]  -> g0 chooses p1
         g1 [8.0, 0.6, 0.7, 9.0]  -> g1 chooses p1 too
    p1: chosen twice, lowest cost 0.4 (g0) -> gt_index [-1, 0, -1, -1]

A dense implementation evaluates the IoU and cost of all ``B x G x N`` pairs and sorts every
GT's row: the work grows with ``G x N``, and with the conflict resolution over all chosen
positions, faster. :func:`select_dynamic_k` evaluates only pairs that can matter:

* the pairs with a positive IoU, found by :class:`OverlapIndex` without testing the others: they
  give the exact top-q IoU sums, hence every ``k``;
* a GT's cheapest pairs are searched among (1) a small *window* (SimOTA: the central priors, which
  pay no penalty) and the overlapping pairs the assigner asks for first (DSL: all of them), then
  if needed (2) all its overlapping pairs, then (3) all priors. Each tier stops as soon as the
  ``k``-th cheapest evaluated pair costs less than a lower bound of every pair not evaluated,
  which the assigner derives from its cost formula (SimOTA: ``min class cost + IoU cost at IoU 1
  (tier 1) or 0 (tier 2) + penalty``; DSL: ``min class cost at IoU 0 + IoU cost at 0``, the centre
  cost being positive). Then no pair left out can be among the ``k`` cheapest.
* a prior chosen by several GTs goes to the lowest cost over the evaluated pairs when that is
  below every GT's bound, else over all GTs (rare).

Costs of evaluated pairs are computed with the operations of the dense formula, so every decision
is that of the dense rule with the tie rules above; torch's ``topk`` leaves ties in an unspecified
order, which the previous dense implementation (and mmdet) inherited. Time and memory grow with
the number of evaluated pairs, about ``G x (overlapping boxes + window)``: linearly in ``G``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import Assignment, GroundTruth, Priors, devices
from .base import check_gt_labels, check_predictions

__all__ = [
    "NO_PRIOR",
    "OverlapIndex",
    "PairCosts",
    "Scratch",
    "ScratchOwner",
    "aligned_iou",
    "any_inside",
    "class_rows",
    "empty_iou_assignment",
    "grid_axes",
    "grid_window",
    "iou_assignment",
    "lex_smallest",
    "pair_iou",
    "pairwise_iou",
    "points_inside",
    "prepare_predictions",
    "prepare_scores",
    "scratch_for",
    "select_dynamic_k",
]

MMDET_IOU_EPS = 1e-6  # BboxOverlaps2D default


class Scratch:
    """Named reusable buffers for the ``(B, g, N)`` tensors of a call, sized for the largest GT
    chunk. ``get(name, g)`` returns a *contiguous* ``(B, g, N)`` view (a prefix of the buffer), so
    chunks of any size up to the largest share it.

    On a CPU, first-touching a fresh 50 MB tensor (page faults) costs more than the arithmetic
    done in it, so TAL keeps its :class:`Scratch` between calls there (see :func:`scratch_for`);
    on an accelerator the caching allocator already recycles memory and a fresh one is made per
    call. Buffers never leave the assigner: results are always new tensors. (SimOTA and DSL only
    use a per-call instance for :func:`any_inside` on levels that are not a grid.)
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.B = self.G = self.N = 0
        self.dtype = torch.float32
        self._bufs: dict[tuple[str, torch.dtype], Tensor] = {}

    def configure(self, batch_size: int, max_g: int, num_priors: int, dtype: torch.dtype) -> Scratch:
        self.B, self.G, self.N, self.dtype = batch_size, max_g, num_priors, dtype
        return self

    def flat(self, name: str, numel: int, dtype: torch.dtype) -> Tensor:
        """A flat buffer of at least ``numel`` elements (its prefix)."""
        buf = self._bufs.get((name, dtype))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=self.device)
            self._bufs[(name, dtype)] = buf
        return buf[:numel]

    def get(self, name: str, g: int, dtype: torch.dtype | None = None) -> Tensor:
        return self.flat(name, self.B * g * self.N, dtype or self.dtype).view(self.B, g, self.N)


class ScratchOwner:
    """Mixin: an assigner that may keep a CPU :class:`Scratch` (``self._scratch``) between calls.
    The buffers are dropped when the assigner is pickled or deep-copied (they are only a cache),
    and can be released explicitly with :meth:`release_buffers`. One instance should not be called
    from several threads at once."""

    def release_buffers(self) -> None:
        self.__dict__.pop("_scratch", None)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_scratch", None)
        return state


def scratch_for(owner: object, device: torch.device, batch_size: int, max_g: int, num_priors: int,
                dtype: torch.dtype) -> Scratch:
    """The owner's persistent :class:`Scratch` on a CPU, a fresh one elsewhere."""
    if device.type != "cpu":
        return Scratch(device).configure(batch_size, max_g, num_priors, dtype)
    sc = getattr(owner, "_scratch", None)
    if sc is None or sc.device != device:
        sc = Scratch(device)
        owner._scratch = sc  # type: ignore[attr-defined]
    return sc.configure(batch_size, max_g, num_priors, dtype)


def grid_axes(priors: Priors, level: int) -> tuple[Tensor, Tensor, int, int, int] | None:
    """``(xs (cols,), ys (rows,), rows, cols, anchors)`` of a level whose priors form a row-major
    grid (:func:`~assignlab.core.make_priors`), or None when the layout is unknown
    (``Priors.from_tensors`` records ``(0, 0)`` shapes)."""
    rows, cols = priors.level_shapes[level]
    na = priors.num_anchors[level]
    n = priors.num_level_priors[level]
    if rows <= 0 or cols <= 0 or rows * cols * na != n:
        return None
    start = sum(priors.num_level_priors[:level])
    xs = priors.points[start : start + cols * na : na, 0]
    ys = priors.points[start : start + n : cols * na, 1]
    return xs, ys, rows, cols, na


def points_inside(
    priors: Priors, left: Tensor, top: Tensor, right: Tensor, bottom: Tensor, out: Tensor, tmp: Tensor,
    eps: float | None = None, per_level: list[tuple[Tensor, Tensor, Tensor, Tensor]] | None = None,
) -> Tensor:
    """``out[b, j, n]`` = prior ``n``'s centre strictly inside box ``j`` of image ``b``.

    The box edges are ``(B, g)`` tensors (or, with ``per_level``, one ``(left, top, right,
    bottom)`` per level, e.g. a centre region whose size depends on the stride). With ``eps=None``
    the test is ``left < x < right`` and ``top < y < bottom`` (equal, bit for bit, to mmdet's
    ``min(x - left, ...) > 0``); with ``eps`` it is ``x - left > eps`` etc. (mmdet's TAL uses
    0.01, ultralytics 1e-9). NaN edges give False (used for padded GT rows).

    Levels laid out as a grid are tested per axis, ``(B, g, cols)`` and ``(B, g, rows)``, and
    combined with one broadcast AND; other levels are tested densely. ``out`` and ``tmp`` are
    ``(B, g, N)`` bool buffers.
    """
    B, g = out.shape[:2]
    px, py = priors.points[:, 0].to(left.dtype).contiguous(), priors.points[:, 1].to(left.dtype).contiguous()

    def gt_(a: Tensor, b: Tensor, o: Tensor | None = None) -> Tensor:
        if eps is None:
            return torch.gt(a, b, out=o) if o is not None else a > b
        d = a - b
        return torch.gt(d, eps, out=o) if o is not None else d > eps

    for li, sl in enumerate(priors.level_slices()):
        lt, tp, rt, bt = per_level[li] if per_level is not None else (left, top, right, bottom)
        grid = grid_axes(priors, li)
        if grid is not None:
            xs, ys, rows, cols, na = grid
            xs, ys = xs.to(left.dtype), ys.to(left.dtype)
            inx = gt_(xs, lt[..., None]) & gt_(rt[..., None], xs)  # (B, g, cols)
            iny = gt_(ys, tp[..., None]) & gt_(bt[..., None], ys)  # (B, g, rows)
            o = out[:, :, sl].view(B, g, rows, cols, na)
            torch.logical_and(iny[..., :, None, None], inx[..., None, :, None], out=o)
        else:
            o, w = out[:, :, sl], tmp[:, :, sl]
            gt_(px[sl], lt[..., None], o)
            o &= gt_(py[sl], tp[..., None], w)
            o &= gt_(rt[..., None], px[sl], w)
            o &= gt_(bt[..., None], py[sl], w)
    return out


def any_inside(
    priors: Priors, left: Tensor, top: Tensor, right: Tensor, bottom: Tensor, scratch: Scratch,
    per_level: list[tuple[Tensor, Tensor, Tensor, Tensor]] | None = None,
) -> Tensor:
    """``(B, N)`` bool: prior centre strictly inside *any* of the ``g`` boxes (the OR over the GT
    axis of :func:`points_inside`, edges as there, ``eps=None``).

    On grid levels this never builds the ``(B, g, N)`` mask: the number of boxes containing a
    prior is the matrix product of the per-row and per-column tests, ``(B, rows, g) @ (B, g, cols)``
    (exact small integers in float32).
    """
    B, g = left.shape[:2]
    N = priors.num_priors
    out = torch.zeros(B, N, dtype=torch.bool, device=left.device)
    for li, sl in enumerate(priors.level_slices()):
        lt, tp, rt, bt = per_level[li] if per_level is not None else (left, top, right, bottom)
        grid = grid_axes(priors, li)
        if grid is not None:
            xs, ys, rows, cols, na = grid
            xs, ys = xs.to(left.dtype), ys.to(left.dtype)
            inx = ((xs > lt[..., None]) & (rt[..., None] > xs)).to(torch.float32)  # (B, g, cols)
            iny = ((ys > tp[..., None]) & (bt[..., None] > ys)).to(torch.float32)  # (B, g, rows)
            hits = torch.bmm(iny.transpose(1, 2), inx) > 0  # (B, rows, cols)
            out[:, sl] = hits[..., None].expand(B, rows, cols, na).reshape(B, -1)
        else:
            n = sl.stop - sl.start
            o = scratch.flat("any_o", B * g * n, torch.bool).view(B, g, n)
            w = scratch.flat("any_w", B * g * n, torch.bool).view(B, g, n)
            px = priors.points[sl, 0].to(left.dtype).contiguous()
            py = priors.points[sl, 1].to(left.dtype).contiguous()
            torch.gt(px, lt[..., None], out=o)
            o &= torch.gt(py, tp[..., None], out=w)
            o &= torch.gt(rt[..., None], px, out=w)
            o &= torch.gt(bt[..., None], py, out=w)
            out[:, sl] = o.any(dim=1)
    return out


def pairwise_iou(
    gt_boxes: Tensor, pred_boxes: Tensor, eps: float = MMDET_IOU_EPS, out: Tensor | None = None,
    tmp: Tensor | None = None, tmp2: Tensor | None = None,
) -> Tensor:
    """IoU of every GT with every predicted box of the same image: ``(B, g, 4) x (B, N, 4) -> (B, g, N)``.

    mmdetection's ``bbox_overlaps`` order of operations (union clamped at ``eps``), so the values
    are bit-identical to mmdet's ``BboxOverlaps2D`` and 0 (not NaN) for two zero-area boxes.
    ``out``, ``tmp`` and ``tmp2`` are optional ``(B, g, N)`` scratch buffers (the result is
    written to ``out``).

    Example::

        gt   [[[0, 0, 10, 10]]]                        (1, 1, 4)
        pred [[[0, 0, 10, 10], [5, 0, 15, 10], [3, 3, 3, 3]]]
        ->   [[[1.0000, 0.3333, 0.0000]]]
    """
    B, g = gt_boxes.shape[:2]
    N = pred_boxes.shape[1]
    if out is None:
        out = torch.empty(B, g, N, dtype=pred_boxes.dtype, device=pred_boxes.device)
    if tmp is None:
        tmp = torch.empty_like(out)
    if tmp2 is None:
        tmp2 = torch.empty_like(out)
    # contiguous coordinate planes: strided (x4) operands would defeat vectorisation below
    gx1, gy1, gx2, gy2 = (gt_boxes[..., i].contiguous()[..., None] for i in range(4))  # (B, g, 1)
    px1, py1, px2, py2 = (pred_boxes[..., i].contiguous()[:, None, :] for i in range(4))  # (B, 1, N)
    iw = torch.minimum(gx2, px2, out=out)
    iw.sub_(torch.maximum(gx1, px1, out=tmp)).clamp_(min=0)
    ih = torch.minimum(gy2, py2, out=tmp)
    ih.sub_(torch.maximum(gy1, py1, out=tmp2)).clamp_(min=0)
    inter = iw.mul_(ih)
    area_g = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])
    area_p = (pred_boxes[..., 2] - pred_boxes[..., 0]) * (pred_boxes[..., 3] - pred_boxes[..., 1])
    union = torch.add(area_p[:, None, :], area_g[:, :, None], out=tmp)
    union.sub_(inter).clamp_(min=eps)
    return inter.div_(union)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = MMDET_IOU_EPS) -> Tensor:
    """IoU of corresponding boxes ``(..., 4) x (..., 4) -> (...)`` with the same operations as
    :func:`pairwise_iou` (``boxes1`` playing the GT), hence the same bits."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    union = area2 + area1 - inter
    return inter / union.clamp(min=eps)


def prepare_scores(pred_scores: Tensor, scores_are: str) -> tuple[Tensor, Tensor | None]:
    """``(probabilities, logits or None)`` in at least float32 from the raw ``pred_scores``."""
    x = pred_scores.detach()
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if scores_are == "logits":
        return x.sigmoid(), x
    return x, None


def prepare_predictions(
    name: str,
    priors: Priors,
    gt: GroundTruth,
    pred_boxes: Tensor | None,
    pred_scores: Tensor | None,
    scores_are: str | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The common start of a dynamic assigner's call: ``(scores, pred_boxes, gt_boxes)``.

    Checks the predictions (:func:`~.base.check_predictions`), detaches them and brings scores,
    predicted boxes and GT boxes to one dtype: float64 when the scores are float64, else float32.
    ``scores_are`` ``"logits"`` / ``"probabilities"`` returns probabilities
    (:func:`prepare_scores`); ``None`` returns the scores as given. Raises ``ValueError`` when a
    real GT's label is outside ``[0, C)``, ``C`` = the number of score columns.

    A predicted box with a non-finite coordinate (a diverging model) becomes the empty box
    ``[0, 0, 0, 0]``: IoU 0 with every GT, so it is never a reason to choose its prior and a
    positive there gets the soft target 0 instead of NaN (checked without a host sync).
    """
    check_predictions(priors, gt, pred_boxes, pred_scores, name)
    scores = pred_scores.detach() if scores_are is None else prepare_scores(pred_scores, scores_are)[0]
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    scores = scores.to(dtype)
    C = scores.shape[-1]
    boxes_p = pred_boxes.detach().to(dtype)
    boxes_p = torch.where(torch.isfinite(boxes_p).all(-1, keepdim=True), boxes_p, 0.0)
    gt_boxes = gt.boxes.to(dtype)
    check_gt_labels(gt, C, f"{name}: a GT label is outside [0, {C}) (pred_scores has {C} classes)")
    return scores, boxes_p, gt_boxes


def class_rows(labels: Tensor, gt_valid: Tensor, rows_per_image: int, pad_row: int) -> Tensor:
    """Flat row ids ``b * rows_per_image + label`` (``pad_row`` for padded GTs) for
    ``index_select`` into a ``(B * rows_per_image, ...)`` per-class table."""
    B = labels.shape[0]
    lab = torch.where(gt_valid, labels, torch.full_like(labels, pad_row))
    base = torch.arange(B, device=labels.device)[:, None] * rows_per_image
    return (base + lab).reshape(-1)


# -- sparse dynamic-k selection -------------------------------------------------------------------

#: prior index of a padding entry in a row of ``(cost, prior)`` entries
NO_PRIOR = 2**32 - 1
#: a GT chunk is evaluated densely when its candidate overlapping pairs exceed this share of all pairs
DENSE_SHARE = 0.3
_KEY_PAD = 2**63 - 1


def pair_iou(g: tuple[Tensor, ...], p: tuple[Tensor, ...], eps: float = MMDET_IOU_EPS) -> Tensor:
    """IoU of GT and predicted boxes given as coordinate tensors ``(x1, y1, x2, y2)`` that
    broadcast together, with the operations of :func:`pairwise_iou` (the same bits for the same
    pair)."""
    gx1, gy1, gx2, gy2 = g
    px1, py1, px2, py2 = p
    iw = torch.minimum(gx2, px2).sub_(torch.maximum(gx1, px1)).clamp_(min=0)
    ih = torch.minimum(gy2, py2).sub_(torch.maximum(gy1, py1)).clamp_(min=0)
    inter = iw.mul_(ih)
    union = torch.add((px2 - px1) * (py2 - py1), (gx2 - gx1) * (gy2 - gy1))
    return inter.div_(union.sub_(inter).clamp_(min=eps))


def _order_bits(x: Tensor) -> Tensor:
    """int32 with the order of the float32 ``x`` (an involution on the bit patterns; -0.0 and
    +0.0 map to one key)."""
    bits = (x + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _float_of(bits: Tensor) -> Tensor:
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(torch.float32)


def lex_smallest(cost: Tensor, n: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """The ``q`` smallest entries ``(cost, n)`` of every row, in increasing order of cost, ties to
    the lower prior index ``n`` (a total order, unlike ``topk``'s unspecified tie order).

    ``cost`` float and ``n`` long ``(R, w)``, padding entries marked by ``n == NO_PRIOR``. Returns
    ``(R, q)`` costs (``inf`` for padding) and prior indices (``NO_PRIOR`` for padding).

    float32: one ``topk`` of int64 keys ``order(cost) * 2**32 + n`` (``order`` maps the float's
    bits to an int32 of the same order); other dtypes: a sort by ``n`` then a stable sort by cost.

    Example: cost ``[[2.0, 1.0, 1.0, 5.0]]``, n ``[[7, 9, 3, 0]]``, q = 3 -> cost ``[[1, 1, 2]]``,
    n ``[[3, 9, 7]]``.
    """
    R, w = cost.shape
    if w < q:
        cost = torch.cat([cost, cost.new_full((R, q - w), math.inf)], 1)
        n = torch.cat([n, n.new_full((R, q - w), NO_PRIOR)], 1)
    pad = n == NO_PRIOR
    if cost.dtype == torch.float32:
        key = (_order_bits(cost).long() * 2**32).add_(n).masked_fill_(pad, _KEY_PAD)
        top = key.topk(q, dim=1, largest=False).values
        pad = top == _KEY_PAD
        val = _float_of((top >> 32).to(torch.int32)).masked_fill_(pad, math.inf)
        return val, (top & 0xFFFFFFFF).masked_fill_(pad, NO_PRIOR)
    cost = cost.masked_fill(pad, math.inf)
    order = n.argsort(dim=1)
    cost, n = cost.gather(1, order), n.gather(1, order)
    cost, order = cost.sort(dim=1, stable=True)
    return cost[:, :q].contiguous(), n.gather(1, order[:, :q])


def grid_window(
    priors: Priors, edges: list[tuple[Tensor, Tensor, Tensor, Tensor]], valid: Tensor
) -> tuple[Tensor, Tensor]:
    """The priors strictly inside one rectangle per GT and level: ``(idx (B, g, W), member (B, g,
    W))``.

    ``edges[level] = (left, top, right, bottom)``, each ``(B, g)``; inside means ``left < x <
    right`` and ``top < y < bottom`` (the comparisons of :func:`points_inside`). On grid levels the columns and rows inside are found by ``searchsorted`` and only
    ``rows x cols`` entries per GT are listed (``W`` is the largest count in the chunk); other
    levels list all their priors with a dense test. ``idx`` is a valid prior index everywhere,
    ``member`` marks the priors inside (False on rows with ``~valid``).

    Example (one level, stride 8, 4 x 4 grid, centres 4, 12, 20, 28): the strict rectangle
    ``(5, 0, 21, 13)`` holds columns 1, 2 and rows 0, 1 -> priors 1, 2, 5, 6.
    """
    B, g = valid.shape
    device = valid.device
    grids, counts = [], []
    for li in range(len(priors.num_level_priors)):
        grid = grid_axes(priors, li)
        if grid is None:
            grids.append(None)
            continue
        xs, ys, rows, cols, na = grid
        lt, tp, rt, bt = edges[li]
        xs, ys = xs.to(lt.dtype).contiguous(), ys.to(lt.dtype).contiguous()
        c0 = torch.searchsorted(xs, lt.contiguous(), right=True)  # first x > left
        c1 = torch.searchsorted(xs, rt.contiguous())  # first x >= right
        r0 = torch.searchsorted(ys, tp.contiguous(), right=True)
        r1 = torch.searchsorted(ys, bt.contiguous())
        nc = torch.where(valid, c1 - c0, 0).clamp_(min=0)
        nr = torch.where(valid, r1 - r0, 0).clamp_(min=0)
        grids.append((c0, r0, nc, nr, rows, cols, na))
        counts += [nc.amax() if nc.numel() else nc.new_zeros(()), nr.amax() if nr.numel() else nr.new_zeros(())]
    sizes = torch.stack(counts).tolist() if counts else []
    idx, member = [], []
    for li, sl in enumerate(priors.level_slices()):
        n_l = sl.stop - sl.start
        if grids[li] is None:
            lt, tp, rt, bt = (e[..., None] for e in edges[li])
            px = priors.points[sl, 0].to(lt.dtype)
            py = priors.points[sl, 1].to(lt.dtype)
            m = (px > lt) & (py > tp) & (rt > px) & (bt > py)
            idx.append(torch.arange(sl.start, sl.stop, device=device).expand(B, g, n_l))
            member.append(m & valid[..., None])
        else:
            c0, r0, nc, nr, rows, cols, na = grids[li]
            kc, kr = int(sizes.pop(0)), int(sizes.pop(0))
            i = torch.arange(kr, device=device)[:, None, None]
            j = torch.arange(kc, device=device)[None, :, None]
            a = torch.arange(na, device=device)[None, None, :]
            m = (i < nr[..., None, None, None]) & (j < nc[..., None, None, None])  # (B, g, kr, kc, 1)
            r = (r0[..., None, None, None] + i).clamp_(0, rows - 1)
            c = (c0[..., None, None, None] + j).clamp_(0, cols - 1)
            n = (r * cols + c) * na + a + sl.start
            idx.append(n.reshape(B, g, -1))
            member.append(m.expand(B, g, kr, kc, na).reshape(B, g, -1))
    return torch.cat(idx, 2), torch.cat(member, 2)


def _row_buckets(lens: Tensor, min_width: int) -> list[tuple[Tensor, int]]:
    """Rows grouped by segment length: ``[(row ids, width)]``, widths ``min_width * 2**i``, each
    row with a non-zero length in the narrowest bucket that holds it."""
    out: list[tuple[Tensor, int]] = []
    top = int(lens.max()) if lens.numel() else 0
    lo, hi = 0, min_width
    while lo < top:
        sel = ((lens > lo) & (lens <= hi)).nonzero().squeeze(1)
        if sel.numel():
            out.append((sel, hi))
        lo, hi = hi, hi * 2
    return out


def usable_predictions(pred_boxes: Tensor, candidates: Tensor) -> Tensor:
    """``(B * N,)`` bool: candidate priors whose predicted box has a positive, finite width and
    height (the others have IoU 0 with every GT)."""
    flat = pred_boxes.reshape(-1, 4)
    return candidates.reshape(-1) & (flat[:, 2] > flat[:, 0]) & (flat[:, 3] > flat[:, 1]) & torch.isfinite(flat).all(1)


class OverlapIndex:
    """Every (GT, predicted box) pair with a positive IoU, without evaluating all ``B x G x N``
    pairs.

    The *usable* predictions (candidate priors whose box has a positive, finite width and height:
    the others have IoU 0 with everything) are bucketed by size class -- the smallest ``W_j = base
    * 2 ** j`` not below the box's larger side -- and by the cell of their top-left corner in a grid
    of side ``S_j >= W_j / 2`` laid over the GTs' extent (at most 64 cells per axis and about 4
    boxes per cell of the class; clamped at the border), and sorted by (image, class, cell row,
    cell column). A box of class ``j`` that
    overlaps a GT ``[x1, y1, x2, y2]`` has its top-left corner in ``(x1 - W_j, x2) x (y1 - W_j,
    y2)``: for each class and cell row, one contiguous run of the sorted boxes. The IoU of every
    box in these runs is computed (:func:`pair_iou`) and the positive ones are kept. Cells are
    computed in float64 with a small slack, so no overlapping pair is missed.

    Example (one image, base 8): a 30 x 20 box is in class 2 (``W = 32``); for the GT
    ``[100, 100, 140, 120]`` it is looked up among the class-2 corners in ``(68, 140) x (68, 120)``:
    with 16 px cells, the cell rows covering 68-120, each a run of columns covering 68-140.
    """

    MAX_CELLS = 64
    PER_CELL = 4.0
    CELL = 0.5
    SLACK = 1e-6  # cells

    def __init__(self, pred_boxes: Tensor, usable: Tensor, gt_boxes: Tensor, gt_valid: Tensor, base: float) -> None:
        B, N = usable.shape
        device = usable.device
        self.B, self.N = B, N
        flat = pred_boxes.reshape(B * N, 4)
        x1, y1 = flat[:, 0].double(), flat[:, 1].double()
        w, h = flat[:, 2].double() - x1, flat[:, 3].double() - y1  # exact differences of float32
        use = usable_predictions(pred_boxes, usable)
        #: (B * N,) bool: the predictions that take part (IoU 0 with every GT for the others)
        self.usable = use
        g = gt_boxes.double()
        gv = gt_valid & torch.isfinite(g).all(-1)
        inf = torch.tensor(math.inf, dtype=torch.float64, device=device)
        lo = [torch.where(gv, g[..., i], inf).amin() if gv.numel() else inf for i in (0, 1)]
        hi = [torch.where(gv, g[..., i], -inf).amax() if gv.numel() else -inf for i in (2, 3)]
        ext = torch.stack([*lo, *hi, use.any().double()]).tolist()
        self.empty = not (math.isfinite(ext[0]) and ext[4] > 0)
        if self.empty:
            return
        self.x0, self.y0 = ext[0], ext[1]
        extent = max(ext[2] - ext[0], ext[3] - ext[1], base)
        # size class j: the smallest base * 2**j >= the larger side (frexp: side / base = m * 2**e,
        # m in [0.5, 1), so 2**e is the smallest power of 2 above it, 2**(e - 1) when m == 0.5)
        mant, e = torch.frexp(torch.where(use, torch.maximum(w, h), base) / base)
        j = (e - (mant == 0.5).int()).clamp_(min=0).long()
        counts = torch.bincount(j, weights=use.double())
        present = counts.nonzero().squeeze(1)
        counts = counts[present].tolist()
        present = present.tolist()
        rank = torch.zeros(present[-1] + 1, dtype=torch.long, device=device)
        rank[present] = torch.arange(len(present), device=device)
        jj = rank[j]
        self.classes = []  # (W_j, S_j, cells per axis, first cell id)
        first = 0
        for c, n_j in zip(present, counts):
            W = base * 2.0**c
            # about PER_CELL boxes per cell: fewer, larger cells for sparse classes
            cells = max(1.0, min(self.MAX_CELLS, (n_j / B / self.PER_CELL) ** 0.5))
            S = max(W * self.CELL, extent / cells)
            K = int(extent / S) + 2
            self.classes.append((W, S, K, first))
            first += B * K * K
        S_t, K_t, F_t = (torch.tensor([c[i] for c in self.classes], device=device)[jj] for i in (1, 2, 3))
        col = torch.minimum(((x1 - self.x0) / S_t).floor_().clamp_(min=0, max=1e9).long(), K_t - 1)
        row = torch.minimum(((y1 - self.y0) / S_t).floor_().clamp_(min=0, max=1e9).long(), K_t - 1)
        img = torch.arange(B, device=device).repeat_interleave(N)
        key = F_t + (img * K_t + row) * K_t + col
        key = torch.where(use, key, torch.full_like(key, first))
        skey, perm = key.sort()
        #: first sorted entry of every cell (plus the end)
        self.start = torch.zeros(first + 1, dtype=torch.long, device=device)
        self.start[1:] = torch.bincount(skey, minlength=first + 1)[:first].cumsum(0)
        #: flat prior index ``b * N + n`` and box coordinates of the sorted entries
        self.prior = perm
        self.coords = tuple(flat[:, i].index_select(0, perm).contiguous() for i in range(4))

    def spans(self, gt_boxes: Tensor, img: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, int]:
        """Runs of sorted boxes that may overlap each valid GT row of ``gt_boxes`` ``(R, 4)`` (in
        image ``img`` ``(R,)``): ``(starts, lengths)`` ``(R, S)`` and the number of candidate pairs."""
        R = valid.shape[0]
        device = valid.device
        if self.empty or R == 0:
            z = torch.zeros(R, 0, dtype=torch.long, device=device)
            return z, z, 0
        g64 = torch.where(valid[:, None], gt_boxes.double(), 0.0)  # padded rows may hold anything
        eps = self.SLACK
        spans = []
        for W, S, K, _ in self.classes:
            c0 = ((g64[:, 0] - W - self.x0) / S - eps).floor_().clamp_(0, K - 1).long()
            c1 = ((g64[:, 2] - self.x0) / S + eps).floor_().clamp_(0, K - 1).long()
            r0 = ((g64[:, 1] - W - self.y0) / S - eps).floor_().clamp_(0, K - 1).long()
            r1 = ((g64[:, 3] - self.y0) / S + eps).floor_().clamp_(0, K - 1).long()
            spans.append((c0, c1, r0, torch.where(valid, r1 - r0 + 1, 0).clamp_(min=0)))
        T = torch.stack([s[3].amax() for s in spans]).tolist()
        starts, lens = [], []
        for (_, _, K, first), (c0, c1, r0, nr), t in zip(self.classes, spans, T):
            if t == 0:
                continue
            i = torch.arange(int(t), device=device)
            base = first + (img[:, None] * K + (r0[:, None] + i).clamp_(max=K - 1)) * K
            s = self.start[base + c0[:, None]]
            e = self.start[base + c1[:, None] + 1]
            starts.append(s)
            lens.append(torch.where(i < nr[:, None], e - s, 0).clamp_(min=0))
        if not starts:
            z = torch.zeros(R, 0, dtype=torch.long, device=device)
            return z, z, 0
        starts, lens = torch.cat(starts, 1), torch.cat(lens, 1)
        return starts, lens, int(lens.sum())

    def pairs(self, gt_boxes: Tensor, starts: Tensor, lens: Tensor, total: int,
              budget: int = 2**23) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, priors, ious)``: every pair of the GT rows of :meth:`spans` and a prediction
        (flat ``b * N + n``) with a positive IoU, ordered by row. Candidate pairs are tested in
        groups of rows of at most ``budget`` pairs (one row at least)."""
        R = starts.shape[0]
        device = starts.device
        none = torch.zeros(0, dtype=torch.long, device=device)
        if total == 0:
            return none, none, gt_boxes.new_zeros(0)
        row_len = lens.sum(1)
        groups = [(0, R)]
        if total > budget:  # bound the transient memory: consecutive rows, about budget pairs each
            ends = torch.searchsorted(row_len.cumsum(0), torch.arange(1, total // budget + 1, device=device) * budget)
            cuts = sorted({0, R, *(min(R, max(1, int(e))) for e in ends.tolist())})
            groups = list(zip(cuts[:-1], cuts[1:]))
        out = []
        gcols = [gt_boxes[:, i].contiguous() for i in range(4)]
        for r0, r1 in groups:
            ln, st, rl = lens[r0:r1].reshape(-1), starts[r0:r1].reshape(-1), row_len[r0:r1]
            m = int(rl.sum())
            if m == 0:
                continue
            first = ln.cumsum(0).sub_(ln)  # first output slot of each run
            pos = torch.repeat_interleave(st - first, ln, output_size=m).add_(torch.arange(m, device=device))
            rows = torch.repeat_interleave(torch.arange(r0, r1, device=device), rl, output_size=m)
            iou = pair_iou(tuple(c.index_select(0, rows) for c in gcols), tuple(c.index_select(0, pos) for c in self.coords))
            keep = (iou > 0).nonzero().squeeze(1)
            out.append((rows.index_select(0, keep), self.prior.index_select(0, pos.index_select(0, keep)),
                        iou.index_select(0, keep)))
            del pos, rows, iou, keep
        if not out:
            return none, none, gt_boxes.new_zeros(0)
        if len(out) == 1:
            return out[0]
        return tuple(torch.cat(t) for t in zip(*out))  # type: ignore[return-value]


@dataclass
class PairCosts:
    """What :func:`select_dynamic_k` needs from a dynamic assigner for one call.

    Attributes:
        gt_boxes: ``(B, G, 4)`` GT boxes (the cost dtype).
        gt_valid: ``(B, G)`` the GTs that choose priors (real GTs of images with a candidate).
        pred_boxes: ``(B, N, 4)`` predicted boxes (the cost dtype).
        candidates: ``(B, N)`` candidate priors (non-candidates are never chosen).
        cost: ``cost(rows, n, iou, in_window)``: the cost of the pairs ``(GT row b * G + g, prior
            n)`` whose IoU is ``iou`` (``rows`` and ``n`` broadcast to ``iou``'s shape), with the
            operations of the dense formula; ``in_window`` says that every pair is in its GT's
            window (SimOTA: central, no penalty).
        bound: ``(B, G)``: a lower bound of the cost of the GT's candidate pairs that are not
            evaluated first: outside the window, and with IoU 0 or not ``near``.
        bound_zero_iou: ``(B, G)``: a lower bound of the cost of the GT's candidate pairs with IoU
            0 outside the window.
        window: ``window(sl)`` or None: ``(idx, member)`` ``(B, g, W)`` of the GT rows ``sl``
            (:func:`grid_window`): the priors whose pairs are always evaluated (SimOTA: the central
            ones, which pay no penalty).
        near: which pairs with a positive IoU are evaluated first: ``near(rows, n) -> bool``, True
            (all of them; DSL) or False (none; SimOTA). Must exclude window pairs.
        cost_all: ``cost_all(rows, iou)`` or None: ``(f, N)`` the costs of all priors of the GT
            rows ``rows`` ``(f,)`` (their IoUs ``iou`` ``(f, N)``), the same values as ``cost``
            (a faster form: rows of tables instead of gathers).
        base_size: smallest size class of :class:`OverlapIndex` (the smallest stride).
    """

    gt_boxes: Tensor
    gt_valid: Tensor
    pred_boxes: Tensor
    candidates: Tensor
    cost: Callable[[Tensor, Tensor, Tensor, bool], Tensor]
    bound: Tensor
    bound_zero_iou: Tensor
    window: Callable[[slice], tuple[Tensor, Tensor]] | None = None
    near: Callable[[Tensor, Tensor], Tensor] | bool = False
    cost_all: Callable[[Tensor, Tensor], Tensor] | None = None
    base_size: float = 8.0


class _Lowest:
    """Running lowest cost per prior over the evaluated pairs of all GT chunks, and its GT (ties:
    the lower GT index). float32: one int64 key ``order(cost) * 2**32 + gt`` per prior."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.keyed = dtype == torch.float32
        if self.keyed:
            self.key = torch.full((numel,), _KEY_PAD, dtype=torch.long, device=device)
        else:
            self.cost = torch.full((numel,), math.inf, dtype=dtype, device=device)
            self.best = torch.zeros(numel, dtype=torch.long, device=device)

    def update(self, prior: Tensor, cost: Tensor, gt: Tensor, keep: Tensor | None = None) -> None:
        """Take the pairs ``(prior, cost, gt)`` into account (only where ``keep``, if given)."""
        prior, cost, gt = prior.reshape(-1), cost.reshape(-1), gt.reshape(-1)
        if prior.numel() == 0:
            return
        keep = None if keep is None else keep.reshape(-1)
        if self.keyed:
            key = (_order_bits(cost).long() * 2**32).add_(gt)
            if keep is not None:
                key.masked_fill_(~keep, _KEY_PAD)
            self.key.scatter_reduce_(0, prior, key, "amin")
            return
        if keep is not None:
            cost = cost.masked_fill(~keep, math.inf)
        cm = torch.full_like(self.cost, math.inf).scatter_reduce_(0, prior, cost, "amin")
        hit = cost == cm.index_select(0, prior)
        if keep is not None:
            hit &= keep
        gm = torch.full_like(self.best, 2**62).scatter_reduce_(0, prior, torch.where(hit, gt, 2**62), "amin")
        better = (cm < self.cost) | ((cm == self.cost) & (gm < self.best))
        self.cost = torch.where(better, cm, self.cost)
        self.best = torch.where(better, gm, self.best)

    def result(self) -> tuple[Tensor, Tensor]:
        """``(lowest cost, its GT)`` per prior (``inf`` where no pair was evaluated)."""
        if self.keyed:
            none = self.key == _KEY_PAD
            cost = _float_of((self.key >> 32).to(torch.int32)).masked_fill_(none, math.inf)
            return cost, (self.key & 0xFFFFFFFF).masked_fill_(none, 0)
        return self.cost, self.best


def _segments(rows: Tensor, R: int, min_width: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``[(row ids, source index (r, w), valid (r, w))]``: the entries of every row of the
    row-sorted flat list ``rows`` in padded blocks (rows grouped by length, :func:`_row_buckets`)."""
    cnt = torch.bincount(rows, minlength=R)
    seg0 = cnt.cumsum(0).sub_(cnt)
    out = []
    for sel, w in _row_buckets(cnt, min_width):
        j = torch.arange(w, device=rows.device)
        ok = j < cnt.index_select(0, sel)[:, None]
        out.append((sel, (seg0.index_select(0, sel)[:, None] + j).masked_fill_(~ok, 0), ok))
    return out


def _merge(sel_c: Tensor, sel_n: Tensor, rows: Tensor, cost: Tensor, n: Tensor,
           segments: list[tuple[Tensor, Tensor, Tensor]] | None = None) -> None:
    """Merge the row-sorted flat pairs ``(rows, cost, n)`` into every row's ``q`` cheapest
    ``(sel_c, sel_n)`` ``(R, q)``, in place (``segments``: ``_segments(rows, ...)`` if known)."""
    R, q = sel_c.shape
    for sel, src, ok in segments if segments is not None else _segments(rows, R, max(16, q)):
        sel_c[sel], sel_n[sel] = lex_smallest(torch.cat([sel_c[sel], cost.take(src)], 1),
                                              torch.cat([sel_n[sel], n.take(src).masked_fill_(~ok, NO_PRIOR)], 1), q)


def select_dynamic_k(pc: PairCosts, q: int, chunks: list[slice], max_pairs: int) -> Tensor:
    """``(B, N)`` gt_index of the dynamic-k rule (module docstring), evaluating few pairs.

    Per GT chunk, the pairs with a positive IoU (:class:`OverlapIndex`) give every GT's ``k`` (its
    q largest IoUs). Each GT then chooses its ``k`` cheapest pairs (:func:`lex_smallest`) among
    pairs evaluated in up to three tiers, until the ``k``-th is cheaper than any pair not
    evaluated: (1) the window and ``near`` pairs (certified by ``bound``); (2) + all its pairs
    with a positive IoU (``bound_zero_iou``); (3) all priors. Priors chosen several times go to
    the lowest-cost GT over the evaluated pairs when that cost is below every GT's ``bound``, else
    over all GTs. Work and memory grow with the number of evaluated pairs (about ``G x
    (overlapping boxes + window)``), not with ``G x N``. A chunk where most boxes overlap most GTs
    (candidate pairs above ``DENSE_SHARE`` of all pairs, e.g. huge predicted boxes) is evaluated
    densely instead, with the same results.

    On accelerators (:func:`~assignlab.core.devices.sync_free`) every chunk is evaluated densely, in groups of GT rows
    under a quarter of ``max_pairs``, with no host synchronisation: the same decisions (tested on
    the CPU by forcing this path), memory bounded by ``max_pairs``, and work ``G x N``.
    """
    sel = _Selection(pc, min(q, pc.candidates.shape[1]), max_pairs, devices.sync_free(pc.pred_boxes.device))
    for sl in chunks:
        if sl.stop > sl.start:
            sel.chunk(sl)
    return sel.result()


class _Selection:
    """The state of one :func:`select_dynamic_k` call: the overlap index, the choices (count and
    chooser per prior) and the running lowest cost per prior; :meth:`chunk` handles GT rows."""

    def __init__(self, pc: PairCosts, q: int, max_pairs: int, no_sync: bool = False) -> None:
        B, G = pc.gt_valid.shape
        N = pc.candidates.shape[1]
        self.pc, self.q, self.max_pairs, self.no_sync = pc, q, max_pairs, no_sync
        self.B, self.G, self.N = B, G, N
        self.dtype, self.device = pc.pred_boxes.dtype, pc.pred_boxes.device
        if no_sync:  # every pair is evaluated: no index
            self.usable = usable_predictions(pc.pred_boxes, pc.candidates)
        else:
            self.index = OverlapIndex(pc.pred_boxes, pc.candidates, pc.gt_boxes, pc.gt_valid, pc.base_size)
            self.usable = self.index.usable
        self.cand = pc.candidates.reshape(-1)
        self.pcoords = tuple(pc.pred_boxes[..., i].reshape(-1).contiguous() for i in range(4))
        self.gcoords = tuple(pc.gt_boxes[..., i].reshape(-1).contiguous() for i in range(4))
        self.count = torch.zeros(B * N, dtype=torch.long, device=self.device)
        self.chooser = torch.full((B * N,), -1, dtype=torch.long, device=self.device)
        self.lowest = _Lowest(B * N, self.dtype, self.device)

    def chunk(self, sl: slice) -> None:
        """Choose the priors of the GT rows ``sl`` (all images)."""
        pc, q, B, G, N, device = self.pc, self.q, self.B, self.G, self.N, self.device
        g = sl.stop - sl.start
        R = B * g
        self.sl, self.R = sl, R
        self.img = torch.arange(B, device=device).repeat_interleave(g)  # (R,)
        self.gti = torch.arange(sl.start, sl.stop, device=device).repeat(B)  # (R,) GT index
        self.grow = self.img * G + self.gti  # (R,) global row
        self.valid = pc.gt_valid[:, sl].reshape(R)
        self.sel_c = torch.full((R, q), math.inf, dtype=self.dtype, device=device)
        self.sel_n = torch.full((R, q), NO_PRIOR, dtype=torch.long, device=device)
        top = torch.zeros(R, q, dtype=self.dtype, device=device)  # q largest IoUs per GT
        if self.no_sync:  # every row (invalid ones take nothing: k = 0), no size read back
            dense = True
            self._all_priors(torch.arange(R, device=device), top)
        else:
            rows_boxes = pc.gt_boxes.reshape(B * G, 4).index_select(0, self.grow)
            starts, lens, total = self.index.spans(rows_boxes, self.img, self.valid)
            dense = total > DENSE_SHARE * R * N
            if dense:  # most boxes overlap most GTs (e.g. huge predictions): the dense rule is cheaper
                self._all_priors(self.valid.nonzero().squeeze(1), top)
            else:  # the pairs with a positive IoU, ordered by row
                r2, p2, iou2 = self.index.pairs(rows_boxes, starts, lens, total, max(1, self.max_pairs // 4))
                self.ious = (r2, p2 - self.img.index_select(0, r2) * N, p2, iou2)
                self.segments = _segments(r2, R, max(16, q))
                for rows, src, ok in self.segments:
                    qq = min(q, src.shape[1])
                    top[rows, :qq] = iou2.take(src).masked_fill_(~ok, 0).topk(qq, dim=1).values
            del starts, lens
        s = top[:, 0]
        for j in range(1, q):  # sequential, largest first (mmdet's topk(...).sum(0))
            s = s + top[:, j]
        self.k = torch.where(self.valid, s.to(torch.int32).clamp(min=1).long(), 0)
        if not dense:
            self._all_priors(self._tiers())  # tier 3 for the GTs that tiers 1 and 2 did not certify
            del self.ious, self.segments

        # the first k entries of every row (none on padding); the others point at prior 0 with
        # count 0 and chooser -1, which change nothing (no nonzero(): no size read back)
        take = (torch.arange(q, device=device)[None, :] < self.k[:, None]) & (self.sel_n != NO_PRIOR)
        prior = (self.img[:, None] * N + self.sel_n).masked_fill_(~take, 0).view(-1)
        self.count.scatter_add_(0, prior, take.long().view(-1))
        self.chooser.scatter_reduce_(0, prior, torch.where(take, self.gti[:, None], -1).view(-1), "amax")

    def _tiers(self) -> Tensor:
        """Tiers 1 and 2 (:func:`select_dynamic_k`); returns the rows left for tier 3."""
        pc, q, N, R, sl = self.pc, self.q, self.N, self.R, self.sl
        img, gti, grow, valid, k = self.img, self.gti, self.grow, self.valid, self.k
        r2, n2, p2, iou2 = self.ious
        # tier 1: window pairs (any IoU) and near pairs
        wcost = wn = wzero = None
        if pc.window is not None:
            widx, wmem = pc.window(sl)
            wn = widx.reshape(R, -1)
            wp = img[:, None] * N + wn
            wiou = pair_iou(tuple(c.index_select(0, grow)[:, None] for c in self.gcoords),
                            tuple(c.take(wp) for c in self.pcoords))
            wiou.masked_fill_(~self.usable[wp], 0)
            member = wmem.reshape(R, -1) & self.cand[wp]
            wcost = pc.cost(grow[:, None], wn, wiou, True).masked_fill_(~member, math.inf)
            self.sel_c, self.sel_n = lex_smallest(wcost, wn.masked_fill(~member, NO_PRIOR), q)
            self.lowest.update(wp, wcost, gti[:, None].expand_as(wp))
            wzero = member & ~(wiou > 0)  # tier 2 takes the others from the IoU pairs
            del wp, wiou, member
        if pc.near is not False:
            if pc.near is True:
                r1, n1, p1, i1, seg1 = r2, n2, p2, iou2, self.segments
            else:
                m = pc.near(grow.index_select(0, r2), n2).nonzero().squeeze(1)
                r1, n1, p1, i1 = (t.index_select(0, m) for t in (r2, n2, p2, iou2))
                seg1 = None
            c1 = pc.cost(grow.index_select(0, r1), n1, i1, False)
            self.lowest.update(p1, c1, gti.index_select(0, r1))
            _merge(self.sel_c, self.sel_n, r1, c1, n1, seg1)
        redo = _uncertified(self.sel_c, self.sel_n, k, valid, pc.bound[:, sl].reshape(R))

        # tier 2: + every pair with a positive IoU
        if redo.numel() and pc.near is not True:
            sub = torch.zeros(R, dtype=torch.bool, device=self.device)
            sub[redo] = True
            m = sub.index_select(0, r2).nonzero().squeeze(1)
            r1, n1 = r2.index_select(0, m), n2.index_select(0, m)
            c1 = pc.cost(grow.index_select(0, r1), n1, iou2.index_select(0, m), False)
            self.lowest.update(p2.index_select(0, m), c1, gti.index_select(0, r1))
            if wcost is not None:  # window pairs at IoU 0
                self.sel_c[redo], self.sel_n[redo] = lex_smallest(
                    wcost[redo], wn[redo].masked_fill(~wzero[redo], NO_PRIOR), q)
            else:
                self.sel_c[redo], self.sel_n[redo] = math.inf, NO_PRIOR
            _merge(self.sel_c, self.sel_n, r1, c1, n1)
        if redo.numel():
            bound2 = pc.bound_zero_iou[:, sl].reshape(R)
            redo = redo[_uncertified(self.sel_c[redo], self.sel_n[redo], k[redo], valid[redo], bound2[redo])]
        return redo

    def _all_priors(self, rows: Tensor, top: Tensor | None = None) -> None:
        """Evaluate every prior of the GT rows ``rows`` (the dense rule), in groups under a quarter
        of ``max_pairs`` pairs; with ``top``, also store their q largest IoUs there."""
        pc, B, N = self.pc, self.B, self.N
        per = max(1, self.max_pairs // max(4 * N, 1))
        allp = torch.arange(N, device=self.device)
        for i0 in range(0, rows.numel(), per):
            rs = rows[i0 : i0 + per]
            f = rs.numel()
            imgs, grs = self.img.index_select(0, rs), self.grow.index_select(0, rs)
            iou = pair_iou(tuple(c.index_select(0, grs)[:, None] for c in self.gcoords),
                           tuple(c.view(B, N).index_select(0, imgs) for c in self.pcoords))
            iou.masked_fill_(~self.usable.view(B, N).index_select(0, imgs), 0)
            if top is not None:
                top[rs] = iou.topk(self.q, dim=1).values
            ok = self.cand.view(B, N).index_select(0, imgs) & self.valid.index_select(0, rs)[:, None]
            cost = pc.cost_all(grs, iou) if pc.cost_all is not None else pc.cost(grs[:, None], allp, iou, False)
            cost.masked_fill_(~ok, math.inf)
            self.sel_c[rs], self.sel_n[rs] = lex_smallest(cost, allp.expand(f, N).masked_fill(~ok, NO_PRIOR), self.q)
            self.lowest.update(imgs[:, None] * N + allp, cost, self.gti.index_select(0, rs)[:, None].expand(f, N), ok)

    def result(self) -> Tensor:
        """``(B, N)`` gt_index. Priors chosen several times: the lowest cost over the evaluated
        pairs is the lowest over all GTs when it is below every GT's bound; otherwise all GTs of
        the image are evaluated at the prior."""
        pc, B, G, N = self.pc, self.B, self.G, self.N
        best_cost, best_gt = self.lowest.result()
        multi = self.count > 1
        none = torch.full_like(self.chooser, -1)
        if self.no_sync:  # every pair was evaluated: the lowest cost is over all GTs
            return torch.where(multi, best_gt, torch.where(self.count == 1, self.chooser, none)).view(B, N)
        img_bound = torch.where(pc.gt_valid, pc.bound, math.inf).amin(1)  # (B,)
        unsure = (multi & ~(best_cost < img_bound.repeat_interleave(N))).nonzero().squeeze(1)
        per = max(1, self.max_pairs // max(4 * G, 1))
        gvalid = pc.gt_valid.reshape(-1)
        for i0 in range(0, unsure.numel(), per):
            pp = unsure[i0 : i0 + per]
            rows = torch.div(pp, N, rounding_mode="floor")[:, None] * G + torch.arange(G, device=self.device)
            iou = pair_iou(tuple(c[rows] for c in self.gcoords), tuple(c[pp][:, None] for c in self.pcoords))
            iou.masked_fill_(~self.usable[pp][:, None], 0)
            cost = pc.cost(rows, (pp % N)[:, None], iou, False).masked_fill_(~gvalid[rows], math.inf)
            best_gt[pp] = cost.min(dim=1).indices  # first index among equal costs
        return torch.where(multi, best_gt, torch.where(self.count == 1, self.chooser, none)).view(B, N)


def _uncertified(sel_c: Tensor, sel_n: Tensor, k: Tensor, valid: Tensor, bound: Tensor) -> Tensor:
    """Rows (indices) whose ``k``-th cheapest evaluated pair is missing or not below ``bound``."""
    kth = (k - 1).clamp(min=0)[:, None]
    kc, kn = sel_c.gather(1, kth).squeeze(1), sel_n.gather(1, kth).squeeze(1)
    return (valid & ~((kn != NO_PRIOR) & (kc < bound))).nonzero().squeeze(1)


def empty_iou_assignment(batch_size: int, num_priors: int, dtype: torch.dtype, device: torch.device) -> Assignment:
    """All-negative result of SimOTA / DSL (no GT or no prior), with their extras."""
    B, N = batch_size, num_priors
    return Assignment.empty(B, N, device=device).replace(
        extras={"overlaps": torch.zeros(B, N, dtype=dtype, device=device),
                "candidates": torch.zeros(B, N, dtype=torch.bool, device=device)}
    )


def iou_assignment(gt_index: Tensor, gt_boxes: Tensor, pred_boxes: Tensor, candidates: Tensor) -> Assignment:
    """SimOTA / DSL result: ``quality`` and ``extras["overlaps"]`` = IoU of each positive's
    predicted box with its GT (0 elsewhere), ``extras["candidates"]`` as given."""
    B, N = gt_index.shape
    positive = gt_index >= 0
    assigned = torch.gather(gt_boxes, 1, gt_index.clamp(min=0)[..., None].expand(B, N, 4))
    zeros = torch.zeros(B, N, dtype=pred_boxes.dtype, device=pred_boxes.device)
    overlaps = torch.where(positive, aligned_iou(assigned, pred_boxes), zeros)
    return Assignment.from_gt_index(
        gt_index,
        quality=overlaps,
        extras={"overlaps": overlaps, "candidates": candidates},
    )
