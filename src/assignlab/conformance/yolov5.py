"""Conformance handlers for the YOLOv5 fixtures: ``build_targets`` rows and the autoanchor metrics.

``yolov5_build_targets``: the normalized ``[image, class, x, y, w, h]`` targets become pixel GT
boxes exactly as the reference's grid arithmetic sees them: ``cx = float32(x) * float32(W)`` (and
likewise ``cy``, ``w``, ``h``) in float32, then ``cx -/+ w/2`` in **float64**, so that the
assigner's ``float32((x1 + x2) / 2) / stride`` equals YOLOv5's ``float32(x) * float32(nx)`` bit for
bit (strides are powers of two, ``W = nx * stride``). Each level's rows ``(b, a, gj, gi, tcls |
tbox, anch)`` are compared as multisets (duplicates count).

``yolov5_autoanchor_metric``: ``bpr / aat`` per anchor set, the k-means fitness, the ratio-metric
arrays and the summary, from :mod:`assignlab.analysis.anchors`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.anchors import anchor_fitness, anchor_metrics, anchor_summary, label_wh, ratio_metric
from ..assigners.yolov5 import YOLOv5Assigner, grid_xywh, yolov5_targets
from ..core import GroundTruth, Priors, make_priors
from .compare import close, exact, multiset_rows


def priors_from_yolov5_case(arrays: dict) -> Priors:
    """Anchor priors of a case (image size, strides and pixel anchors from the arrays)."""
    H, W = (int(v) for v in arrays["image_hw"])
    strides = [int(s) for s in arrays["strides"]]
    anchors = [[(float(w), float(h)) for w, h in level] for level in arrays["anchors_px"]]
    return make_priors((H, W), strides=strides, anchors=anchors, offset=0.5)


def gt_from_yolov5_targets(targets: np.ndarray, image_hw, batch_size: int) -> GroundTruth:
    """Padded float64 pixel GT from YOLOv5 ``(nt, 6)`` normalized targets (row order kept per image)."""
    t = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)).reshape(-1, 6)
    H, W = (float(v) for v in image_hw)
    scale = torch.tensor([W, H, W, H], dtype=torch.float32)
    xywh = (t[:, 2:6] * scale).double()  # float32 products, as targets * gain
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    img = t[:, 0].long()
    counts = torch.bincount(img, minlength=batch_size) if len(img) else torch.zeros(batch_size, dtype=torch.long)
    G = int(counts.max()) if batch_size else 0
    boxes = torch.zeros(batch_size, G, 4, dtype=torch.float64)
    labels = torch.zeros(batch_size, G, dtype=torch.long)
    mask = torch.zeros(batch_size, G, dtype=torch.bool)
    fill = [0] * batch_size
    for i in range(len(img)):  # validation code: a plain loop is fine
        b = int(img[i])
        boxes[b, fill[b]] = xyxy[i]
        labels[b, fill[b]] = int(t[i, 1])
        mask[b, fill[b]] = True
        fill[b] += 1
    return GroundTruth(boxes, labels, mask)


def check_build_targets(case: dict, arrays: dict) -> list[str]:
    priors = priors_from_yolov5_case(arrays)
    out: list[str] = []
    grid = [[r, c] for r, c in priors.level_shapes]
    out += exact("grid_shapes", np.asarray(grid), arrays["grid_shapes"])
    anchors_grid = np.stack([np.asarray(la, np.float32) for la in priors.level_anchors]) / arrays["strides"][:, None, None]
    out += exact("anchors_grid", anchors_grid.astype(np.float32), arrays["anchors_grid"])
    B = int(arrays["batch_size"])
    gt = gt_from_yolov5_targets(arrays["targets"], arrays["image_hw"], B)
    res = YOLOv5Assigner(anchor_t=float(arrays["anchor_t"]))(priors, gt)
    res.validate(gt)
    tg = yolov5_targets(res.matches, priors, gt)
    valid_rows = gt.mask
    for li in range(len(priors.level_shapes)):
        if f"L{li}_gxy" in arrays and valid_rows.any():
            gxy, _ = grid_xywh(gt.boxes[valid_rows], torch.tensor(priors.level_strides[li]))
            # our GT rows are grouped by image; the reference's are in input order
            order = np.argsort(arrays["targets"][:, 0], kind="stable")
            out += exact(f"L{li}_gxy", gxy.numpy(), arrays[f"L{li}_gxy"][order])
        tcls, tbox, (b, a, gj, gi), anch, _ = tg.level_rows(li)
        ints = torch.stack([b, a, gj, gi, tcls], 1)
        floats = torch.cat([tbox, anch], 1)
        ints_e = np.concatenate([arrays[f"L{li}_indices"], arrays[f"L{li}_tcls"][:, None]], 1)
        floats_e = np.concatenate([arrays[f"L{li}_tbox"], arrays[f"L{li}_anch"]], 1)
        out += multiset_rows(f"L{li}", ints, floats, ints_e, floats_e, atol=1e-5)
    return out


def check_autoanchor(case: dict, arrays: dict) -> list[str]:
    thr = float(arrays["thr"])
    out: list[str] = []
    wh = label_wh(arrays["labels"][:, 3:5], arrays["image_shapes_wh"], arrays["label_image"], int(arrays["imgsz"]))
    out += close("wh", wh, arrays["wh"], rtol=1e-6, atol=1e-5)
    wh = torch.from_numpy(arrays["wh"])
    keep = (wh >= 2.0).any(1)
    out += exact("km_keep", keep.numpy(), arrays["km_keep"])
    km_wh = wh[keep]
    out += exact("km_wh", km_wh.numpy(), arrays["km_wh"])
    sets = torch.from_numpy(arrays["anchor_sets_px"])
    bpr_aat, fit, summ = [], [], []
    for k in sets:
        bpr, aat = anchor_metrics(wh, k, thr=thr)
        bpr_aat.append([float(bpr), float(aat)])
        fit.append(float(anchor_fitness(km_wh, k, thr=thr)))
        s = anchor_summary(wh, k, thr=thr)
        summ.append([s["bpr"], s["aat"], s["mean_x"], s["mean_best"]])
    out += close("bpr_aat", np.asarray(bpr_aat), arrays["bpr_aat"])
    out += close("km_fitness", np.asarray(fit), arrays["km_fitness"])
    out += close("km_summary", np.asarray(summ), arrays["km_summary"])
    x, best = ratio_metric(km_wh, sets[0])
    out += close("km_x_default", x, arrays["km_x_default"]) + close("km_best_default", best, arrays["km_best_default"])
    x0, best0 = ratio_metric(wh, sets[0])
    out += close("km_x0_default", x0, arrays["km_x0_default"])
    out += close("km_best0_default", best0, arrays["km_best0_default"])
    out += exact("check_anchors_good_fit", np.asarray(bpr_aat[0][0] > 0.98), arrays["check_anchors_good_fit"])
    return out


HANDLERS = {
    "yolov5_build_targets": check_build_targets,
    "yolov5_autoanchor_metric": check_autoanchor,
}
