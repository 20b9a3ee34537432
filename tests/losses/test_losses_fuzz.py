"""Hypothesis fuzz of every loss in :mod:`assignlab.losses` on degenerate inputs (issue #7).

Batches of 1-3 images on small prior grids (64 x 64, 64 x 96 or 96 x 64 px, strides 8 / 16 / 32,
anchor heads with 1 or 3 anchors per location, free heads with and without DFL) whose ground truth
is drawn from: no GT, one GT, several identical GTs, GTs larger than the image, sub-pixel GTs
(w, h < 1 px), GTs touching the border, zero-area GTs (masked out), random ordinary GTs, padded
rows holding junk coordinates and labels, and optional ignore regions. Logits are normal,
saturated (+-30), exact zeros or a mix; predicted boxes are decoded from the raw box outputs
(differentiably, with the formulas of ``INTERFACES.md``) and then partly replaced by zero-area
boxes, all-zero boxes, or exact copies of a GT (before assignment) or of the assigned GT (after).

Assignments come from the real assigners (``ASSIGNERS``), called as the training engine calls them
(``pred_boxes`` / ``pred_scores`` detached, only for prediction-aware assigners). Every loss is run
end to end -- ``DetectionLoss`` with every entry of ``LOSS_PRESETS`` and with every option (box
loss, classification loss, normaliser, EMA, OHEM, objectness target, CIoU variant),
``V8DetectionLoss``, ``YOLOv5Loss`` -- and the functional losses directly (BCE, focal, QFL, VFL,
DFL, the IoU family, objectness, OHEM, the normalisers). Asserted each time: no exception but the
documented ``ValueError`` s (``DOCUMENTED_ERRORS``, checked by message), a finite total and finite
parts, and finite gradients w.r.t. the class / objectness logits, the raw box outputs and the
decoded boxes.

The last section checks that the loss constructors reject NaN / inf configuration values with a
``ValueError`` naming the parameter.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import re
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS
from assignlab.core import Assignment, GroundTruth, Priors, make_priors
from assignlab.losses import (
    LOSS_PRESETS,
    LOSSES,
    MMDET_CIOU,
    OHEM,
    ULTRALYTICS_CIOU,
    BCEWithLogitsLoss,
    CIoULoss,
    DetectionLoss,
    DIoULoss,
    DistributionFocalLoss,
    FocalLoss,
    GIoULoss,
    IoULoss,
    LossBalanceMonitor,
    Normalizer,
    ObjectnessLoss,
    QualityFocalLoss,
    V8DetectionLoss,
    VarifocalLoss,
    YOLOv5Loss,
    aligned_iou,
    bce_with_logits,
    box_iou_loss,
    classification_targets,
    complete_iou,
    dfl_integral,
    distances_to_dfl_target,
    distribution_focal_loss,
    iou_objectness_target,
    level_balanced_bce,
    ohem_weights,
    quality_focal_loss,
    raw_normalizer,
    scatter_objectness_target,
    sigmoid_focal_loss,
    v8_detection_loss,
    varifocal_loss,
)
from assignlab.models import HeadOutput

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=25)

IMAGES = [(64, 64), (64, 96), (96, 64)]  # (H, W)
ANCHORS = {
    1: [[(15.0, 17.0)], [(30.0, 34.0)], [(60.0, 68.0)]],
    3: [[(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]],
}

#: Message substrings of the ValueErrors the losses document for inputs they cannot handle.
DOCUMENTED_ERRORS = {
    "yolov5_no_obj": "YOLOv5Loss needs an objectness head",
    "obj_required": "obj_loss=True but the head output has no objectness",
}

#: Assigners (name, constructor kwargs) fed to the losses, per head kind.
ANCHOR_ASSIGNERS = [
    ("yolov5", {}),
    ("yolov5", {"distance_weighting": True, "ignore_iou": 0.5, "dedup": "best_pred_iou"}),
    ("maxiou", {"ignore_iof_thr": 0.5}),
    ("atss", {}),
    ("hambox", {}),
    ("noisy", {}),
    ("tal", {}),
    ("simota", {}),
]
FREE_ASSIGNERS = [
    ("atss", {"ignore_iof_thr": 0.5}),
    ("fcos", {}),
    ("topk", {}),
    ("maxiou", {}),
    ("simota", {}),
    ("simota", {"flavour": "yolox"}),
    ("tal", {}),
    ("tal", {"flavour": "ultralytics", "topk": 10, "alpha": 0.5}),
    ("dsl", {}),
    ("centernet", {}),
]


@functools.cache
def _priors(image: tuple[int, int], na: int) -> Priors:
    """Anchor priors (``na`` per location) when ``na`` > 0, else point priors."""
    return make_priors(image, strides=(8, 16, 32), anchors=ANCHORS[na] if na else None)


# ------------------------------------------------------------------------------ strategies
GT_KINDS = ("normal", "identical", "larger", "subpixel", "border", "zero_area")


@st.composite
def gt_image(draw, image: tuple[int, int]) -> list[list[float]]:
    """The boxes of one image: 0 to 3 groups, each of one degenerate (or ordinary) kind."""
    H, W = image
    kinds = draw(st.lists(st.sampled_from(GT_KINDS), max_size=3))
    out: list[list[float]] = []
    f = functools.partial(st.floats, allow_nan=False, allow_infinity=False)
    for k in kinds:
        if k in ("normal", "identical"):
            x, y = draw(f(0, W - 2)), draw(f(0, H - 2))
            w, h = draw(f(1, W)), draw(f(1, H))
            out += [[x, y, x + w, y + h]] * (draw(st.integers(2, 4)) if k == "identical" else 1)
        elif k == "larger":
            g = [draw(f(0, 200)) for _ in range(4)]
            out.append([-g[0], -g[1], W + g[2], H + g[3]])
        elif k == "subpixel":
            x, y = draw(f(0, W - 1)), draw(f(0, H - 1))
            w, h = draw(f(1e-3, 0.99)), draw(f(1e-3, 0.99))
            out.append([x, y, x + w, y + h])
        elif k == "border":
            side = draw(st.sampled_from(["left", "top", "right", "bottom", "whole", "corner"]))
            s = draw(f(1, 40))
            out.append({"left": [0, 10, s, 30], "top": [10, 0, 30, s], "right": [W - s, 10, W, 30],
                        "bottom": [10, H - s, 30, H], "whole": [0, 0, W, H],
                        "corner": [W - 0.5, H - 0.5, W, H]}[side])
        else:  # zero width or height: kept in place, masked out by from_lists
            x, y = draw(f(0, W)), draw(f(0, H))
            out.append([x, y, x, y + 5] if draw(st.booleans()) else [x, y, x + 5, y])
    return out


TENSOR_MODES = ("normal", "saturated", "zeros", "mixed")


def _values(shape, mode: str, gen: torch.Generator, scale: float = 2.0) -> torch.Tensor:
    """Random logits: normal, +-30, exact zeros, or an elementwise mix of the three."""
    x = torch.randn(shape, generator=gen) * scale
    if mode == "normal":
        return x
    sat = torch.where(torch.rand(shape, generator=gen) > 0.5, 30.0, -30.0)
    if mode == "saturated":
        return sat
    if mode == "zeros":
        return torch.zeros(shape)
    pick = torch.randint(0, 3, shape, generator=gen)
    return torch.where(pick == 0, x, torch.where(pick == 1, sat, torch.zeros(shape)))


@dataclass
class Problem:
    priors: Priors
    gt: GroundTruth
    out: HeadOutput  # leaves with requires_grad
    pred: torch.Tensor  # (B, N, 4) decoded from out.box (differentiable), partly overridden
    snap: float  # fraction of positives whose predicted box is replaced by their GT after assignment
    seed: int

    def __repr__(self) -> str:  # hypothesis prints it for a failing example
        o, g = self.out, self.gt
        return (f"Problem(image={self.priors.image_size}, N={self.priors.num_priors}, kind={o.kind!r}, "
                f"reg_max={o.reg_max}, C={o.cls.shape[-1]}, B={g.batch_size}, snap={self.snap}, seed={self.seed}, "
                f"gt_boxes={g.boxes.tolist()}, gt_mask={g.mask.tolist()}, ignore={g.ignore_mask is not None})")

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis' pretty printer
        printer.text(repr(self))

    @property
    def leaves(self) -> list[torch.Tensor]:
        return [t for t in (self.out.cls, self.out.box, self.out.obj) if t is not None]


def decode(out: HeadOutput, priors: Priors) -> torch.Tensor:
    """``INTERFACES.md`` decoding (YOLOv5 anchor formula; free head softplus or DFL distances)."""
    pts, s = priors.points, priors.strides[:, None]
    if out.kind == "anchor":
        anc = priors.anchors
        t = out.box.sigmoid()
        c = pts + (2 * t[..., :2] - 1) * s
        wh = (2 * t[..., 2:]) ** 2 * (anc[:, 2:] - anc[:, :2])
        return torch.cat([c - wh / 2, c + wh / 2], -1)
    d = (dfl_integral(out.box, out.reg_max) if out.reg_max else F.softplus(out.box)) * s
    return torch.cat([pts - d[..., :2], pts + d[..., 2:]], -1)


@st.composite
def problems(draw, head: str | None = None, reg_max: int | None = None, num_classes: int | None = None) -> Problem:
    image = draw(st.sampled_from(IMAGES))
    B = draw(st.integers(1, 3))
    C = num_classes if num_classes is not None else draw(st.sampled_from([1, 3]))
    kind = head or draw(st.sampled_from(["anchor", "free"]))
    R = 0 if kind == "anchor" else (reg_max if reg_max is not None else draw(st.sampled_from([0, 4])))
    na = draw(st.sampled_from([1, 3])) if kind == "anchor" else 0
    priors = _priors(image, na)
    N = priors.num_priors
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)

    boxes = [torch.tensor(draw(gt_image(image)), dtype=torch.float32).reshape(-1, 4) for _ in range(B)]
    labels = [torch.randint(0, C, (len(b),), generator=gen) for b in boxes]
    ignore = None
    if draw(st.booleans()):
        ignore = [torch.tensor(draw(gt_image(image)), dtype=torch.float32).reshape(-1, 4) for _ in range(B)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zero-area GTs' "masked out" warning
        gt = GroundTruth.from_lists(boxes, labels=labels, ignore=ignore)
    junk = draw(st.integers(0, 2))
    if junk:  # padded rows with junk coordinates: must change nothing
        jb = torch.tensor([[-1e4, 5.0, 3e4, 7.0], [10.0, 10.0, 20.0, 20.0]])[:junk]
        gt = GroundTruth(
            boxes=torch.cat([gt.boxes, jb.expand(B, junk, 4)], 1),
            labels=torch.cat([gt.labels, torch.full((B, junk), C - 1)], 1),
            mask=torch.cat([gt.mask, torch.zeros(B, junk, dtype=torch.bool)], 1),
            ignore=gt.ignore, ignore_mask=gt.ignore_mask,
        )

    modes = [draw(st.sampled_from(TENSOR_MODES)) for _ in range(3)]
    width = 4 * (R + 1) if R else 4
    out = HeadOutput(
        cls=_values((B, N, C), modes[0], gen).requires_grad_(True),
        box=_values((B, N, width), modes[1], gen).requires_grad_(True),
        obj=_values((B, N), modes[2], gen).requires_grad_(True) if kind == "anchor" else None,
        kind=kind, reg_max=R,
    )
    pred = decode(out, priors)
    fracs = st.sampled_from([0.0, 0.0, 0.3, 1.0])
    zero_area, all_zero, copy_gt = draw(fracs), draw(fracs), draw(fracs)
    if zero_area:  # x1 == x2, y1 == y2 (still differentiable through the centre)
        c = (pred[..., :2] + pred[..., 2:]) / 2
        m = torch.rand(B, N, 1, generator=gen) < zero_area
        pred = torch.where(m, torch.cat([c, c], -1), pred)
    if all_zero:
        m = torch.rand(B, N, 1, generator=gen) < all_zero
        pred = torch.where(m, torch.zeros_like(pred), pred)
    if copy_gt and gt.max_boxes:  # some predictions are exactly a GT of their image (row 0)
        m = (torch.rand(B, N, 1, generator=gen) < copy_gt) & gt.mask[:, :1, None]
        pred = torch.where(m, gt.boxes[:, :1].expand(B, N, 4), pred)
    snap = draw(fracs)
    return Problem(priors=priors, gt=gt, out=out, pred=pred, snap=snap, seed=seed)


# ------------------------------------------------------------------------------ helpers
def assign(name: str, kw: dict, p: Problem) -> Assignment:
    """Call an assigner as the training engine does."""
    inst = ASSIGNERS[name](**kw)
    if getattr(inst, "requires_predictions", False):
        scores = p.out.cls.detach().sigmoid()
        if p.out.obj is not None:
            scores = scores * p.out.obj.detach().sigmoid()[..., None]
        a = inst(p.priors, p.gt, pred_boxes=p.pred.detach(), pred_scores=scores)
    else:
        a = inst(p.priors, p.gt)
    a.validate(p.gt)
    return a


def snapped(p: Problem, a: Assignment) -> torch.Tensor:
    """Predicted boxes with a fraction of the positives replaced by exactly their assigned GT."""
    if not p.snap:
        return p.pred
    gen = torch.Generator().manual_seed(p.seed + 1)
    m = a.positive & (torch.rand(a.shape, generator=gen) < p.snap)
    return torch.where(m[..., None], a.target_boxes(p.gt), p.pred)


def check_finite(total: torch.Tensor, parts: dict, inputs: list[torch.Tensor], what: str = "") -> None:
    """Total and parts finite and >= 0, gradients w.r.t. ``inputs`` finite (None when unused)."""
    assert total.dim() == 0 and torch.isfinite(total), f"{what}: total {total} parts {parts}"
    for k, v in parts.items():
        assert torch.isfinite(v).all(), f"{what}: part {k} = {v}"
        assert (v >= -1e-5).all(), f"{what}: part {k} = {v} is negative"
    grads = torch.autograd.grad(total, inputs, allow_unused=True, retain_graph=True)
    for i, g in enumerate(grads):
        assert g is None or torch.isfinite(g).all(), f"{what}: non-finite gradient of input {i}"


def run_loss(loss, p: Problem, a: Assignment, what: str = "") -> tuple[torch.Tensor, dict]:
    pred = snapped(p, a)
    total, parts = loss(p.out, pred, p.priors, p.gt, a)
    check_finite(total, parts, [*p.leaves, pred], what)
    return total, parts


def assigners_for(kind: str):
    return st.sampled_from(ANCHOR_ASSIGNERS if kind == "anchor" else FREE_ASSIGNERS)


def _preset(name: str):
    p = LOSS_PRESETS[name]
    return DetectionLoss(**copy.deepcopy(p)) if isinstance(p, dict) else p()


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("preset", sorted(LOSS_PRESETS))
@FEW
@given(data=st.data(), kind=st.sampled_from(["anchor", "free"]))
def test_every_preset_on_real_assignments(preset, data, kind):
    p = data.draw(problems(head=kind), label="problem")
    name, kw = data.draw(assigners_for(kind), label="assigner")
    a = assign(name, kw, p)
    loss = _preset(preset)
    if isinstance(loss, YOLOv5Loss) and p.out.obj is None:
        with pytest.raises(ValueError, match=DOCUMENTED_ERRORS["yolov5_no_obj"]):
            loss(p.out, p.pred, p.priors, p.gt, a)
        return
    total, parts = run_loss(loss, p, a, f"{preset} / {name}{kw}")
    if isinstance(loss, DetectionLoss):
        assert total.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-5, abs=1e-5)
        if not a.positive.any():
            assert parts["box"].item() == 0 and parts["dfl"].item() == 0


@pytest.mark.parametrize("cls_loss", sorted(LOSSES))
@settings(SETTINGS, max_examples=20)
@given(
    data=st.data(),
    kind=st.sampled_from(["anchor", "free"]),
    box_loss=st.sampled_from(["iou", "giou", "diou", "ciou"]),
    normalize=st.sampled_from(["num_pos", "target_sum", "none"]),
    iou_target=st.booleans(),
    gr=st.sampled_from([0.0, 0.5, 1.0]),
    ema=st.sampled_from([None, 0.0, 0.9]),
    ohem=st.sampled_from([None, 0.0, 3.0]),
    ciou=st.sampled_from([None, MMDET_CIOU, ULTRALYTICS_CIOU]),
    obj_loss=st.sampled_from([None, False, True]),
)
def test_detection_loss_options(cls_loss, data, kind, box_loss, normalize, iou_target, gr, ema, ohem, ciou,
                                obj_loss):
    p = data.draw(problems(head=kind), label="problem")
    name, kw = data.draw(assigners_for(kind), label="assigner")
    a = assign(name, kw, p)
    exponent = data.draw(st.sampled_from([0.0, 0.5, 1.5, 2.0]), label="gamma / beta")
    cls_kwargs = {"focal": {"gamma": exponent}, "qfl": {"beta": exponent}, "vfl": {"gamma": exponent}}.get(cls_loss, {})
    loss = DetectionLoss(cls_loss=cls_loss, box_loss=box_loss, obj_loss=obj_loss, normalize=normalize,
                         iou_target_objectness=iou_target, gr=gr, normalizer_ema=ema, ohem_ratio=ohem,
                         ohem_min_negatives=data.draw(st.integers(0, 5), label="min_neg"),
                         cls_kwargs=cls_kwargs, ciou_kwargs=ciou)
    if obj_loss and p.out.obj is None:
        with pytest.raises(ValueError, match=DOCUMENTED_ERRORS["obj_required"]):
            loss(p.out, p.pred, p.priors, p.gt, a)
        return
    what = f"{loss!r} / {name}{kw}"
    run_loss(loss, p, a, what)
    # a second call (running EMA normaliser) and an empty assignment stay finite
    run_loss(loss, p, a, what + " (2nd call)")
    _, parts = run_loss(loss, p, Assignment.empty(*a.shape), what + " (no positives)")
    assert parts["box"].item() == 0 and parts["dfl"].item() == 0


@FEW
@given(data=st.data(), reg_max=st.sampled_from([1, 4, 15]), multiply=st.booleans())
def test_v8_loss_with_tal(data, reg_max, multiply):
    p = data.draw(problems(head="free", reg_max=reg_max), label="problem")
    tal = ASSIGNERS["tal"].ultralytics()
    scores = p.out.cls.detach().sigmoid()
    a = tal(p.priors, p.gt, pred_boxes=p.pred.detach(), pred_scores=scores)
    loss = V8DetectionLoss(multiply_batch=multiply)
    total, parts = run_loss(loss, p, a, "v8")
    factor = p.out.cls.shape[0] if multiply else 1
    assert total.item() == pytest.approx(factor * sum(v.item() for v in parts.values()), rel=1e-5, abs=1e-5)
    run_loss(v8_detection_loss(box_loss="giou"), p, a, "v8 giou")


@SETTINGS
@given(
    data=st.data(),
    fl_gamma=st.sampled_from([0.0, 0.5, 1.5, 2.0]),
    label_smoothing=st.sampled_from([0.0, 0.1]),
    pw=st.sampled_from([1.0, 2.0]),
    gr=st.sampled_from([0.0, 1.0]),
    multiply=st.booleans(),
    assigner_kw=st.sampled_from([{}, {"distance_weighting": True}, {"ignore_iou": 0.4, "dedup": "best_pred_iou"},
                                 {"recover_unmatched": True, "adaptive_radius": True}]),
)
def test_yolov5_loss(data, fl_gamma, label_smoothing, pw, gr, multiply, assigner_kw):
    p = data.draw(problems(head="anchor"), label="problem")
    a = assign("yolov5", assigner_kw, p)
    loss = YOLOv5Loss(fl_gamma=fl_gamma, label_smoothing=label_smoothing, cls_pw=pw, obj_pw=pw, gr=gr,
                      multiply_batch=multiply)
    total, parts = run_loss(loss, p, a, repr(loss))
    factor = p.out.cls.shape[0] if multiply else 1
    assert total.item() == pytest.approx(factor * sum(v.item() for v in parts.values()), rel=1e-5, abs=1e-5)
    if len(a.matches) == 0:
        assert parts["box"].item() == 0


def test_documented_errors():
    """The ValueErrors the fuzz accepts are raised with the documented messages."""
    pri = _priors((64, 64), 0)
    N = pri.num_priors
    gt = GroundTruth.from_lists([torch.tensor([[4.0, 4.0, 30.0, 30.0]])])
    free = HeadOutput(cls=torch.zeros(1, N, 2), box=torch.zeros(1, N, 4), obj=None, kind="free", reg_max=0)
    pred = decode(free, pri)
    a = ASSIGNERS["atss"]()(pri, gt)
    with pytest.raises(ValueError, match=DOCUMENTED_ERRORS["obj_required"]):
        DetectionLoss(obj_loss=True)(free, pred, pri, gt, a)
    apri = _priors((64, 64), 1)
    a5 = ASSIGNERS["yolov5"]()(apri, gt)
    with pytest.raises(ValueError, match=DOCUMENTED_ERRORS["yolov5_no_obj"]):
        YOLOv5Loss()(free, decode(free, apri), apri, gt, a5)


# ------------------------------------------------------------------------------ functional losses
@st.composite
def logits_and_targets(draw, max_rows: int = 40):
    n, C = draw(st.integers(0, max_rows)), draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = _values((n, C), draw(st.sampled_from(TENSOR_MODES)), gen, scale=draw(st.sampled_from([1.0, 10.0])))
    tmode = draw(st.sampled_from(["hard", "soft", "zeros", "ones", "tiny", "sigmoid"]))
    t = {"hard": (torch.rand(n, C, generator=gen) > 0.7).float(),
         "soft": torch.rand(n, C, generator=gen),
         "zeros": torch.zeros(n, C),
         "ones": torch.ones(n, C),
         "tiny": torch.rand(n, C, generator=gen) * 1e-6,
         "sigmoid": x.sigmoid()}[tmode]  # target == prediction: |t - sigma| = 0 (QFL / VFL pow)
    return x.requires_grad_(True), t


@SETTINGS
@given(
    xt=logits_and_targets(),
    alpha=st.sampled_from([-1.0, 0.0, 0.25, 0.75, 1.0]),
    gamma=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]),
    beta=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    iou_weighted=st.booleans(),
)
def test_classification_losses(xt, alpha, gamma, beta, iou_weighted):
    x, t = xt
    n = x.shape[0]
    vals = {
        "bce": bce_with_logits(x, t),
        "focal": sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma),
        "qfl": quality_focal_loss(x, t, beta=beta),
        "vfl": varifocal_loss(x, t, alpha=max(alpha, 0.0), gamma=gamma, iou_weighted=iou_weighted),
    }
    w = torch.rand(n)
    mods = [BCEWithLogitsLoss(), FocalLoss(alpha=alpha, gamma=gamma), QualityFocalLoss(beta=beta),
            VarifocalLoss(alpha=max(alpha, 0.0), gamma=gamma, iou_weighted=iou_weighted)]
    # QFL's (labels, scores) tuple form, background label C included
    labels = torch.randint(0, x.shape[1] + 1, (n,))
    vals["qfl-tuple"] = QualityFocalLoss(beta=beta)(x, (labels, t[:, 0]), weight=w, avg_factor=1.0)
    for m in mods:  # weights per row, mean / sum / avg_factor (0 included)
        vals[f"{type(m).__name__}-mean"] = m(x, t, weight=w)
        vals[f"{type(m).__name__}-sum"] = m(x, t, reduction_override="sum")
        vals[f"{type(m).__name__}-avg0"] = m(x, t, weight=w, avg_factor=0.0)
        vals[f"{type(m).__name__}-avg"] = m(x, t, avg_factor=torch.tensor(float(n)))
    for k, v in vals.items():
        assert torch.isfinite(v).all(), k
        assert (v >= -1e-6).all(), k
        (g,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
        assert g is None or torch.isfinite(g).all(), f"{k}: gradient"
    # integer class ids (C = background) give the one-hot result
    ids = torch.randint(0, x.shape[1] + 1, (n,))
    assert torch.isfinite(bce_with_logits(x, ids)).all() and torch.isfinite(sigmoid_focal_loss(x, ids)).all()


BOX_MODES = ("normal", "point", "zero_w", "zero_h", "all_zero", "huge", "tiny", "identical")


def _boxes(n: int, mode: str, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 100 - 20
    wh = torch.rand(n, 2, generator=gen) * 60
    if mode == "point":
        wh = wh * 0
    elif mode == "zero_w":
        wh[:, 0] = 0
    elif mode == "zero_h":
        wh[:, 1] = 0
    elif mode == "all_zero":
        xy, wh = xy * 0, wh * 0
    elif mode == "huge":
        xy, wh = xy * 100 - 5e3, wh * 1e3
    elif mode == "tiny":
        wh = wh * 1e-4
    return torch.cat([xy, xy + wh], -1)


@st.composite
def box_pairs(draw):
    n = draw(st.integers(0, 30))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    pm, tm = draw(st.sampled_from(BOX_MODES)), draw(st.sampled_from(BOX_MODES))
    target = _boxes(n, tm, gen)
    pred = target.clone() if pm == "identical" else _boxes(n, pm, gen)
    if draw(st.booleans()):  # a mix: some rows identical to the target, some zero-area
        pick = torch.randint(0, 3, (n, 1), generator=gen)
        c = (pred[:, :2] + pred[:, 2:]) / 2
        pred = torch.where(pick == 0, target, torch.where(pick == 1, torch.cat([c, c], -1), pred))
    return pred.requires_grad_(True), target


@SETTINGS
@given(pt=box_pairs(), eps=st.sampled_from([1e-7, 1e-6, 1e-9]))
def test_box_losses(pt, eps):
    pred, target = pt
    n = pred.shape[0]
    vals = {}
    for kind in ("iou", "giou", "diou", "ciou"):
        vals[kind] = box_iou_loss(pred, target, kind, eps)
        vals[f"sim-{kind}"] = 1 - aligned_iou(pred, target, kind, eps)
    vals["ciou-mmdet"] = 1 - complete_iou(pred, target, **MMDET_CIOU)
    vals["ciou-ultra"] = 1 - complete_iou(pred, target, **ULTRALYTICS_CIOU)
    w4 = torch.rand(n, 4)
    for m in (IoULoss(), GIoULoss(), DIoULoss(), CIoULoss(), CIoULoss(**MMDET_CIOU)):
        vals[f"{type(m).__name__}-mean"] = m(pred, target, weight=w4)
        vals[f"{type(m).__name__}-avg0"] = m(pred, target, avg_factor=0.0)
    for k, v in vals.items():
        assert torch.isfinite(v).all(), f"{k}: {v}"
        assert (v >= -1e-5).all(), f"{k} negative: {v}"
        if not k.endswith("avg0"):  # avg_factor 0 divides the sum by float32 eps
            assert (v <= 3 + 1e-5).all(), f"{k} above 3: {v}"
        (g,) = torch.autograd.grad(v.sum(), pred, allow_unused=True)
        assert g is None or torch.isfinite(g).all(), f"{k}: gradient"
    for kind in ("iou", "giou", "diou"):
        assert (vals[kind] <= {"iou": 1, "giou": 2, "diou": 2}[kind] + 1e-5).all()


@SETTINGS
@given(
    reg_max=st.sampled_from([1, 4, 15]),
    n=st.integers(0, 30),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(TENSOR_MODES),
    tmode=st.sampled_from(["inside", "integers", "outside", "edges"]),
)
def test_dfl(reg_max, n, seed, mode, tmode):
    gen = torch.Generator().manual_seed(seed)
    logits = _values((n, 4 * (reg_max + 1)), mode, gen, scale=5.0).requires_grad_(True)
    t = {"inside": torch.rand(n, 4, generator=gen) * reg_max,
         "integers": torch.randint(0, reg_max + 1, (n, 4), generator=gen).float(),
         "outside": torch.randn(n, 4, generator=gen) * 3 * reg_max,
         "edges": torch.tensor([0.0, reg_max, reg_max - 0.01, 1e-6]).expand(n, 4)}[tmode]
    side = logits.reshape(n, 4, reg_max + 1)
    vals = {"dfl": distribution_focal_loss(side, t),
            "module": DistributionFocalLoss()(side.reshape(-1, reg_max + 1), t.reshape(-1), avg_factor=0.0),
            "integral": dfl_integral(logits, reg_max)}
    for k, v in vals.items():
        assert torch.isfinite(v).all(), k
        (g,) = torch.autograd.grad(v.sum(), logits, allow_unused=True)
        assert g is None or torch.isfinite(g).all(), f"{k}: gradient"
    assert (vals["dfl"] >= -1e-5).all()
    d = vals["integral"]
    assert ((d >= -1e-5) & (d <= reg_max + 1e-4)).all()
    # targets from GTs larger than the image / sub-pixel GTs stay in [0, reg_max - eps]
    pts = torch.rand(n, 2, generator=gen) * 64
    strides = torch.tensor([8.0, 16.0, 32.0])[torch.randint(0, 3, (n,), generator=gen)]
    boxes = torch.cat([pts - torch.rand(n, 2, generator=gen) * 500, pts + torch.rand(n, 2, generator=gen) * 1e-3], -1)
    dt = distances_to_dfl_target(pts, boxes, strides, reg_max)
    assert ((dt >= 0) & (dt <= reg_max - 0.01 + 1e-6)).all()


@SETTINGS
@given(p=problems(head="anchor"), gr=st.sampled_from([0.0, 0.3, 1.0]), iou_target=st.booleans(),
       pos_weight=st.sampled_from([None, 1.0, 3.0]), all_ignored=st.booleans())
def test_objectness_losses(p, gr, iou_target, pos_weight, all_ignored):
    a = assign("maxiou", {"ignore_iof_thr": 0.5}, p)
    if all_ignored:
        a = Assignment.from_gt_index(torch.full(a.shape, -1), ignore=torch.ones(a.shape, dtype=torch.bool))
    pred = snapped(p, a)
    tb = a.target_boxes(p.gt)
    t = iou_objectness_target(pred, tb, a.positive, gr)
    assert torch.isfinite(t).all() and (t >= 0).all() and (t <= 1 + 1e-6).all()
    assert (t[~a.positive] == 0).all()
    loss = ObjectnessLoss(iou_target=iou_target, gr=gr)
    val, per_level = loss(p.out.obj, p.priors, a.positive, a.ignore, pred_boxes=pred, target_boxes=tb,
                          quality=a.quality)
    check_finite(val, {"per_level": per_level.detach()}, [p.out.obj], repr(loss))
    if all_ignored:
        assert val.item() == 0
    lb, _ = level_balanced_bce(p.out.obj, t, p.priors.levels, (4.0, 1.0, 0.4), a.ignore, pos_weight=pos_weight)
    check_finite(lb, {}, [p.out.obj], "level_balanced_bce")
    # sparse rows -> dense target (max over duplicates)
    gen = torch.Generator().manual_seed(p.seed)
    B, N = a.shape
    M = int(torch.randint(0, 20, (), generator=gen))
    rows_b, rows_p = torch.randint(0, B, (M,), generator=gen), torch.randint(0, N, (M,), generator=gen)
    dense = scatter_objectness_target((B, N), rows_b, rows_p, torch.rand(M, generator=gen))
    assert torch.isfinite(dense).all() and dense.shape == (B, N)


@SETTINGS
@given(p=problems(), ratio=st.sampled_from([0.0, 1.0, 3.0, 1e3]), min_neg=st.integers(0, 1000),
       mode=st.sampled_from(["num_pos", "target_sum", "none"]), ema=st.sampled_from([None, 0.0, 0.5, 0.99]),
       min_value=st.sampled_from([0.0, 1.0]))
def test_ohem_and_normalizers(p, ratio, min_neg, mode, ema, min_value):
    name, kw = ("yolov5", {}) if p.out.kind == "anchor" else ("atss", {"ignore_iof_thr": 0.5})
    a = assign(name, kw, p)
    per_prior = bce_with_logits(p.out.cls, classification_targets(a, p.gt, p.out.cls.shape[-1])).sum(-1)
    w = ohem_weights(per_prior, a.positive, a.ignore, ratio, min_neg)
    assert torch.equal(w, OHEM(ratio, min_neg)(per_prior, a))
    assert ((w == 0) | (w == 1)).all()
    assert (w[a.positive] == 1).all() and (w[a.ignore] == 0).all()
    kept_neg = (w.bool() & a.negative).sum(1)
    want = torch.minimum((a.positive.sum(1) * ratio).floor().long().clamp(min=min_neg), a.negative.sum(1))
    assert torch.equal(kept_neg, want)
    norm = Normalizer(mode, ema_momentum=ema, min_value=min_value)
    for assignment in (a, Assignment.empty(*a.shape), a):
        z = norm(assignment)
        assert torch.isfinite(z) and z >= min_value
        assert torch.isfinite(raw_normalizer(assignment, mode))
    mon = LossBalanceMonitor(momentum=ema)
    for parts in ({"box": torch.tensor(0.0), "cls": torch.tensor(0.0)}, {"box": torch.tensor(2.0), "cls": 1e-9}):
        mon.update(parts)
    rep = mon.report()
    assert all(math.isfinite(v) for v in rep.values())
    mon.warnings()
    mon.format()


# ------------------------------------------------------------------------------ configuration
#: Every loss class with a constructor; their numeric scalar parameters are found by introspection.
LOSS_CLASSES = [DetectionLoss, V8DetectionLoss, YOLOv5Loss, BCEWithLogitsLoss, FocalLoss, QualityFocalLoss,
                VarifocalLoss, DistributionFocalLoss, IoULoss, GIoULoss, DIoULoss, CIoULoss, ObjectnessLoss, OHEM,
                Normalizer, LossBalanceMonitor]
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _numeric_params(cls) -> list[str]:
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        alternatives = {a.strip() for a in str(p.annotation).strip("'\"").split("|")}
        if alternatives & {"float", "int"}:
            out.append(p.name)
    return out


def _config_cases() -> list:
    cases = [(cls, {name: None}, name) for cls in LOSS_CLASSES for name in _numeric_params(cls)]
    nested = [  # (class, kwargs with None standing for the bad value, name in the message)
        (DetectionLoss, {"weights": {"box": None}}, "weights"),
        (DetectionLoss, {"level_balance": (4.0, None, 0.4)}, "level_balance"),
        (DetectionLoss, {"cls_loss": "focal", "cls_kwargs": {"gamma": None}}, "gamma"),
        (DetectionLoss, {"cls_loss": "qfl", "cls_kwargs": {"beta": None}}, "beta"),
        (DetectionLoss, {"ciou_kwargs": dict(MMDET_CIOU, alpha_iou_threshold=None)}, "alpha_iou_threshold"),
        (V8DetectionLoss, {"weights": {"dfl": None}}, "weights"),
        (V8DetectionLoss, {"box_eps": None}, "box_eps"),
        (YOLOv5Loss, {"balance": (None, 1.0, 0.4)}, "balance"),
        (ObjectnessLoss, {"balance": (4.0, 1.0, None)}, "balance"),
        (CIoULoss, {"alpha_eps": None}, "alpha_eps"),
    ]
    out = []
    for cls, kw, name in cases + nested:
        for label, v in NON_FINITE.items():
            out.append(pytest.param(cls, kw, name, v, id=f"{cls.__name__}-{name}-{kw!s:.40}-{label}"))
    return out


def _fill(obj, value):
    if obj is None:
        return value
    if isinstance(obj, dict):
        return {k: _fill(v, value) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_fill(v, value) for v in obj)
    return obj


def test_config_introspection_finds_the_known_parameters():
    assert {"gr", "box_eps", "normalizer_ema", "ohem_ratio"} <= set(_numeric_params(DetectionLoss))
    assert {"box", "obj", "cls", "gr", "label_smoothing", "fl_gamma"} <= set(_numeric_params(YOLOv5Loss))
    assert {"alpha", "gamma", "loss_weight"} <= set(_numeric_params(FocalLoss))
    assert {"min_value", "ema_momentum"} <= set(_numeric_params(Normalizer))


@pytest.mark.parametrize("cls,kw,name,value", _config_cases())
def test_non_finite_loss_config_rejected(cls, kw, name, value):
    cls(**_fill(kw, 0.5))  # the same configuration with a finite value is fine
    with pytest.raises(ValueError, match=re.escape(name)):
        cls(**_fill(kw, value))


def test_non_finite_functional_arguments_rejected():
    loss, pos = torch.rand(1, 5), torch.tensor([[True, False, False, False, False]])
    for v in NON_FINITE.values():
        with pytest.raises(ValueError, match="neg_pos_ratio"):
            ohem_weights(loss, pos, neg_pos_ratio=v)
        with pytest.raises(ValueError, match="min_negatives"):
            ohem_weights(loss, pos, min_negatives=v)
