"""Noisy-anchor assigner: candidate bags, cleanliness soft labels, normalised re-weighting."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS, NoisyAnchorAssigner
from assignlab.core import GroundTruth, Priors, make_priors

FAR = [100.0, 100.0, 110.0, 110.0]
UNIT = [0.0, 0.0, 10.0, 10.0]


def _priors(anchor_boxes):
    a = torch.tensor(anchor_boxes, dtype=torch.float32)
    return Priors.from_tensors((a[:, :2] + a[:, 2:]) / 2, [a.shape[0]], [8.0], anchors=a)


def test_registered():
    assert ASSIGNERS["noisy"] is NoisyAnchorAssigner
    assert NoisyAnchorAssigner.requires_predictions


def test_candidate_bag_top_n_by_anchor_iou():
    # anchor IoUs with UNIT: 0.9, 0.5, 0.7, 0.2, 0 (far)
    anchors = [[0, 0, 10, 9], [0, 0, 10, 5], [0, 0, 10, 7], [0, 0, 10, 2], FAR]
    priors = _priors(anchors)
    gt = GroundTruth.from_lists([torch.tensor([UNIT])])
    pb, ps = torch.tensor([anchors], dtype=torch.float32), torch.full((1, 5, 1), 0.5)
    res = NoisyAnchorAssigner(n=3)(priors, gt, pred_boxes=pb, pred_scores=ps)
    res.validate(gt)
    assert res.positive[0].tolist() == [True, True, True, False, False]
    torch.testing.assert_close(res.extras["anchor_iou"][0], torch.tensor([0.9, 0.5, 0.7, 0.0, 0.0]))
    # a bag never recruits a prior that does not overlap the GT, even when n is large
    res = NoisyAnchorAssigner(n=10)(priors, gt, pred_boxes=pb, pred_scores=ps)
    assert res.positive[0].tolist() == [True, True, True, True, False]
    assert not res.ignore.any()


def test_collision_to_higher_anchor_iou():
    # GT A = UNIT, GT B = [0,5,10,15]; anchor 0 [0,2,10,12]: IoU A 80/120, B 70/130 -> A
    # anchor 1 [0,4,10,14]: IoU A 60/140, B 90/110 -> B. Both anchors are in both bags (n=2).
    anchors = [[0, 2, 10, 12], [0, 4, 10, 14]]
    priors = _priors(anchors)
    gt = GroundTruth.from_lists([torch.tensor([[0.0, 5, 10, 15], UNIT])])
    res = NoisyAnchorAssigner(n=2)(
        priors, gt, pred_boxes=torch.tensor([anchors], dtype=torch.float32), pred_scores=torch.rand(1, 2, 1)
    )
    assert res.gt_index[0].tolist() == [1, 0]


def _two_image_case(iou0, p0, iou1, p1):
    """Two images with one GT each (labels 1 and 0) and one overlapping anchor; the predictions of
    that anchor have IoU ``iou_i`` with the GT and probability ``p_i`` for the GT's class."""
    priors = _priors([UNIT, FAR])
    gt = GroundTruth.from_lists([torch.tensor([UNIT]), torch.tensor([UNIT])], labels=[torch.tensor([1]), torch.tensor([0])])
    pb = torch.tensor([[[0, 0, 10, 10 * iou0], FAR], [[0, 0, 10, 10 * iou1], FAR]], dtype=torch.float32)
    ps = torch.zeros(2, 2, 2)
    ps[0, 0, 1] = p0
    ps[1, 0, 0] = p1
    return priors, gt, pb, ps


def test_worked_example_soft_labels_and_weights():
    priors, gt, pb, ps = _two_image_case(0.8, 0.6, 0.4, 0.2)
    ps[0, 0, 0] = 0.99  # a wrong-class score must not matter
    res = NoisyAnchorAssigner(n=1, alpha=0.75, gamma=1.0)(priors, gt, pred_boxes=pb, pred_scores=ps)
    res.validate(gt)
    assert res.positive.tolist() == [[True, False], [True, False]]
    torch.testing.assert_close(res.quality[:, 0], torch.tensor([0.75, 0.35]))
    # r = .75/(1-IoU) + .25/(1-p): 4.375 and 1.5625, mean 2.96875
    want = torch.tensor([4.375, 1.5625]) / 2.96875
    torch.testing.assert_close(res.box_weight[:, 0], want)
    torch.testing.assert_close(res.cls_weight[:, 0], want)
    assert (res.cls_weight[:, 1] == 1).all() and (res.box_weight[:, 1] == 0).all()
    torch.testing.assert_close(res.extras["overlaps"][:, 0], torch.tensor([0.8, 0.4]))
    torch.testing.assert_close(res.extras["scores"][:, 0], torch.tensor([0.6, 0.2]))


def test_gamma_zero_uniform_and_gamma_large_finite():
    priors, gt, pb, ps = _two_image_case(0.8, 0.6, 0.4, 0.2)
    r0 = NoisyAnchorAssigner(n=1, gamma=0.0)(priors, gt, pred_boxes=pb, pred_scores=ps)
    torch.testing.assert_close(r0.box_weight[:, 0], torch.ones(2))
    priors, gt, pb, ps = _two_image_case(1.0, 1.0, 0.5, 0.5)  # f at the clamp: 1e6
    r = NoisyAnchorAssigner(n=1, gamma=20.0)(priors, gt, pred_boxes=pb, pred_scores=ps)
    r.validate(gt)
    assert torch.isfinite(r.box_weight).all()
    torch.testing.assert_close(r.box_weight[:, 0].mean(), torch.tensor(1.0))
    # f(1) clamped to 1/eps: weight ratio (1e6 / 2) ** 20 underflows the small one to ~0
    assert r.box_weight[0, 0].item() == pytest.approx(2.0)


@settings(max_examples=30, deadline=None)
@given(
    st.floats(0, 1, width=32), st.floats(0, 1, width=32), st.floats(0, 1, width=32), st.floats(0.1, 3)
)
def test_monotone_in_iou_and_score(a, b, p, gamma):
    lo, hi = min(a, b), max(a, b)
    asg = NoisyAnchorAssigner(n=1, gamma=gamma)
    # in IoU (same score)
    priors, gt, pb, ps = _two_image_case(lo, p, hi, p)
    r = asg(priors, gt, pred_boxes=pb, pred_scores=ps)
    assert r.quality[0, 0] <= r.quality[1, 0] + 1e-6
    assert r.box_weight[0, 0] <= r.box_weight[1, 0] * (1 + 1e-5)
    # in score (same IoU)
    priors, gt, pb, ps = _two_image_case(p, lo, p, hi)
    r = asg(priors, gt, pred_boxes=pb, pred_scores=ps)
    assert r.quality[0, 0] <= r.quality[1, 0] + 1e-6
    assert r.box_weight[0, 0] <= r.box_weight[1, 0] * (1 + 1e-5)
    assert ((r.quality >= 0) & (r.quality <= 1)).all()


PRIORS = make_priors((64, 96))


@st.composite
def _batch(draw):
    B, G = draw(st.integers(1, 3)), draw(st.integers(0, 6))
    coords = st.floats(-10, 100, allow_nan=False, width=32)
    lists = []
    for _ in range(B):
        bx = []
        for _ in range(draw(st.integers(0, G))):
            x, y = draw(coords), draw(coords)
            bx.append([x, y, x + draw(st.floats(0.5, 50, width=32)), y + draw(st.floats(0.5, 50, width=32))])
        lists.append(torch.tensor(bx, dtype=torch.float32).reshape(-1, 4))
    labels = [torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(len(x))) for x in lists]
    gt = GroundTruth.from_lists(lists, labels=labels, pad_to=G)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    N = PRIORS.num_priors
    pb = PRIORS.boxes()[None].expand(B, N, 4) * 0.5 + torch.rand(B, N, 4, generator=gen) * 40
    ps = torch.rand(B, N, 3, generator=gen)
    return gt, pb, ps, draw(st.integers(1, 60)), draw(st.floats(0, 4))


@settings(max_examples=30, deadline=None)
@given(_batch())
def test_weights_average_one_soft_targets_in_range_chunk_identical(batch):
    gt, pb, ps, n, gamma = batch
    res = NoisyAnchorAssigner(n=n, gamma=gamma)(PRIORS, gt, pred_boxes=pb, pred_scores=ps)
    res.validate(gt)
    pos = res.positive
    if pos.any():
        assert res.box_weight[pos].double().mean().item() == pytest.approx(1.0, rel=1e-4)
        torch.testing.assert_close(res.cls_weight[pos], res.box_weight[pos])
    assert ((res.quality >= 0) & (res.quality <= 1)).all()
    assert (res.cls_weight[~pos] == 1).all()
    # every positive's GT has at most n positives
    if gt.max_boxes:
        cnt = torch.zeros(gt.batch_size, gt.max_boxes, dtype=torch.long).scatter_add_(
            1, res.gt_index.clamp(min=0), pos.long()
        )
        assert (cnt <= n).all()
    tiny = NoisyAnchorAssigner(n=n, gamma=gamma, max_pairs=1)(PRIORS, gt, pred_boxes=pb, pred_scores=ps)
    for f in ("gt_index", "positive", "ignore", "quality", "box_weight", "cls_weight"):
        assert torch.equal(getattr(res, f), getattr(tiny, f)), f


def test_validation_errors():
    for kw, name in [({"n": 0}, "n"), ({"alpha": 1.5}, "alpha"), ({"gamma": -1}, "gamma"),
                     ({"eps": 0}, "eps"), ({"square_scale": -1}, "square_scale")]:
        with pytest.raises(ValueError, match=name):
            NoisyAnchorAssigner(**kw)
    priors, gt, pb, ps = _two_image_case(0.8, 0.6, 0.4, 0.2)
    with pytest.raises(ValueError, match="labels"):
        NoisyAnchorAssigner()(priors, gt, pred_boxes=pb, pred_scores=ps[..., :1])  # label 1 >= C=1
    with pytest.raises(ValueError, match="pred_boxes"):
        NoisyAnchorAssigner()(priors, gt)
    e = NoisyAnchorAssigner()(priors, GroundTruth.empty(2), pred_boxes=pb, pred_scores=ps)
    e.validate()
    assert not e.positive.any()
