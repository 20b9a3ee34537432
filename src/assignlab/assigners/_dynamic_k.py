"""Shared machinery of the prediction-aware "dynamic" assigners (SimOTA, DSL, TAL).

Nothing here is an assigner. These are the batched building blocks that SimOTA
(:mod:`.simota`), the dynamic soft-label assigner (:mod:`.dsl`) and the task-aligned
assigner (:mod:`.tal`) share:

* :func:`pairwise_iou` / :func:`aligned_iou`: IoU of GT boxes with predicted boxes, with
  mmdetection's ``BboxOverlaps2D`` formula (``inter / max(union, eps)``), so values are
  bit-identical to mmdet's and finite for zero-area boxes.
* :func:`dynamic_k_select`: OTA's "dynamic k" selection for a chunk of GTs, vectorised: each GT
  takes its ``k_g = max(1, int(sum of its top-q candidate IoUs))`` lowest-cost candidates, done
  with ONE ``topk(q)`` over the cost and a per-GT rank mask ``rank < k_g`` (``k_g <= q`` always,
  because IoUs are at most 1).
* :class:`DynamicKResolver`: a running reduction over GT chunks that resolves priors chosen by
  several GTs the way mmdetection / YOLOX do (the GT of lowest cost over *all* GTs), so chunked and
  unchunked runs give identical results.

Shapes: ``B`` images, ``g`` GTs in the current chunk, ``N`` priors.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "DynamicKResolver",
    "aligned_iou",
    "dynamic_k_select",
    "gather_class_columns",
    "pairwise_iou",
    "prepare_scores",
]

MMDET_IOU_EPS = 1e-6  # BboxOverlaps2D default


def pairwise_iou(gt_boxes: Tensor, pred_boxes: Tensor, eps: float = MMDET_IOU_EPS) -> Tensor:
    """IoU of every GT with every predicted box of the same image: ``(B, g, 4) x (B, N, 4) -> (B, g, N)``.

    mmdetection's ``bbox_overlaps`` order of operations (union clamped at ``eps``), so the values
    are bit-identical to mmdet's ``BboxOverlaps2D`` and 0 (not NaN) for two zero-area boxes.

    Example::

        gt   [[[0, 0, 10, 10]]]                        (1, 1, 4)
        pred [[[0, 0, 10, 10], [5, 0, 15, 10], [3, 3, 3, 3]]]
        ->   [[[1.0000, 0.3333, 0.0000]]]
    """
    lt = torch.maximum(gt_boxes[:, :, None, :2], pred_boxes[:, None, :, :2])
    rb = torch.minimum(gt_boxes[:, :, None, 2:], pred_boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_g = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])
    area_p = (pred_boxes[..., 2] - pred_boxes[..., 0]) * (pred_boxes[..., 3] - pred_boxes[..., 1])
    union = area_p[:, None, :] + area_g[:, :, None] - inter
    return inter / union.clamp(min=eps)


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


def gather_class_columns(table: Tensor, labels: Tensor) -> Tensor:
    """``table`` ``(B, C, N)`` (class-major), ``labels`` ``(B, g)`` -> ``(B, g, N)`` with
    ``out[b, j, n] = table[b, labels[b, j], n]``."""
    B, C, N = table.shape
    idx = labels.clamp(0, max(C - 1, 0))[:, :, None].expand(B, labels.shape[1], N)
    return torch.gather(table, 1, idx)


def dynamic_k_select(cost: Tensor, ious: Tensor, candidates: Tensor, gt_valid: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """OTA dynamic-k selection for a chunk of GTs, without a loop over GTs.

    Args:
        cost: ``(B, g, N)`` matching cost (lower is better).
        ious: ``(B, g, N)`` IoU of each prior's predicted box with each GT.
        candidates: ``(B, N)`` bool, the priors allowed to match at all (mmdet's ``valid_mask``).
        gt_valid: ``(B, g)`` bool, real GT rows.
        q: how many top IoUs are summed to get ``k`` (mmdet ``candidate_topk`` / ``topk``).

    Returns:
        ``(selected, k)``: ``selected`` ``(B, g, N)`` bool, GT ``j`` chose prior ``n``; ``k``
        ``(B, g)`` long, the dynamic k of each GT (0 on padded rows).

    Worked example (one GT, q = 3): candidate IoUs ``[0.9, 0.8, 0.7, 0.1]`` -> top-3 sum 2.4 ->
    ``k = max(1, int(2.4)) = 2``; the GT takes the 2 candidates of lowest cost. Because every IoU
    is at most 1, ``k <= min(q, number of candidates)``, so one ``topk(q)`` of the cost followed
    by the mask ``rank < k`` selects exactly the ``k`` cheapest candidates of every GT at once.
    """
    B, g, N = cost.shape
    qq = min(int(q), N)
    cand = candidates[:, None, :]
    iou_c = torch.where(cand, ious, torch.zeros((), dtype=ious.dtype, device=ious.device))
    top_iou = iou_c.topk(qq, dim=-1).values  # (B, g, qq), sorted descending
    # sequential sum in descending order (as mmdet's topk(...).sum(0) over the k rows)
    s = top_iou[..., 0]
    for j in range(1, qq):
        s = s + top_iou[..., j]
    k = s.to(torch.int32).clamp(min=1).long()
    has_cand = candidates.any(dim=1, keepdim=True)  # (B, 1)
    k = torch.where(gt_valid & has_cand, k, torch.zeros_like(k))
    inf = torch.full((), float("inf"), dtype=cost.dtype, device=cost.device)
    cost_c = torch.where(cand, cost, inf)
    idx = cost_c.topk(qq, dim=-1, largest=False).indices  # (B, g, qq), cheapest first
    rank_ok = torch.arange(qq, device=cost.device)[None, None, :] < k[..., None]
    selected = torch.zeros(B, g, N, dtype=torch.bool, device=cost.device)
    selected.scatter_(-1, idx, rank_ok)
    selected &= cand
    return selected, k


class DynamicKResolver:
    """Running reduction over GT chunks: how many GTs chose each prior, which one (when only one
    did), and the GT of lowest cost over all real GTs (used when several did).

    Ties in cost go to the lowest GT index (``torch.min`` returns the first minimum and a later
    chunk only wins when strictly cheaper), as in mmdetection.
    """

    def __init__(self, batch_size: int, num_priors: int, dtype: torch.dtype, device: torch.device) -> None:
        self.count = torch.zeros(batch_size, num_priors, dtype=torch.long, device=device)
        self.chooser = torch.full((batch_size, num_priors), -1, dtype=torch.long, device=device)
        self.best_cost = torch.full((batch_size, num_priors), float("inf"), dtype=dtype, device=device)
        self.best_gt = torch.full((batch_size, num_priors), -1, dtype=torch.long, device=device)

    def update(self, selected: Tensor, cost: Tensor, gt_valid: Tensor, start: int) -> None:
        """Fold in one chunk: ``selected``/``cost`` ``(B, g, N)``, ``gt_valid`` ``(B, g)``, rows
        ``start .. start + g`` of the padded GT tensor."""
        g = selected.shape[1]
        if g == 0:
            return
        self.count += selected.sum(dim=1)
        rows = torch.arange(start, start + g, device=selected.device)[None, :, None]
        who = torch.where(selected, rows, torch.full((), -1, dtype=torch.long, device=selected.device)).amax(dim=1)
        self.chooser = torch.maximum(self.chooser, who)
        inf = torch.full((), float("inf"), dtype=cost.dtype, device=cost.device)
        c = torch.where(gt_valid[:, :, None], cost, inf)
        cmin, carg = c.min(dim=1)
        better = cmin < self.best_cost
        self.best_cost = torch.where(better, cmin, self.best_cost)
        self.best_gt = torch.where(better, carg + start, self.best_gt)

    def gt_index(self) -> Tensor:
        """``(B, N)`` final GT of each prior, -1 where no GT chose it."""
        neg = torch.full_like(self.chooser, -1)
        return torch.where(self.count > 1, self.best_gt, torch.where(self.count == 1, self.chooser, neg))
