"""Noisy-anchor assignment: soft labels and re-weighting from a cleanliness score.

Li, Wu, Zhu, Xiong, Socher, Davis, "Learning from Noisy Anchors for One-stage Object Detection",
CVPR 2020 (Sec. 3.1 "Cleanliness score", Sec. 3.2 "Re-weighting").

The paper argues that hard IoU thresholds make many anchors *noisy* labels: an anchor just above
the threshold may cover the object badly after regression, one just below may cover it well. So
each GT gets a generous **candidate bag**, its top ``n`` priors by anchor IoU (``n = 50``), and
every candidate is a positive whose targets are softened and whose losses are re-weighted by how
"clean" it currently is. A prior in several bags goes to the GT with the higher anchor IoU (ties
to the lower GT index); a prior in no bag is a negative. Only priors that actually overlap the GT
(anchor IoU > 0) enter a bag, so a tiny GT does not recruit far-away priors to fill ``n`` slots.

**Cleanliness (soft label)**, for candidate ``a`` of GT ``g`` with class ``y``::

    c = alpha * IoU(pred_box_a, g) + (1 - alpha) * p_a(y)                      (Eq. 2)

with ``p_a(y)`` the predicted probability of the GT's class. ``c`` in [0, 1] is the
classification target (:attr:`Assignment.quality`); negatives keep target 0.

**Re-weighting**, emphasising candidates that are already good (Eq. 4)::

    r = (alpha * f(IoU(pred_box_a, g)) + (1 - alpha) * f(p_a(y))) ** gamma,   f(x) = 1 / (1 - x)

``f`` is infinite at ``x = 1``; inputs are clamped to ``x <= 1 - eps`` (``eps = 1e-6`` by default,
so ``f <= 1e6``). The weights are then normalised over the whole batch so that the positives'
weights **average 1** (the sum of the loss weights equals the number of positives, as in the
paper), and used both as ``box_weight`` and as ``cls_weight`` on the positives (negatives keep
``cls_weight`` 1). The normalisation is done in log space, so a large ``gamma`` cannot overflow.

Worked example (``alpha=0.75, gamma=1``), two positives in a batch::

    candidate   pred IoU   p(y)   c = .75 IoU + .25 p        r = .75/(1-IoU) + .25/(1-p)
    a           0.80       0.60   0.60 + 0.15   = 0.750       3.75  + 0.625 = 4.375
    b           0.40       0.20   0.30 + 0.05   = 0.350       1.25  + 0.3125 = 1.5625
    mean r = 2.96875  ->  weights a 1.4737, b 0.5263 (average 1)
    quality (soft cls target): a 0.750, b 0.350

Extras (all ``(B, N)``): ``"overlaps"`` predicted-box IoU of each positive with its GT,
``"anchor_iou"`` anchor IoU of each positive with its GT, ``"scores"`` ``p(y)`` of each positive
(0 elsewhere).

Anchor-free priors are ranked with ``priors.boxes(square_scale)`` squares.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors
from ..core.boxes import aligned_box_iou, batched_box_iou, valid_box_mask
from ..core.chunking import CACHE_PAIRS, image_gt_chunks
from ._grid import gather_boxes, iou_runs, level_layouts, plan_windows, use_windows, window_iou, window_prior_index
from .base import Assigner, check_gt_labels, check_predictions, positive, positive_int, unit_interval

__all__ = ["NoisyAnchorAssigner"]


def _sanitize_pred_boxes(pred_boxes: Tensor, dtype: torch.dtype) -> Tensor:
    """NaN/inf -> 0 and inverted boxes collapsed to zero size, so IoUs with a real GT are finite."""
    pb = torch.nan_to_num(pred_boxes.detach().to(dtype), nan=0.0, posinf=0.0, neginf=0.0)
    lo = pb[..., :2]
    return torch.cat([lo, torch.maximum(pb[..., 2:], lo)], dim=-1)


class NoisyAnchorAssigner(Assigner):
    """Candidate bags + cleanliness soft labels + re-weighting (see module docstring).

    Args:
        n: candidate bag size per GT (top-``n`` priors by anchor IoU); positive integer.
        alpha: weight of localisation vs. classification in [0, 1] (paper: 0.75).
        gamma: exponent of the re-weighting, >= 0 (paper: 1; 0 gives uniform weights).
        eps: ``f`` inputs are clamped to ``<= 1 - eps``, in (0, 1).
        square_scale: side of the square prior boxes of anchor-free priors, in strides.
        max_pairs: memory budget (prior x GT pairs per intermediate tensor).

    Call: ``assigner(priors, gt, pred_boxes=(B, N, 4), pred_scores=(B, N, C))`` with
    ``pred_scores`` class *probabilities* (after sigmoid / softmax).

    Raises:
        ValueError: a bad parameter (named); missing / mis-shaped predictions; a valid GT label
            outside ``[0, C)``.
    """

    requires_predictions = True

    def __init__(
        self,
        n: int = 50,
        alpha: float = 0.75,
        gamma: float = 1.0,
        eps: float = 1e-6,
        square_scale: float = 8.0,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        positive_int("n", n)
        unit_interval("alpha", alpha, closed_low=True)
        if not float(gamma) >= 0.0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        unit_interval("eps", eps, closed_high=False)
        positive("square_scale", square_scale)
        super().__init__(max_pairs)
        self.n = int(n)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.square_scale = float(square_scale)
        # tests: True forces the dense (b, g, N) path on the CPU, False the window path; None picks
        # by size (a single image of ~100 GTs is faster dense: fewer operations)
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
        C = int(pred_scores.shape[-1])
        device, dtype = gt.boxes.device, gt.boxes.dtype
        if G == 0 or N == 0:
            res = Assignment.empty(B, N, device=device)
            z = torch.zeros(B, N, dtype=torch.float32, device=device)
            return res.replace(extras={"overlaps": z, "anchor_iou": z.clone(), "scores": z.clone()})
        check_gt_labels(gt, C, f"NoisyAnchorAssigner: GT labels must be in [0, {C}) (C from pred_scores)")
        anchors = priors.boxes(self.square_scale).to(dtype)  # (N, 4)

        # ---- candidate bags: top-n priors of each GT by anchor IoU, collisions to higher IoU ----
        # Collisions only involve the (B, g, kn) bag entries: running amax of the IoU per prior over
        # the chunks, then the lowest GT index among the entries that reach it.
        kn = min(self.n, N)
        best_iou = torch.full((B, N), -1.0, dtype=dtype, device=device)
        bv = torch.full((B, G * kn), -1.0, dtype=dtype, device=device)  # bag anchor IoU (-1 = out), GT-major
        bi = torch.zeros(B, G * kn, dtype=torch.long, device=device)  # bag prior
        dense = self._dense if self._dense is not None else B * G * N <= CACHE_PAIRS
        if dense or not self._bags_windows(priors, gt, anchors, kn, best_iou, bv, bi):
            self._bags_dense(gt, anchors, kn, best_iou, bv, bi)
        bg = torch.arange(G, device=device).repeat_interleave(kn).expand(B, G * kn)
        win = (bv > 0) & (bv == best_iou.gather(1, bi))
        best_gt = torch.full((B, N), G, dtype=torch.long, device=device)
        best_gt.scatter_reduce_(1, bi, torch.where(win, bg, G), reduce="amin", include_self=True)
        best_gt = torch.where(best_gt < G, best_gt, -1)
        gt_index = best_gt  # -1 where the prior is in no bag
        positive = gt_index >= 0
        gi = gt_index.clamp(min=0)

        # ---- cleanliness from the current predictions (B, N) ----------------------------------
        gboxes = gather_boxes(gt.boxes, gi)  # (B, N, 4)
        piou = aligned_box_iou(_sanitize_pred_boxes(pred_boxes, dtype), gboxes)
        piou = torch.where(positive, torch.nan_to_num(piou, nan=0.0).clamp(0.0, 1.0), 0.0)
        labels = torch.gather(gt.labels, 1, gi).clamp(0, C - 1)  # (B, N); padded rows may hold anything
        prob = pred_scores.detach().to(dtype).gather(2, labels[..., None])[..., 0]
        prob = torch.where(positive, torch.nan_to_num(prob, nan=0.0).clamp(0.0, 1.0), 0.0)
        a = self.alpha
        clean = a * piou + (1.0 - a) * prob  # (B, N) in [0, 1]

        # ---- re-weighting, normalised to mean 1 over the batch's positives ---------------------
        hi = 1.0 - self.eps
        base = a / (1.0 - piou.clamp(max=hi)) + (1.0 - a) / (1.0 - prob.clamp(max=hi))  # >= 1
        logr = self.gamma * torch.log(base)
        mx = torch.where(positive, logr, float("-inf")).max()
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        e = torch.where(positive, torch.exp(logr - mx), 0.0)  # max is exactly 1 on a positive
        count = positive.sum().to(dtype)
        weight = e * (count / e.sum().clamp(min=1.0))

        return Assignment.from_gt_index(
            gt_index,
            quality=clean.clamp(0.0, 1.0),
            box_weight=weight,
            cls_weight=torch.where(positive, weight, 1.0),
            extras={
                "overlaps": piou.float(),
                "anchor_iou": torch.where(positive, best_iou, 0.0).float(),
                "scores": prob.float(),
            },
        )

    def _bags_dense(self, gt: GroundTruth, anchors: Tensor, kn: int, best_iou: Tensor, bv: Tensor, bi: Tensor) -> None:
        """Candidate bags from dense ``(b, g, N)`` anchor IoUs, in place into ``best_iou`` ``(B, N)``
        (running amax of the bag IoUs), ``bv`` / ``bi`` ``(B, G * kn)`` (bag IoU or -1, prior)."""
        B, G, N = gt.batch_size, gt.max_boxes, anchors.shape[0]
        dtype = anchors.dtype
        # padded rows: a zero box (IoU 0, never NaN), then -1 through ``minimum`` with a per-GT cap
        # (torch.where / masked_fill are ~20x slower than minimum on the CPU)
        boxes = torch.where(gt.mask[..., None], gt.boxes.to(dtype), 0.0)
        cap = torch.where(gt.mask, float("inf"), -1.0).to(dtype)[..., None]  # (B, G, 1)
        # chunks of (images x GTs) small enough to stay in the cache: a whole (B, G, N) chunk streams
        # every pass from memory and was slower than a loop over images
        for bs, gs in image_gt_chunks(B, G, N, min(self.max_pairs, CACHE_PAIRS)):
            b, g = bs.stop - bs.start, gs.stop - gs.start
            iou = batched_box_iou(boxes[bs, gs], anchors)  # (b, g, N)
            torch.minimum(iou, cap[bs, gs], out=iou)
            vals, idx = iou.topk(kn, dim=2)  # (b, g, kn)
            v = torch.where(vals > 0, vals, -1.0).view(b, g * kn)
            best_iou[bs].scatter_reduce_(1, idx.view(b, g * kn), v, reduce="amax", include_self=True)
            bv[bs, gs.start * kn : gs.stop * kn] = v
            bi[bs, gs.start * kn : gs.stop * kn] = idx.view(b, g * kn)

    def _bags_windows(
        self, priors: Priors, gt: GroundTruth, anchors: Tensor, kn: int, best_iou: Tensor, bv: Tensor, bi: Tensor
    ) -> bool:
        """Same bags on the CPU without the dense IoU: each GT's row of anchor IoUs is rebuilt from its
        windows of overlapping priors (see ``_grid``; the values are bit-identical, every other prior
        has IoU exactly 0) scattered into zeros, then ``topk`` runs on that row exactly as on the dense
        one, so ties at the bag boundary (common: a small GT inside many equal squares) resolve the
        same way. GTs without a window keep the empty bag (-1), as their all-zero dense row gives.
        Returns False when the window path does not apply (not CPU / float32, no grid, or a masked-in
        GT box that is not finite with positive size)."""
        layouts = level_layouts(priors)
        if not use_windows(layouts, anchors.device, anchors.dtype):
            return False
        boxes = gt.boxes
        if bool((gt.mask & ~valid_box_mask(boxes)).any()):
            return False
        runs = iou_runs(anchors, layouts, boxes)
        if runs is None:
            return False
        B, G, N = gt.batch_size, gt.max_boxes, anchors.shape[0]
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        rows_per_chunk = max(1, min(self.max_pairs, CACHE_PAIRS) // N)
        row = torch.empty(rows_per_chunk * N, dtype=anchors.dtype, device=anchors.device)
        bv3, bi3 = bv.view(B, G, kn), bi.view(B, G, kn)
        flat_best = best_iou.view(-1)
        for big in plan_windows(runs, layouts, gt.mask, min(self.max_pairs, CACHE_PAIRS)):
            for s0 in range(0, big.image.shape[0], rows_per_chunk):
                ch = big.part(slice(s0, s0 + rows_per_chunk))
                S = ch.image.shape[0]
                dense = row[: S * N].view(S, N).zero_()
                gb, ga = boxes[ch.image, ch.gt], area[ch.image, ch.gt]
                for lv, lay in enumerate(layouts):
                    if 0 in ch.sizes[lv]:
                        continue
                    iou = window_iou(anchors, lay, ch, lv, gb, ga)  # (S, K)
                    local = window_prior_index(lay, ch, lv, N).sub_((ch.image * N)[:, None])  # prior in image
                    dense.scatter_(1, local, iou)
                vals, idx = dense.topk(kn, dim=1)  # (S, kn)
                v = torch.where(vals > 0, vals, -1.0)
                flat_best.scatter_reduce_(0, (idx + (ch.image * N)[:, None]).view(-1), v.view(-1), reduce="amax")
                bv3[ch.image, ch.gt] = v
                bi3[ch.image, ch.gt] = idx
        return True
