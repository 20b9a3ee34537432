"""DynamicSoftLabelAssigner (RTMDet): hand-computed costs (soft-label BCE, IoU cost, soft centre
prior, the other classes' background term), logits vs probabilities, candidates, a per-image loop
reference, batching, GT chunking, grid vs dense priors, and property tests."""

from __future__ import annotations

import math

import pytest
import torch
from dynamic_testutils import PRI48, draw_problem, gt_one, oracle_dsl, points_priors, random_problem
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS, DynamicSoftLabelAssigner
from assignlab.core import GroundTruth, Priors, make_priors


def run(assigner, priors, gt, boxes, scores):
    B = gt.batch_size
    res = assigner(priors, gt, pred_boxes=torch.as_tensor(boxes, dtype=torch.float32).reshape(B, -1, 4),
                   pred_scores=torch.as_tensor(scores, dtype=torch.float32).reshape(B, priors.num_priors, -1))
    res.validate(gt)
    return res


def test_registered_and_defaults():
    assert ASSIGNERS["dsl"] is DynamicSoftLabelAssigner
    a = DynamicSoftLabelAssigner()
    assert (a.soft_center_radius, a.topk, a.iou_weight, a.scores_are) == (3.0, 13, 3.0, "logits")
    assert a.requires_predictions


@pytest.mark.parametrize("kw", [dict(soft_center_radius=-1), dict(topk=0), dict(topk=2.5), dict(iou_weight=-1),
                                dict(scores_are="probs"), dict(max_pairs=0)])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        DynamicSoftLabelAssigner(**kw)


def test_needs_predictions_and_valid_labels():
    pri = points_priors([[4, 4]], [8])
    with pytest.raises(ValueError, match="prediction-aware"):
        DynamicSoftLabelAssigner()(pri, gt_one([[0, 0, 8, 8]], [0]))
    with pytest.raises(ValueError, match="label"):
        run(DynamicSoftLabelAssigner(), pri, gt_one([[0, 0, 8, 8]], [1]), [[0, 0, 8, 8]], [[0.0]])


# GT [0,0,32,32] (centre (16,16)), stride 8. Priors (12,12), (20,20), (28,28) are inside (candidates),
# (40,40) is not. Predicted boxes: IoU 1, 0.5, 0.25.
PRI = [[12, 12], [20, 20], [28, 28], [40, 40]]
BOXES = [[0, 0, 32, 32], [0, 0, 32, 16], [0, 0, 16, 16], [0, 0, 8, 8]]
LOGITS = [-6.0, 0.0, 0.0, 0.0]


def test_costs_by_hand():
    # cost = BCE_logits(x, IoU) * (IoU - sigmoid(x))^2 + 3 * -ln(IoU + 1e-7) + 10 ** (d / 8 - 3):
    #   p0: 6.00248 * (1 - 0.00247)^2 = 5.97284 + ~0 + 10 ** (0.70711 - 3) = 0.00509 -> 5.97793
    #   p1: ln 2 * (0.5 - 0.5)^2 = 0     + 2.07944 + 0.00509                           -> 2.08454
    #   p2: ln 2 * (0.25 - 0.5)^2 = 0.04332 + 4.15888 + 10 ** (2.12132 - 3) = 0.13228  -> 4.33449
    # k = max(1, int(1 + 0.5 + 0.25)) = 1 -> p1: a calibrated score beats the perfect box
    pri = points_priors(PRI, [8])
    gt = gt_one([[0, 0, 32, 32]], [0])
    res = run(DynamicSoftLabelAssigner(), pri, gt, BOXES, LOGITS)
    assert res.gt_index.tolist() == [[-1, 0, -1, -1]]
    assert res.quality.tolist() == [[0.0, 0.5, 0.0, 0.0]]
    assert res.extras["candidates"].tolist() == [[True, True, True, False]]
    assert res.box_weight.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    # p2 predicting [0,0,32,24] (IoU 0.75): cost 0.04332 + 0.86305 + 0.13228 = 1.03865, and
    # k = int(1 + 0.5 + 0.75) = 2 -> p2 and p1
    boxes = [BOXES[0], BOXES[1], [0, 0, 32, 24], BOXES[3]]
    res = run(DynamicSoftLabelAssigner(), pri, gt, boxes, LOGITS)
    assert res.gt_index.tolist() == [[-1, 0, 0, -1]]
    assert res.quality.tolist() == [[0.0, 0.5, 0.75, 0.0]]


def test_other_classes_background_cost():
    # a second class with logit 4 at p1 adds BCE_logits(4, 0) * sigmoid(4)^2 = 4.01815 * 0.96434 = 3.875
    # to p1 (5.96); the others add ln 2 * 0.25 = 0.1733 -> p0 6.151, p2 4.508: p2 wins
    logits = [[-6.0, 0.0], [0.0, 4.0], [0.0, 0.0], [0.0, 0.0]]
    pri = points_priors(PRI, [8])
    gt = gt_one([[0, 0, 32, 32]], [0])
    res = run(DynamicSoftLabelAssigner(), pri, gt, BOXES, logits)
    assert res.gt_index.tolist() == [[-1, -1, 0, -1]]
    assert res.quality.tolist() == [[0.0, 0.0, 0.25, 0.0]]
    # the same from probabilities
    probs = torch.tensor(logits).sigmoid()
    res = run(DynamicSoftLabelAssigner(scores_are="probabilities"), pri, gt, BOXES, probs)
    assert res.gt_index.tolist() == [[-1, -1, 0, -1]]


def test_soft_center_radius_moves_the_choice():
    # with radius 0 the centre prior dominates: p1 10 ** 0.707 = 5.1, p2 10 ** 2.12 = 132 -> p1 still;
    # with a huge IoU weight the best box wins: p0
    pri = points_priors(PRI, [8])
    gt = gt_one([[0, 0, 32, 32]], [0])
    assert run(DynamicSoftLabelAssigner(soft_center_radius=0), pri, gt, BOXES, LOGITS).gt_index.tolist() == [[-1, 0, -1, -1]]
    assert run(DynamicSoftLabelAssigner(iou_weight=50), pri, gt, BOXES, LOGITS).gt_index.tolist() == [[0, -1, -1, -1]]


def test_no_gt_no_candidate_fewer_candidates_than_topk():
    pri = points_priors(PRI, [8])
    empty = GroundTruth(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    res = run(DynamicSoftLabelAssigner(), pri, empty, BOXES, LOGITS)
    assert not res.positive.any()
    # centre regions do not count: a GT containing no prior centre has no candidate
    res = run(DynamicSoftLabelAssigner(), pri, gt_one([[13, 13, 19, 19]], [0]), BOXES, LOGITS)
    assert not res.positive.any() and not res.extras["candidates"].any()
    # one candidate < topk 13
    res = run(DynamicSoftLabelAssigner(), pri, gt_one([[36, 36, 44, 44]], [0]), BOXES, LOGITS)
    assert res.gt_index.tolist() == [[-1, -1, -1, 0]]


def test_inputs_untouched():
    pri, gt, pred, scores = random_problem(1, C=1)
    for s, mode in ((torch.logit(scores), "logits"), (scores, "probabilities")):
        s0, p0 = s.clone(), pred.clone()
        DynamicSoftLabelAssigner(scores_are=mode)(pri, gt, pred_boxes=pred, pred_scores=s)
        assert torch.equal(s, s0) and torch.equal(pred, p0)


@pytest.mark.parametrize("seed", range(4))
def test_matches_per_image_reference(seed):
    pri, gt, pred, scores = random_problem(seed)
    logits = torch.logit(scores)
    res = DynamicSoftLabelAssigner()(pri, gt, pred_boxes=pred, pred_scores=logits)
    res.validate(gt)
    assert torch.equal(res.gt_index, oracle_dsl(pri, gt, pred, logits))
    assert res.positive.sum() > 10
    # probabilities give the same decisions on these well-separated inputs
    res_p = DynamicSoftLabelAssigner(scores_are="probabilities")(pri, gt, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(res.gt_index, res_p.gt_index)


def test_batch_chunks_and_grid_are_identical():
    pri, gt, pred, scores = random_problem(5, B=3, G=8)
    logits = torch.logit(scores)
    full = DynamicSoftLabelAssigner()(pri, gt, pred_boxes=pred, pred_scores=logits)
    chunked = DynamicSoftLabelAssigner(max_pairs=1)(pri, gt, pred_boxes=pred, pred_scores=logits)
    dense = DynamicSoftLabelAssigner()(Priors.from_tensors(pri.points, pri.num_level_priors, pri.level_strides), gt,
                                       pred_boxes=pred, pred_scores=logits)
    for other in (chunked, dense):
        for f in ("gt_index", "quality", "box_weight", "cls_weight"):
            assert torch.equal(getattr(full, f), getattr(other, f)), f
        for k in full.extras:
            assert torch.equal(full.extras[k], other.extras[k]), k
    for b in range(gt.batch_size):
        sub = GroundTruth(gt.boxes[b:b + 1], gt.labels[b:b + 1], gt.mask[b:b + 1])
        one = DynamicSoftLabelAssigner()(pri, sub, pred_boxes=pred[b:b + 1], pred_scores=logits[b:b + 1])
        assert torch.equal(one.gt_index, full.gt_index[b:b + 1])
        assert torch.equal(one.quality, full.quality[b:b + 1])


# -- properties ---------------------------------------------------------------------------------
@st.composite
def problems(draw):
    gt, pred, g, C = draw_problem(draw, gt_side_scales=[0.0, 0.2, 1.0])
    B, N = pred.shape[:2]
    kind = draw(st.sampled_from(["zero", "random", "extreme"]))
    scores = {"zero": torch.zeros(B, N, C), "random": torch.randn(B, N, C, generator=g) * 3,
              "extreme": torch.randn(B, N, C, generator=g).sign() * 200}[kind]
    return gt, pred, scores


@settings(max_examples=40, deadline=None)
@given(problems(), st.booleans())
def test_property_finite_and_valid(problem, as_probabilities):
    gt, pred, scores = problem
    if as_probabilities:
        res = DynamicSoftLabelAssigner(scores_are="probabilities")(PRI48, gt, pred_boxes=pred, pred_scores=scores.sigmoid())
    else:
        res = DynamicSoftLabelAssigner()(PRI48, gt, pred_boxes=pred, pred_scores=scores)
    res.validate(gt)
    assert bool(torch.isfinite(res.extras["overlaps"]).all())
    if gt.mask.sum() == 0:
        assert not res.positive.any()


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(1, 3))
def test_property_padding_rows_change_nothing(problem, extra):
    gt, pred, scores = problem
    B = gt.batch_size
    junk = torch.rand(B, extra, 4) * 40
    padded = GroundTruth(torch.cat([gt.boxes, torch.cat([junk[..., :2], junk[..., :2] + 5], -1)], 1),
                         torch.cat([gt.labels, torch.zeros(B, extra, dtype=torch.long)], 1),
                         torch.cat([gt.mask, torch.zeros(B, extra, dtype=torch.bool)], 1))
    a = DynamicSoftLabelAssigner()(PRI48, gt, pred_boxes=pred, pred_scores=scores)
    b = DynamicSoftLabelAssigner()(PRI48, padded, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(a.gt_index, b.gt_index)
    assert torch.equal(a.quality, b.quality)
    assert torch.equal(a.extras["candidates"], b.extras["candidates"])
    assert not math.isnan(float(a.quality.sum()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes(dtype):
    pri, gt, pred, scores = random_problem(3)
    logits = torch.logit(scores)
    ref = DynamicSoftLabelAssigner()(pri, gt, pred_boxes=pred, pred_scores=logits)
    res = DynamicSoftLabelAssigner()(pri, gt, pred_boxes=pred.to(dtype), pred_scores=logits.to(dtype))
    res.validate(gt)
    if dtype == torch.float64:
        assert torch.equal(res.gt_index, ref.gt_index)


# -- the bounds of the sparse selection (assigners/_dynamic_k.py) -------------------------------
def _far_pair_problem():
    # stride 8 only; GT 0 [11, 8, 43, 40] (centre (27, 24)); GT 1 [60, 0, 128, 128] makes the
    # priors with x > 60 candidates. Every logit is +200: a pair at IoU 0 costs >= 200 + 48.35.
    # Prior (28, 20) (near GT 0's centre) predicts IoU 0.1 with it: 200 * 0.9 * 0.81 + 3 * -ln 0.1
    # = 152.7. Prior (68, 28), 5.15 strides away (beyond the 5-stride near square), predicts IoU
    # 0.9: 200 * 0.1 * 0.01 + 3 * -ln 0.9 + 10 ** (5.15 - 3) = 141.9 -> it wins (k = 1).
    pri = make_priors((128, 128), strides=(8,))
    N = pri.num_priors
    gt = GroundTruth(torch.tensor([[[11.0, 8.0, 43.0, 40.0], [60.0, 0.0, 128.0, 128.0]]]), torch.tensor([[0, 0]]),
                     torch.tensor([[True, True]]))
    pred = torch.tensor([200.0, 200.0, 201.0, 201.0]).repeat(1, N, 1)
    near, far = (20 // 8) * 16 + 28 // 8, (28 // 8) * 16 + 68 // 8
    pred[0, near] = torch.tensor([11.0, 8.0, 43.0, 11.2])
    pred[0, far] = torch.tensor([11.0, 8.0, 43.0, 36.8])
    return pri, gt, pred, torch.full((1, N, 1), 200.0), near, far


def test_overlapping_pair_beyond_the_near_square_can_win():
    pri, gt, pred, logits, near, far = _far_pair_problem()
    res = run(DynamicSoftLabelAssigner(), pri, gt, pred, logits)
    assert res.gt_index[0, far] == 0 and res.gt_index[0, near] == -1
    assert torch.equal(res.gt_index, oracle_dsl(pri, gt, pred, logits))


def test_prior_without_overlap_can_win():
    # GT [0, 0, 32, 32]. Prior (12, 12) predicts a box that misses it (IoU 0) with logit -10:
    # ~0 + 3 * -ln(1e-7) + 10 ** (0.71 - 3) = 48.36. Prior (20, 20) barely overlaps it (IoU 9e-10)
    # with logit +10: 10.00 + 48.33 + 0.005 = 58.33; prior (28, 28) misses it with logit +10: 58.49.
    # k = 1 -> the prior without overlap (the overlapping one alone is not enough).
    pri = points_priors([[12, 12], [20, 20], [28, 28]], [8])
    gt = gt_one([[0, 0, 32, 32]], [0])
    boxes = [[40, 40, 50, 50], [31.999, 31.999, 41.0, 41.0], [60, 60, 61, 61]]
    logits = [-10.0, 10.0, 10.0]
    res = run(DynamicSoftLabelAssigner(), pri, gt, boxes, logits)
    pred = torch.tensor(boxes).reshape(1, 3, 4)
    assert torch.equal(res.gt_index, oracle_dsl(pri, gt, pred, torch.tensor(logits).reshape(1, 3, 1)))
    assert res.gt_index.tolist() == [[0, -1, -1]]
