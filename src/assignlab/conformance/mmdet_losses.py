"""Conformance handlers for the mmdetection 3.3.0 loss fixtures (``group: loss``).

Each case stores inputs (``pred``, ``target`` or ``target_label`` / ``target_score``, ``weight``)
and four outputs, one per call in ``params.calls``: ``loss_none`` (elementwise), ``loss_mean``,
``loss_sum`` and ``loss_weighted_avg`` (``sum(loss * weight) / (avg_factor + float32 eps)``). We
build our module from ``params.constructor``, replay each call and compare with
``rtol = atol = 1e-5``. ``reference_is_buggy`` cases are compared with their ``intended_*`` arrays
(mmdet's CIoU is NaN for identical boxes; ours must be finite).
"""

from __future__ import annotations

import numpy as np
import torch

from ..losses.focal import FocalLoss
from ..losses.gfl import DistributionFocalLoss, QualityFocalLoss
from ..losses.iou import MMDET_CIOU, CIoULoss, DIoULoss, GIoULoss
from ..losses.reduce import ElementwiseLoss
from ..losses.varifocal import VarifocalLoss
from .compare import NotImplementedYet, close

__all__ = ["HANDLERS"]


def _check_sigmoid(ctor: dict) -> None:
    if not ctor.get("use_sigmoid", True) or ctor.get("activated", False):
        raise NotImplementedYet("only use_sigmoid=True, activated=False classification losses")


def _focal(ctor: dict) -> ElementwiseLoss:
    _check_sigmoid(ctor)
    return FocalLoss(alpha=ctor.get("alpha", 0.25), gamma=ctor.get("gamma", 2.0),
                     reduction=ctor.get("reduction", "mean"), loss_weight=ctor.get("loss_weight", 1.0))


def _qfl(ctor: dict) -> ElementwiseLoss:
    _check_sigmoid(ctor)
    return QualityFocalLoss(beta=ctor.get("beta", 2.0), reduction=ctor.get("reduction", "mean"),
                            loss_weight=ctor.get("loss_weight", 1.0))


def _dfl(ctor: dict) -> ElementwiseLoss:
    return DistributionFocalLoss(reduction=ctor.get("reduction", "mean"), loss_weight=ctor.get("loss_weight", 1.0))


def _vfl(ctor: dict) -> ElementwiseLoss:
    _check_sigmoid(ctor)
    return VarifocalLoss(alpha=ctor.get("alpha", 0.75), gamma=ctor.get("gamma", 2.0),
                         iou_weighted=ctor.get("iou_weighted", True), reduction=ctor.get("reduction", "mean"),
                         loss_weight=ctor.get("loss_weight", 1.0))


def _box(cls, **extra):
    def build(ctor: dict) -> ElementwiseLoss:
        return cls(eps=ctor.get("eps", 1e-6), reduction=ctor.get("reduction", "mean"),
                   loss_weight=ctor.get("loss_weight", 1.0), **extra)
    return build


def _ciou(ctor: dict) -> ElementwiseLoss:
    kw = {k: v for k, v in MMDET_CIOU.items() if k != "eps"}
    return CIoULoss(eps=ctor.get("eps", 1e-6), reduction=ctor.get("reduction", "mean"),
                    loss_weight=ctor.get("loss_weight", 1.0), **kw)


BUILDERS = {
    "FocalLoss": _focal,
    "QualityFocalLoss": _qfl,
    "DistributionFocalLoss": _dfl,
    "VarifocalLoss": _vfl,
    "GIoULoss": _box(GIoULoss),
    "DIoULoss": _box(DIoULoss),
    "CIoULoss": _ciou,
}


def _arg(value, arrays: dict):
    """Resolve a ``params.calls`` argument: ``"@name"`` -> tensor of that array, list -> tuple."""
    if isinstance(value, str) and value.startswith("@"):
        return torch.from_numpy(np.ascontiguousarray(arrays[value[1:]]))
    if isinstance(value, list):
        return tuple(_arg(v, arrays) for v in value)
    return value


def run_loss_case(case: dict, arrays: dict) -> list[str]:
    """Replay every call of ``case`` through our module and compare its outputs."""
    module = BUILDERS[case["kind"]](case["params"]["constructor"])
    pre = "intended_" if case.get("reference_is_buggy") else ""
    problems: list[str] = []
    for out_name, call in case["params"]["calls"].items():
        kw = {k: _arg(v, arrays) for k, v in call.items()}
        got = module(
            kw.pop("pred"),
            kw.pop("target"),
            weight=kw.pop("weight", None),
            avg_factor=kw.pop("avg_factor", None),
            reduction_override=kw.pop("reduction_override", None),
        )
        if kw:
            raise NotImplementedYet(f"call arguments {sorted(kw)}")
        if not bool(torch.isfinite(got).all()):
            problems.append(f"{out_name}: non-finite values")
        problems += close(out_name, got, arrays[pre + out_name], rtol=1e-5, atol=1e-5)
    return problems


HANDLERS = {kind: run_loss_case for kind in BUILDERS}
