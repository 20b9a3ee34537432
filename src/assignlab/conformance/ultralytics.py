"""Handler for the ultralytics 8.4.x ``TaskAlignedAssigner`` fixtures (``ultralytics_tal``).

The reference works on a padded batch exactly like ours: anchor points in pixels, GTs ``(bs,
n_max, 4)`` xyxy px with ``mask_gt``, sigmoided scores. Compared (as the fixture README says):
``fg_mask`` exactly; ``target_gt_idx`` and ``target_labels`` exactly and ``target_bboxes`` with
atol 1e-5 on the foreground; ``target_scores`` = ``onehot(label) * quality`` everywhere, atol 1e-5.
"""

from __future__ import annotations

import numpy as np
import torch

from ..assigners.tal import TaskAlignedAssigner
from ..core import GroundTruth, Priors
from .compare import close, exact


def _priors(arrays: dict) -> Priors:
    pts = torch.from_numpy(arrays["anc_points"]).float()
    st = arrays["stride_tensor"].reshape(-1)
    # levels are contiguous runs of one stride
    change = np.flatnonzero(np.diff(st)) + 1
    bounds = [0, *change.tolist(), len(st)]
    nlp = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    strides = [float(st[b]) for b in bounds[:-1]]
    return Priors.from_tensors(pts, nlp, strides)


def ultralytics_tal(case: dict, arrays: dict, priors: Priors | None = None) -> list[str]:
    """``priors`` overrides the priors built from the case (tests pass equal grid priors)."""
    p = case["params"]
    strides = p.get("strides", [8, 16, 32])
    stride_val = float(p.get("stride_val", strides[1] if len(strides) > 1 else strides[0]))
    assigner = TaskAlignedAssigner.ultralytics(
        topk=int(p.get("topk", 10)), alpha=float(p.get("alpha", 0.5)), beta=float(p.get("beta", 6.0)),
        small_box_side=stride_val,
    )
    priors = priors if priors is not None else _priors(arrays)
    boxes = torch.from_numpy(arrays["gt_bboxes"]).float()
    B = boxes.shape[0]
    labels = torch.from_numpy(arrays["gt_labels"]).reshape(B, -1).long()
    mask = torch.from_numpy(arrays["mask_gt"]).reshape(B, -1) > 0
    gt = GroundTruth(boxes.reshape(B, -1, 4), labels, mask)
    res = assigner(
        priors, gt,
        pred_boxes=torch.from_numpy(arrays["pd_bboxes"]).float(),
        pred_scores=torch.from_numpy(arrays["pd_scores"]).float(),
    )
    res.validate(gt)
    nc = arrays["pd_scores"].shape[-1]
    fg_e = arrays["fg_mask"].astype(bool)
    out = exact("fg_mask", res.positive.numpy(), fg_e)
    if out:
        return out
    out += exact("target_gt_idx", res.gt_index.numpy(), arrays["target_gt_idx"], fg_e)
    out += exact("target_labels", res.labels(gt).numpy(), arrays["target_labels"], fg_e)
    out += close("target_bboxes", res.target_boxes(gt).numpy(), arrays["target_bboxes"], fg_e, rtol=0, atol=1e-5)
    lab = res.labels(gt).clamp(min=0)
    scores = torch.nn.functional.one_hot(lab, nc).float() * (res.quality * res.positive)[..., None]
    out += close("target_scores", scores.numpy(), arrays["target_scores"], rtol=0, atol=1e-5)
    return out


HANDLERS = {"ultralytics_tal": ultralytics_tal}
