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
from ._dynamic_k import gather_class_columns, pairwise_iou, prepare_scores
from .base import Assigner, check_predictions

__all__ = ["TaskAlignedAssigner", "pairwise_ciou"]

_FLAVOURS = ("mmdet", "ultralytics")


def pairwise_ciou(gt_boxes: Tensor, pred_boxes: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al., AAAI 2020) of every GT with every predicted box of the same image,
    ``(B, g, 4) x (B, N, 4) -> (B, g, N)``, with ultralytics' ``bbox_iou(..., CIoU=True)``
    formula and epsilons (heights get ``+eps``, union ``+eps``, squared diagonal ``+eps``)."""
    gx1, gy1, gx2, gy2 = (gt_boxes[..., i, None] for i in range(4))  # (B, g, 1)
    px1, py1, px2, py2 = (pred_boxes[:, None, :, i] for i in range(4))  # (B, 1, N)
    w1, h1 = gx2 - gx1, gy2 - gy1 + eps
    w2, h2 = px2 - px1, py2 - py1 + eps
    inter = (torch.minimum(gx2, px2) - torch.maximum(gx1, px1)).clamp_(0) * (
        torch.minimum(gy2, py2) - torch.maximum(gy1, py1)
    ).clamp_(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    del union
    cw = torch.maximum(gx2, px2) - torch.minimum(gx1, px1)
    ch = torch.maximum(gy2, py2) - torch.minimum(gy1, py1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    del cw, ch
    rho2 = ((px1 + px2 - gx1 - gx2).pow(2) + (py1 + py2 - gy1 - gy2).pow(2)) / 4
    # atan of the aspect ratios is per box, computed once and broadcast
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class TaskAlignedAssigner(Assigner):
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
        if int(topk) != topk or topk < 1:
            raise ValueError(f"topk must be a positive integer, got {topk}")
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
        if scores_are not in ("probabilities", "logits"):
            raise ValueError(f"scores_are must be 'probabilities' or 'logits', got {scores_are!r}")
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
    def _inside(self, priors: Priors, boxes: Tensor, gmask: Tensor) -> Tensor:
        """``(B, g, N)`` prior centre inside the GT (flavour's rule), False on padded rows."""
        px, py = priors.points[:, 0].to(boxes.dtype), priors.points[:, 1].to(boxes.dtype)
        if self.flavour == "mmdet":
            thr = 0.01
        else:
            thr = 1e-9
            if self.small_box_side is not None:
                cx = (boxes[..., 0] + boxes[..., 2]) / 2
                cy = (boxes[..., 1] + boxes[..., 3]) / 2
                wh = boxes[..., 2:] - boxes[..., :2]
                side = torch.full((), self.small_box_side, dtype=boxes.dtype, device=boxes.device)
                wh = torch.where((wh < self.small_box_side) & gmask[..., None], side, wh)
                half = wh / 2
                boxes = torch.stack([cx - half[..., 0], cy - half[..., 1], cx + half[..., 0], cy + half[..., 1]], -1)
        x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
        dmin = torch.minimum(torch.minimum(px - x1, py - y1), torch.minimum(x2 - px, y2 - py))
        return (dmin > thr) & gmask[:, :, None]

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
        check_predictions(priors, gt, pred_boxes, pred_scores, type(self).__name__)
        B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
        device = gt.device
        probs, _ = prepare_scores(pred_scores, self.scores_are)
        dtype = probs.dtype if probs.dtype == torch.float64 else torch.float32
        probs = probs.to(dtype)
        C = probs.shape[-1]
        boxes_p = pred_boxes.detach().to(dtype)
        gt_boxes = gt.boxes.to(dtype)
        if G and bool(((gt.labels < 0) | (gt.labels >= C))[gt.mask].any()):
            raise ValueError(f"TaskAlignedAssigner: a GT label is outside [0, {C}) (pred_scores has {C} classes)")
        zeros_bn = torch.zeros(B, N, dtype=dtype, device=device)
        if G == 0 or N == 0:
            return Assignment.empty(B, N, device=device).replace(extras={"metrics": zeros_bn, "overlaps": zeros_bn})
        prob_t = probs.transpose(1, 2).contiguous()  # (B, C, N)
        k = min(self.topk, N)
        ultra = self.flavour == "ultralytics"

        neg_inf = torch.full((), float("-inf"), dtype=dtype, device=device)
        # running state over GT chunks
        count = torch.zeros(B, N, dtype=torch.long, device=device)  # ultralytics: claims per prior
        chooser = torch.full((B, N), -1, dtype=torch.long, device=device)
        chooser_t = zeros_bn.clone()
        chooser_u = zeros_bn.clone()
        best_u = torch.full((B, N), float("-inf"), dtype=dtype, device=device)
        best_gt = torch.full((B, N), -1, dtype=torch.long, device=device)
        best_t = zeros_bn.clone()

        for sl in gt_chunks(B, G, N, self.max_pairs):
            gmask = gt.mask[:, sl]
            boxes = gt_boxes[:, sl]
            g = boxes.shape[1]
            inside = self._inside(priors, boxes, gmask)
            s = gather_class_columns(prob_t, gt.labels[:, sl])
            if ultra:
                u = torch.where(inside, pairwise_ciou(boxes, boxes_p).clamp_(0), 0.0)
                s = torch.where(inside, s, 0.0)
            else:
                u = pairwise_iou(boxes, boxes_p)
            t = s.pow(self.alpha) * u.pow(self.beta)
            if ultra:
                # top-k among the in-box priors (ranked before every out-of-box prior)
                top_idx = torch.where(inside, t, -1.0).topk(k, dim=-1).indices
                claimed = torch.zeros_like(inside).scatter_(-1, top_idx, True) & inside
                rows = torch.arange(sl.start, sl.start + g, device=device)[None, :, None]
                count += claimed.sum(dim=1)
                any_c = claimed.any(dim=1)
                who = torch.where(claimed, rows, -1).amax(dim=1)
                j = (who - sl.start).clamp(min=0)[:, None, :]
                chooser = torch.where(any_c, who, chooser)
                chooser_t = torch.where(any_c, t.gather(1, j)[:, 0], chooser_t)
                chooser_u = torch.where(any_c, u.gather(1, j)[:, 0], chooser_u)
                # highest overlap over ALL real GT rows (ultralytics' overlaps.argmax(1))
                cand_u = torch.where(gmask[:, :, None], u, -1.0)
            else:
                top_t, top_idx = t.topk(k, dim=-1)
                ok = (top_t > 0) & inside.gather(-1, top_idx)
                claimed = torch.zeros_like(inside).scatter_(-1, top_idx, ok)
                # highest IoU among the claiming GTs
                cand_u = torch.where(claimed, u, neg_inf)
            umax, uarg = cand_u.max(dim=1)
            better = umax > best_u
            best_u = torch.where(better, umax, best_u)
            best_gt = torch.where(better, uarg + sl.start, best_gt)
            best_t = torch.where(better, t.gather(1, uarg[:, None])[:, 0], best_t)
            del inside, s, u, t, claimed, cand_u

        if ultra:
            multi = count > 1
            gt_index = torch.where(multi, best_gt, torch.where(count == 1, chooser, -1))
            t_a = torch.where(multi, best_t, chooser_t)
            u_a = torch.where(multi, best_u, chooser_u)
        else:
            gt_index = torch.where(best_u > neg_inf, best_gt, -1)
            t_a, u_a = best_t, best_u
        positive = gt_index >= 0
        t_a = torch.where(positive, t_a, zeros_bn)
        u_a = torch.where(positive, u_a, zeros_bn)

        # per-GT maxima over the final positives, then the normalised metric t_hat
        flat = (torch.arange(B, device=device)[:, None] * G + gt_index.clamp(min=0)).reshape(-1)
        w = positive.reshape(-1)
        max_t = torch.zeros(B * G, dtype=dtype, device=device).scatter_reduce(
            0, flat, torch.where(w, t_a.reshape(-1), 0.0), reduce="amax"
        )
        max_u = torch.zeros(B * G, dtype=dtype, device=device).scatter_reduce(
            0, flat, torch.where(w, u_a.reshape(-1), 0.0), reduce="amax"
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
