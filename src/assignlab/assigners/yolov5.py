"""YOLOv5 label assignment: anchor-shape matching plus neighbour cells (``build_targets``).

Reference: G. Jocher et al., *YOLOv5* (Ultralytics, 2020, software, doi:10.5281/zenodo.3908559),
``utils/loss.py::ComputeLoss.build_targets``. The neighbour-cell trick extends the "eliminate
grid sensitivity" decoding of YOLOv4 (A. Bochkovskiy, C.-Y. Wang, H.-Y. M. Liao, arXiv:2004.10934,
2020). The optional ignore rule is YOLOv3's ``ignore_thresh`` (J. Redmon, A. Farhadi,
arXiv:1804.02767, 2018); the optional adaptive cell region is FCOS centre sampling (Z. Tian,
C. Shen, H. Chen, T. He, ICCV 2019).

The rule, per level ``l`` with stride ``s`` and ``ny x nx`` cells, in **grid units** (pixels / s)
and **float32** like the reference::

    gxy = float32(GT centre px) / s       gwh = float32(GT size px) / s
    r   = gwh / anchor_wh                  (anchor_wh = anchor px / s, per anchor of the level)
    (GT, anchor) kept  iff  max(r, 1/r) < anchor_t   for both w and h      (strict)

Each kept pair trains the prior at its centre cell ``trunc(gxy)`` and up to two neighbours
(``g = neighbor_thr = 0.5``)::

    x-1 cell  iff  gx % 1 < g  and  gx > 1          y-1 cell  iff  gy % 1 < g  and  gy > 1
    x+1 cell  iff  (nx-gx) % 1 < g  and  nx-gx > 1   y+1 cell  iff  (ny-gy) % 1 < g  and  ny-gy > 1
    cell = trunc(gxy - offset * g), offsets (0,0) (1,0) (0,1) (-1,0) (0,-1), then clamped to the grid

Worked example (stride 8, 80 x 80 grid, anchors 10x13 16x30 33x23 px = 1.25x1.625, 2x3.75,
4.125x2.875 grid units). A 40 x 40 px GT centred at (28.08, 52.0) px::

    gxy = (3.51, 6.5)   gwh = (5, 5)
    r   = (4.0, 3.08) (2.5, 1.33) (1.21, 1.74) -> max(r, 1/r) = 4.0, 2.5, 1.74
    anchor 0 fails (4.0 is not < 4), anchors 1 and 2 are kept
    x: 3.51 % 1 = 0.51 -> no x-1;  (80 - 3.51) % 1 = 0.49 < 0.5 -> x+1 cell 4
    y: 6.5 % 1 = 0.5 -> no y-1 (strict); (80 - 6.5) % 1 = 0.5 -> no y+1
    -> rows (anchor, gj, gi): (1, 6, 3) (2, 6, 3) (1, 6, 4) (2, 6, 4)

Quirks reproduced on purpose (the conformance fixtures check them):

* A GT may train several anchors, levels and cells, and one prior may serve several GTs. All rows
  are kept, **duplicates included**: when ``gx`` is an exact integer both neighbour conditions
  hold and the "+1" cell truncates back to the centre cell; at the far border (``gx == nx``) the
  centre cell is clamped onto the x-1 neighbour. YOLOv5's box and class losses average over rows,
  so duplicates count twice.
* The clamp happens before the box target is computed: ``tbox xy = gxy - clamped cell``.

Outputs. :class:`~assignlab.core.Matches` holds every row ``(batch, prior, gt, weight, center,
score)`` in the order image, GT, level, anchor, offset; ``score`` is the wh-IoU of the GT and the
prior's anchor (both centred), ``center`` is True for the cell that contains the GT centre. The
dense view (one GT per prior, for metrics and drawing) takes the row with the highest score,
first row on ties (:func:`~assignlab.core.dense_from_matches`). :func:`yolov5_targets` turns the
matches into the reference's per-row targets ``(b, a, gj, gi, tcls, tbox, anch)`` for the loss.

Pixel GTs and exactness. YOLOv5 computes ``gx = float32(x_norm) * float32(nx)``. With power-of-two
strides ``float32(x_norm * W) / s`` is bit-identical to that, so GT boxes built from normalized
labels reproduce the reference exactly provided the box centre and size survive the trip through
``xyxy``: pass such boxes as **float64** (``cx -/+ w/2`` is then exact); float32 boxes may move a
centre by one ulp, which only matters exactly on a decision boundary.

Variants (all off by default, composable):

* ``distance_weighting``: the centre cell weighs 1, another cell ``1 - d / max(1, radius - 0.5)``
  (``1 - d`` in neighbour mode) with ``d`` the Chebyshev distance (grid units) from the GT centre
  to the cell. Along x: centre 3.51 or 3.99 -> cell 4 weighs 0.51 / 0.99; centre 3.49 or 3.01 ->
  cell 2 weighs 0.51 / 0.99. The weight is the match weight and the dense quality / box / class
  weight.
* ``adaptive_radius``: instead of centre + 2 neighbours, every cell whose centre lies strictly
  within ``min(radius, w/2)`` horizontally and ``min(radius, h/2)`` vertically of the GT centre
  (grid units; i.e. inside the GT box and inside a ``2 * radius`` square, FCOS centre sampling),
  plus the centre cell always. A GT at most one cell wide or tall gets only its centre cell; with
  the default ``radius = 2`` a large GT gets up to 4 x 4 = 16 cells (3 x 3 when its centre is
  exactly at a cell centre). Box targets then range over ``(-radius, 1 + radius)`` cells, wider
  than YOLOv5's ``2 * sigmoid - 0.5`` decoding: pair it with a decoder that can reach them.
* ``ignore_iou``: negatives whose predicted box (``pred_boxes``) has IoU > ``ignore_iou`` with a
  GT become ignored (no objectness loss), as YOLOv3. Needs predictions only when set.
* ``dedup``: ``"none"`` (YOLOv5: every row kept), ``"unique"`` (one row per prior: the GT with the
  highest anchor wh-IoU), ``"best_pred_iou"`` (one row per prior: the GT best covered by that
  prior's predicted box; ``score`` becomes that IoU; needs ``pred_boxes``). Deduping reduces
  ``matches`` itself.
* ``recover_unmatched``: a GT left without any row (its shape fails ``anchor_t`` for every anchor,
  e.g. a 2 x 2 px box) is forced onto the level / anchor with the lowest ``max(r, 1/r)`` at its
  centre cell (ties: lowest level, then anchor). ``extras["num_recovered"]`` ``(B,)`` counts them.
  Recovery happens before deduplication.

GT ignore regions (``gt.ignore``) are not used (YOLOv5 has none); padded / invalid GT rows
(``gt.mask`` False) never match.

Extras: ``"overlaps"`` (B, N) IoU of each dense positive's anchor box (or, with
``dedup="best_pred_iou"``, predicted box) with its GT; ``"num_matches"`` (B,) rows per image;
``"num_recovered"`` (B,); ``"recovered"`` (B, G) bool; ``"pred_max_iou"`` (B, N) when
``ignore_iou`` is set.

Example::

    >>> priors = make_priors((640, 640), anchors=YOLOV5S_ANCHORS)
    >>> res = YOLOv5Assigner()(priors, gt)           # gt: GroundTruth, xyxy px
    >>> t = yolov5_targets(res.matches, priors, gt)  # per-row tbox / anch / tcls for the loss
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import (
    DEFAULT_MAX_PAIRS,
    Assignment,
    GroundTruth,
    Matches,
    Priors,
    chunk_slices,
    dense_from_matches,
    gt_chunks,
    select_best_per_prior,
)
from ..core.boxes import aligned_box_iou
from .base import Assigner

__all__ = [
    "YOLOV5S_ANCHORS",
    "YOLOv5Assigner",
    "YOLOv5Targets",
    "grid_xywh",
    "max_iou_over_gts",
    "yolov5_targets",
]

#: The yolov5s default anchors (w, h) in pixels for strides 8, 16, 32.
YOLOV5S_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)

# Offsets subtracted from gxy (times g) in the reference order: centre, x-1, y-1, x+1, y+1.
_NEIGHBOUR_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))
_DEDUP = ("none", "unique", "best_pred_iou")


@dataclass(frozen=True)
class _Levels:
    """Per-level tables of a :class:`Priors`, padded to the largest anchor count."""

    strides: Tensor  # (L,) float32
    anchors: Tensor  # (L, A, 2) float32 anchor wh in grid units (padding: 1)
    anchor_valid: Tensor  # (L, A) bool
    grid: Tensor  # (L, 2) long (nx, ny)
    start: Tensor  # (L,) long first prior index of the level
    num_anchors: Tensor  # (L,) long


def _levels(priors: Priors, device: torch.device) -> _Levels:
    if priors.anchors is None or not priors.level_anchors or any(len(a) == 0 for a in priors.level_anchors):
        raise ValueError("YOLOv5 assignment needs anchor priors: make_priors(..., anchors=per-level (w, h) px)")
    if any(r <= 0 or c <= 0 for r, c in priors.level_shapes):
        raise ValueError("YOLOv5 assignment needs the grid shape of every level (build priors with make_priors)")
    L = len(priors.level_anchors)
    A = max(len(a) for a in priors.level_anchors)
    anchors_px = torch.ones(L, A, 2, dtype=torch.float32)
    valid = torch.zeros(L, A, dtype=torch.bool)
    for li, la in enumerate(priors.level_anchors):
        anchors_px[li, : len(la)] = torch.tensor(la, dtype=torch.float32)
        valid[li, : len(la)] = True
    strides = torch.tensor(priors.level_strides, dtype=torch.float32)
    anchors = anchors_px / strides[:, None, None]  # float32 division, as Detect.anchors /= stride
    anchors = torch.where(valid[..., None], anchors, torch.ones_like(anchors))  # padding: 1 x 1
    grid = torch.tensor([[c, r] for r, c in priors.level_shapes], dtype=torch.long)
    start = torch.tensor([0, *priors.num_level_priors[:-1]], dtype=torch.long).cumsum(0)
    na = torch.tensor(priors.num_anchors, dtype=torch.long)
    return _Levels(
        strides.to(device), anchors.to(device), valid.to(device), grid.to(device), start.to(device), na.to(device)
    )


def grid_xywh(boxes: Tensor, strides: Tensor) -> tuple[Tensor, Tensor]:
    """GT centre and size in grid units, float32: ``float32(centre px) / stride``.

    ``boxes`` ``(..., 4)`` xyxy px (any float dtype; the centre ``(x1 + x2) / 2`` and the size are
    formed in that dtype, then cast), ``strides`` broadcastable to ``boxes[..., 0]``.
    Returns ``(gxy, gwh)``, each ``(..., 2)``.
    """
    ctr = ((boxes[..., :2] + boxes[..., 2:]) / 2).float()
    wh = (boxes[..., 2:] - boxes[..., :2]).float()
    s = strides.float()[..., None]
    return ctr / s, wh / s


def _wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of two sets of centred boxes given by their (w, h), elementwise ``(..., 2) -> (...)``."""
    inter = torch.minimum(wh1[..., 0], wh2[..., 0]) * torch.minimum(wh1[..., 1], wh2[..., 1])
    union = wh1[..., 0] * wh1[..., 1] + wh2[..., 0] * wh2[..., 1] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def max_iou_over_gts(gt_boxes: Tensor, gt_mask: Tensor, boxes: Tensor, max_pairs: int = DEFAULT_MAX_PAIRS) -> Tensor:
    """``(B, N)`` highest IoU of each box ``(B, N, 4)`` with the valid GTs ``(B, G, 4)`` of its image
    (0 without GTs). Same formula as :func:`~assignlab.core.boxes.batched_box_iou`, fused in place
    and walked in small GT chunks (at most ``max_pairs`` pairs, ~2M for cache locality); the
    running max makes every chunking give identical values.
    """
    B, N = boxes.shape[:2]
    out = boxes.new_zeros(B, N)
    boxes = torch.nan_to_num(boxes)  # sanitize once: no NaN, no inverted boxes -> union >= GT area
    boxes = torch.cat([boxes[..., :2], torch.maximum(boxes[..., 2:], boxes[..., :2])], -1)
    px1, py1, px2, py2 = (t[:, None, :] for t in boxes.unbind(-1))
    parea = (px2 - px1) * (py2 - py1)
    step_budget = min(max_pairs, 2**21)
    for sl in gt_chunks(B, gt_boxes.shape[1], N, step_budget):
        if sl.stop <= sl.start:
            continue
        gx1, gy1, gx2, gy2 = (t[..., None] for t in gt_boxes[:, sl].unbind(-1))
        garea = (gx2 - gx1) * (gy2 - gy1)
        w = torch.minimum(gx2, px2).sub_(torch.maximum(gx1, px1)).clamp_(min=0)
        h = torch.minimum(gy2, py2).sub_(torch.maximum(gy1, py1)).clamp_(min=0)
        inter = w.mul_(h)
        iou = inter.div((garea + parea).sub_(inter))
        iou = iou.masked_fill_(~gt_mask[:, sl, None], 0.0)  # padded GTs (0 / 0 included)
        out = torch.maximum(out, iou.amax(1))
    return out


class YOLOv5Assigner(Assigner):
    """YOLOv5 ``build_targets`` as a batched assigner (see the module docstring).

    Args:
        anchor_t: a (GT, anchor) pair matches iff ``max(r, 1/r) < anchor_t`` for w and h
            (``r = GT wh / anchor wh``). YOLOv5 hyp ``anchor_t = 4.0``. Must be > 1.
        neighbor_thr: YOLOv5's ``g``: a neighbour cell is added when the centre's fraction in
            that axis is below it (0.5: the nearer of the two neighbours). In ``[0, 1]``.
        distance_weighting: weight neighbour cells by ``1 - distance`` (variant a).
        adaptive_radius: FCOS-style cell region growing with the GT size (variant b).
        radius: cap of the adaptive region's half-side, in cells (used with ``adaptive_radius``
            and by ``distance_weighting`` in that mode). Default 2 -> at most 16 cells.
        ignore_iou: when set, non-positive priors whose predicted box has IoU above it with a
            GT are ignored (variant c; needs ``pred_boxes``).
        dedup: ``"none"`` | ``"unique"`` | ``"best_pred_iou"`` (variant d).
        recover_unmatched: force GTs without any match onto their best anchor (variant e).
        max_pairs: memory budget (GT x prior pairs) of the ``ignore_iou`` IoU and of the match
            enumeration.
    """

    many_to_many = True

    def __init__(
        self,
        anchor_t: float = 4.0,
        neighbor_thr: float = 0.5,
        distance_weighting: bool = False,
        adaptive_radius: bool = False,
        radius: float = 2.0,
        ignore_iou: float | None = None,
        dedup: str = "none",
        recover_unmatched: bool = False,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        if not (math.isfinite(anchor_t) and anchor_t > 1):
            raise ValueError(f"anchor_t must be a finite number > 1, got {anchor_t}")
        if not 0 <= neighbor_thr <= 1:
            raise ValueError(f"neighbor_thr must be in [0, 1], got {neighbor_thr}")
        if not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be a finite number > 0, got {radius}")
        if ignore_iou is not None and not 0 <= ignore_iou < 1:
            raise ValueError(f"ignore_iou must be None or in [0, 1), got {ignore_iou}")
        if dedup not in _DEDUP:
            raise ValueError(f"dedup must be one of {_DEDUP}, got {dedup!r}")
        super().__init__(max_pairs)
        self.anchor_t = float(anchor_t)
        self.neighbor_thr = float(neighbor_thr)
        self.distance_weighting = bool(distance_weighting)
        self.adaptive_radius = bool(adaptive_radius)
        self.radius = float(radius)
        self.ignore_iou = None if ignore_iou is None else float(ignore_iou)
        self.dedup = dedup
        self.recover_unmatched = bool(recover_unmatched)
        self.requires_predictions = self.ignore_iou is not None or dedup == "best_pred_iou"

    # -- candidate cells -------------------------------------------------------------------------

    def _offsets(self, device: torch.device) -> tuple[Tensor, int]:
        """Cell offsets of one (GT, anchor) pair and the index of the centre offset."""
        if not self.adaptive_radius:
            off = torch.tensor(_NEIGHBOUR_OFFSETS, dtype=torch.float32, device=device) * self.neighbor_thr
            return off, 0
        R = math.ceil(self.radius + 0.5) - 1  # farthest cell offset whose centre can be < radius away
        r = torch.arange(-R, R + 1, device=device)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        win = torch.stack([dx.reshape(-1), dy.reshape(-1)], 1)  # (K, 2) integer (dx, dy)
        return win, R * (2 * R + 1) + R  # row dy = 0, column dx = 0 of the (2R + 1)^2 window

    def _match_chunk(self, boxes: Tensor, valid: Tensor, lv: _Levels, offsets: Tensor, k0: int) -> dict:
        """Rows of a chunk of ``P`` flattened (image, GT) pairs: ``boxes (P, 4)``, ``valid (P,)``."""
        P = boxes.shape[0]
        L, A = lv.anchor_valid.shape
        gxy, gwh = grid_xywh(boxes[:, None, :], lv.strides[None, :])  # (P, L, 2)
        r = gwh[:, :, None, :] / lv.anchors[None]  # (P, L, A, 2)
        ratio = torch.maximum(r, 1 / r).amax(-1)  # (P, L, A)
        ratio = ratio.masked_fill(~lv.anchor_valid[None], float("inf"))
        ok = (ratio < self.anchor_t) & valid[:, None, None]
        nxy = lv.grid[None].expand(P, L, 2)
        centre = torch.minimum(gxy.long().clamp(min=0), nxy - 1)  # (P, L, 2) clamped centre cell
        if not self.adaptive_radius:
            g = self.neighbor_thr
            gxi = lv.grid.float()[None] - gxy
            lo = (gxy % 1 < g) & (gxy > 1)
            hi = (gxi % 1 < g) & (gxi > 1)
            sel = torch.stack([torch.ones_like(lo[..., 0]), lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]], -1)
        else:
            cell = centre[:, :, None, :] + offsets  # (P, L, K, 2)
            in_grid = ((cell >= 0) & (cell < nxy[:, :, None, :])).all(-1)
            half = torch.clamp(gwh / 2, max=self.radius)  # (P, L, 2)
            near = ((cell.float() + 0.5 - gxy[:, :, None, :]).abs() < half[:, :, None, :]).all(-1)
            is_centre = torch.zeros(offsets.shape[0], dtype=torch.bool, device=boxes.device)
            is_centre[k0] = True
            sel = in_grid & (near | is_centre)
        cand = ok[..., None] & sel[:, :, None, :]  # (P, L, A, K)
        recovered = torch.zeros(P, dtype=torch.bool, device=boxes.device)
        if self.recover_unmatched and P:
            recovered = valid & ~cand.flatten(1).any(1)
            best = ratio.flatten(1).argmin(1)  # lowest level / anchor on ties
            forced = F.one_hot(best, L * A).bool().view(P, L, A) & recovered[:, None, None]
            cand[..., k0] |= forced
        p, lvl, a, k = cand.nonzero(as_tuple=True)

        # one gather per table (flat index_select is much cheaper than multi-dim indexing)
        feat = torch.cat([gxy, gwh, centre.float()], -1).view(P * L, 6).index_select(0, p * L + lvl)
        gxy_m, gwh_m, ctr_m = feat[:, :2], feat[:, 2:4], feat[:, 4:].long()
        lvt = torch.cat([lv.grid, lv.start[:, None], lv.num_anchors[:, None]], 1).index_select(0, lvl)
        off = offsets.index_select(0, k)
        if self.adaptive_radius:
            gij = ctr_m + off
        else:
            gij = (gxy_m - off).long()  # truncation, as the reference's .long()
        gij = torch.minimum(gij.clamp(min=0), lvt[:, :2] - 1)  # in-place clamp in the reference
        gi, gj = gij[:, 0], gij[:, 1]
        prior = lvt[:, 2] + (gj * lvt[:, 0] + gi) * lvt[:, 3] + a
        is_ctr = (gij == ctr_m).all(1)
        if self.distance_weighting:
            cf = gij.float()
            d = torch.maximum(torch.maximum(cf - gxy_m, gxy_m - cf - 1), torch.zeros_like(gxy_m)).amax(1)
            scale = max(1.0, self.radius - 0.5) if self.adaptive_radius else 1.0
            weight = (1 - d / scale).clamp(0, 1)
        else:
            weight = torch.ones_like(gxy_m[:, 0])
        score = _wh_iou(gwh_m, lv.anchors.view(L * A, 2).index_select(0, lvl * A + a))
        return {"pair": p, "prior": prior, "weight": weight, "center": is_ctr, "score": score,
                "recovered": recovered}

    # -- the assignment ---------------------------------------------------------------------------

    def match(self, priors: Priors, gt: GroundTruth) -> tuple[Matches, Tensor]:
        """All YOLOv5 rows (before deduplication) and the ``(B, G)`` recovered-GT mask."""
        device = gt.device
        B, G = gt.batch_size, gt.max_boxes
        lv = _levels(priors, device)
        offsets, k0 = self._offsets(device)
        L, A = lv.anchor_valid.shape
        boxes = gt.boxes.reshape(B * G, 4)
        valid = gt.mask.reshape(B * G)
        parts = []
        for sl in chunk_slices(B * G, L * A * offsets.shape[0], self.max_pairs):
            out = self._match_chunk(boxes[sl], valid[sl], lv, offsets, k0)
            out["pair"] = out["pair"] + sl.start
            parts.append(out)
        cat = {k: torch.cat([o[k] for o in parts]) for k in parts[0]}
        pair = cat["pair"]
        matches = Matches(
            batch=pair // max(G, 1), prior=cat["prior"], gt=pair % max(G, 1), weight=cat["weight"],
            center=cat["center"], score=cat["score"],
        )
        return matches, cat["recovered"].view(B, G)

    def __call__(
        self,
        priors: Priors,
        gt: GroundTruth,
        pred_boxes: Tensor | None = None,
        pred_scores: Tensor | None = None,
        **_: Tensor,
    ) -> Assignment:
        B, N = gt.batch_size, priors.num_priors
        if self.requires_predictions:
            if pred_boxes is None:
                raise ValueError(
                    "YOLOv5Assigner with ignore_iou or dedup='best_pred_iou' needs pred_boxes=(B, N, 4) xyxy px"
                )
            if pred_boxes.shape != (B, N, 4):
                raise ValueError(f"YOLOv5Assigner: pred_boxes must be {(B, N, 4)}, got {tuple(pred_boxes.shape)}")
            pred_boxes = pred_boxes.detach().float()
        matches, recovered = self.match(priors, gt)

        dense_score = None
        if self.dedup != "none":
            if self.dedup == "unique":
                score = matches.score
            else:
                pb = pred_boxes[matches.batch, matches.prior]
                score = torch.nan_to_num(aligned_box_iou(pb, gt.boxes[matches.batch, matches.gt].float(), eps=1e-9))
                matches = Matches(matches.batch, matches.prior, matches.gt, matches.weight, matches.center, score)
            matches = matches.select(select_best_per_prior(matches.batch, matches.prior, score, N))
            dense_score = matches.score

        ignore = None
        extras: dict[str, Tensor] = {}
        if self.ignore_iou is not None:
            max_iou = max_iou_over_gts(gt.boxes.float(), gt.mask, pred_boxes, self.max_pairs)
            ignore = max_iou > self.ignore_iou
            extras["pred_max_iou"] = max_iou

        res = dense_from_matches(matches, B, N, score=dense_score, ignore=ignore)
        # overlaps: IoU per match row, scattered where the row's GT is the prior's dense GT (rows
        # sharing (image, prior, GT) have equal IoU; the others write 0, which amax ignores)
        b, p, g = matches.batch, matches.prior, matches.gt
        if self.dedup == "best_pred_iou":
            ov_rows = matches.score
        else:
            anchors = priors.anchors.to(gt.device)
            ov_rows = torch.nan_to_num(aligned_box_iou(anchors[p], gt.boxes[b, g].float(), eps=1e-9))
        chosen = res.gt_index[b, p] == g
        overlaps = torch.zeros(B * N, dtype=torch.float32, device=gt.device)
        overlaps.scatter_reduce_(0, b * N + p, torch.where(chosen, ov_rows.float(), 0.0), reduce="amax")
        extras["overlaps"] = overlaps.view(B, N)
        extras["num_matches"] = torch.bincount(matches.batch, minlength=B)[:B]
        extras["num_recovered"] = recovered.sum(1)
        extras["recovered"] = recovered
        return res.replace(extras=extras)


@dataclass(frozen=True)
class YOLOv5Targets:
    """Per-row YOLOv5 training targets of a match list (``M`` rows, duplicates kept).

    Attributes:
        level, batch, anchor, gj, gi: ``(M,)`` long; ``(batch, anchor, gj, gi)`` are YOLOv5's
            ``indices`` into a level's ``(B, na, ny, nx, ...)`` prediction map.
        prior: ``(M,)`` long flat prior index (to gather from ``(B, N, ...)`` predictions).
        gt: ``(M,)`` long GT row.
        tcls: ``(M,)`` long class.
        tbox: ``(M, 4)`` float32 ``[gx - gi, gy - gj, w, h]`` in grid units (clamped cell).
        anch: ``(M, 2)`` float32 anchor (w, h) in grid units.
        weight: ``(M,)`` float32 match weight (1 unless ``distance_weighting``).
    """

    level: Tensor
    batch: Tensor
    anchor: Tensor
    gj: Tensor
    gi: Tensor
    prior: Tensor
    gt: Tensor
    tcls: Tensor
    tbox: Tensor
    anch: Tensor
    weight: Tensor

    def __len__(self) -> int:
        return int(self.batch.shape[0])

    def level_rows(self, level: int) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor], Tensor, Tensor]:
        """The rows of one level as the reference returns them:
        ``(tcls, tbox, (b, a, gj, gi), anch, weight)``."""
        m = self.level == level
        return self.tcls[m], self.tbox[m], (self.batch[m], self.anchor[m], self.gj[m], self.gi[m]), \
            self.anch[m], self.weight[m]


def yolov5_targets(matches: Matches, priors: Priors, gt: GroundTruth) -> YOLOv5Targets:
    """YOLOv5 box / class targets of every match row (the input of the YOLOv5 loss).

    ``tbox`` uses the same float32 grid conversion as the assigner (:func:`grid_xywh`), so with
    float64 GT boxes built from normalized labels it equals ``build_targets``' ``tbox`` bit for bit.

    Example (stride 8, GT centre (28.08, 52.0) px, 40 x 40 px, matched at cell (gi=4, gj=6),
    anchor 2)::

        tbox = [3.51 - 4, 6.5 - 6, 5.0, 5.0] = [-0.49, 0.5, 5.0, 5.0]
        anch = [4.125, 2.875]
    """
    device = matches.prior.device
    lv = _levels(priors, device)
    p, b, g = matches.prior, matches.batch, matches.gt
    level = priors.levels.to(device)[p]
    anchor = priors.anchor_ids.to(device)[p]
    cell = priors.grid_xy.to(device)[p]  # (M, 2) (col, row)
    gxy, gwh = grid_xywh(gt.boxes[b, g], lv.strides[level])
    tbox = torch.cat([gxy - cell, gwh], 1)
    return YOLOv5Targets(
        level=level, batch=b, anchor=anchor, gj=cell[:, 1], gi=cell[:, 0], prior=p, gt=g,
        tcls=gt.labels[b, g], tbox=tbox, anch=lv.anchors[level, anchor], weight=matches.weight.float(),
    )
