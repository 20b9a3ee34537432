"""Handler for the original YOLOX SimOTA fixtures (``yolox_simota``), replayed through
``SimOTAAssigner.yolox()``.

Input conversion (YOLOX conventions -> ours):

* anchors: centre ``(shift + 0.5) * stride`` (YOLOX's own expression), levels = runs of one stride;
* GTs: labels ``[cls, cx, cy, w, h]`` px, the first ``num_gt`` rows real, converted to xyxy as
  YOLOX's ``bboxes_iou(..., xyxy=False)`` does (``c -+ wh / 2``); same for predicted boxes;
* scores: YOLOX's ``sqrt(sigmoid(cls) * sigmoid(obj))``, the probabilities its BCE cost uses.

Compared: ``fg_mask``, ``matched_gt_inds``, ``gt_matched_classes``, ``num_fg`` exactly and the
``anchor_filter`` intermediate (our ``extras["candidates"]``). ``pred_ious_this_matching``: the
IoU of *our* matches recomputed with YOLOX's float32 cxcywh formula must agree to atol 1e-5, and
our ``quality`` (IoU from the xyxy boxes we were given) to atol 1e-4 -- YOLOX takes box areas as
``w * h`` while xyxy boxes converted in float32 carry the corner rounding (up to 1.5e-5 px near
x = 300, i.e. a relative 1e-5 on a 2 px box), which moves a few IoUs by up to 3e-5.
"""

from __future__ import annotations

import numpy as np
import torch

from ..assigners.simota import SimOTAAssigner
from ..core import GroundTruth, Priors
from .compare import close, exact

QUALITY_ATOL = 1e-4


def _cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], dim=-1)


def _yolox_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Aligned IoU of cxcywh boxes with the operations of YOLOX ``bboxes_iou(xyxy=False)``."""
    tl = torch.maximum(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
    br = torch.minimum(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    area_a = torch.prod(a[..., 2:], -1)
    area_b = torch.prod(b[..., 2:], -1)
    en = (tl < br).type(tl.type()).prod(dim=-1)
    area_i = torch.prod(br - tl, -1) * en
    return area_i / (area_a + area_b - area_i)


def _priors(arrays: dict) -> Priors:
    st = torch.from_numpy(arrays["expanded_strides"]).float().reshape(-1)
    xs = torch.from_numpy(arrays["x_shifts"]).float().reshape(-1)
    ys = torch.from_numpy(arrays["y_shifts"]).float().reshape(-1)
    pts = torch.stack([(xs + 0.5) * st, (ys + 0.5) * st], dim=1)
    s = st.numpy()
    change = np.flatnonzero(np.diff(s)) + 1
    bounds = [0, *change.tolist(), len(s)]
    nlp = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    return Priors.from_tensors(pts, nlp, [float(s[b]) for b in bounds[:-1]])


def yolox_simota(case: dict, arrays: dict, priors: Priors | None = None) -> list[str]:
    """``priors`` overrides the priors built from the case (tests pass equal grid priors)."""
    p = case["params"]
    assigner = SimOTAAssigner.yolox(
        center_radius=float(p.get("center_radius", 1.5)),
        candidate_topk=int(p.get("candidate_k", 10)),
        iou_weight=float(p.get("iou_weight", 3.0)),
    )
    priors = priors if priors is not None else _priors(arrays)
    labels = torch.from_numpy(arrays["labels"]).float()
    B, G = labels.shape[:2]
    num_gt = torch.from_numpy(arrays["num_gt"]).long()
    mask = torch.arange(G)[None, :] < num_gt[:, None]
    gt = GroundTruth(_cxcywh_to_xyxy(labels[..., 1:5]), labels[..., 0].long(), mask)
    scores = (torch.from_numpy(arrays["cls_preds"]).float().sigmoid() *
              torch.from_numpy(arrays["obj_preds"]).float().sigmoid()).sqrt()
    pred_cxcywh = torch.from_numpy(arrays["bbox_preds"]).float()
    res = assigner(priors, gt, pred_boxes=_cxcywh_to_xyxy(pred_cxcywh), pred_scores=scores)
    res.validate(gt)
    out = exact("anchor_filter", res.extras["candidates"].numpy(), arrays["anchor_filter"])
    out += exact("fg_mask", res.positive.numpy(), arrays["fg_mask"])
    out += exact("num_fg", res.num_positives().numpy(), arrays["num_fg"])
    out += exact("matched_gt_inds", res.gt_index.numpy(), arrays["matched_gt_inds"])
    out += exact("gt_matched_classes", res.labels(gt).numpy(), arrays["gt_matched_classes"])
    # IoU of our matches in YOLOX's own float32 formula (areas from w*h), to the fixture's atol 1e-5
    ref_iou = arrays["pred_ious_this_matching"]
    idx = res.gt_index.clamp(min=0)[..., None].expand(B, -1, 4)
    matched = torch.gather(labels[..., 1:5], 1, idx)
    yolox_iou = torch.where(res.positive, _yolox_iou(matched, pred_cxcywh), 0.0)
    out += close("pred_ious_this_matching", yolox_iou.numpy(), ref_iou, rtol=0, atol=1e-5)
    # our own quality uses the xyxy boxes the handler derived in float32: 2-px boxes near x = 300
    # lose up to 1.5e-5 px per corner in that conversion, hence the looser bound here
    out += close("quality", res.quality.numpy(), ref_iou, rtol=0, atol=QUALITY_ATOL)
    return out


HANDLERS = {"yolox_simota": yolox_simota}
