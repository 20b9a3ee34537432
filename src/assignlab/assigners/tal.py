"""Task-aligned assignment (TOOD / YOLOv8).

Feng, Zhong, Gao, Scott, Huang, "TOOD: Task-aligned One-stage Object Detection", ICCV 2021,
Sec. 3.2.1, eq. (1)-(2). Every (GT, prior) pair gets the *alignment metric*

    t = s ** alpha * u ** beta                                                           (eq. 1)

with ``s`` the predicted score of the GT's class at the prior and ``u`` the overlap of the prior's
predicted box with the GT. Each GT takes its ``topk`` priors of largest ``t`` whose centre lies
inside the GT; a prior taken by several GTs keeps the one of highest overlap. The classification
target of a positive is the *normalised* metric (eq. 2)::

    t_hat = t / max_{positives of g}(t) * max_{positives of g}(u)

so the best-aligned prior of each GT is trained toward that GT's best overlap and the others
proportionally less.

Two flavours:

=======================  =====================================  ======================================
                         ``flavour="mmdet"`` (TOOD)             ``flavour="ultralytics"`` (YOLOv8)
=======================  =====================================  ======================================
reference                mmdetection 3.3.0 ``TaskAlignedAssigner``  ultralytics 8.4.x ``TaskAlignedAssigner``
defaults                 topk 13, alpha 1, beta 6               topk 10, alpha 0.5, beta 6
overlap ``u``            IoU                                    CIoU clamped at 0
top-k over               all priors (``t > 0`` required),       the in-box priors only
                         then centre-inside-GT filter
centre inside GT         by more than 0.01 px                   by more than 1e-9 px, GT sides
                                                                < ``small_box_side`` (16 px) first
                                                                enlarged to it about the GT centre
several GTs claim        highest IoU among the claiming GTs     highest overlap among *all* GTs
                                                                (possibly one that did not claim it)
normalisation            ``t / (max t + 1e-7) * max u``         ``t * max u / (max t + 1e-9)``
=======================  =====================================  ======================================

:meth:`TaskAlignedAssigner.ultralytics` builds the YOLOv8 configuration.

Worked example of the small-box floor (ultralytics): a 4 x 4 GT centred on (100, 100) is tested as
``[92, 108]^2``; with ``>`` strict, a stride-8 prior at (100, 100) is inside, one at (92, 100) is
not. Without the floor a GT smaller than a stride can contain no prior centre and would never get
a positive. In the ultralytics flavour a GT with fewer than ``topk`` in-box priors takes all of
them (ultralytics' ``topk`` picks zero-metric priors in arbitrary order, and only the in-box ones
survive; we rank in-box priors first, so the result does not depend on tie order).

Example tensors (one GT, mmdet flavour, alpha=1, beta=6, topk=2)::

    scores s  [0.9, 0.8, 0.5]      IoU u [0.8, 0.9, 0.3]
    t = s*u^6 [0.2359, 0.4251, 0.0004] -> top-2 = priors 1, 0 (both centred in the GT)
    t_hat     [0.9*0.2359/0.4251, 0.9, 0] = [0.4995, 0.9000, 0]

Outputs: ``quality`` = ``t_hat`` (the soft classification target of both references) and
``box_weight`` = ``t_hat`` (TOOD and YOLOv8 weight the box loss of a positive by it);
``extras["metrics"]`` = ``t`` of the assigned pair (mmdet's ``assign_metrics``), 0 elsewhere;
``extras["overlaps"]`` = ``u`` of the assigned pair (IoU or clamped CIoU), 0 elsewhere. Ignore
regions are not used. Batched over images and GT chunks under ``max_pairs``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import DEFAULT_MAX_PAIRS, Assignment, GroundTruth, Priors, gt_chunks
from ._dynamic_k import (
    Scratch,
    ScratchOwner,
    class_rows,
    pairwise_iou,
    points_inside,
    prepare_predictions,
    scratch_for,
)
from .base import Assigner, check_scores_are, positive_int

__all__ = ["TaskAlignedAssigner", "pairwise_ciou"]

_FLAVOURS = ("mmdet", "ultralytics")


def pairwise_ciou(gt_boxes: Tensor, pred_boxes: Tensor, eps: float = 1e-7, scratch: Scratch | None = None) -> Tensor:
    """Complete IoU (Zheng et al., AAAI 2020) of every GT with every predicted box of the same image,
    ``(B, g, 4) x (B, N, 4) -> (B, g, N)``, with ultralytics' ``bbox_iou(..., CIoU=True)``
    formula, epsilons and order of operations (heights ``+eps``, union ``+eps``, squared
    diagonal ``+eps``)::

        CIoU = IoU - (rho^2 / c^2 + v * alpha),   v = 4 / pi^2 * (atan(w2 / h2) - atan(w1 / h1))^2,
        alpha = v / (v - IoU + 1 + eps)

    with ``rho`` the distance of the centres and ``c`` the diagonal of the enclosing box. Works in
    place in five ``(B, g, N)`` buffers of ``scratch`` (named ``c0`` .. ``c4``) when given.
    Example: identical boxes give 1; a box and its copy shifted by its own width give
    ``0 - (w^2 / (4 w^2 + h^2))``.
    """
    B, g = gt_boxes.shape[:2]
    N = pred_boxes.shape[1]
    bufs = [scratch.get(f"c{i}", g) if scratch is not None else
            torch.empty(B, g, N, dtype=pred_boxes.dtype, device=pred_boxes.device) for i in range(5)]
    A, T, C2, D, E = bufs
    # contiguous coordinate planes: strided (x4) operands would defeat vectorisation below
    gx1, gy1, gx2, gy2 = (gt_boxes[..., i].contiguous()[..., None] for i in range(4))  # (B, g, 1)
    px1, py1, px2, py2 = (pred_boxes[..., i].contiguous()[:, None, :] for i in range(4))  # (B, 1, N)
    w1, h1 = gx2 - gx1, gy2 - gy1 + eps
    w2, h2 = px2 - px1, py2 - py1 + eps
    # intersection (A) and union (C2)
    torch.minimum(gx2, px2, out=A).sub_(torch.maximum(gx1, px1, out=T)).clamp_(min=0)
    torch.minimum(gy2, py2, out=T).sub_(torch.maximum(gy1, py1, out=C2)).clamp_(min=0)
    A.mul_(T)
    torch.add(w1 * h1, w2 * h2, out=C2).sub_(A).add_(eps)
    iou = A.div_(C2)
    # squared diagonal of the enclosing box (C2)
    torch.maximum(gx2, px2, out=C2).sub_(torch.minimum(gx1, px1, out=T))
    torch.maximum(gy2, py2, out=D).sub_(torch.minimum(gy1, py1, out=T))
    C2.mul_(C2).add_(D.mul_(D)).add_(eps)
    # squared centre distance (D): ((b2_x1 + b2_x2 - b1_x1 - b1_x2)^2 + (...)^2) / 4
    torch.sub(px1 + px2, gx1, out=D).sub_(gx2)
    torch.sub(py1 + py2, gy1, out=T).sub_(gy2)
    D.mul_(D).add_(T.mul_(T)).div_(4)
    # aspect-ratio term v (T) and its weight alpha (E)
    torch.sub((w2 / h2).atan(), (w1 / h1).atan(), out=T)
    T.mul_(T).mul_(4 / math.pi**2)
    torch.sub(T, iou, out=E).add_(1 + eps)
    torch.div(T, E, out=E)
    return A.sub_(D.div_(C2).add_(E.mul_(T)))


class _ArgBest:
    """Running argmax over GT chunks of the overlap at fixed prior positions ``(B, M)``, over all
    real GT rows (padded rows count as -1); ties go to the lowest GT index (as ``argmax``)."""

    def __init__(self, positions: Tensor, dtype: torch.dtype) -> None:
        B, M = positions.shape
        self.positions = positions
        self.best = torch.full((B, M), float("-inf"), dtype=dtype, device=positions.device)
        self.gt = torch.zeros(B, M, dtype=torch.long, device=positions.device)

    def update(self, u: Tensor, gmask: Tensor, start: int) -> None:
        B, g, _ = u.shape
        if g == 0:
            return
        c = torch.gather(u, 2, self.positions[:, None, :].expand(B, g, -1))  # (B, g, M)
        c.masked_fill_(~gmask[..., None], -1.0)
        cmax, carg = c.max(dim=1)
        better = cmax > self.best
        self.best = torch.where(better, cmax, self.best)
        self.gt = torch.where(better, carg + start, self.gt)

    def per_prior(self, num_priors: int) -> tuple[Tensor, Tensor]:
        """``(gt, overlap)`` ``(B, N)`` at every prior present in ``positions`` (0 elsewhere)."""
        B = self.gt.shape[0]
        gt = torch.zeros(B, num_priors, dtype=torch.long, device=self.gt.device).scatter_(1, self.positions, self.gt)
        val = torch.zeros(B, num_priors, dtype=self.best.dtype, device=self.gt.device)
        return gt, val.scatter_(1, self.positions, self.best)


class TaskAlignedAssigner(ScratchOwner, Assigner):
    """TOOD task-aligned assigner, mmdetection or ultralytics flavour. See the module docstring.

    Args:
        topk: priors taken per GT.
        alpha: exponent of the class score in the metric.
        beta: exponent of the overlap in the metric.
        flavour: ``"mmdet"`` or ``"ultralytics"``.
        eps: epsilon of the normalisation; ``None`` takes the flavour's (1e-7 as in mmdet's TOOD
            head, 1e-9 as in ultralytics).
        small_box_side: ultralytics only: GT sides shorter than this (px) are enlarged to it for
            the centre-inside test (8.4.x: ``stride[1] = 16``); ``None`` disables.
        scores_are: ``"probabilities"`` (both references) or ``"logits"``.
        max_pairs: memory budget (prior x GT pairs per intermediate tensor).
    """

    requires_predictions = True

    def __init__(
        self,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        flavour: str = "mmdet",
        eps: float | None = None,
        small_box_side: float | None = 16.0,
        scores_are: str = "probabilities",
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        super().__init__(max_pairs)
        positive_int("topk", topk)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if flavour not in _FLAVOURS:
            raise ValueError(f"flavour must be one of {_FLAVOURS}, got {flavour!r}")
        if eps is not None and not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if small_box_side is not None and not small_box_side > 0:
            raise ValueError(f"small_box_side must be positive or None, got {small_box_side}")
        check_scores_are(scores_are)
        self.topk = int(topk)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.flavour = flavour
        self.eps = float(eps) if eps is not None else (1e-7 if flavour == "mmdet" else 1e-9)
        self.small_box_side = None if small_box_side is None else float(small_box_side)
        self.scores_are = scores_are

    @classmethod
    def ultralytics(cls, **overrides) -> TaskAlignedAssigner:
        """YOLOv8's configuration (``v8DetectionLoss``): topk 10, alpha 0.5, beta 6, ultralytics flavour."""
        kw = dict(topk=10, alpha=0.5, beta=6.0, flavour="ultralytics")
        kw.update(overrides)
        return cls(**kw)

    # -- geometry -------------------------------------------------------------------------
    def _edges(self, boxes: Tensor, gmask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x1, y1, x2, y2)`` ``(B, g)`` of the in-box test: NaN on padded rows (never inside);
        ultralytics: sides shorter than ``small_box_side`` enlarged to it about the centre, with
        its ``xyxy -> xywh -> xyxy`` round trip."""
        nan = torch.full((), float("nan"), dtype=boxes.dtype, device=boxes.device)
        if self.flavour == "ultralytics" and self.small_box_side is not None:
            cx = (boxes[..., 0] + boxes[..., 2]) / 2
            cy = (boxes[..., 1] + boxes[..., 3]) / 2
            wh = boxes[..., 2:] - boxes[..., :2]
            side = torch.full((), self.small_box_side, dtype=boxes.dtype, device=boxes.device)
            half = torch.where(wh < self.small_box_side, side, wh) / 2
            boxes = torch.stack([cx - half[..., 0], cy - half[..., 1], cx + half[..., 0], cy + half[..., 1]], -1)
        return tuple(torch.where(gmask, boxes[..., i], nan) for i in range(4))  # type: ignore[return-value]

    # -- main -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        priors: Priors,
        gt: GroundTruth,
        pred_boxes: Tensor | None = None,
        pred_scores: Tensor | None = None,
        **unused: Tensor,
    ) -> Assignment:
        probs, boxes_p, gt_boxes = prepare_predictions(
            type(self).__name__, priors, gt, pred_boxes, pred_scores, self.scores_are
        )
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        device, dtype, C = gt.device, probs.dtype, probs.shape[-1]
        zeros_bn = torch.zeros(B, N, dtype=dtype, device=device)
        if G == 0 or N == 0:
            return Assignment.empty(B, N, device=device).replace(extras={"metrics": zeros_bn, "overlaps": zeros_bn})
        ultra = self.flavour == "ultralytics"
        chunks = gt_chunks(B, G, N, self.max_pairs)
        scratch = scratch_for(self, device, B, max(c.stop - c.start for c in chunks), N, dtype)
        single = len(chunks) == 1
        table = probs.transpose(1, 2).contiguous().view(B * C, N)  # (B * C, N) score of each class
        k = min(self.topk, N)
        px, py = priors.points[:, 0].to(dtype), priors.points[:, 1].to(dtype)

        def overlaps_of(sl: slice) -> tuple[Tensor, Tensor]:
            """``(u, inside)``: overlaps ``(B, g, N)`` (ultralytics: clamped CIoU, 0 off the
            in-box pairs) and the in-box mask (ultralytics only, else None)."""
            g = sl.stop - sl.start
            boxes, gmask = gt_boxes[:, sl], gt.mask[:, sl]
            if not ultra:
                return pairwise_iou(boxes, boxes_p, out=scratch.get("u", g), tmp=scratch.get("c0", g),
                                    tmp2=scratch.get("c1", g)), None
            inside = points_inside(priors, *self._edges(boxes, gmask), scratch.get("in", g, torch.bool),
                                   scratch.get("btmp", g, torch.bool), eps=1e-9)
            u = pairwise_ciou(boxes, boxes_p, scratch=scratch).clamp_(min=0)  # lives in buffer "c0"
            u.masked_fill_(torch.logical_not(inside, out=scratch.get("btmp", g, torch.bool)), 0.0)
            return u, inside

        # pass 1: metric, each GT's top-k, running resolution of priors claimed several times
        top_idx = torch.zeros(B, G, k, dtype=torch.long, device=device)
        top_ok = torch.zeros(B, G, k, dtype=torch.bool, device=device)
        top_t = torch.zeros(B, G, k, dtype=dtype, device=device)
        top_u = torch.zeros(B, G, k, dtype=dtype, device=device)
        u_cache = None
        for sl in chunks:
            g = sl.stop - sl.start
            gmask = gt.mask[:, sl]
            u, inside = overlaps_of(sl)
            s = scratch.get("s", g)
            rows = class_rows(gt.labels[:, sl], gmask, C, 0)
            torch.index_select(table, 0, rows, out=s.view(B * g, N))
            if self.alpha != 1.0:
                s.pow_(self.alpha)
            t = torch.pow(u, self.beta, out=scratch.get("t", g)).mul_(s)  # s ** alpha * u ** beta
            if ultra:
                # rank the in-box priors first (their metric >= 0 > -1); in place: only the in-box
                # values are read back below
                t.masked_fill_(torch.logical_not(inside, out=scratch.get("btmp", g, torch.bool)), -1.0)
                idx = t.topk(k, dim=-1).indices
                ok = inside.gather(-1, idx)
            else:
                tv, idx = t.topk(k, dim=-1)
                bx1, by1, bx2, by2 = (gt_boxes[:, sl, i, None] for i in range(4))
                cxs, cys = px[idx], py[idx]  # centres of the top-k priors, (B, g, k)
                dmin = torch.minimum(torch.minimum(cxs - bx1, cys - by1), torch.minimum(bx2 - cxs, by2 - cys))
                ok = (tv > 0) & (dmin > 0.01) & gmask[..., None]
            top_idx[:, sl], top_ok[:, sl] = idx, ok
            top_t[:, sl], top_u[:, sl] = t.gather(-1, idx), u.gather(-1, idx)
            if single and ultra:
                u_cache = u

        flat_idx = top_idx.reshape(B, -1)
        ok = top_ok.reshape(B, -1)
        rows = torch.arange(G, device=device)[None, :, None].expand(B, G, k).reshape(B, -1)
        tt, uu = top_t.reshape(B, -1), top_u.reshape(B, -1)
        if ultra:
            # a prior claimed once keeps its GT; claimed several times: the GT of highest overlap
            # among ALL real GTs (ultralytics' overlaps.argmax over the GT axis)
            count = torch.zeros(B, N, dtype=torch.long, device=device).scatter_add_(1, flat_idx, ok.long())
            chooser = torch.full((B, N), -1, dtype=torch.long, device=device)
            chooser.scatter_reduce_(1, flat_idx, torch.where(ok, rows, -1), reduce="amax")
            best = _ArgBest(flat_idx, dtype)
            for sl in chunks:
                u = u_cache if single else overlaps_of(sl)[0]
                best.update(u, gt.mask[:, sl], sl.start)
            multi = count > 1
            best_gt, best_u = best.per_prior(N)
            gt_index = torch.where(multi, best_gt, chooser)
        else:
            # highest IoU among the claiming GTs (ties: the lowest GT index)
            v = torch.where(ok, uu, float("-inf"))
            bu = torch.full((B, N), float("-inf"), dtype=dtype, device=device)
            bu.scatter_reduce_(1, flat_idx, v, reduce="amax")
            win = ok & (v == bu.gather(1, flat_idx))
            big = torch.full((B, N), G, dtype=torch.long, device=device)
            gt_index = big.scatter_reduce(1, flat_idx, torch.where(win, rows, G), reduce="amin")
            gt_index = torch.where(gt_index < G, gt_index, -1)
        positive = gt_index >= 0

        # metric and overlap of every positive's pair: the (GT, prior) row of the top-k lists
        hit = ok & (rows == gt_index.gather(1, flat_idx))
        neg_inf = torch.full((B, N), float("-inf"), dtype=dtype, device=device)
        t_a = neg_inf.scatter_reduce(1, flat_idx, torch.where(hit, tt, float("-inf")), reduce="amax")
        u_a = neg_inf.scatter_reduce(1, flat_idx, torch.where(hit, uu, float("-inf")), reduce="amax")
        if ultra:
            # a prior moved to a GT that did not pick it: its overlap is the maximum found above,
            # its metric is recomputed from it
            moved = positive & (t_a == float("-inf"))
            # (padded GT rows may hold any label: clamp so that non-positives never index out of range)
            lab = torch.gather(gt.labels, 1, gt_index.clamp(min=0)).clamp(0, probs.shape[2] - 1)
            s_m = torch.gather(probs, 2, lab[..., None])[..., 0]
            t_m = (s_m.pow(self.alpha) if self.alpha != 1.0 else s_m) * best_u.clamp(min=0).pow(self.beta)
            t_a = torch.where(moved, t_m, t_a)
            u_a = torch.where(moved, best_u, u_a)
        t_a = torch.where(positive, t_a, zeros_bn)
        u_a = torch.where(positive, u_a, zeros_bn)

        # per-GT maxima over the final positives, then the normalised metric t_hat
        flat = (torch.arange(B, device=device)[:, None] * G + gt_index.clamp(min=0)).reshape(-1)
        max_t = torch.zeros(B * G, dtype=dtype, device=device).scatter_reduce(
            0, flat, t_a.reshape(-1), reduce="amax"
        )
        max_u = torch.zeros(B * G, dtype=dtype, device=device).scatter_reduce(
            0, flat, u_a.reshape(-1), reduce="amax"
        )
        mt, mu = max_t[flat].view(B, N), max_u[flat].view(B, N)
        if ultra:
            t_hat = t_a * mu / (mt + self.eps)
        else:
            t_hat = t_a / (mt + self.eps) * mu
        t_hat = torch.where(positive, t_hat, zeros_bn)
        return Assignment.from_gt_index(
            gt_index,
            quality=t_hat,
            box_weight=t_hat,
            extras={"metrics": t_a, "overlaps": u_a},
        )
