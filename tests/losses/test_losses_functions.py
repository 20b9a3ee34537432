"""Hand-computed values, gradients and edge cases of the elementwise losses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.core import Assignment, GroundTruth
from assignlab.losses import (
    LOSSES,
    MMDET_CIOU,
    CIoULoss,
    DistributionFocalLoss,
    FocalLoss,
    QualityFocalLoss,
    VarifocalLoss,
    box_iou_loss,
    class_one_hot,
    classification_targets,
    complete_iou,
    dfl_integral,
    distances_to_dfl_target,
    distribution_focal_loss,
    qfl_dense_target,
    quality_focal_loss,
    sigmoid_focal_loss,
    varifocal_loss,
    weight_reduce,
)

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- reduction / targets
def test_weight_reduce_table():
    loss = torch.tensor([1.0, 2.0, 4.0])
    w = torch.tensor([1.0, 0.0, 0.5])
    assert torch.equal(weight_reduce(loss, w, "none"), torch.tensor([1.0, 0.0, 2.0]))
    assert weight_reduce(loss, w, "sum").item() == 3.0
    assert weight_reduce(loss, w, "mean").item() == 1.0
    eps = torch.finfo(torch.float32).eps
    assert weight_reduce(loss, w, "mean", avg_factor=2.0).item() == pytest.approx(3.0 / (2 + eps), rel=1e-7)
    # a per-row weight broadcasts over the class axis
    l2 = torch.ones(2, 3)
    assert weight_reduce(l2, torch.tensor([1.0, 0.0]), "sum").item() == 3.0
    assert weight_reduce(torch.zeros(0), None, "mean").item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        weight_reduce(loss, None, "avg")


def test_classification_targets_example():
    gt = GroundTruth(torch.tensor([[[0, 0, 10, 10], [5, 5, 20, 20.0]]]), torch.tensor([[0, 1]]),
                     torch.tensor([[True, True]]))
    a = Assignment.from_gt_index(torch.tensor([[1, -1, 0]]), ignore=torch.tensor([[False, True, False]]),
                                 quality=torch.tensor([[0.8, 0.0, 0.6]]))
    soft = classification_targets(a, gt, 2)
    hard = classification_targets(a, gt, 2, soft=False)
    assert torch.allclose(soft[0], torch.tensor([[0.0, 0.8], [0.0, 0.0], [0.6, 0.0]]))
    assert torch.equal(hard[0], torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(a.cls_weight[0], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(class_one_hot(torch.tensor([-1, 0, 2, 3]), 3),
                       torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0.0]]))


# ----------------------------------------------------------------------------- focal / QFL / VFL
def test_focal_worked_example():
    p = torch.tensor([0.1, 0.9])
    x = torch.log(p / (1 - p))
    t = torch.tensor([0.0, 1.0])
    loss = sigmoid_focal_loss(x, t)
    bce = -math.log(0.9)
    assert loss.tolist() == pytest.approx([0.75 * 0.01 * bce, 0.25 * 0.01 * bce], rel=1e-5)
    # integer targets with C = background == one-hot
    logits = torch.randn(5, 3)
    ids = torch.tensor([0, 2, 3, 1, 3])
    assert torch.allclose(sigmoid_focal_loss(logits, ids), sigmoid_focal_loss(logits, class_one_hot(ids, 3)))
    with pytest.raises(ValueError):
        FocalLoss(gamma=-1)


def test_qfl_worked_example_and_minimum():
    x = torch.tensor([0.0])
    assert quality_focal_loss(x, torch.tensor([0.8])).item() == pytest.approx(0.09 * LN2, rel=1e-5)
    # minimised (exactly 0 weight) where sigmoid(x) == target, not at 1
    x_star = torch.logit(torch.tensor([0.8], dtype=torch.float64))
    assert quality_focal_loss(x_star, torch.tensor([0.8], dtype=torch.float64)).item() == pytest.approx(0, abs=1e-12)
    # negative = sigma^beta * BCE(x, 0)
    x = torch.tensor([1.3])
    s = torch.sigmoid(x)
    assert quality_focal_loss(x, torch.tensor([0.0])).item() == pytest.approx((s**2 * -torch.log(1 - s)).item(),
                                                                              rel=1e-5)


def test_qfl_tuple_equals_dense():
    torch.manual_seed(0)
    pred = torch.randn(6, 4)
    labels = torch.tensor([0, 4, 3, 1, 4, 2])  # 4 = background
    scores = torch.tensor([0.7, 0.9, 0.0, 0.3, 0.2, 1.0])  # a positive with score 0 (row 2)
    m = QualityFocalLoss(reduction="none")
    dense = qfl_dense_target(labels, scores, 4)
    assert torch.equal(m(pred, (labels, scores)), m(pred, dense))
    assert m(pred, dense).shape == (6,)


def test_vfl_worked_example():
    x = torch.tensor([0.0, 0.0])
    t = torch.tensor([0.9, 0.0])
    loss = varifocal_loss(x, t)
    assert loss.tolist() == pytest.approx([0.9 * LN2, 0.75 * 0.25 * LN2], rel=1e-5)
    assert varifocal_loss(x, t, iou_weighted=False)[0].item() == pytest.approx(LN2, rel=1e-5)


@pytest.mark.parametrize("name", ["qfl", "vfl", "dfl"])
def test_gradcheck_float64(name):
    torch.manual_seed(1)
    if name == "dfl":
        logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
        target = torch.tensor([0.0, 2.3, 5.99, 3.0, 6.0], dtype=torch.float64)
        fn = lambda x: distribution_focal_loss(x, target)  # noqa: E731
    else:
        logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        target = torch.tensor([[0.0, 0.8, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 1.0]],
                              dtype=torch.float64)
        f = quality_focal_loss if name == "qfl" else varifocal_loss
        fn = lambda x: f(x, target)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_classification_losses_finite_at_saturation(name):
    logits = torch.tensor([[30.0, -30.0, 30.0, -30.0, 1e4, -1e4]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.5, 0.5]])
    loss = LOSSES[name]().elementwise(logits, target)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_exponents_below_one_have_finite_gradients():
    """Regression (issue #7 fuzz): with gamma / beta in (0, 1) the modulating factor is 0 at a
    saturated or exactly-on-target prediction, and autograd's ``0 ** (gamma - 1) = inf`` made the
    gradient NaN. Values are unchanged; the gradient there is 0."""
    r2 = math.sqrt(0.5)
    # focal, gamma 0.5: logit 30 / target 1 (sigmoid(30) == 1 in float32) -> loss 0, gradient 0;
    # logit 0 / target 1: alpha_t 0.25 * sqrt(1 - 0.5) * BCE log 2
    x = torch.tensor([30.0, 0.0], requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.tensor([1.0, 1.0]), gamma=0.5)
    assert loss.tolist() == pytest.approx([0.0, 0.25 * r2 * LN2], abs=1e-7, rel=1e-6)
    loss.sum().backward()
    assert x.grad[0].item() == 0.0 and math.isfinite(x.grad[1].item())
    # same values as torchvision's formula away from the saturated point
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    z, t = torch.linspace(-4, 4, 9), torch.rand(9, generator=torch.Generator().manual_seed(0))
    for alpha in (0.25, -1.0):
        assert torch.allclose(sigmoid_focal_loss(z, t, alpha, 0.5), tv_focal(z, t, alpha, 0.5), rtol=1e-6, atol=1e-7)
    # QFL, beta 0.5: sigma = y = 0.5 -> factor 0 -> loss 0 and gradient 0; y = 0.75 -> sqrt(0.25) * log 2
    x = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = quality_focal_loss(x, torch.tensor([0.5, 0.75]), beta=0.5)
    assert loss.tolist() == pytest.approx([0.0, 0.5 * LN2], abs=1e-7, rel=1e-6)
    loss.sum().backward()
    assert x.grad[0].item() == 0.0 and math.isfinite(x.grad[1].item())
    # VFL, gamma 0.5: positive at logit 30 / q 1 (the unused negative branch was NaN), negative at 0
    x = torch.tensor([30.0, 0.0], requires_grad=True)
    loss = varifocal_loss(x, torch.tensor([1.0, 0.0]), gamma=0.5)
    assert loss[1].item() == pytest.approx(0.75 * r2 * LN2, rel=1e-6)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- DFL
def test_dfl_worked_example_and_integral():
    logits = torch.zeros(1, 5)
    # uniform distribution: CE = log 5 for every bin whatever the split
    assert distribution_focal_loss(logits, torch.tensor([2.3])).item() == pytest.approx(math.log(5), rel=1e-6)
    p = torch.tensor([[1e-9, 1e-9, 0.7, 0.3, 1e-9]])
    lg = p.log()
    want = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert distribution_focal_loss(lg, torch.tensor([2.3])).item() == pytest.approx(want, rel=1e-4)
    # the integral of that distribution is the target
    side = torch.cat([lg] * 4, dim=1)  # reg_max = 4
    assert torch.allclose(dfl_integral(side, 4), torch.full((1, 4), 2.3), atol=1e-5)
    # reg_max = 2 example of the docstring
    lg2 = torch.tensor([[0.0, 0.0, -1e9] * 4])
    assert torch.allclose(dfl_integral(lg2, 2), torch.full((1, 4), 0.5))
    with pytest.raises(ValueError, match="reg_max"):
        dfl_integral(torch.zeros(1, 10), 2)
    # integer target -> all weight on one bin; last bin allowed
    assert distribution_focal_loss(logits, torch.tensor([4.0])).item() == pytest.approx(math.log(5), rel=1e-6)
    assert torch.isfinite(DistributionFocalLoss()(torch.randn(3, 5), torch.tensor([0.0, 3.999, 9.0])))


def test_distances_to_dfl_target_example():
    pts = torch.tensor([[12.0, 12.0]])
    box = torch.tensor([[0.0, 4.0, 40.0, 20.0]])
    d = distances_to_dfl_target(pts, box, torch.tensor([8.0]), reg_max=16)
    assert d.tolist() == [[1.5, 1.0, 3.5, 1.0]]
    d = distances_to_dfl_target(pts, torch.tensor([[-500.0, 13.0, 12.0, 600.0]]), torch.tensor([8.0]), reg_max=16)
    assert d[0].tolist() == pytest.approx([15.99, 0.0, 0.0, 15.99])


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 6.0), st.integers(0, 3))
def test_dfl_minimised_by_the_two_bin_distribution(t, seed):
    """DFL >= the entropy of the target split, with equality for the two-bin distribution."""
    torch.manual_seed(seed)
    n = 7
    tt = torch.tensor([t], dtype=torch.float64)
    lo = min(int(math.floor(t)), n - 2)
    wl, wr = lo + 1 - t, t - lo
    best = torch.full((1, n), 1e-30, dtype=torch.float64)
    best[0, lo] += wl
    best[0, lo + 1] += wr
    h = distribution_focal_loss(best.log(), tt).item()
    other = distribution_focal_loss(torch.randn(1, n, dtype=torch.float64), tt).item()
    assert other >= h - 1e-9


# ----------------------------------------------------------------------------- IoU family
def test_iou_family_worked_example():
    p = torch.tensor([[0.0, 0, 10, 10]])
    t = torch.tensor([[5.0, 0, 15, 10]])
    assert box_iou_loss(p, t, "iou").item() == pytest.approx(1 - 1 / 3, rel=1e-5)
    assert box_iou_loss(p, t, "giou").item() == pytest.approx(1 - 1 / 3, rel=1e-5)
    diou = 1 / 3 - 25 / 325
    assert box_iou_loss(p, t, "diou").item() == pytest.approx(1 - diou, rel=1e-5)
    assert box_iou_loss(p, t, "ciou").item() == pytest.approx(1 - diou, rel=1e-5)  # same aspect: v = 0
    with pytest.raises(ValueError, match="kind"):
        box_iou_loss(p, t, "eiou")


def test_ciou_aspect_term_and_gate():
    p = torch.tensor([[5.0, 0.0, 15.0, 20.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 5.0, 20.0, 15.0]], dtype=torch.float64)
    iou = 100 / 300
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(0.5)) ** 2
    alpha = v / (1 - iou + v)
    got = complete_iou(p, t, eps=0.0, alpha_eps=0.0).item()
    assert got == pytest.approx(iou - 0 - alpha * v, rel=1e-9)  # same centre: rho = 0
    # mmdetection gates the aspect term at IoU > 0.5
    gated = complete_iou(p, t, eps=0.0, alpha_iou_threshold=0.5, alpha_eps=0.0).item()
    assert gated == pytest.approx(iou, rel=1e-9)


def test_ciou_finite_identical_and_zero_area():
    boxes = torch.tensor([[10.0, 10, 50, 60], [100.25, 200.5, 180.75, 260], [0, 0, 300, 200], [1, 1, 3, 4]])
    for kw in ({}, MMDET_CIOU):
        loss = 1 - complete_iou(boxes, boxes.clone(), **kw)
        assert torch.isfinite(loss).all() and (loss.abs() < 1e-5).all()
    pred = torch.tensor([[10.0, 10, 10, 30], [10, 10, 30, 10], [20, 20, 20, 20], [5, 5, 5, 5], [3, 3, 3, 3]],
                        requires_grad=True)
    target = torch.tensor([[0.0, 0, 40, 40], [0, 0, 40, 40], [0, 0, 40, 40], [0, 0, 10, 10], [3, 3, 3, 3]])
    for kind in ("iou", "giou", "diou", "ciou"):
        loss = box_iou_loss(pred, target, kind)
        assert torch.isfinite(loss).all(), kind
        (g,) = torch.autograd.grad(loss.sum(), pred)
        assert torch.isfinite(g).all(), kind
    assert torch.isfinite(CIoULoss(**{k: v for k, v in MMDET_CIOU.items()})(pred, target))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=8, max_size=8), st.floats(0.1, 50), st.floats(0.1, 50))
def test_iou_family_ordering(coords, w, h):
    """IoU >= GIoU and IoU >= DIoU >= CIoU (paper flavour), all in [-1, 1] up to float error."""
    x1, y1 = coords[0], coords[1]
    p = torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float64)
    x2, y2 = coords[2], coords[3]
    t = torch.tensor([[x2, y2, x2 + coords[4] + 0.1, y2 + coords[5] + 0.1]], dtype=torch.float64)
    iou = 1 - box_iou_loss(p, t, "iou", eps=0)
    giou = 1 - box_iou_loss(p, t, "giou", eps=0)
    diou = 1 - box_iou_loss(p, t, "diou", eps=0)
    ciou = complete_iou(p, t, eps=0.0)
    assert giou <= iou + 1e-9 and diou <= iou + 1e-9 and ciou <= diou + 1e-9
    assert -1 - 1e-9 <= giou and -1 - 1e-9 <= diou


def test_module_forms_reduce_like_mmdet():
    torch.manual_seed(0)
    pred = torch.randn(8, 3)
    tgt = (torch.rand(8, 3) > 0.7).float() * torch.rand(8, 3)
    w = torch.rand(8)
    for m in (FocalLoss(), VarifocalLoss()):
        el = m(pred, tgt, reduction_override="none")
        assert torch.allclose(m(pred, tgt, reduction_override="sum"), el.sum())
        assert torch.allclose(m(pred, tgt), el.mean())
        eps = torch.finfo(torch.float32).eps
        assert torch.allclose(m(pred, tgt, weight=w, avg_factor=3.0), (el * w[:, None]).sum() / (3.0 + eps))
