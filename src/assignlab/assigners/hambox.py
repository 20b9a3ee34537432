"""HAMBox: online high-quality anchor mining.

Liu, Tang, Han, Liu, Rui, Wu, "HAMBox: Delving into Mining High-Quality Anchors on Face
Detection", CVPR 2020 (Sec. 3.2 "Online High-quality Anchor Mining", Sec. 3.3 "Regression-aware
Focal Loss").

The paper observes that many anchors *after regression* cover a face well although their anchor
box overlaps it poorly, and that faces matched to few anchors are under-trained. HAMBox therefore
assigns in two stages at every iteration:

**Stage 1 (static matching).** Each prior takes the GT with the highest anchor IoU and is positive
iff that IoU reaches ``t1`` (0.35). There is no ignore band and no "best anchor of each GT"
rescue: every other prior is a stage-1 negative. ``M_g`` = number of stage-1 positives of GT ``g``.

**Stage 2 (compensation).** For every GT with ``M_g < K`` (``K`` = ``k`` = 5), take its stage-1
negatives whose *predicted* box overlaps it with ``IoU(pred, g) >= t2`` (0.5), sort them by that
predicted IoU and make the best ``K - M_g`` of them positives of ``g``. Selection is done for every
GT independently; an anchor chosen by several GTs goes to the one with the higher predicted IoU
(ties to the lower GT index), and the losing GT is not refilled, so it may end with fewer than
``K`` anchors.

**Regression-aware focal loss.** A compensated anchor's classification target is its predicted
IoU rather than 1; :attr:`Assignment.quality` carries it (stage-1 positives have quality 1), so a
quality-focal / soft-target loss reproduces the paper's loss. Box weights are 1 on all positives.

Option ``ignore_pred_negatives``: the stage-1 negatives whose predicted box still reaches ``t2``
with some GT but were not compensated (the GT already had enough anchors, or lost a collision) are
*ignored* instead of being pushed to background. This is off by default (the paper keeps them as
negatives).

Worked example (``t1=0.35, k=5, t2=0.5``), one GT ``g``::

    stage 1: anchor IoU with g     a7 0.41 | every other anchor < 0.35      -> M_g = 1, need 4
    stage 2: predicted IoU with g  a3 0.82  a9 0.77  a2 0.64  a5 0.58  a11 0.52  a4 0.50  a6 0.31
             candidates (>= t2):   a3, a9, a2, a5, a11, a4               (6 candidates)
             compensated (best 4): a3, a9, a2, a5
    result   positive  a7 a3 a9 a2 a5          gt_index g for all five
             quality   1.0 0.82 0.77 0.64 0.58 (stage-1 positive 1, compensated = predicted IoU)
             a11, a4   negative (ignored when ignore_pred_negatives=True); a6 negative

With only two candidates (say a3 and a9) the GT gets those two and ends with 3 positives.

Extras (all ``(B, N)``): ``"compensated"`` bool, stage-2 positives; ``"overlaps"`` predicted-box
IoU of each positive with its GT (0 elsewhere); ``"anchor_iou"`` best anchor IoU of every prior
over the valid GTs (0 when the image has none).

Anchor-free priors are matched with ``priors.boxes(square_scale)`` squares.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, devices, gt_chunks
from ..core.boxes import aligned_box_iou, batched_box_iou, valid_box_mask
from ..core.chunking import CACHE_PAIRS, image_gt_chunks
from ._grid import (
    LOW32,
    SMALL_DENSE,
    gather_boxes,
    iou_runs,
    level_layouts,
    plan_windows,
    sort_key,
    unpack_best,
    use_windows,
    window_iou,
    window_prior_index,
)
from .base import Assigner, check_predictions, positive, positive_int, unit_interval

__all__ = ["HAMBoxAssigner"]


def _sanitize_pred_boxes(pred_boxes: Tensor, dtype: torch.dtype) -> Tensor:
    """Raw regressed boxes may be NaN or inverted early in training: NaN -> 0 and ``x2 < x1``
    (``y2 < y1``) collapsed to zero width (height), so IoUs with a real GT stay finite in [0, 1]."""
    pb = torch.nan_to_num(pred_boxes.detach().to(dtype), nan=0.0, posinf=0.0, neginf=0.0)
    lo = pb[..., :2]
    hi = torch.maximum(pb[..., 2:], lo)
    return torch.cat([lo, hi], dim=-1)


def _just_below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value below ``x``, computed on the host (no tensor read-back).
    Example: ``_just_below(0.5, torch.float32) == 0.5 - 2**-25``."""
    np_type = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}.get(dtype)
    if np_type is None:  # bfloat16: a CPU scalar
        return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(-1.0, dtype=dtype)))
    return float(np.nextafter(np_type(x), np_type(-1.0)))


class HAMBoxAssigner(Assigner):
    """Two-stage HAMBox assignment (see module docstring).

    Args:
        t1: stage-1 anchor IoU threshold, in (0, 1] (paper: 0.35).
        k: target number of anchors per GT, ``K`` (paper: 5); positive integer.
        t2: predicted-IoU threshold of stage-2 candidates, in (0, 1] (paper: 0.5).
        ignore_pred_negatives: ignore the uncompensated stage-1 negatives whose predicted IoU
            reaches ``t2`` instead of treating them as background.
        square_scale: side of the square prior boxes of anchor-free priors, in strides.
        max_pairs: memory budget (prior x GT pairs per intermediate tensor).

    Call: ``assigner(priors, gt, pred_boxes=(B, N, 4), pred_scores=(B, N, C))``; ``pred_scores``
    is accepted for interface uniformity and unused.

    Raises:
        ValueError: a bad parameter (named), or missing / mis-shaped predictions.
    """

    requires_predictions = True

    def __init__(
        self,
        t1: float = 0.35,
        k: int = 5,
        t2: float = 0.5,
        ignore_pred_negatives: bool = False,
        square_scale: float = 8.0,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        unit_interval("t1", t1)
        unit_interval("t2", t2)
        positive_int("k", k)
        positive("square_scale", square_scale)
        super().__init__(max_pairs)
        self.t1 = float(t1)
        self.k = int(k)
        self.t2 = float(t2)
        self.ignore_pred_negatives = bool(ignore_pred_negatives)
        self.square_scale = float(square_scale)
        # tests: True forces the dense path on the CPU, False the sparse one; None picks by size
        # (below SMALL_DENSE pairs, e.g. one image of 10 GTs, the dense path has fewer operations)
        self._dense: bool | None = None

    def __call__(
        self,
        priors: Priors,
        gt: GroundTruth,
        pred_boxes: Tensor | None = None,
        pred_scores: Tensor | None = None,
        **_: Tensor,
    ) -> Assignment:
        check_predictions(priors, gt, pred_boxes, pred_scores, type(self).__name__)
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        device, dtype = gt.boxes.device, gt.boxes.dtype
        if G == 0 or N == 0:
            res = Assignment.empty(B, N, device=device)
            zeros = torch.zeros(B, N, dtype=torch.float32, device=device)
            return res.replace(
                extras={"compensated": torch.zeros(B, N, dtype=torch.bool, device=device),
                        "overlaps": zeros, "anchor_iou": zeros.clone()}
            )
        anchors = priors.boxes(self.square_scale).to(dtype)  # (N, 4)
        pboxes = _sanitize_pred_boxes(pred_boxes, dtype)  # (B, N, 4)

        # ---- stage 1: prior -> best GT by anchor IoU ------------------------------------------
        dense = self._dense if self._dense is not None else B * G * N < SMALL_DENSE
        stage1 = self._stage1_windows(priors, gt, anchors) if not dense else None
        if stage1 is None:
            stage1 = self._stage1_dense(gt, anchors)
        best_iou, best_gt = stage1
        pos1 = best_iou >= self.t1  # (B, N)
        gt1 = torch.where(pos1, best_gt, -1)
        # M_g: stage-1 positives per GT, (B, G)
        m = torch.zeros(B, G, dtype=torch.long, device=device)
        m.scatter_add_(1, gt1.clamp(min=0), pos1.long())

        # ---- stage 2: per GT, best (K - M) stage-1 negatives by predicted IoU -----------------
        # Only the (B, g, kc) selected entries matter for collisions: the winner of a prior is the
        # highest predicted IoU among the GTs that selected it, ties to the lower GT index (running
        # amax over chunks, then amin of the GT index among the entries that reach it).
        # Chunks of (images x GTs) small enough to stay in the cache (a whole (B, G, N) chunk streams
        # every pass from memory and was slower than a loop over images). Masks are applied with
        # clamp / threshold / minimum: torch.where and masked_fill are ~20x slower on the CPU.
        kc = min(self.k, N)
        rank = torch.arange(kc, device=device)
        comp_iou = torch.full((B, N), -1.0, dtype=dtype, device=device)  # winning predicted IoU
        pos1_piou = torch.zeros(B, N, dtype=dtype, device=device)  # predicted IoU of stage-1 positives
        max_piou = torch.zeros(B, N, dtype=dtype, device=device)  # best predicted IoU over valid GTs
        sv = torch.full((B, G * kc), -1.0, dtype=dtype, device=device)  # selected predicted IoU, GT-major
        si = torch.zeros(B, G * kc, dtype=torch.long, device=device)  # selected prior
        # upper clamp bound 1 for valid GTs, 0 for padded ones (their IoU becomes 0); -1 cap on the
        # stage-1 positives (not candidates); t2 threshold just below t2 so that ``> thr`` is ``>= t2``
        vmax = gt.mask.to(dtype)[..., None]  # (B, G, 1)
        cap = torch.where(pos1, -1.0, float("inf")).to(dtype)[:, None, :]  # (B, 1, N)
        thr = _just_below(self.t2, dtype)
        sparse = not self.ignore_pred_negatives and not devices.sync_free(device) and not dense
        if sparse:
            pos1_piou = self._stage2_rows(gt, pboxes, pos1, gt1, m, kc, cap, thr, comp_iou, sv, si)
        for bs, gs in [] if sparse else image_gt_chunks(B, G, N, min(self.max_pairs, CACHE_PAIRS)):
            b, g = bs.stop - bs.start, gs.stop - gs.start
            piou = batched_box_iou(gt.boxes[bs, gs], pboxes[bs])  # (b, g, N)
            piou = piou.nan_to_num_(nan=0.0).clamp_(min=torch.zeros((), dtype=dtype), max=vmax[bs, gs])
            if self.ignore_pred_negatives:
                torch.maximum(max_piou[bs], piou.amax(dim=1), out=max_piou[bs])
            # stage-1 positives whose GT is in this chunk: their predicted IoU
            local = gt1[bs] - gs.start  # (b, N)
            here = pos1[bs] & (local >= 0) & (local < g)
            got = piou.gather(1, local.clamp(0, g - 1)[:, None, :])[:, 0]  # (b, N)
            pos1_piou[bs] = torch.where(here, got, pos1_piou[bs])
            # candidates of each GT (stage-1 negatives with predicted IoU >= t2; padded GTs have
            # piou 0 < t2), best kc of them; piou becomes the score in place
            score = torch.nn.functional.threshold_(piou, thr, -1.0)
            torch.minimum(score, cap[bs], out=score)  # (b, g, N)
            vals, idx = score.topk(kc, dim=2)  # (b, g, kc), sorted descending
            need = (self.k - m[bs, gs]).clamp(min=0)[..., None]  # (b, g, 1)
            keep = (vals >= self.t2) & (rank < need)
            v = torch.where(keep, vals, -1.0).view(b, g * kc)
            comp_iou[bs].scatter_reduce_(1, idx.view(b, g * kc), v, reduce="amax", include_self=True)
            sv[bs, gs.start * kc : gs.stop * kc] = v
            si[bs, gs.start * kc : gs.stop * kc] = idx.view(b, g * kc)
        sg = torch.arange(G, device=device).repeat_interleave(kc).expand(B, G * kc)
        win = (sv >= 0) & (sv == comp_iou.gather(1, si))
        comp_gt = torch.full((B, N), G, dtype=torch.long, device=device)
        comp_gt.scatter_reduce_(1, si, torch.where(win, sg, G), reduce="amin", include_self=True)
        comp_gt = torch.where(comp_gt < G, comp_gt, -1)

        compensated = comp_iou >= self.t2  # only stage-1 negatives can be selected
        gt_index = torch.where(pos1, gt1, torch.where(compensated, comp_gt, -1))
        positive = gt_index >= 0
        one = torch.ones((), dtype=dtype, device=device)
        quality = torch.where(pos1, one, comp_iou.clamp(min=0.0))
        overlaps = torch.where(pos1, pos1_piou, torch.where(compensated, comp_iou, 0.0))
        ignore = None
        if self.ignore_pred_negatives:
            ignore = ~positive & (max_piou >= self.t2)
        return Assignment.from_gt_index(
            gt_index,
            ignore=ignore,
            quality=quality,
            extras={
                "compensated": compensated,
                "overlaps": overlaps.float(),
                "anchor_iou": best_iou.clamp(min=0.0).float(),
            },
        )

    def _stage1_dense(self, gt: GroundTruth, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """Best anchor IoU ``(B, N)`` of every prior over the valid GTs (-1 in images without one) and
        its GT (lowest index on ties): running argmax over GT chunks."""
        B, G, N = gt.batch_size, gt.max_boxes, anchors.shape[0]
        device, dtype = anchors.device, anchors.dtype
        best_iou = torch.full((B, N), -1.0, dtype=dtype, device=device)
        best_gt = torch.full((B, N), -1, dtype=torch.long, device=device)
        for sl in gt_chunks(B, G, N, self.max_pairs):
            valid = gt.mask[:, sl, None]  # (B, g, 1)
            iou = batched_box_iou(gt.boxes[:, sl], anchors)  # (B, g, N)
            iou.masked_fill_(~valid, -1.0)
            v, a = iou.max(dim=1)  # first max among equals -> lower GT index
            upd = v > best_iou  # strict: earlier chunks win ties
            best_iou = torch.where(upd, v, best_iou)
            best_gt = torch.where(upd, a + sl.start, best_gt)
        return best_iou, best_gt

    def _stage1_windows(self, priors: Priors, gt: GroundTruth, anchors: Tensor) -> tuple[Tensor, Tensor] | None:
        """Stage 1 on the CPU over each GT's window of overlapping priors (see ``_grid``): a prior
        outside every window has IoU 0, below ``t1 > 0``. Same ``pos1`` / ``gt1`` / ``anchor_iou`` as
        the dense path (a best IoU of 0 reads 0 here, -1 there in images without GT: both clamp to 0
        and stay below ``t1``). ``None`` when the window path does not apply (not CPU / float32, no
        grid, or a masked-in GT box that is not finite with positive size)."""
        layouts = level_layouts(priors)
        if not use_windows(layouts, anchors.device, anchors.dtype):
            return None
        boxes = gt.boxes
        if bool((gt.mask & ~valid_box_mask(boxes)).any()):
            return None
        runs = iou_runs(anchors, layouts, boxes)
        if runs is None:
            return None
        B, N = gt.batch_size, anchors.shape[0]
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        best_key = torch.full((B * N,), -1, dtype=torch.long, device=anchors.device)
        for ch in plan_windows(runs, layouts, gt.mask, min(self.max_pairs, CACHE_PAIRS)):
            gb, ga = boxes[ch.image, ch.gt], area[ch.image, ch.gt]
            low = LOW32 - ch.gt[:, None]
            for lv, lay in enumerate(layouts):
                if 0 in ch.sizes[lv]:
                    continue
                iou = window_iou(anchors, lay, ch, lv, gb, ga)  # (S, K)
                pid = window_prior_index(lay, ch, lv, N)
                best_key.scatter_reduce_(0, pid.view(-1), sort_key(iou, low).view(-1), reduce="amax")
        _, best_iou, best_gt = unpack_best(best_key.view(B, N), anchors.dtype)
        return best_iou, best_gt

    def _stage2_rows(
        self, gt: GroundTruth, pboxes: Tensor, pos1: Tensor, gt1: Tensor, m: Tensor, kc: int, cap: Tensor,
        thr: float, comp_iou: Tensor, sv: Tensor, si: Tensor,
    ) -> Tensor:
        """Stage 2 on the CPU when no ignore band is needed: only the GTs that still need anchors
        (valid, ``M_g < K``; about half of them) get a dense row of predicted IoUs; the others select
        nothing, exactly as on the dense path where their ``rank < need = 0`` keeps nothing. Rows of
        one image are batched (``(1, S, 4) x (1, N, 4)``); the values, the ``topk`` rows and the
        updates of ``comp_iou`` / ``sv`` / ``si`` (in place) equal the dense path's. Returns the
        predicted IoU of every stage-1 positive with its GT (same operations as the dense IoU)."""
        B, G = gt.batch_size, gt.max_boxes
        N, dtype = pboxes.shape[1], pboxes.dtype
        gb = gather_boxes(gt.boxes, gt1.clamp(min=0))  # (B, N, 4) stage-1 GT of each prior
        p1 = aligned_box_iou(gb, pboxes).nan_to_num_(nan=0.0).clamp_(0.0, 1.0)  # = the dense IoU values
        pos1_piou = p1.mul_(pos1.to(dtype))  # finite in [0, 1]: 0 off the stage-1 positives
        need = (self.k - m).clamp(min=0)  # (B, G)
        active = gt.mask & (need > 0)  # (B, G)
        counts = active.sum(dim=1).tolist()  # host sync: CPU path
        ids = torch.nonzero(active.reshape(-1))[:, 0]  # flat b * G + g, image by image
        rank = torch.arange(kc, device=pboxes.device)
        rows = max(1, min(self.max_pairs, CACHE_PAIRS) // max(N, 1))
        sv3, si3 = sv.view(B, G, kc), si.view(B, G, kc)
        # (image x GT) blocks: one image's active GTs (split under the budget); blocks without an
        # active GT cost nothing
        start = 0
        blocks = []
        for b, c in enumerate(counts):
            blocks += [(b, ids[s0 : min(s0 + rows, start + c)] % G) for s0 in range(start, start + c, rows)]
            start += c
        for b, g in blocks:
            piou = batched_box_iou(gt.boxes[b, g][None], pboxes[b : b + 1])[0]  # (S, N)
            piou = piou.nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
            score = torch.nn.functional.threshold_(piou, thr, -1.0)
            torch.minimum(score, cap[b], out=score)
            vals, idx = score.topk(kc, dim=1)  # (S, kc)
            keep = (vals >= self.t2) & (rank < need[b, g][:, None])
            v = torch.where(keep, vals, -1.0)
            comp_iou[b].scatter_reduce_(0, idx.view(-1), v.view(-1), reduce="amax")
            sv3[b, g] = v
            si3[b, g] = idx
        return pos1_piou
