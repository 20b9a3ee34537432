"""Shared machinery of the prediction-aware "dynamic" assigners (SimOTA, DSL, TAL).

Nothing here is an assigner. These are the batched building blocks that SimOTA
(:mod:`.simota`), the dynamic soft-label assigner (:mod:`.dsl`) and the task-aligned
assigner (:mod:`.tal`) share:

* :func:`pairwise_iou` / :func:`aligned_iou`: IoU of GT boxes with predicted boxes, with
  mmdetection's ``BboxOverlaps2D`` formula (``inter / max(union, eps)``), so values are
  bit-identical to mmdet's and finite for zero-area boxes.
* :func:`points_inside` / :func:`any_inside`: strict "prior centre inside a box" tests for every
  (GT, prior) pair, or OR-ed over the GTs; on grid levels (:func:`~assignlab.core.make_priors`)
  they test rows and columns separately (``(B, g, rows)`` and ``(B, g, cols)``) instead of every
  prior, with the same results.
* :func:`dynamic_k`: OTA's per-GT ``k = max(1, int(sum of the top-q candidate IoUs))``.
* :func:`resolve_dynamic_k`: turns every GT's ``k`` cheapest priors into one GT per prior, with
  mmdetection / YOLOX's rule for a prior chosen by several GTs (the GT of lowest cost over *all*
  GTs), from small ``(B, G, q)`` index tensors -- no dense ``(B, G, N)`` selection mask and no
  loop over GTs; :class:`LowestCost` finds, chunk by chunk, the cheapest GT of the priors that
  were chosen. :func:`select_dynamic_k` runs both passes over the GT chunks.
* :func:`prepare_predictions`: the common start of a call (prediction checks, one float dtype,
  GT label range); :func:`iou_assignment` / :func:`empty_iou_assignment`: the common result of
  SimOTA and DSL (IoU soft label of each positive).

Shapes: ``B`` images, ``g`` GTs in the current chunk (``G`` in all), ``N`` priors.

The hot loops here run on ``(B, g, N)`` tensors of up to ``max_pairs`` elements. On a CPU a fresh
allocation of such a tensor costs more than the arithmetic (page faults), so the helpers take
optional ``out`` / scratch buffers and work in place, keeping mmdetection's order of operations
(hence its bits) wherever it matters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..core import Assignment, GroundTruth, Priors
from .base import check_gt_labels, check_predictions

__all__ = [
    "FAR",
    "LowestCost",
    "Scratch",
    "ScratchOwner",
    "aligned_iou",
    "any_inside",
    "class_rows",
    "dynamic_k",
    "empty_iou_assignment",
    "final_gt_index",
    "grid_axes",
    "iou_assignment",
    "pairwise_iou",
    "points_inside",
    "prepare_predictions",
    "prepare_scores",
    "resolve_dynamic_k",
    "scratch_for",
    "select_dynamic_k",
]

MMDET_IOU_EPS = 1e-6  # BboxOverlaps2D default
#: coordinate of the degenerate box that stands in for a non-candidate prior's prediction: its
#: IoU with every GT is exactly 0.
FAR = -1e30


class Scratch:
    """Named reusable buffers for the ``(B, g, N)`` tensors of a call, sized for the largest GT
    chunk. ``get(name, g)`` returns a *contiguous* ``(B, g, N)`` view (a prefix of the buffer), so
    chunks of any size up to the largest share it.

    On a CPU, first-touching a fresh 50 MB tensor (page faults) costs more than the arithmetic
    done in it, so assigners keep their :class:`Scratch` between calls there (see
    :func:`scratch_for`); on an accelerator the caching allocator already recycles memory and a
    fresh one is made per call. Buffers never leave the assigner: results are always new tensors.
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
    """
    check_predictions(priors, gt, pred_boxes, pred_scores, name)
    scores = pred_scores.detach() if scores_are is None else prepare_scores(pred_scores, scores_are)[0]
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    scores = scores.to(dtype)
    C = scores.shape[-1]
    boxes_p = pred_boxes.detach().to(dtype)
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


def dynamic_k(ious: Tensor, q: int, gt_valid: Tensor) -> Tensor:
    """``(B, g)`` long: ``max(1, int(sum of the top-q IoUs))`` of each GT, 0 on ``~gt_valid``.

    ``ious`` ``(B, g, N)`` must be 0 on priors that are not candidates (they then add nothing,
    exactly as mmdet's sum over its ``min(q, num_candidates)`` candidates).

    Worked example (q = 3): candidate IoUs ``[0.9, 0.8, 0.7, 0.1]`` -> top-3 sum 2.4 ->
    ``k = max(1, int(2.4)) = 2``. Since every IoU is at most 1, ``k <= min(q, #candidates)``.
    """
    qq = min(int(q), ious.shape[-1])
    top = ious.topk(qq, dim=-1).values  # (B, g, qq), sorted descending
    s = top[..., 0]
    for j in range(1, qq):  # sequential, largest first (mmdet's topk(...).sum(0))
        s = s + top[..., j]
    k = s.to(torch.int32).clamp(min=1).long()
    return torch.where(gt_valid, k, torch.zeros_like(k))


def resolve_dynamic_k(idx: Tensor, k: Tensor, num_priors: int) -> tuple[Tensor, Tensor, Tensor]:
    """Combine every GT's choice into one GT per prior.

    Args:
        idx: ``(B, G, q)`` long, each GT's priors in increasing cost order (``topk(largest=False)``).
        k: ``(B, G)`` how many of them the GT takes (its dynamic k; 0 for padded GTs).
        num_priors: ``N``.

    Returns:
        ``(count, chooser, positions)``: ``count`` ``(B, N)`` how many GTs chose each prior,
        ``chooser`` ``(B, N)`` the (highest-index) GT that chose it (-1 if none), and
        ``positions`` ``(B, G * q)`` the chosen prior indices (entries past a GT's k point at
        priors too, harmlessly), for the lowest-cost look-up of priors chosen several times.

    Example (one image, N = 4, q = 2): ``idx [[1, 2], [2, 0]]``, ``k [1, 2]`` -> GT 0 takes
    prior 1, GT 1 takes priors 2 and 0 -> ``count [1, 1, 1, 0]``, ``chooser [1, 0, 1, -1]``.
    """
    B, G, q = idx.shape
    ok = torch.arange(q, device=idx.device)[None, None, :] < k[..., None]  # (B, G, q)
    flat = idx.reshape(B, G * q)
    count = torch.zeros(B, num_priors, dtype=torch.long, device=idx.device)
    count.scatter_add_(1, flat, ok.reshape(B, -1).long())
    rows = torch.arange(G, device=idx.device)[None, :, None].expand(B, G, q)
    who = torch.where(ok, rows, torch.full_like(rows, -1)).reshape(B, -1)
    chooser = torch.full((B, num_priors), -1, dtype=torch.long, device=idx.device)
    chooser.scatter_reduce_(1, flat, who, reduce="amax", include_self=True)
    return count, chooser, flat


class LowestCost:
    """Running argmin over GT chunks of the cost at fixed prior positions ``(B, M)``: the GT of
    lowest cost over *all* real GTs (ties: the lowest GT index, as ``torch.min``)."""

    def __init__(self, positions: Tensor, dtype: torch.dtype) -> None:
        B, M = positions.shape
        self.positions = positions
        self.best = torch.full((B, M), float("inf"), dtype=dtype, device=positions.device)
        self.gt = torch.zeros(B, M, dtype=torch.long, device=positions.device)

    def update(self, cost: Tensor, start: int) -> None:
        """``cost`` ``(B, g, N)`` of GT rows ``start .. start + g`` (``inf`` on padded rows)."""
        B, g, _ = cost.shape
        if g == 0:
            return
        c = torch.gather(cost, 2, self.positions[:, None, :].expand(B, g, -1))  # (B, g, M)
        cmin, carg = c.min(dim=1)
        better = cmin < self.best
        self.best = torch.where(better, cmin, self.best)
        self.gt = torch.where(better, carg + start, self.gt)

    def per_prior(self, num_priors: int) -> Tensor:
        """``(B, N)`` the lowest-cost GT of every prior that appears in ``positions`` (every
        position of one prior holds the same value), 0 elsewhere."""
        B = self.gt.shape[0]
        out = torch.zeros(B, num_priors, dtype=torch.long, device=self.gt.device)
        return out.scatter_(1, self.positions, self.gt)


def final_gt_index(count: Tensor, chooser: Tensor, lowest: Tensor) -> Tensor:
    """One chooser -> it; several -> the lowest-cost GT; none -> -1."""
    return torch.where(count > 1, lowest, torch.where(count == 1, chooser, torch.full_like(chooser, -1)))



def select_dynamic_k(
    cost_of: Callable[[slice], tuple[Tensor, Tensor]],
    chunks: list[slice],
    gt_valid: Tensor,
    q: int,
    num_priors: int,
    dtype: torch.dtype,
) -> Tensor:
    """``(B, N)`` gt_index of the dynamic-k rule, GT chunk by GT chunk.

    ``cost_of(sl)`` gives ``(cost, ious)`` ``(B, g, N)`` of the GT rows ``sl`` (``ious`` 0 off the
    candidates); ``gt_valid`` ``(B, G)`` marks the GTs that take priors (real, with a candidate).
    Pass 1: each GT's :func:`dynamic_k` and its ``q`` cheapest priors; pass 2: a prior chosen by
    several GTs goes to the GT of lowest cost over all GTs (:class:`LowestCost`). With one chunk
    its cost is reused, else recomputed (same values).
    """
    B, G = gt_valid.shape
    device = gt_valid.device
    idx = torch.zeros(B, G, q, dtype=torch.long, device=device)
    ks = torch.zeros(B, G, dtype=torch.long, device=device)
    single = len(chunks) == 1
    cost_cache = None
    for sl in chunks:
        cost, ious = cost_of(sl)
        ks[:, sl] = dynamic_k(ious, q, gt_valid[:, sl])
        idx[:, sl] = cost.topk(q, dim=-1, largest=False).indices
        if single:
            cost_cache = cost

    count, chooser, positions = resolve_dynamic_k(idx, ks, num_priors)
    lowest = LowestCost(positions, dtype)
    for sl in chunks:
        lowest.update(cost_cache if single else cost_of(sl)[0], sl.start)
    return final_gt_index(count, chooser, lowest.per_prior(num_priors))


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
