"""Handlers for mmdetection 3.3.0's prediction-aware assigners: ``SimOTAAssigner``,
``TaskAlignedAssigner`` and ``DynamicSoftLabelAssigner`` (random ``simota*``/``tal*``/``dsl*``
cases and the ``edge_*`` cases of those kinds).

mmdet's ``max_overlaps`` conventions reproduced here from our :class:`Assignment`:
IoU(predicted box, assigned GT) on positives, a sentinel elsewhere (-1e5 for SimOTA, -1e8 for TAL
and DSL), and all 0 when the image has no GT (SimOTA / DSL: also when no prior is a candidate).
TAL's ``assign_metrics`` = ``extras["metrics"]`` (0 off the positives).
"""

from __future__ import annotations

import numpy as np
import torch

from ..assigners.dsl import DynamicSoftLabelAssigner
from ..assigners.simota import SimOTAAssigner
from ..assigners.tal import TaskAlignedAssigner
from ..core import Assignment, Priors
from .mmdet_common import compare_assignment, gt_from_case, predictions_from_case, priors_from_case

SIMOTA_SENTINEL = -100000.0
TAL_DSL_SENTINEL = -100000000.0


def _max_overlaps(res: Assignment, sentinel: float, all_zero: bool) -> np.ndarray:
    ov = res.extras["overlaps"][0]
    if all_zero:
        return np.zeros(ov.shape, dtype=np.float32)
    return torch.where(res.positive[0], ov, torch.full_like(ov, sentinel)).numpy()


def _run(case: dict, arrays: dict, assigner, priors: Priors | None = None):
    priors = priors if priors is not None else priors_from_case(case, arrays)
    gt = gt_from_case(arrays)
    res = assigner(priors, gt, **predictions_from_case(arrays))
    res.validate(gt)
    return res, gt


def simota(case: dict, arrays: dict, priors: Priors | None = None) -> list[str]:
    """``priors`` overrides the case's stored priors (tests pass equal grid priors)."""
    kw = case["params"]["constructor"]
    res, gt = _run(case, arrays, SimOTAAssigner(**kw), priors)
    no_cand = not bool(res.extras["candidates"][0].any())
    ov = _max_overlaps(res, SIMOTA_SENTINEL, gt.max_boxes == 0 or no_cand)
    return compare_assignment(case, arrays, res, gt, overlaps=ov)


def dsl(case: dict, arrays: dict, priors: Priors | None = None) -> list[str]:
    kw = dict(case["params"]["constructor"])
    scores_are = case["params"].get("pred_scores_are", "logits")
    res, gt = _run(case, arrays, DynamicSoftLabelAssigner(scores_are=scores_are, **kw), priors)
    no_cand = not bool(res.extras["candidates"][0].any())
    ov = _max_overlaps(res, TAL_DSL_SENTINEL, gt.max_boxes == 0 or no_cand)
    return compare_assignment(case, arrays, res, gt, overlaps=ov)


def tal(case: dict, arrays: dict, priors: Priors | None = None) -> list[str]:
    kw = dict(case["params"]["constructor"])
    call = case["params"]["call"]
    assigner = TaskAlignedAssigner(alpha=call.get("alpha", 1), beta=call.get("beta", 6), flavour="mmdet", **kw)
    res, gt = _run(case, arrays, assigner, priors)
    ov = _max_overlaps(res, TAL_DSL_SENTINEL, gt.max_boxes == 0)
    metrics = res.extras["metrics"][0].numpy()
    return compare_assignment(case, arrays, res, gt, overlaps=ov, extra_floats={"assign_metrics": metrics})


HANDLERS = {
    "SimOTAAssigner": simota,
    "TaskAlignedAssigner": tal,
    "DynamicSoftLabelAssigner": dsl,
}
