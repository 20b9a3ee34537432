"""Conformance handlers for mmdetection's static assigners: ``MaxIoUAssigner`` and
``ATSSAssigner`` (fixtures ``maxiou_*``, ``atss_*``, ``edge_maxiou_*``, ``edge_atss_*``).

Every case is run twice: on the priors exactly as stored (``Priors.from_tensors``, the dense
path) and, when the stored priors are reproduced bit for bit by :func:`make_priors` (all the random
cases), on those grid priors (the factorised fast path). Both must match mmdetection, so the
fixtures pin down both code paths.

``max_overlaps`` conventions: MaxIoU reports the best IoU of every prior (our
``extras["max_overlaps"]``); ATSS the IoU with the assigned GT on positives and -1e8 elsewhere
(our ``extras["overlaps"]`` with the sentinel added here); both all 0 without GT.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..assigners.atss import ATSSAssigner
from ..assigners.maxiou import MaxIoUAssigner
from ..core import Assignment, GroundTruth, Priors, make_priors
from .mmdet_common import compare_assignment, gt_from_case, priors_from_case

__all__ = ["HANDLERS", "grid_priors_from_case"]

ATSS_INF = -100000000.0


def grid_priors_from_case(arrays: dict, exact_points: bool = True) -> Priors | None:
    """:func:`make_priors` priors with anchors identical to the stored ones, or None when not
    reproducible (hand-made edge-case priors). With ``exact_points`` the prior centers must also
    equal mmdetection's ``(x1 + x2) / 2`` bit for bit (they differ by rounding for the non-integer
    RetinaNet / RPN anchor sizes, where only the boxes matter)."""
    if "strides" not in arrays or "img_shape" not in arrays or "num_level_priors" not in arrays:
        return None
    p = torch.from_numpy(arrays["priors"]).float()
    nlp = [int(x) for x in arrays["num_level_priors"]]
    strides = [int(s) for s in arrays["strides"]]
    h, w = (int(v) for v in arrays["img_shape"])
    anchors, start = [], 0
    for n, s in zip(nlp, strides):
        cells = math.ceil(h / s) * math.ceil(w / s)
        if n % cells:
            return None
        na = n // cells
        first = p[start : start + na]
        anchors.append([(float(b[2] - b[0]), float(b[3] - b[1])) for b in first])
        start += n
    offset = float((p[0, 0] + p[0, 2]) / 2) / strides[0]
    grid = make_priors((h, w), strides=strides, anchors=anchors, offset=offset)
    if grid.anchors is None or not torch.equal(grid.anchors, p):
        return None
    if exact_points and not torch.equal(grid.points, (p[:, :2] + p[:, 2:]) / 2):
        return None
    return grid


def _both_priors(case: dict, arrays: dict, exact_points: bool) -> list[tuple[str, Priors]]:
    out = [("dense", priors_from_case(case, arrays))]
    grid = grid_priors_from_case(arrays, exact_points)
    if grid is not None:
        out.append(("grid", grid))
    return out


def _run(case: dict, arrays: dict, assigner, overlaps_fn, exact_points: bool) -> list[str]:
    gt = gt_from_case(arrays)
    problems: list[str] = []
    for name, priors in _both_priors(case, arrays, exact_points):
        res = assigner(priors, gt)
        res.validate(gt)
        msgs = compare_assignment(case, arrays, res, gt, overlaps=overlaps_fn(res, gt))
        problems += [f"[{name} priors] {m}" for m in msgs]
    return problems


def _maxiou(case: dict, arrays: dict) -> list[str]:
    c = dict(case["params"]["constructor"])
    if isinstance(c.get("neg_iou_thr"), list):
        c["neg_iou_thr"] = tuple(c["neg_iou_thr"])
    assigner = MaxIoUAssigner(**c)
    return _run(case, arrays, assigner, lambda res, gt: res.extras["max_overlaps"][0].numpy(), False)


def _atss_max_overlaps(res: Assignment, gt: GroundTruth) -> np.ndarray:
    if int(gt.mask[0].sum()) == 0:
        return np.zeros(res.shape[1], dtype=np.float32)
    ov = torch.where(res.positive[0], res.extras["overlaps"][0], ATSS_INF)
    return ov.numpy()


def _atss(case: dict, arrays: dict) -> list[str]:
    c = dict(case["params"]["constructor"])
    assigner = ATSSAssigner(**c)
    return _run(case, arrays, assigner, _atss_max_overlaps, True)


HANDLERS = {"MaxIoUAssigner": _maxiou, "ATSSAssigner": _atss}
