"""DetectionLoss: hand-computed value, contract (ignore, parts, presets), and finiteness everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from assignlab.assigners import ASSIGNERS
from assignlab.core import Assignment, GroundTruth, Priors, make_priors
from assignlab.losses import LOSS_PRESETS, LOSSES, DetectionLoss, V8DetectionLoss, v8_detection_loss
from assignlab.models import HeadOutput

LN2 = math.log(2.0)
ANCHORS = [[(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]]
ONES = {"box": 1.0, "obj": 1.0, "cls": 1.0, "dfl": 1.0}


def test_worked_example():
    pri = Priors.from_tensors(torch.tensor([[2.0, 2.0], [6.0, 2.0]]), [2], [8.0])
    gt = GroundTruth(torch.tensor([[[0.0, 0.0, 4.0, 4.0]]]), torch.tensor([[0]]), torch.tensor([[True]]))
    a = Assignment.from_gt_index(torch.tensor([[0, -1]]))
    out = HeadOutput(cls=torch.zeros(1, 2, 1), box=torch.zeros(1, 2, 4), obj=None, kind="free", reg_max=0)
    pred = torch.tensor([[[0.0, 0.0, 4.0, 3.0], [0.0, 0.0, 1.0, 1.0]]])  # IoU 12 / 16 = 0.75
    total, parts = DetectionLoss(box_loss="iou", weights=ONES)(out, pred, pri, gt, a)
    assert parts["box"].item() == pytest.approx(0.25, rel=1e-5)
    assert parts["cls"].item() == pytest.approx(2 * LN2, rel=1e-5)
    assert parts["obj"].item() == 0 and parts["dfl"].item() == 0
    assert total.item() == pytest.approx(0.25 + 2 * LN2, rel=1e-5)
    # weights scale the parts
    _, p2 = DetectionLoss(box_loss="iou", weights={"box": 2.0, "cls": 3.0})(out, pred, pri, gt, a)
    assert p2["box"].item() == pytest.approx(0.5, rel=1e-5) and p2["cls"].item() == pytest.approx(6 * LN2, rel=1e-5)


def _setup(kind: str, reg_max: int = 0, C: int = 3, B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pri = make_priors((64, 64), anchors=ANCHORS if kind == "anchor" else None)
    N = pri.num_priors
    gt = GroundTruth.from_lists([torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0]]),
                                 torch.tensor([[10.0, 10.0, 20.0, 16.0]])],
                                [torch.tensor([0, 2]), torch.tensor([1])])
    gi = torch.full((B, N), -1, dtype=torch.long)
    gi[0, :10] = 0
    gi[0, 40:45] = 1
    gi[1, 5:9] = 0
    ign = torch.zeros(B, N, dtype=torch.bool)
    ign[0, 60:70] = True
    q = torch.rand(B, N, generator=g)
    a = Assignment.from_gt_index(gi, ignore=ign, quality=q, box_weight=q)
    width = 4 * (reg_max + 1) if reg_max else 4
    out = HeadOutput(cls=torch.randn(B, N, C, generator=g), box=torch.randn(B, N, width, generator=g),
                     obj=torch.randn(B, N, generator=g) if kind == "anchor" else None, kind=kind, reg_max=reg_max)
    xy = torch.rand(B, N, 2, generator=g) * 50
    pred = torch.cat([xy, xy + 1 + torch.rand(B, N, 2, generator=g) * 20], -1)
    return pri, gt, a, out, pred


HEADS = [("anchor", 0), ("free", 0), ("free", 4)]


@pytest.mark.parametrize("kind,reg_max", HEADS)
def test_ignored_priors_contribute_nothing(kind, reg_max):
    pri, gt, a, out, pred = _setup(kind, reg_max)
    loss = DetectionLoss(cls_loss="qfl")
    total, _ = loss(out, pred, pri, gt, a)
    ign = a.ignore
    cls2 = torch.where(ign[..., None], torch.full_like(out.cls, 25.0), out.cls)
    obj2 = None if out.obj is None else torch.where(ign, torch.full_like(out.obj, 25.0), out.obj)
    pred2 = torch.where(ign[..., None], torch.full_like(pred, float("nan")), pred)
    out2 = HeadOutput(cls=cls2, box=out.box, obj=obj2, kind=kind, reg_max=reg_max)
    total2, _ = loss(out2, pred2, pri, gt, a)
    assert torch.allclose(total, total2, rtol=1e-6)


def test_obj_head_class_loss_only_on_positives():
    pri, gt, a, out, pred = _setup("anchor")
    loss = DetectionLoss()
    total, parts = loss(out, pred, pri, gt, a)
    neg = ~a.positive
    out2 = HeadOutput(cls=torch.where(neg[..., None], out.cls + 5, out.cls), box=out.box, obj=out.obj,
                      kind="anchor", reg_max=0)
    assert torch.allclose(loss(out2, pred, pri, gt, a)[1]["cls"], parts["cls"])
    # ... but objectness sees the negatives
    out3 = HeadOutput(cls=out.cls, box=out.box, obj=torch.where(neg, out.obj + 5, out.obj), kind="anchor",
                      reg_max=0)
    assert loss(out3, pred, pri, gt, a)[1]["obj"] > parts["obj"]
    # obj_loss=False ignores the head's objectness and then trains background through cls
    _, p_off = DetectionLoss(obj_loss=False)(out, pred, pri, gt, a)
    assert p_off["obj"].item() == 0 and p_off["cls"] > parts["cls"]


def test_objectness_target_modes():
    pri, gt, a, out, pred = _setup("anchor")
    q_target = DetectionLoss(iou_target_objectness=False, weights=ONES)
    _, p = q_target(out, pred, pri, gt, a)
    from assignlab.losses import level_balanced_bce

    want, _ = level_balanced_bce(out.obj, a.quality, pri.levels, (4.0, 1.0, 0.4), a.ignore)
    assert p["obj"].item() == pytest.approx(want.item(), rel=1e-6)
    _, p_iou = DetectionLoss(weights=ONES)(out, pred, pri, gt, a)
    assert p_iou["obj"].item() != pytest.approx(want.item(), rel=1e-3)


def test_normalize_modes_and_ohem():
    pri, gt, a, out, pred = _setup("free")
    _, p_pos = DetectionLoss(normalize="num_pos", weights=ONES)(out, pred, pri, gt, a)
    _, p_sum = DetectionLoss(normalize="target_sum", weights=ONES)(out, pred, pri, gt, a)
    npos, qsum = a.positive.sum().item(), a.quality.sum().item()
    assert p_sum["cls"].item() == pytest.approx(p_pos["cls"].item() * npos / max(qsum, 1.0), rel=1e-5)
    _, p_none = DetectionLoss(normalize="none", weights=ONES)(out, pred, pri, gt, a)
    assert p_none["box"].item() == pytest.approx(p_pos["box"].item() * npos, rel=1e-5)
    # OHEM with ratio 0 keeps only the positives' class loss
    _, p_ohem = DetectionLoss(weights=ONES, ohem_ratio=0.0)(out, pred, pri, gt, a)
    only_pos = a.replace(cls_weight=a.positive.float())
    _, p_ref = DetectionLoss(weights=ONES)(out, pred, pri, gt, only_pos)
    assert p_ohem["cls"].item() == pytest.approx(p_ref["cls"].item(), rel=1e-6)
    _, p_o3 = DetectionLoss(weights=ONES, ohem_ratio=3.0)(out, pred, pri, gt, a)
    assert p_ref["cls"] < p_o3["cls"] < p_pos["cls"]


def test_dfl_part_and_v8_preset():
    pri, gt, a, out, pred = _setup("free", reg_max=4)
    total, parts = v8_detection_loss()(out, pred, pri, gt, a)
    assert parts["dfl"] > 0 and parts["obj"].item() == 0
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-6)
    t8, p8 = V8DetectionLoss()(out, pred, pri, gt, a)
    assert t8.item() == pytest.approx(2 * total.item(), rel=1e-6)  # times batch size
    assert set(LOSS_PRESETS) >= set(LOSSES) | {"v8", "yolov5"}


def test_validation_errors():
    pri, gt, a, out, pred = _setup("free")
    with pytest.raises(ValueError, match="cls_loss"):
        DetectionLoss(cls_loss="softmax")
    with pytest.raises(ValueError, match="box_loss"):
        DetectionLoss(box_loss="l1")
    with pytest.raises(ValueError, match="weights"):
        DetectionLoss(weights={"iou": 1.0})
    with pytest.raises(ValueError, match="normalize"):
        DetectionLoss(normalize="batch")
    with pytest.raises(ValueError, match="pred_boxes"):
        DetectionLoss()(out, pred[:, :-1], pri, gt, a)
    with pytest.raises(ValueError, match="objectness"):
        DetectionLoss(obj_loss=True)(out, pred, pri, gt, a)
    pa, ga, aa, oa, pda = _setup("anchor")
    with pytest.raises(ValueError, match="level_balance"):
        DetectionLoss(level_balance=(1.0, 1.0))(oa, pda, pa, ga, aa)


def _scenario(name, pri, gt, a, out, pred):
    B, N = a.shape
    if name == "no_positives":
        a = Assignment.empty(B, N)
    elif name == "all_ignored":
        a = Assignment.from_gt_index(torch.full((B, N), -1), ignore=torch.ones(B, N, dtype=torch.bool))
    elif name == "saturated":
        sign = torch.where(torch.rand(out.cls.shape) > 0.5, 30.0, -30.0)
        out = HeadOutput(cls=sign, box=out.box * 30, obj=None if out.obj is None else sign[..., 0],
                         kind=out.kind, reg_max=out.reg_max)
    elif name == "zero_area_pred":
        pred = torch.cat([pred[..., :2], pred[..., :2]], -1)
    elif name == "no_gt":
        gt = GroundTruth.empty(B)
        a = Assignment.empty(B, N)
    return gt, a, out, pred


@pytest.mark.parametrize("scenario", ["no_positives", "all_ignored", "saturated", "zero_area_pred", "no_gt"])
@pytest.mark.parametrize("kind,reg_max", HEADS)
@pytest.mark.parametrize("cls_loss", sorted(LOSSES))
def test_finite_everywhere(scenario, kind, reg_max, cls_loss):
    pri, gt, a, out, pred = _setup(kind, reg_max)
    gt, a, out, pred = _scenario(scenario, pri, gt, a, out, pred)
    cls = out.cls.detach().requires_grad_(True)
    box = out.box.detach().requires_grad_(True)
    obj = None if out.obj is None else out.obj.detach().requires_grad_(True)
    pb = pred.detach().requires_grad_(True)
    out = HeadOutput(cls=cls, box=box, obj=obj, kind=kind, reg_max=reg_max)
    for box_loss in ("ciou", "giou"):
        total, parts = DetectionLoss(cls_loss=cls_loss, box_loss=box_loss)(out, pb, pri, gt, a)
        assert torch.isfinite(total), (scenario, box_loss, parts)
        assert all(torch.isfinite(v) for v in parts.values())
        grads = torch.autograd.grad(total, [t for t in (cls, box, obj, pb) if t is not None], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
    if scenario == "all_ignored":
        assert total.item() == 0.0


@pytest.mark.parametrize("name", ["dsl", "simota", "tal", "yolov5", "hambox", "noisy", "centernet"])
def test_any_assigner_with_any_loss(name):
    """Assignments of the registered assigners feed DetectionLoss (all cls losses) unchanged."""
    if name not in ASSIGNERS:
        pytest.fail(f"assigner {name!r} is not registered")
    kind = "anchor" if name in ("yolov5", "hambox", "noisy") else "free"
    pri, gt, _, out, pred = _setup(kind, reg_max=0 if kind == "anchor" else 4)
    assigner = ASSIGNERS[name]()
    a = assigner(pri, gt, pred_boxes=pred, pred_scores=out.cls.sigmoid())
    assert a.positive.any()
    for cls_loss in sorted(LOSSES):
        total, _ = DetectionLoss(cls_loss=cls_loss)(out, pred, pri, gt, a)
        assert torch.isfinite(total)
