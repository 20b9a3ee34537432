"""IoU-target objectness (hand-computed), level balancing, the contested-cell rule, and YOLOv5Loss."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from assignlab.core import Assignment, GroundTruth, Matches, Priors, dense_from_matches, make_priors
from assignlab.losses import (
    ObjectnessLoss,
    YOLOv5Loss,
    complete_iou,
    iou_objectness_target,
    level_balanced_bce,
    scatter_objectness_target,
)

LN2 = math.log(2.0)


@dataclass
class Head:
    cls: torch.Tensor
    box: torch.Tensor
    obj: torch.Tensor | None
    kind: str = "anchor"
    reg_max: int = 0


def test_iou_objectness_target_hand_values():
    pred = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]])
    tgt = torch.tensor([[[0.0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110], [0, 0, 10, 10]]])
    pos = torch.tensor([[True, True, True, False]])
    t = iou_objectness_target(pred, tgt, pos, gr=1.0)
    diou = 1 / 3 - 25 / 325  # same aspect ratio: CIoU = DIoU
    assert t[0].tolist() == pytest.approx([1.0, diou, 0.0, 0.0], abs=1e-6)  # far box: CIoU < 0 -> 0
    t = iou_objectness_target(pred, tgt, pos, gr=0.5)
    assert t[0].tolist() == pytest.approx([1.0, 0.5 + 0.5 * diou, 0.5, 0.0], abs=1e-6)
    assert iou_objectness_target(pred, tgt, pos, gr=0.0)[0].tolist() == [1, 1, 1, 0]
    # detached, and garbage on non-positives cannot leak
    p = pred.clone().requires_grad_(True)
    bad = torch.where(pos[..., None], tgt, torch.full_like(tgt, float("nan")))
    t = iou_objectness_target(p, bad, pos)
    assert not t.requires_grad and torch.isfinite(t).all()


def test_level_balanced_bce_worked_example():
    levels = torch.tensor([0, 0, 1, 1])
    logits = torch.zeros(1, 4)
    target = torch.tensor([[1.0, 0, 0, 0]])
    loss, means = level_balanced_bce(logits, target, levels, (4.0, 1.0))
    assert loss.item() == pytest.approx(5 * LN2, rel=1e-6)  # 3.4657
    assert means.tolist() == pytest.approx([LN2, LN2])
    # ignored priors leave the mean (and its count): level 1 fully ignored -> 0
    logits = torch.tensor([[2.0, -1.0, 5.0, 5.0]])
    ign = torch.tensor([[False, True, True, True]])
    loss, means = level_balanced_bce(logits, target, levels, (4.0, 1.0), ign)
    want = math.log1p(math.exp(-2.0))  # BCE(2, 1)
    assert loss.item() == pytest.approx(4 * want, rel=1e-6) and means[1].item() == 0.0


def test_objectness_loss_module():
    pri = make_priors((32, 32), strides=(16, 32))  # 4 + 1 priors
    pos = torch.tensor([[True, False, False, False, True]])
    quality = torch.tensor([[0.6, 0, 0, 0, 0.9]])
    m = ObjectnessLoss(balance=(4.0, 1.0), iou_target=False)
    loss, means = m(torch.zeros(1, 5), pri, pos, quality=quality)
    assert loss.item() == pytest.approx(5 * LN2, rel=1e-6)
    with pytest.raises(ValueError, match="levels"):
        ObjectnessLoss()(torch.zeros(1, 5), pri, pos, quality=quality)
    with pytest.raises(ValueError, match="needs pred_boxes"):
        ObjectnessLoss(balance=(1.0, 1.0))(torch.zeros(1, 5), pri, pos)


def test_scatter_objectness_target_takes_the_max():
    b = torch.tensor([0, 0, 0, 1])
    p = torch.tensor([2, 2, 0, 2])
    v = torch.tensor([0.3, 0.7, 0.5, -0.0])
    t = scatter_objectness_target((2, 3), b, p, v)
    assert torch.allclose(t, torch.tensor([[0.5, 0.0, 0.7], [0.0, 0.0, 0.0]]))
    # order of the rows does not matter (unlike YOLOv5's last-write-wins)
    perm = torch.tensor([3, 1, 0, 2])
    assert torch.equal(scatter_objectness_target((2, 3), b[perm], p[perm], v[perm]), t)
    assert scatter_objectness_target((1, 2), b[:0], p[:0], v[:0]).tolist() == [[0.0, 0.0]]


def _one_level_setup(ciou_targets):
    """One image, one level of 8 priors (stride 8, 32 x 16 px), 2 classes, two rows of GT 0."""
    pri = Priors.from_tensors(
        make_priors((16, 32), strides=(8,)).points, [8], [8.0],
        anchors=make_priors((16, 32), strides=(8,), anchors=[[(8, 8)]]).anchors,
    )
    gt = GroundTruth(torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]), torch.tensor([[1]]), torch.tensor([[True]]))
    rows = torch.tensor([0, 1])
    m = Matches(batch=torch.zeros(2, dtype=torch.long), prior=rows, gt=torch.zeros(2, dtype=torch.long),
                weight=torch.ones(2), center=torch.tensor([True, False]), score=torch.ones(2))
    a = dense_from_matches(m, 1, 8)
    # predicted boxes: the GT shrunk so that CIoU equals the wanted value (same centre, same aspect)
    pred = torch.zeros(1, 8, 4)
    for r, c in zip(rows.tolist(), ciou_targets):
        half = 4 * math.sqrt(c)
        pred[0, r] = torch.tensor([4 - half, 4 - half, 4 + half, 4 + half])
    return pri, gt, a, pred


def test_yolov5_loss_worked_example():
    pri, gt, a, pred = _one_level_setup([0.8, 0.6])
    head = Head(cls=torch.zeros(1, 8, 2), box=torch.zeros(1, 8, 4), obj=torch.zeros(1, 8))
    loss = YOLOv5Loss(balance=(4.0,))
    total, items = loss(head, pred, pri, gt, a)
    assert items["box"].item() == pytest.approx(0.05 * 0.3, rel=1e-5)
    assert items["cls"].item() == pytest.approx(0.5 * LN2, rel=1e-5)
    assert items["obj"].item() == pytest.approx(4.0 * LN2, rel=1e-5)
    assert total.item() == pytest.approx(sum(v.item() for v in items.values()), rel=1e-6)
    tobj = loss.objectness_target(loss.row_ciou(pred, pri, gt, a), a)
    assert tobj[0, :2].tolist() == pytest.approx([0.8, 0.6], abs=1e-5)
    assert (tobj[0, 2:] == 0).all()


def test_yolov5_loss_duplicates_count_twice_and_errors():
    pri, gt, a, pred = _one_level_setup([0.8, 0.6])
    m = a.matches
    dup = Matches(*(torch.cat([getattr(m, f), getattr(m, f)[:1]]) for f in
                    ("batch", "prior", "gt", "weight", "center", "score")))
    a2 = a.replace(matches=dup)
    head = Head(cls=torch.zeros(1, 8, 2), box=torch.zeros(1, 8, 4), obj=torch.zeros(1, 8))
    _, items = YOLOv5Loss(balance=(4.0,))(head, pred, pri, gt, a2)
    assert items["box"].item() == pytest.approx(0.05 * (0.2 + 0.2 + 0.4) / 3, rel=1e-5)
    # without match rows: one row per positive prior of the dense view (no duplicates)
    _, items = YOLOv5Loss(balance=(4.0,))(head, pred, pri, gt, a.replace(matches=None))
    assert items["box"].item() == pytest.approx(0.05 * (0.2 + 0.4) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="levels"):
        YOLOv5Loss()(head, pred, pri, gt, a)


def test_yolov5_loss_no_matches_finite():
    pri, gt, a, pred = _one_level_setup([0.8, 0.6])
    m = a.matches.select(torch.zeros(2, dtype=torch.bool))
    a0 = dense_from_matches(m, 1, 8)
    logits = torch.full((1, 8, 2), 30.0, requires_grad=True)
    obj = torch.full((1, 8), -30.0, requires_grad=True)
    head = Head(cls=logits, box=torch.zeros(1, 8, 4), obj=obj)
    total, items = YOLOv5Loss(balance=(4.0,))(head, pred.requires_grad_(True), pri, gt, a0)
    assert torch.isfinite(total) and items["box"].item() == 0 and items["cls"].item() == 0
    total.backward()
    assert torch.isfinite(obj.grad).all()


def test_ciou_local_frame_is_translation_invariant():
    a = torch.tensor([[3.0, 4.0, 13.0, 24.0]], dtype=torch.float64)
    b = torch.tensor([[5.0, 2.0, 11.0, 30.0]], dtype=torch.float64)
    shift = torch.tensor([[1000.0, -500.0, 1000.0, -500.0]], dtype=torch.float64)
    assert complete_iou(a, b).item() == pytest.approx(complete_iou(a + shift, b + shift).item(), abs=1e-12)
    assert isinstance(Assignment, type)


@pytest.mark.parametrize("scenario", ["saturated", "zero_area_pred", "no_gt", "all_ignored"])
def test_yolov5_loss_finite_with_the_yolov5_assigner(scenario):
    from assignlab.assigners.yolov5 import YOLOV5S_ANCHORS, YOLOv5Assigner

    pri = make_priors((64, 64), anchors=YOLOV5S_ANCHORS)
    B, N, C = 2, pri.num_priors, 3
    if scenario == "no_gt":
        gt = GroundTruth.empty(B)
    else:
        gt = GroundTruth.from_lists([torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0]]),
                                     torch.tensor([[10.0, 10.0, 20.0, 16.0]])],
                                    [torch.tensor([0, 2]), torch.tensor([1])])
    a = YOLOv5Assigner()(pri, gt)
    if scenario == "all_ignored":
        a = a.replace(ignore=~a.positive)
    g = torch.Generator().manual_seed(0)
    sign = torch.where(torch.rand(B, N, C + 1, generator=g) > 0.5, 30.0, -30.0)
    if scenario != "saturated":
        sign = sign / 30
    cls = sign[..., :C].clone().requires_grad_(True)
    obj = sign[..., C].clone().requires_grad_(True)
    xy = torch.rand(B, N, 2, generator=g) * 60
    wh = torch.zeros(B, N, 2) if scenario == "zero_area_pred" else 1 + torch.rand(B, N, 2, generator=g) * 20
    pred = torch.cat([xy, xy + wh], -1).requires_grad_(True)
    head = Head(cls=cls, box=torch.zeros(B, N, 4), obj=obj)
    total, items = YOLOv5Loss()(head, pred, pri, gt, a)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in items.values())
    for gr in torch.autograd.grad(total, [cls, obj, pred], allow_unused=True):
        assert gr is None or torch.isfinite(gr).all()
    if scenario != "no_gt":
        assert len(a.matches) > 0 and items["box"] > 0


@pytest.mark.parametrize("name", ["atss", "maxiou", "topk"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_yolov5_loss_on_a_dense_assignment_equals_one_row_per_positive(name, label_smoothing):
    """Without ``matches`` (any assigner but YOLOv5's) the loss reads one row per positive prior;
    it must equal the row path fed exactly those rows (values and gradients), ignore band included."""
    from assignlab.assigners import ASSIGNERS
    from assignlab.assigners.yolov5 import YOLOV5S_ANCHORS

    pri = make_priors((64, 96), anchors=[lvl[:1] for lvl in YOLOV5S_ANCHORS])
    B, N, C = 2, pri.num_priors, 3
    gt = GroundTruth.from_lists([torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0], [0, 0, 90, 60]]),
                                 torch.tensor([[10.0, 10.0, 20.0, 16.0]])],
                                [torch.tensor([0, 2, 1]), torch.tensor([1])])
    kw = {"pos_iou_thr": 0.3, "neg_iou_thr": 0.1} if name == "maxiou" else {}
    a = ASSIGNERS[name](**kw)(pri, gt)
    assert a.matches is None and a.positive.sum() >= 4
    if name == "maxiou":
        assert a.ignore.any()
    b, p = a.positive.nonzero(as_tuple=True)
    rows = Matches(b, p, a.gt_index[b, p], a.box_weight[b, p], torch.ones_like(b, dtype=torch.bool),
                   torch.ones_like(b, dtype=torch.float32))
    a_rows = a.replace(matches=rows)
    g = torch.Generator().manual_seed(1)
    cls0, obj0 = torch.randn(B, N, C, generator=g), torch.randn(B, N, generator=g)
    xy = torch.rand(B, N, 2, generator=g) * 60
    pred0 = torch.cat([xy, xy + 2 + torch.rand(B, N, 2, generator=g) * 30], -1)
    loss = YOLOv5Loss(balance=(4.0, 1.0, 0.4), label_smoothing=label_smoothing)
    results = []
    for asg in (a, a_rows):
        cls, obj, pred = (t.clone().requires_grad_(True) for t in (cls0, obj0, pred0))
        total, items = loss(Head(cls=cls, box=torch.zeros(B, N, 4), obj=obj), pred, pri, gt, asg)
        results.append((total, items, torch.autograd.grad(total, [cls, obj, pred])))
    (t_d, i_d, g_d), (t_r, i_r, g_r) = results
    assert t_d.item() == pytest.approx(t_r.item(), rel=1e-6) and i_d["box"].item() > 0 and i_d["cls"].item() > 0
    for k in ("box", "obj", "cls"):
        assert i_d[k].item() == pytest.approx(i_r[k].item(), rel=1e-6, abs=1e-9)
    for x, y in zip(g_d, g_r):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-8)
