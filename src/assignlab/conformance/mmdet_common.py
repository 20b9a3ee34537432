"""Shared plumbing for the mmdetection assigner fixtures: build our inputs from a case's arrays
and express our :class:`Assignment` in mmdet's ``AssignResult`` conventions.

mmdet ``gt_inds``: 0 = negative, -1 = ignored, k > 0 = positive for GT k-1.
mmdet ``labels``: the GT's class on positives, -1 elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import Assignment, GroundTruth, Priors
from .compare import close, exact


def priors_from_case(case: dict, arrays: dict) -> Priors:
    """Priors stored in a case: anchors ``xyxy`` or points ``[cx, cy, stride_w, stride_h]``."""
    p = torch.from_numpy(arrays["priors"]).float()
    desc = case["arrays"]["priors"]
    is_points = "points" in desc and "[cx, cy" in desc
    nlp = arrays.get("num_level_priors")
    nlp = [int(x) for x in nlp] if nlp is not None else [p.shape[0]]
    if is_points:
        strides = [float(p[s.start, 2]) if s.stop > s.start else 1.0 for s in _slices(nlp)]
        return Priors.from_tensors(p[:, :2].contiguous(), nlp, strides)
    if "strides" in arrays:
        strides = [float(s) for s in arrays["strides"]]
    else:
        strides = [1.0] * len(nlp)
    centers = (p[:, :2] + p[:, 2:]) / 2
    return Priors.from_tensors(centers, nlp, strides, anchors=p)


def _slices(nlp):
    out, s = [], 0
    for n in nlp:
        out.append(slice(s, s + n))
        s += n
    return out


def gt_from_case(arrays: dict) -> GroundTruth:
    """One-image batch with the case's GTs *as given* (no sanitising: mmdet keeps degenerate
    boxes, and their indices must stay put)."""
    boxes = torch.from_numpy(arrays["gt_bboxes"]).float().reshape(1, -1, 4)
    labels = torch.from_numpy(arrays["gt_labels"]).long().reshape(1, -1)
    mask = torch.ones(labels.shape, dtype=torch.bool)
    ign = arrays.get("gt_bboxes_ignore")
    ignore = ignore_mask = None
    if ign is not None:
        ignore = torch.from_numpy(ign).float().reshape(1, -1, 4)
        ignore_mask = torch.ones(ignore.shape[:2], dtype=torch.bool)
    return GroundTruth(boxes, labels, mask, ignore, ignore_mask)


def predictions_from_case(arrays: dict) -> dict:
    return {
        "pred_boxes": torch.from_numpy(arrays["pred_bboxes"]).float()[None],
        "pred_scores": torch.from_numpy(arrays["pred_scores"]).float()[None],
    }


def to_mmdet(res: Assignment, gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Our image 0 as mmdet ``(gt_inds, labels)``."""
    gi = res.gt_index[0]
    gt_inds = torch.where(res.positive[0], gi + 1, torch.where(res.ignore[0], -1, 0))
    labels = res.labels(gt)[0]
    return gt_inds.numpy(), labels.numpy()


def compare_assignment(case: dict, arrays: dict, res: Assignment, gt: GroundTruth,
                       overlaps: np.ndarray | None = None, extra_floats: dict | None = None) -> list[str]:
    """Compare ``gt_inds``/``labels`` exactly and ``max_overlaps`` (+ extra float outputs) with
    tolerance, on the stable priors; buggy cases against their ``intended_*`` arrays."""
    pre = "intended_" if case.get("reference_is_buggy") else ""
    stable = ~arrays["unstable"].astype(bool)
    gt_inds, labels = to_mmdet(res, gt)
    out = exact("gt_inds", gt_inds, arrays[pre + "gt_inds"], stable)
    out += exact("labels", labels, arrays[pre + "labels"], stable)
    out += exact("num_gts", int(gt.mask[0].sum()), int(arrays["num_gts"]))
    if overlaps is not None:
        out += close("max_overlaps", overlaps, arrays[pre + "max_overlaps"], stable)
    for k, v in (extra_floats or {}).items():
        out += close(k, v, arrays[pre + k], stable)
    return out
