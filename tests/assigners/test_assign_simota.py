"""SimOTAAssigner: hand-computed cases (dynamic k, the centre penalty, conflicts resolved by the
lowest cost over all GTs, the YOLOX candidate rule), a per-image loop reference on random batches,
batching, GT chunking, grid vs dense priors, and property tests (no NaN, padding invariance)."""

from __future__ import annotations

import math

import pytest
import torch
from dynamic_testutils import gt_one, oracle_simota, points_priors, random_problem
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from assignlab.assigners import ASSIGNERS, SimOTAAssigner
from assignlab.core import GroundTruth, Priors, make_priors


def run(assigner, priors, gt, boxes, scores):
    res = assigner(priors, gt, pred_boxes=torch.as_tensor(boxes, dtype=torch.float32).reshape(gt.batch_size, -1, 4),
                   pred_scores=torch.as_tensor(scores, dtype=torch.float32).reshape(gt.batch_size, priors.num_priors, -1))
    res.validate(gt)
    return res


def test_registered_and_flags():
    assert ASSIGNERS["simota"] is SimOTAAssigner
    assert SimOTAAssigner.requires_predictions
    a = SimOTAAssigner.yolox()
    assert (a.flavour, a.center_radius, a.penalty, a.iou_eps) == ("yolox", 1.5, 1e6, 1e-8)
    b = SimOTAAssigner()
    assert (b.flavour, b.center_radius, b.candidate_topk, b.penalty, b.iou_eps) == ("mmdet", 2.5, 10, 1e5, 1e-7)


@pytest.mark.parametrize("kw", [dict(center_radius=0), dict(candidate_topk=0), dict(candidate_topk=2.5),
                                dict(iou_weight=-1), dict(cls_weight=-1), dict(flavour="v8"),
                                dict(penalty=0), dict(iou_eps=0), dict(scores_are="softmax"), dict(max_pairs=0)])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        SimOTAAssigner(**kw)


def test_needs_predictions():
    pri = points_priors([[4, 4]], [8])
    with pytest.raises(ValueError, match="prediction-aware"):
        SimOTAAssigner()(pri, gt_one([[0, 0, 8, 8]], [0]))
    with pytest.raises(ValueError, match="pred_boxes"):
        SimOTAAssigner()(pri, gt_one([[0, 0, 8, 8]], [0]), pred_boxes=torch.zeros(1, 2, 4), pred_scores=torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="label"):
        run(SimOTAAssigner(), pri, gt_one([[0, 0, 8, 8]], [3]), [[0, 0, 8, 8]], [[0.5, 0.5]])


# GT [0, 0, 24, 24], stride 8: centre region 12 +- 20 = [-8, 32]^2. Priors 0-2 are inside the box
# and the region (no penalty), prior 3 is in neither (not a candidate).
PRI_A = [[4, 4], [12, 4], [20, 4], [60, 60]]
BOX_A = [[0, 0, 24, 24], [0, 0, 24, 12], [0, 0, 12, 12], [50, 50, 70, 70]]  # IoU 1, 0.5, 0.25, 0


def test_dynamic_k_and_cost_by_hand():
    # k = max(1, int(1 + 0.5 + 0.25)) = 1. Costs (1 class):
    #   p0: -ln 0.1 + 3 * -ln(1 + 1e-7) = 2.3026    p1: -ln 0.9 + 3 ln 2 = 2.1848
    #   p2: -ln 0.9 + 3 ln 4 = 4.2642 -> the GT takes p1, the confident prior, not the best box
    pri = points_priors(PRI_A, [8])
    res = run(SimOTAAssigner(), pri, gt_one([[0, 0, 24, 24]], [0]), BOX_A, [0.1, 0.9, 0.9, 0.5])
    assert res.gt_index.tolist() == [[-1, 0, -1, -1]]
    assert res.quality.tolist() == [[0.0, 0.5, 0.0, 0.0]]
    assert res.extras["overlaps"].tolist() == [[0.0, 0.5, 0.0, 0.0]]
    assert res.extras["candidates"].tolist() == [[True, True, True, False]]
    assert res.box_weight.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    # without the classification cost the IoU decides: p0 (cost 3 * -ln(1 + 1e-7) ~ 0)
    res = run(SimOTAAssigner(cls_weight=0.0), pri, gt_one([[0, 0, 24, 24]], [0]), BOX_A, [0.1, 0.9, 0.9, 0.5])
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]
    # candidate_topk=1: k = int(1.0) = 1 as well; k from the top-2 IoUs: int(1.5) = 1
    res = run(SimOTAAssigner(candidate_topk=2), pri, gt_one([[0, 0, 24, 24]], [0]), BOX_A, [0.1, 0.9, 0.9, 0.5])
    assert res.gt_index.tolist() == [[-1, 0, -1, -1]]


def test_penalised_priors_can_still_be_chosen():
    # 4x4 GT centred on (12, 12): only prior 0 is inside it; priors 1 and 2 are in the centre region
    # (12 +- 20) but not in the box, so they pay +1e5. IoUs 1, 1, 0.5 -> k = int(2.5) = 2: the GT
    # takes p0 and then the cheaper penalised prior, p1 (BCE ln 2 + 1e5 < ln 2 + 3 ln 2 + 1e5).
    pri = points_priors([[12, 12], [4, 12], [20, 12]], [8])
    res = run(SimOTAAssigner(), pri, gt_one([[10, 10, 14, 14]], [0]),
              [[10, 10, 14, 14], [10, 10, 14, 14], [10, 10, 14, 12]], [0.5, 0.5, 0.5])
    assert res.gt_index.tolist() == [[0, 0, -1]]
    assert res.quality.tolist() == [[1.0, 1.0, 0.0]]


def test_conflict_goes_to_the_cheaper_gt():
    # GT0 [0,0,16,16] (class 0) and GT1 [8,0,24,16] (class 1); prior P=(12,8) is in both boxes.
    # P's box has IoU 0.6 with both. Both GTs have k = int(0.6 + 0.5 + 0.2) = 1 and both pick P:
    #   GT0: P 4.3459 < Q 4.3820 < R ~1e5      GT1: P 2.1123 < R 2.2902 < Q ~1e5
    # P goes to GT1 (2.11 < 4.35); GT0 gets nothing (SimOTA does not re-pick).
    pri = points_priors([[12, 8], [4, 8], [20, 8]], [8])
    res = run(SimOTAAssigner(), pri, gt_one([[0, 0, 16, 16], [8, 0, 24, 16]], [0, 1]),
              [[4, 0, 20, 16], [0, 0, 16, 8], [8, 8, 24, 16]], [[0.3, 0.8], [0.2, 0.5], [0.1, 0.9]])
    assert res.gt_index.tolist() == [[1, -1, -1]]
    assert res.quality[0, 0].item() == pytest.approx(0.6)
    assert res.labels(gt_one([[0, 0, 16, 16], [8, 0, 24, 16]], [0, 1])).tolist() == [[1, -1, -1]]


def test_conflict_can_go_to_a_gt_that_did_not_choose_the_prior():
    # three copies of one box with classes 0, 1, 2; IoUs: P 0.9, S 0.5 -> k = 1 for all.
    # costs (BCE summed over 3 classes + 3 * -ln IoU):
    #   GT0 = GT1: P 2.619, S 13.6 -> both take P.   GT2: P 2.213, S 2.100 -> takes S.
    # P, chosen by GT0 and GT1, goes to the GT of lowest cost over ALL GTs: GT2 (2.213).
    pri = points_priors([[8, 8], [12, 12]], [8])
    res = run(SimOTAAssigner(), pri, gt_one([[0, 0, 20, 20]] * 3, [0, 1, 2]),
              [[0, 0, 20, 18], [0, 0, 20, 10]], [[0.5, 0.5, 0.6], [0.01, 0.01, 0.999]])
    assert res.gt_index.tolist() == [[2, 2]]
    torch.testing.assert_close(res.quality, torch.tensor([[0.9, 0.5]]))


def test_exact_duplicates_lower_index_wins():
    pri = points_priors([[8, 8], [12, 12]], [8])
    res = run(SimOTAAssigner(), pri, gt_one([[0, 0, 20, 20]] * 2, [1, 1]), [[0, 0, 20, 18], [0, 0, 20, 10]],
              [[0.5, 0.6], [0.5, 0.2]])
    assert res.gt_index.tolist() == [[0, -1]]


def test_yolox_candidates_are_the_centre_region_only():
    # GT [0,0,64,64]: prior (4,4) is in the box but 28 px from the centre: a candidate for mmdet
    # (box OR 2.5-stride region), not for YOLOX (1.5 strides = 12 px)
    pri = points_priors([[4, 4], [32, 32]], [8])
    gt = gt_one([[0, 0, 64, 64]], [0])
    boxes, scores = [[0, 0, 64, 64], [0, 0, 32, 32]], [0.5, 0.5]
    assert run(SimOTAAssigner(), pri, gt, boxes, scores).extras["candidates"].tolist() == [[True, True]]
    res = run(SimOTAAssigner.yolox(), pri, gt, boxes, scores)
    assert res.extras["candidates"].tolist() == [[False, True]]
    # IoUs over the one candidate: 0.25 -> k = 1 -> prior 1, although prior 0 predicts the GT exactly
    assert res.gt_index.tolist() == [[-1, 0]]


def test_logits_option():
    pri = points_priors(PRI_A, [8])
    p = torch.tensor([0.1, 0.9, 0.9, 0.5])
    a = run(SimOTAAssigner(), pri, gt_one([[0, 0, 24, 24]], [0]), BOX_A, p)
    b = run(SimOTAAssigner(scores_are="logits"), pri, gt_one([[0, 0, 24, 24]], [0]), BOX_A, torch.logit(p))
    assert torch.equal(a.gt_index, b.gt_index)


def test_no_gt_no_candidate_fewer_candidates_than_k():
    pri = points_priors(PRI_A, [8])
    empty = GroundTruth(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    res = run(SimOTAAssigner(), pri, empty, BOX_A, [0.1, 0.9, 0.9, 0.5])
    assert not res.positive.any() and res.extras["overlaps"].abs().sum() == 0
    # a GT far from every prior: no candidate at all -> all negative
    res = run(SimOTAAssigner(), pri, gt_one([[200, 200, 210, 210]], [0]), BOX_A, [0.1, 0.9, 0.9, 0.5])
    assert not res.positive.any() and not res.extras["candidates"].any()
    # one candidate, candidate_topk 10 > 1 candidate
    res = run(SimOTAAssigner(candidate_topk=10), points_priors([[4, 4], [60, 60]], [8]), gt_one([[0, 0, 8, 8]], [0]),
              [[0, 0, 8, 8], [0, 0, 1, 1]], [0.5, 0.5])
    assert res.gt_index.tolist() == [[0, -1]]


def test_inputs_untouched():
    pri, gt, pred, scores = random_problem(1, C=1)
    s0, p0, b0 = scores.clone(), pred.clone(), gt.boxes.clone()
    SimOTAAssigner()(pri, gt, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(scores, s0) and torch.equal(pred, p0) and torch.equal(gt.boxes, b0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("yolox", [False, True])
def test_matches_per_image_reference(seed, yolox):
    pri, gt, pred, scores = random_problem(seed)
    a = SimOTAAssigner.yolox() if yolox else SimOTAAssigner()
    res = a(pri, gt, pred_boxes=pred, pred_scores=scores)
    res.validate(gt)
    ref = oracle_simota(pri, gt, pred, scores, center_radius=a.center_radius, yolox=yolox)
    assert torch.equal(res.gt_index, ref)
    assert res.positive.sum() > 10


@pytest.mark.parametrize("yolox", [False, True])
def test_batch_chunks_and_grid_are_identical(yolox):
    pri, gt, pred, scores = random_problem(7, B=3, G=8)
    make = SimOTAAssigner.yolox if yolox else SimOTAAssigner
    full = make()(pri, gt, pred_boxes=pred, pred_scores=scores)
    chunked = make(max_pairs=1)(pri, gt, pred_boxes=pred, pred_scores=scores)  # one GT per chunk
    dense = make()(Priors.from_tensors(pri.points, pri.num_level_priors, pri.level_strides), gt,
                   pred_boxes=pred, pred_scores=scores)
    for other in (chunked, dense):
        for f in ("gt_index", "quality", "box_weight", "cls_weight"):
            assert torch.equal(getattr(full, f), getattr(other, f)), f
        for k in full.extras:
            assert torch.equal(full.extras[k], other.extras[k]), k
    for b in range(gt.batch_size):  # each image alone
        sub = GroundTruth(gt.boxes[b:b + 1], gt.labels[b:b + 1], gt.mask[b:b + 1])
        one = make()(pri, sub, pred_boxes=pred[b:b + 1], pred_scores=scores[b:b + 1])
        assert torch.equal(one.gt_index, full.gt_index[b:b + 1])
        assert torch.equal(one.quality, full.quality[b:b + 1])


def test_repeated_calls_reuse_buffers_safely():
    a = SimOTAAssigner()
    p1 = random_problem(3, B=2, G=5)
    p2 = random_problem(4, B=3, G=9)
    r1 = a(p1[0], p1[1], pred_boxes=p1[2], pred_scores=p1[3])
    a(p2[0], p2[1], pred_boxes=p2[2], pred_scores=p2[3])
    r1b = a(p1[0], p1[1], pred_boxes=p1[2], pred_scores=p1[3])
    assert torch.equal(r1.gt_index, r1b.gt_index) and torch.equal(r1.quality, r1b.quality)


# -- properties ---------------------------------------------------------------------------------
PRI = make_priors((48, 48), strides=(8, 16))


@st.composite
def problems(draw):
    B = draw(st.integers(1, 2))
    G = draw(st.integers(0, 4))
    C = draw(st.integers(1, 3))
    N = PRI.num_priors
    coords = st.floats(0, 48, allow_nan=False, width=32)
    boxes = torch.tensor(draw(st.lists(st.tuples(coords, coords, st.floats(0, 30, width=32), st.floats(0, 30, width=32)),
                                       min_size=B * G, max_size=B * G)) or [(0.0, 0.0, 0.0, 0.0)][:0],
                         dtype=torch.float32).reshape(B, G, 4)
    boxes = torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], -1)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=B * G, max_size=B * G)), dtype=torch.bool).reshape(B, G)
    mask &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    labels = torch.tensor(draw(st.lists(st.integers(0, C - 1), min_size=B * G, max_size=B * G)), dtype=torch.long).reshape(B, G)
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    c = PRI.points[None].expand(B, N, 2)
    wh = torch.rand(B, N, 2, generator=g) * 20 * draw(st.sampled_from([0.0, 1.0]))  # 0: zero-area predictions
    pred = torch.cat([c - wh / 2, c + wh / 2], -1)
    scores = torch.rand(B, N, C, generator=g) * draw(st.sampled_from([0.0, 1.0]))  # 0: all-zero scores
    return GroundTruth(boxes, labels, mask), pred, scores


@settings(max_examples=40, deadline=None)
@given(problems(), st.booleans())
def test_property_finite_and_valid(problem, yolox):
    gt, pred, scores = problem
    res = (SimOTAAssigner.yolox() if yolox else SimOTAAssigner())(PRI, gt, pred_boxes=pred, pred_scores=scores)
    res.validate(gt)
    assert all(bool(torch.isfinite(v).all()) for v in res.extras.values() if v.is_floating_point())
    if gt.mask.sum() == 0:
        assert not res.positive.any()


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(1, 3), st.booleans())
def test_property_padding_rows_change_nothing(problem, extra, yolox):
    gt, pred, scores = problem
    B, G = gt.labels.shape
    junk = torch.rand(B, extra, 4) * 40
    padded = GroundTruth(torch.cat([gt.boxes, torch.cat([junk[..., :2], junk[..., :2] + 5], -1)], 1),
                         torch.cat([gt.labels, torch.zeros(B, extra, dtype=torch.long)], 1),
                         torch.cat([gt.mask, torch.zeros(B, extra, dtype=torch.bool)], 1))
    make = SimOTAAssigner.yolox if yolox else SimOTAAssigner
    a = make()(PRI, gt, pred_boxes=pred, pred_scores=scores)
    b = make()(PRI, padded, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(a.gt_index, b.gt_index)
    assert torch.equal(a.quality, b.quality)
    assert torch.equal(a.extras["candidates"], b.extras["candidates"])


def test_quality_is_iou_of_prediction():
    pri, gt, pred, scores = random_problem(2)
    res = SimOTAAssigner()(pri, gt, pred_boxes=pred, pred_scores=scores)
    b, n = res.positive.nonzero(as_tuple=True)
    g = res.gt_index[b, n]
    ref = torch.stack([box_iou(pred[bi, ni][None], gt.boxes[bi, gi][None])[0, 0] for bi, ni, gi in zip(b, n, g)])
    torch.testing.assert_close(res.quality[b, n], ref)
    assert not math.isnan(float(res.quality.sum()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes(dtype):
    pri, gt, pred, scores = random_problem(3)
    ref = SimOTAAssigner()(pri, gt, pred_boxes=pred, pred_scores=scores)
    res = SimOTAAssigner()(pri, gt, pred_boxes=pred.to(dtype), pred_scores=scores.to(dtype))
    res.validate(gt)
    if dtype == torch.float64:
        assert torch.equal(res.gt_index, ref.gt_index)


@pytest.mark.parametrize("name", ["simota", "dsl"])
def test_no_state_between_calls(name):
    # the sparse selection needs no reusable buffers: an assigner is its configuration only
    pri, gt, pred, scores = random_problem(0, B=2, G=4)
    a = ASSIGNERS[name]()
    before = dict(a.__dict__)
    r1 = a(pri, gt, pred_boxes=pred, pred_scores=scores)
    assert a.__dict__ == before
    assert not hasattr(a, "release_buffers")
    import copy
    import pickle

    for b in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert torch.equal(b(pri, gt, pred_boxes=pred, pred_scores=scores).gt_index, r1.gt_index)


def test_tal_cpu_buffers_are_a_dropped_cache():
    import copy
    import pickle

    pri, gt, pred, scores = random_problem(0, B=2, G=4)
    a = ASSIGNERS["tal"]()
    r1 = a(pri, gt, pred_boxes=pred, pred_scores=scores)
    assert hasattr(a, "_scratch")
    for b in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert not hasattr(b, "_scratch")
        assert torch.equal(b(pri, gt, pred_boxes=pred, pred_scores=scores).gt_index, r1.gt_index)
    a.release_buffers()
    assert not hasattr(a, "_scratch")


# -- the bounds of the sparse selection (assigners/_dynamic_k.py), with a small penalty ----------
# GT 0 [0, 0, 24, 24] (centre region 12 +- 20): prior (12, 12) is central; prior (40, 12) is in
# neither its box nor its region, but a candidate through GT 1 [32, 0, 48, 24], so it pays GT 0's
# penalty (1 here instead of 1e5).
PRI_B = [[12, 12], [40, 12]]
GT_B = [[0, 0, 24, 24], [32, 0, 48, 24]]


def test_non_central_pair_can_beat_the_central_ones():
    # central prior: IoU 0.1 -> ln 2 + 3 * -ln 0.1 = 7.6; other prior: IoU 0.9 -> ln 2 + 0.32 + 1 = 2.0
    pri = points_priors(PRI_B, [8])
    boxes = [[0, 0, 24, 2.4], [0, 0, 24, 21.6]]
    res = run(SimOTAAssigner(penalty=1.0), pri, gt_one(GT_B, [0, 0]), boxes, [0.5, 0.5])
    assert res.gt_index.tolist() == [[-1, 0]]
    ref = oracle_simota(pri, gt_one(GT_B, [0, 0]), torch.tensor(boxes).reshape(1, 2, 4),
                        torch.tensor([0.5, 0.5]).reshape(1, 2, 1), penalty=1.0)
    assert torch.equal(res.gt_index, ref)


def test_non_central_pair_without_overlap_can_win():
    # central prior: IoU 9e-10, p 0.01 -> 4.61 + 48.33 = 52.9; other prior: IoU 0, p 0.99 ->
    # 0.01 + 48.35 + 1 = 49.4 for GT 0, but 0.01 + 48.35 for GT 1 (central there), which keeps it
    pri = points_priors(PRI_B, [8])
    boxes = [[23.999, 23.999, 30.0, 30.0], [60, 60, 61, 61]]
    res = run(SimOTAAssigner(penalty=1.0), pri, gt_one(GT_B, [0, 0]), boxes, [0.01, 0.99])
    assert res.gt_index.tolist() == [[-1, 1]]
    ref = oracle_simota(pri, gt_one(GT_B, [0, 0]), torch.tensor(boxes).reshape(1, 2, 4),
                        torch.tensor([0.01, 0.99]).reshape(1, 2, 1), penalty=1.0)
    assert torch.equal(res.gt_index, ref)
