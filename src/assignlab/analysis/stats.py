"""Assignment statistics: the questions people ask when choosing a strategy.

* Do small GTs get as many positives as large ones? (positives per GT by size bucket)
* How many GTs get no positive at all? (share of GTs with zero positives, per bucket)
* How many cells are claimed by more than one GT? (from the sparse match list when the assigner
  has one, e.g. YOLOv5; a one-to-one assigner resolves such collisions itself, so 0)
* Which level carries which sizes? (positives per level, and per size bucket x level)
* Are the positives of good quality? (distribution of the IoU between each positive's prior box and
  its GT; anchor-free priors use the ``8 * stride`` square, as ATSS / TOOD do)
* How many priors are ignored?

Counts accumulate over batches in a :class:`StatsAccumulator` (tensors only, no per-GT Python loop),
and :meth:`StatsAccumulator.summary` turns them into a plain dict for Markdown / JSON / plots.

Worked example: one image, one 10x10 GT and one 40x40 GT; an assigner that gives the first 2
positives and the second 5 gives ``positives_per_gt = {"8-16": 2.0, "32-64": 5.0}`` and
``zero_positive_share = 0`` in both buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core import Assignment, GroundTruth, Priors
from ..core.boxes import aligned_box_iou

SIZE_EDGES = (8.0, 16.0, 32.0, 64.0, 128.0)
SIZE_NAMES = ("<8", "8-16", "16-32", "32-64", "64-128", ">=128")
IOU_EDGES = tuple(i / 10 for i in range(11))  # histogram bins 0.0-0.1, ..., 0.9-1.0


def size_bucket(boxes: Tensor) -> Tensor:
    """Bucket index (0..5) of ``sqrt(area)`` for ``(..., 4)`` boxes (edges 8/16/32/64/128 px)."""
    side = ((boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)).sqrt()
    edges = torch.tensor(SIZE_EDGES, dtype=side.dtype, device=side.device)
    return torch.bucketize(side, edges, right=True)


def positives_per_gt(res: Assignment, gt: GroundTruth) -> Tensor:
    """``(B, G)`` number of positive samples of each GT. With a sparse match list (YOLOv5) every
    match row counts, duplicates included (that is what the loss sees); otherwise dense positives."""
    B, G = gt.mask.shape
    counts = torch.zeros(B * max(G, 1), dtype=torch.long, device=gt.device)
    if G == 0:
        return counts[:0].view(B, 0)
    if res.matches is not None:
        m = res.matches
        counts.index_add_(0, m.batch * G + m.gt, torch.ones_like(m.gt))
    else:
        b, p = res.positive.nonzero(as_tuple=True)
        counts.index_add_(0, b * G + res.gt_index[b, p], torch.ones_like(b))
    return counts.view(B, G) * gt.mask


def multi_claimed_cells(res: Assignment, num_priors: int) -> Tensor:
    """Number of (image, prior) cells matched to more than one distinct GT (0 without matches)."""
    if res.matches is None or len(res.matches) == 0:
        return torch.zeros((), dtype=torch.long, device=res.gt_index.device)
    m = res.matches
    B = res.gt_index.shape[0]
    G = int(m.gt.max()) + 1
    pair = torch.unique((m.batch * num_priors + m.prior) * G + m.gt)  # distinct (cell, GT)
    cell = pair // G
    _, n = torch.unique(cell, return_counts=True)
    del B
    return (n > 1).sum()


@dataclass
class StatsAccumulator:
    """Running counts over batches (see module docstring)."""

    num_levels: int
    num_gts: Tensor = field(default_factory=lambda: torch.zeros(len(SIZE_NAMES), dtype=torch.long))
    num_pos: Tensor = field(default_factory=lambda: torch.zeros(len(SIZE_NAMES), dtype=torch.long))
    num_zero: Tensor = field(default_factory=lambda: torch.zeros(len(SIZE_NAMES), dtype=torch.long))
    pos_by_level: Tensor | None = None  # (levels,)
    pos_by_size_level: Tensor | None = None  # (buckets, levels)
    iou_hist: Tensor = field(default_factory=lambda: torch.zeros(len(IOU_EDGES) - 1, dtype=torch.long))
    iou_sum: float = 0.0
    num_ignored: int = 0
    num_priors_total: int = 0
    multi_claimed: int = 0
    num_images: int = 0

    def __post_init__(self) -> None:
        if self.pos_by_level is None:
            self.pos_by_level = torch.zeros(self.num_levels, dtype=torch.long)
        if self.pos_by_size_level is None:
            self.pos_by_size_level = torch.zeros(len(SIZE_NAMES), self.num_levels, dtype=torch.long)

    def update(self, priors: Priors, gt: GroundTruth, res: Assignment) -> None:
        """Add one batch."""
        B, G = gt.mask.shape
        self.num_images += B
        self.num_priors_total += B * priors.num_priors
        self.num_ignored += int(res.ignore.sum())
        self.multi_claimed += int(multi_claimed_cells(res, priors.num_priors))
        nb = len(SIZE_NAMES)
        if G == 0:
            return
        bucket = size_bucket(gt.boxes)  # (B, G)
        ppg = positives_per_gt(res, gt)  # (B, G)
        valid = gt.mask
        self.num_gts += torch.bincount(bucket[valid], minlength=nb).cpu()
        self.num_pos += torch.bincount(bucket[valid], weights=ppg[valid].double(), minlength=nb).long().cpu()
        self.num_zero += torch.bincount(bucket[valid & (ppg == 0)], minlength=nb).cpu()
        # dense positives: level and prior-box IoU
        b, p = res.positive.nonzero(as_tuple=True)
        g = res.gt_index[b, p]
        lvl = priors.levels[p]
        self.pos_by_level += torch.bincount(lvl, minlength=self.num_levels).cpu()
        self.pos_by_size_level += torch.bincount(
            bucket[b, g] * self.num_levels + lvl, minlength=nb * self.num_levels
        ).view(nb, self.num_levels).cpu()
        ious = aligned_box_iou(priors.boxes()[p], gt.boxes[b, g], eps=1e-9).clamp(0, 1)
        edges = torch.tensor(IOU_EDGES[1:-1], dtype=ious.dtype, device=ious.device)
        self.iou_hist += torch.bincount(torch.bucketize(ious, edges, right=True), minlength=len(IOU_EDGES) - 1).cpu()
        self.iou_sum += float(ious.sum())

    def summary(self) -> dict:
        """Plain-Python summary (JSON-serialisable)."""
        gts = self.num_gts.tolist()
        total_gts = sum(gts)
        n_pos_dense = int(self.pos_by_level.sum())
        per_gt = {n: (self.num_pos[i].item() / gts[i] if gts[i] else None) for i, n in enumerate(SIZE_NAMES)}
        zero = {n: (self.num_zero[i].item() / gts[i] if gts[i] else None) for i, n in enumerate(SIZE_NAMES)}
        return {
            "images": self.num_images,
            "gts": total_gts,
            "gts_by_size": dict(zip(SIZE_NAMES, gts)),
            "positives_per_gt": per_gt,
            "positives_per_gt_all": (int(self.num_pos.sum()) / total_gts) if total_gts else None,
            "zero_positive_share": zero,
            "zero_positive_share_all": (int(self.num_zero.sum()) / total_gts) if total_gts else None,
            "multi_claimed_cells": self.multi_claimed,
            "positives_by_level": self.pos_by_level.tolist(),
            "positives_by_size_and_level": {n: self.pos_by_size_level[i].tolist() for i, n in enumerate(SIZE_NAMES)},
            "positive_iou_hist": self.iou_hist.tolist(),
            "positive_iou_mean": (self.iou_sum / n_pos_dense) if n_pos_dense else None,
            "ignored_priors": self.num_ignored,
            "ignored_share": self.num_ignored / self.num_priors_total if self.num_priors_total else 0.0,
        }


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_report(summaries: dict[str, dict]) -> str:
    """Side-by-side Markdown tables for several assigners' summaries."""
    names = list(summaries)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
    rows = [head]
    first = next(iter(summaries.values())) if summaries else {}
    rows.append("| GTs | " + " | ".join(_fmt(s["gts"]) for s in summaries.values()) + " |")
    for b in SIZE_NAMES:
        n = first.get("gts_by_size", {}).get(b, 0)
        rows.append(f"| positives / GT, {b} px (n={n}) | "
                    + " | ".join(_fmt(s["positives_per_gt"][b]) for s in summaries.values()) + " |")
    rows.append("| positives / GT, all | " + " | ".join(_fmt(s["positives_per_gt_all"]) for s in summaries.values()) + " |")
    for b in SIZE_NAMES:
        rows.append(f"| GTs with 0 positives, {b} px | "
                    + " | ".join(_fmt(s["zero_positive_share"][b], 3) for s in summaries.values()) + " |")
    rows.append("| GTs with 0 positives, all | "
                + " | ".join(_fmt(s["zero_positive_share_all"], 3) for s in summaries.values()) + " |")
    rows.append("| cells claimed by > 1 GT | " + " | ".join(_fmt(s["multi_claimed_cells"]) for s in summaries.values()) + " |")
    nl = len(first.get("positives_by_level", []))
    for lv in range(nl):
        rows.append(f"| positives on level {lv} | "
                    + " | ".join(_fmt(s["positives_by_level"][lv]) for s in summaries.values()) + " |")
    rows.append("| mean prior IoU of positives | "
                + " | ".join(_fmt(s["positive_iou_mean"], 3) for s in summaries.values()) + " |")
    rows.append("| ignored priors (share) | "
                + " | ".join(f"{s['ignored_priors']} ({s['ignored_share']:.4f})" for s in summaries.values()) + " |")
    return "\n".join(rows) + "\n"
