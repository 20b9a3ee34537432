"""Conformance handlers for the YOLO loss fixtures.

``yolov5_loss_objectness`` (``y5_loss_320``): YOLOv5 ``ComputeLoss`` on random logits. Targets ->
float64 pixel GT (as the ``yolov5_build_targets`` handler does) -> :class:`YOLOv5Assigner` rows ->
:class:`~assignlab.losses.yolov5.YOLOv5Loss`. The prediction maps ``p{i}`` ``(B, na, ny, nx, 5+C)``
are flattened to our prior order (row-major, anchors of a cell consecutive) and decoded in float64
(``centre = point + (2 sigmoid - 1) stride``, ``wh = (2 sigmoid)^2 anchor``). Compared: the
objectness target ``tobj{i}`` on every cell not flagged ``tobj{i}_contested`` (atol 1e-5), and the
loss items / total (rtol = atol = 1e-5).

``ultralytics_v8_detection_loss`` (``v8_loss_320``): the reference's padded pixel GT
(``gt_bboxes``, ``gt_labels``, ``mask_gt``) and raw logits; boxes decoded with the DFL integral
(16 bins = our ``reg_max`` 15); :meth:`TaskAlignedAssigner.ultralytics` on ``(boxes px,
sigmoid(scores))``; then :func:`~assignlab.losses.ultralytics.v8_detection_loss`. Compared: the
decoded boxes, the assignment (``fg_mask``, ``target_gt_idx`` on fg exactly; ``target_scores``
summed over classes), the per-positive ``fg_ciou`` / ``fg_dfl`` / ``fg_weight``, and the three raw
terms and the gained vector (rtol = atol = 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core import GroundTruth, make_priors
from .compare import NotImplementedYet, close, exact

__all__ = ["HANDLERS"]


@dataclass
class _Head:
    cls: torch.Tensor
    box: torch.Tensor
    obj: torch.Tensor | None
    kind: str
    reg_max: int


def _import(what: str):
    try:
        if what == "yolov5":
            from ..assigners.yolov5 import YOLOv5Assigner

            return YOLOv5Assigner
        from ..assigners.tal import TaskAlignedAssigner

        return TaskAlignedAssigner
    except ImportError as e:  # the assigner is written by another part of the project
        raise NotImplementedYet(f"{what} assigner not available: {e}") from e


def check_yolov5_loss(case: dict, arrays: dict) -> list[str]:
    YOLOv5Assigner = _import("yolov5")
    from ..losses.yolov5 import YOLOv5Loss
    from .yolov5 import gt_from_yolov5_targets, priors_from_yolov5_case

    params = case["params"]
    hyp = params["hyp"]
    if hyp.get("fl_gamma", 0.0) or params.get("autobalance"):
        raise NotImplementedYet("focal / autobalance variants of the YOLOv5 loss case")
    priors = priors_from_yolov5_case(arrays)
    B = int(arrays["batch_size"])
    gt = gt_from_yolov5_targets(arrays["targets"], arrays["image_hw"], B)
    res = YOLOv5Assigner(anchor_t=float(arrays["anchor_t"]))(priors, gt)

    L = len(priors.num_level_priors)
    maps = [torch.from_numpy(arrays[f"p{i}"]).double() for i in range(L)]
    flat = torch.cat([p.permute(0, 2, 3, 1, 4).reshape(B, -1, p.shape[-1]) for p in maps], 1)  # (B, N, 5+C)
    pts = priors.points.double()
    s = priors.strides.double()[:, None]
    anc = priors.anchors.double()
    t = flat[..., :4].sigmoid()
    centre = pts + (2 * t[..., :2] - 1) * s
    wh = (2 * t[..., 2:]) ** 2 * (anc[:, 2:] - anc[:, :2])
    pred_boxes = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    out = _Head(cls=flat[..., 5:], box=flat[..., :4], obj=flat[..., 4], kind="anchor", reg_max=0)

    loss = YOLOv5Loss(box=hyp["box"], obj=hyp["obj"], cls=hyp["cls"], balance=params["balance"],
                      label_smoothing=hyp.get("label_smoothing", 0.0), cls_pw=hyp.get("cls_pw", 1.0),
                      obj_pw=hyp.get("obj_pw", 1.0))
    total, items = loss(out, pred_boxes, priors, gt, res)
    problems: list[str] = []
    tobj = loss.objectness_target(loss.row_ciou(pred_boxes, priors, gt, res), res)
    for i, sl in enumerate(priors.level_slices()):
        ny, nx = priors.level_shapes[i]
        na = priors.num_anchors[i]
        ours = tobj[:, sl].reshape(B, ny, nx, na).permute(0, 3, 1, 2).numpy()
        keep = ~arrays[f"tobj{i}_contested"].astype(bool)
        problems += close(f"tobj{i}", ours, arrays[f"tobj{i}"], where=keep, rtol=0, atol=1e-5)
    got_items = torch.stack([items["box"], items["obj"], items["cls"]])
    problems += close("loss_items", got_items, arrays["loss_items"], rtol=1e-5, atol=1e-5)
    problems += close("loss_total", total.reshape(1), arrays["loss_total"], rtol=1e-5, atol=1e-5)
    return problems


def check_v8_loss(case: dict, arrays: dict) -> list[str]:
    TaskAlignedAssigner = _import("tal")
    from ..losses.gfl import dfl_integral, distances_to_dfl_target, distribution_focal_loss
    from ..losses.iou import ULTRALYTICS_CIOU, complete_iou
    from ..losses.ultralytics import v8_detection_loss

    params = case["params"]
    H, W = (int(v) for v in params["image_hw"])
    strides = [int(v) for v in params["strides"]]
    R = int(params["reg_max"]) - 1  # ultralytics counts bins, we count the largest distance
    priors = make_priors((H, W), strides=strides, offset=0.5)
    problems: list[str] = []
    problems += close("anchor_points", priors.points / priors.strides[:, None], arrays["anchor_points"], atol=1e-6)

    box_logits = torch.from_numpy(arrays["pred_boxes_logits"]).permute(0, 2, 1).contiguous()  # (B, A, 4*16)
    cls_logits = torch.from_numpy(arrays["pred_scores_logits"]).permute(0, 2, 1).contiguous()  # (B, A, C)
    B = cls_logits.shape[0]
    d = dfl_integral(box_logits, R) * priors.strides[:, None]
    pts = priors.points
    pred_boxes = torch.cat([pts - d[..., :2], pts + d[..., 2:]], -1)
    problems += close("pred_bboxes_grid", pred_boxes / priors.strides[:, None], arrays["pred_bboxes_grid"],
                      rtol=0, atol=1e-5)

    mask = torch.from_numpy(arrays["mask_gt"][..., 0] > 0)
    gt = GroundTruth(torch.from_numpy(arrays["gt_bboxes"]), torch.from_numpy(arrays["gt_labels"][..., 0]).long(),
                     mask)
    assigner = TaskAlignedAssigner.ultralytics(topk=int(params["topk"]), alpha=float(params["alpha"]),
                                               beta=float(params["beta"]))
    res = assigner(priors, gt, pred_boxes=pred_boxes.detach(), pred_scores=cls_logits.sigmoid())
    fg = arrays["fg_mask"].astype(bool)
    problems += exact("fg_mask", res.positive, fg)
    if problems:
        return problems  # the losses below are meaningless on a different assignment
    problems += exact("target_gt_idx", res.gt_index.numpy()[fg], arrays["target_gt_idx"][fg])
    problems += close("target_scores_sum", res.quality, arrays["target_scores"].sum(-1), rtol=0, atol=1e-5)

    # per-positive pieces, in fg_mask.nonzero() order
    pos = res.positive
    sfg = priors.strides.expand(B, -1)[pos][:, None]
    tb = res.target_boxes(gt)[pos]
    ciou = complete_iou(pred_boxes[pos] / sfg, tb / sfg, **ULTRALYTICS_CIOU)
    problems += close("fg_ciou", ciou, arrays["fg_ciou"], rtol=1e-5, atol=1e-5)
    problems += close("fg_weight", res.box_weight[pos], arrays["fg_weight"], rtol=1e-5, atol=1e-5)
    ltrb = distances_to_dfl_target(priors.points, res.target_boxes(gt), priors.strides, R)[pos]
    problems += close("fg_target_ltrb", ltrb, arrays["fg_target_ltrb"], rtol=0, atol=1e-5)
    dfl = distribution_focal_loss(box_logits[pos].reshape(-1, 4, R + 1), ltrb).mean(-1)
    problems += close("fg_dfl", dfl, arrays["fg_dfl"], rtol=1e-5, atol=1e-5)

    out = _Head(cls=cls_logits, box=box_logits, obj=None, kind="free", reg_max=R)
    raw = v8_detection_loss(weights={"box": 1.0, "cls": 1.0, "dfl": 1.0})
    _, parts = raw(out, pred_boxes, priors, gt, res)
    got = torch.stack([parts["box"], parts["cls"], parts["dfl"]])
    problems += close("loss_raw", got, arrays["loss_raw"], rtol=1e-5, atol=1e-5)
    total, parts = v8_detection_loss()(out, pred_boxes, priors, gt, res)
    gained = torch.stack([parts["box"], parts["cls"], parts["dfl"]]) * B
    problems += close("loss_default_gains_times_bs", gained, arrays["loss_default_gains_times_bs"],
                      rtol=1e-5, atol=1e-5)
    problems += close("total", total * B, np.float32(arrays["loss_default_gains_times_bs"].sum()), rtol=1e-5,
                      atol=1e-5)
    return problems


HANDLERS = {
    "yolov5_loss_objectness": check_yolov5_loss,
    "ultralytics_v8_detection_loss": check_v8_loss,
}
