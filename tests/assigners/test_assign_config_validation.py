"""Every numeric constructor parameter of every registered assigner rejects NaN and +-inf.

The parameters are found by introspecting the constructors of ``assignlab.assigners.ASSIGNERS``
(a parameter is numeric when its annotation has a ``float`` or ``int`` alternative, e.g.
``float``, ``int | None``, ``float | Sequence[float]``, or, unannotated, when its default is a
number), so assigners and parameters added later are covered without editing this file. Each
call must raise a ``ValueError`` whose message names the parameter (the check is
:func:`assignlab.assigners.base.check_finite_args`, applied to every ``Assigner`` subclass).
"""

from __future__ import annotations

import inspect
import math
import re

import pytest

from assignlab.assigners import ASSIGNERS
from assignlab.assigners.base import Assigner, check_finite_args, finite, positive, positive_int, unit_interval

BAD = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _numeric(p: inspect.Parameter) -> bool:
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
        return False
    if p.annotation is not inspect.Parameter.empty:
        alternatives = {a.strip() for a in str(p.annotation).strip("'\"").split("|")}
        return bool(alternatives & {"float", "int"})
    return isinstance(p.default, (int, float)) and not isinstance(p.default, bool)


def _params() -> list:
    out = []
    for name in sorted(ASSIGNERS):
        sig = inspect.signature(ASSIGNERS[name].__init__)
        for p in list(sig.parameters.values())[1:]:
            if _numeric(p):
                for label, v in BAD.items():
                    out.append(pytest.param(name, p.name, v, id=f"{name}-{p.name}-{label}"))
    return out


PARAMS = _params()


def test_introspection_finds_the_known_parameters():
    found = {(n, p) for n, p, _ in (c.values for c in PARAMS)}
    for want in [("atss", "square_scale"), ("atss", "ignore_iof_thr"), ("tal", "alpha"), ("tal", "beta"),
                 ("simota", "iou_weight"), ("dsl", "soft_center_radius"), ("fcos", "radius"),
                 ("maxiou", "neg_iou_thr"), ("yolov5", "anchor_t"), ("noisy", "gamma"), ("topk", "k"),
                 ("centernet", "min_overlap"), ("hambox", "t1")]:
        assert want in found, want
    for name in ASSIGNERS:  # every assigner has at least its max_pairs
        assert (name, "max_pairs") in found


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_defaults_construct(name):
    ASSIGNERS[name]()


@pytest.mark.parametrize("name,param,value", PARAMS)
def test_non_finite_parameter_rejected(name, param, value):
    with pytest.raises(ValueError, match=rf"\b{re.escape(param)}\b"):
        ASSIGNERS[name](**{param: value})


@pytest.mark.parametrize("name,param,value", PARAMS[::3])
def test_non_finite_positional_parameter_rejected(name, param, value):
    """The same check when the value is passed positionally."""
    sig = inspect.signature(ASSIGNERS[name].__init__)
    names = list(sig.parameters)[1:]
    i = names.index(param)
    args = [sig.parameters[n].default for n in names[:i]] + [value]
    with pytest.raises(ValueError, match=rf"\b{re.escape(param)}\b"):
        ASSIGNERS[name](*args)


def test_sequence_parameters_with_nan_rejected():
    with pytest.raises(ValueError, match="regress_ranges"):
        ASSIGNERS["fcos"](regress_ranges=((-1.0, math.nan), (64.0, math.inf)))
    with pytest.raises(ValueError, match="size_ranges"):
        ASSIGNERS["centernet"](size_ranges=((0.0, math.nan),))
    with pytest.raises(ValueError, match="neg_iou_thr"):
        ASSIGNERS["maxiou"](neg_iou_thr=(math.nan, 0.4))
    # infinity where it is meaningful (FCOS' last range) is still accepted
    ASSIGNERS["fcos"](regress_ranges=((-1.0, 64.0), (64.0, math.inf)))


def test_helpers_reject_non_finite():
    for v in BAD.values():
        for fn in (finite, positive, positive_int, unit_interval):
            with pytest.raises(ValueError, match="my_param"):
                fn("my_param", v)
    assert finite("x", 2.5) == 2.5 and finite("x", "text") == "text" and finite("x", None) is None
    assert positive("x", 3) == 3.0 and positive_int("x", 3.0) == 3


def test_new_subclasses_are_checked():
    """An assigner written later gets the check without doing anything."""

    class MyAssigner(Assigner):
        def __init__(self, scale: float = 1.0, *extra: float, flag: bool = True, **opts) -> None:
            super().__init__()
            self.scale = scale

    MyAssigner(2.0, 3.0, flag=False, other=1.5)
    for bad in ({"scale": math.nan}, {"other": math.inf}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MyAssigner(**bad)
    with pytest.raises(ValueError, match=r"extra\[1\]"):
        MyAssigner(1.0, 2.0, -math.inf)
    with pytest.raises(ValueError, match="max_pairs"):
        Assigner(max_pairs=math.inf)
    with pytest.raises(TypeError):  # arguments that do not bind: the constructor's own TypeError
        MyAssigner(1.0, scale=2.0)
    # wrapping is idempotent and keeps the signature
    assert check_finite_args(MyAssigner.__init__) is MyAssigner.__init__
    assert list(inspect.signature(MyAssigner.__init__).parameters)[:2] == ["self", "scale"]


def test_call_assigner_passes_predictions_only_to_prediction_aware_assigners():
    import torch

    from assignlab.assigners import ATSSAssigner, TaskAlignedAssigner
    from assignlab.assigners.base import call_assigner
    from assignlab.core import GroundTruth, make_priors

    priors = make_priors((64, 64))
    gt = GroundTruth.from_lists([torch.tensor([[8.0, 8.0, 40.0, 36.0]])], [torch.tensor([0])])
    n = priors.num_priors
    pb = torch.cat([priors.points - 12, priors.points + 12], -1)[None].requires_grad_()
    ps = torch.full((1, n, 1), 0.5, requires_grad=True)
    static = call_assigner(ATSSAssigner(), priors, gt, pb, ps)
    assert torch.equal(static.gt_index, ATSSAssigner()(priors, gt).gt_index) and static.positive.any()
    tal = call_assigner(TaskAlignedAssigner(), priors, gt, pb, ps)  # detached inside: no graph kept
    assert torch.equal(tal.gt_index, TaskAlignedAssigner()(priors, gt, pred_boxes=pb.detach(),
                                                           pred_scores=ps.detach()).gt_index)
    assert tal.positive.any() and not tal.quality.requires_grad
    with pytest.raises(ValueError, match="prediction-aware"):
        call_assigner(TaskAlignedAssigner(), priors, gt)
