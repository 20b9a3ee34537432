"""TaskAlignedAssigner (mmdet and ultralytics flavours): hand-computed metrics, top-k over all priors
vs in-box priors, the small-box floor, multi-claim resolution (highest IoU among the claimers vs
highest overlap among all GTs), the normalised targets, per-image loop references, batching,
GT chunking, grid vs dense priors, and property tests."""

from __future__ import annotations

import math

import pytest
import torch
from dynamic_testutils import (
    PRI48,
    ciou,
    draw_problem,
    gt_one,
    oracle_tal_mmdet,
    oracle_tal_ultralytics,
    points_priors,
    random_problem,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS, TaskAlignedAssigner
from assignlab.assigners.tal import pairwise_ciou
from assignlab.core import GroundTruth, Priors, make_priors


def run(assigner, priors, gt, boxes, scores):
    B = gt.batch_size
    res = assigner(priors, gt, pred_boxes=torch.as_tensor(boxes, dtype=torch.float32).reshape(B, -1, 4),
                   pred_scores=torch.as_tensor(scores, dtype=torch.float32).reshape(B, priors.num_priors, -1))
    res.validate(gt)
    return res


def test_registered_and_defaults():
    assert ASSIGNERS["tal"] is TaskAlignedAssigner
    assert TaskAlignedAssigner.requires_predictions
    m = TaskAlignedAssigner()
    assert (m.topk, m.alpha, m.beta, m.flavour, m.eps) == (13, 1.0, 6.0, "mmdet", 1e-7)
    u = TaskAlignedAssigner.ultralytics()
    assert (u.topk, u.alpha, u.beta, u.flavour, u.eps, u.small_box_side) == (10, 0.5, 6.0, "ultralytics", 1e-9, 16.0)
    assert TaskAlignedAssigner.ultralytics(topk=13).topk == 13


@pytest.mark.parametrize("kw", [dict(topk=0), dict(topk=1.5), dict(alpha=-1), dict(beta=-1), dict(flavour="tood"),
                                dict(eps=0), dict(small_box_side=0), dict(scores_are="x"), dict(max_pairs=0)])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        TaskAlignedAssigner(**kw)


def test_needs_predictions():
    with pytest.raises(ValueError, match="prediction-aware"):
        TaskAlignedAssigner()(points_priors([[4, 4]], [8]), gt_one([[0, 0, 8, 8]], [0]))


# one GT [0,0,100,100]; priors centred at (20,20), (50,50), (80,80) (inside) and (150,150) (outside)
PRI = [[20, 20], [50, 50], [80, 80], [150, 150]]
BOXES = [[0, 0, 100, 80], [0, 0, 100, 90], [0, 0, 100, 30], [0, 0, 100, 95]]  # IoU 0.8, 0.9, 0.3, 0.95
SCORES = [0.9, 0.8, 0.5, 0.9]
# t = s * IoU^6: 0.9 * 0.262144 = 0.2359296, 0.8 * 0.531441 = 0.4251528, 0.5 * 0.000729 = 0.0003645,
#                0.9 * 0.735092 = 0.6615829


def test_mmdet_topk_over_all_priors_then_centre_filter():
    # top-2 = {p3, p1}: p3 (the best metric) has its centre outside the GT -> only p1 is positive
    res = run(TaskAlignedAssigner(topk=2), points_priors(PRI, [8]), gt_one([[0, 0, 100, 100]], [0]), BOXES, SCORES)
    assert res.gt_index.tolist() == [[-1, 0, -1, -1]]
    # t_hat = t / (max t + 1e-7) * max IoU
    assert res.quality[0, 1].item() == pytest.approx(0.4251528 / (0.4251528 + 1e-7) * 0.9, rel=1e-6)
    assert res.extras["metrics"][0].tolist() == pytest.approx([0, 0.4251528, 0, 0], rel=1e-6)
    # top-3 = {p3, p1, p0} -> p1, p0
    res = run(TaskAlignedAssigner(topk=3), points_priors(PRI, [8]), gt_one([[0, 0, 100, 100]], [0]), BOXES, SCORES)
    assert res.gt_index.tolist() == [[0, 0, -1, -1]]
    assert res.extras["metrics"][0].tolist() == pytest.approx([0.2359296, 0.4251528, 0, 0], rel=1e-6)
    assert res.extras["overlaps"][0].tolist() == pytest.approx([0.8, 0.9, 0, 0], rel=1e-6)
    assert res.quality[0].tolist() == pytest.approx([0.2359296 / 0.4251529 * 0.9, 0.9 * 0.4251528 / 0.4251529, 0, 0],
                                                    rel=1e-6)
    assert torch.equal(res.box_weight, res.quality)


def test_ultralytics_topk_over_in_box_priors():
    # same inputs, alpha 1: the out-of-box p3 cannot take a slot, so top-2 = {p1, p0}; overlaps are
    # CIoU (the centre-distance term makes them smaller than the IoUs)
    res = run(TaskAlignedAssigner(topk=2, alpha=1.0, flavour="ultralytics"), points_priors(PRI, [8]),
              gt_one([[0, 0, 100, 100]], [0]), BOXES, SCORES)
    assert res.gt_index.tolist() == [[0, 0, -1, -1]]
    u = ciou(torch.tensor([[0.0, 0, 100, 100]]), torch.tensor(BOXES[:2], dtype=torch.float32))
    torch.testing.assert_close(res.extras["overlaps"][0, :2], u)
    t = torch.tensor([0.9, 0.8]) * u**6
    torch.testing.assert_close(res.extras["metrics"][0, :2], t)
    torch.testing.assert_close(res.quality[0, :2], t * u.max() / (t.max() + 1e-9))  # ultralytics' order


def test_multi_claim_resolution_differs_between_flavours():
    # GTs A [0,0,40,40] (class 0), B [2,0,42,40] (class 1), C [0,0,40,42] (class 2); priors P, S in all three.
    # P predicts [0,0,40,44]: IoU A 0.909, B 0.826, C 0.955; S predicts C exactly. Scores: P (0.9, 0.9, 0.01),
    # S (0.01, 0.01, 0.9). With topk 1: A -> P, B -> P, C -> S.
    pri = points_priors([[20, 20], [24, 24]], [8])
    gt = gt_one([[0, 0, 40, 40], [2, 0, 42, 40], [0, 0, 40, 42]], [0, 1, 2])
    boxes, scores = [[0, 0, 40, 44], [0, 0, 40, 42]], [[0.9, 0.9, 0.01], [0.01, 0.01, 0.9]]
    # mmdet: P goes to the claimer of highest IoU, A
    res = run(TaskAlignedAssigner(topk=1), pri, gt, boxes, scores)
    assert res.gt_index.tolist() == [[0, 2]]
    assert res.extras["overlaps"][0].tolist() == pytest.approx([1600 / 1760, 1.0], rel=1e-6)
    # ultralytics: P goes to the GT of highest overlap among ALL GTs: C, which did not claim it
    res = run(TaskAlignedAssigner.ultralytics(topk=1), pri, gt, boxes, scores)
    assert res.gt_index.tolist() == [[2, 2]]
    u = pairwise_ciou(gt.boxes, torch.tensor([boxes], dtype=torch.float32))[0, 2]  # C's CIoU at P and S
    t = torch.tensor([0.01, 0.9]).sqrt() * u.clamp(min=0) ** 6
    torch.testing.assert_close(res.extras["overlaps"][0], u)
    torch.testing.assert_close(res.extras["metrics"][0], t)
    torch.testing.assert_close(res.quality[0], t * u.max() / (t.max() + 1e-9))
    ref_gi, ref_q = oracle_tal_ultralytics(pri, gt, torch.tensor([boxes], dtype=torch.float32),
                                           torch.tensor([scores]), topk=1)
    assert torch.equal(res.gt_index, ref_gi)
    torch.testing.assert_close(res.quality, ref_q)


def test_ultralytics_small_box_floor():
    # a 4x4 GT centred on the P3 prior (100, 100) is tested as [92, 108]^2 (strict): P3 (100, 100) and
    # P4 (104, 104) are inside, P3 (92, 100) / (108, 100) sit on its edges and are not
    pri = make_priors((208, 208))
    N = pri.num_priors
    gt = gt_one([[98, 98, 102, 102]], [0])
    boxes = torch.tensor([98.0, 98, 102, 102]).expand(1, N, 4)
    scores = torch.full((1, N, 1), 0.5)
    res = run(TaskAlignedAssigner.ultralytics(), pri, gt, boxes, scores)
    idx = res.positive[0].nonzero()[:, 0]
    assert pri.points[idx].tolist() == [[100.0, 100.0], [104.0, 104.0]]
    assert res.quality[0, idx].tolist() == pytest.approx([1.0, 1.0])
    res = run(TaskAlignedAssigner.ultralytics(small_box_side=None), pri, gt, boxes, scores)
    assert pri.points[res.positive[0]].tolist() == [[100.0, 100.0]]
    # a side of exactly 16 is not floored ('<' is strict), 15.5 is
    f = TaskAlignedAssigner.ultralytics()
    e = f._edges(torch.tensor([[[44.0, 44, 60, 60], [192.25, 0, 207.75, 30]]]), torch.tensor([[True, True]]))
    assert [v[0].tolist() for v in e] == [[44.0, 192.0], [44.0, 0.0], [60.0, 208.0], [60.0, 30.0]]


def test_no_gt_no_positive_and_fewer_priors_than_topk():
    pri = points_priors(PRI, [8])
    empty = GroundTruth(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    for a in (TaskAlignedAssigner(), TaskAlignedAssigner.ultralytics()):
        res = run(a, pri, empty, BOXES, SCORES)
        assert not res.positive.any() and res.extras["metrics"].abs().sum() == 0
        # 4 priors < topk 13 / 10; a GT whose predictions all miss it: no positive for mmdet (t = 0)
        res = run(a, pri, gt_one([[300, 300, 310, 310]], [0]), BOXES, SCORES)
        assert not res.positive.any()
    # ultralytics: an in-box prior with metric 0 still counts when the GT has fewer than topk in-box
    res = run(TaskAlignedAssigner.ultralytics(), pri, gt_one([[0, 0, 100, 100]], [0]), BOXES, [0.0, 0.0, 0.0, 0.0])
    assert res.gt_index.tolist() == [[0, 0, 0, -1]] and res.quality.abs().sum() == 0


def test_padding_rows_with_out_of_range_labels():
    """Padded GT rows may hold anything (here label 99 with C = 1, before the valid GT): no index
    error, and the result is that of the valid GT alone."""
    pri = points_priors(PRI, [8])
    padded = GroundTruth(torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 100.0, 100.0]]]),
                         torch.tensor([[99, 0]]), torch.tensor([[False, True]]))
    alone = gt_one([[0, 0, 100, 100]], [0])
    for a in (TaskAlignedAssigner(), TaskAlignedAssigner.ultralytics()):
        r_pad, r_one = run(a, pri, padded, BOXES, SCORES), run(a, pri, alone, BOXES, SCORES)
        assert torch.equal(r_pad.positive, r_one.positive)
        assert torch.equal(r_pad.gt_index[r_pad.positive], r_one.gt_index[r_one.positive] + 1)
        assert torch.allclose(r_pad.quality, r_one.quality)


def test_inputs_untouched():
    pri, gt, pred, scores = random_problem(1, C=1)
    s0, p0 = scores.clone(), pred.clone()
    for a in (TaskAlignedAssigner(), TaskAlignedAssigner.ultralytics()):
        a(pri, gt, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(scores, s0) and torch.equal(pred, p0)


@pytest.mark.parametrize("seed", range(4))
def test_mmdet_matches_per_image_reference(seed):
    pri, gt, pred, scores = random_problem(seed)
    res = TaskAlignedAssigner()(pri, gt, pred_boxes=pred, pred_scores=scores)
    res.validate(gt)
    gi, met = oracle_tal_mmdet(pri, gt, pred, scores)
    assert torch.equal(res.gt_index, gi)
    torch.testing.assert_close(res.extras["metrics"], met)
    assert res.positive.sum() > 5


@pytest.mark.parametrize("seed", range(4))
def test_ultralytics_matches_per_image_reference(seed):
    pri, gt, pred, scores = random_problem(seed)
    res = TaskAlignedAssigner.ultralytics()(pri, gt, pred_boxes=pred, pred_scores=scores)
    res.validate(gt)
    gi, q = oracle_tal_ultralytics(pri, gt, pred, scores)
    assert torch.equal(res.gt_index, gi)
    torch.testing.assert_close(res.quality, q)
    assert res.positive.sum() > 20


@pytest.mark.parametrize("flavour", ["mmdet", "ultralytics"])
def test_batch_chunks_and_grid_are_identical(flavour):
    pri, gt, pred, scores = random_problem(11, B=3, G=8)

    def make(**kw):
        return TaskAlignedAssigner.ultralytics(**kw) if flavour == "ultralytics" else TaskAlignedAssigner(**kw)

    full = make()(pri, gt, pred_boxes=pred, pred_scores=scores)
    chunked = make(max_pairs=1)(pri, gt, pred_boxes=pred, pred_scores=scores)
    dense = make()(Priors.from_tensors(pri.points, pri.num_level_priors, pri.level_strides), gt,
                   pred_boxes=pred, pred_scores=scores)
    for other in (chunked, dense):
        for f in ("gt_index", "quality", "box_weight"):
            assert torch.equal(getattr(full, f), getattr(other, f)), f
        for k in ("metrics", "overlaps"):
            assert torch.equal(full.extras[k], other.extras[k]), k
    for b in range(gt.batch_size):
        sub = GroundTruth(gt.boxes[b:b + 1], gt.labels[b:b + 1], gt.mask[b:b + 1])
        one = make()(pri, sub, pred_boxes=pred[b:b + 1], pred_scores=scores[b:b + 1])
        assert torch.equal(one.gt_index, full.gt_index[b:b + 1])
        torch.testing.assert_close(one.quality, full.quality[b:b + 1], rtol=0, atol=0)


def test_pairwise_ciou_matches_aligned_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 5, 4, generator=g) * 50
    b = torch.rand(2, 7, 4, generator=g) * 50
    a = torch.cat([a[..., :2], a[..., :2] + a[..., 2:]], -1)
    b = torch.cat([b[..., :2], b[..., :2] + b[..., 2:]], -1)
    ref = ciou(a[:, :, None], b[:, None])
    torch.testing.assert_close(pairwise_ciou(a, b), ref)
    same = pairwise_ciou(a[:, :1], a[:, :1])
    assert same.flatten().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


# -- properties ---------------------------------------------------------------------------------
@st.composite
def problems(draw):
    gt, pred, g, C = draw_problem(draw, gt_side_scales=[0.0, 0.1, 1.0])
    B, N = pred.shape[:2]
    scores = torch.rand(B, N, C, generator=g) * draw(st.sampled_from([0.0, 1.0]))  # 0: all-zero scores
    return gt, pred, scores


@settings(max_examples=40, deadline=None)
@given(problems(), st.sampled_from(["mmdet", "ultralytics"]))
def test_property_finite_and_valid(problem, flavour):
    gt, pred, scores = problem
    res = TaskAlignedAssigner(flavour=flavour)(PRI48, gt, pred_boxes=pred, pred_scores=scores)
    res.validate(gt)
    for v in res.extras.values():
        assert bool(torch.isfinite(v).all())
    # t_hat = t / max t * max overlap <= the best overlap among its GT's positives
    for b, n in res.positive.nonzero().tolist():
        same = res.positive[b] & (res.gt_index[b] == res.gt_index[b, n])
        assert res.quality[b, n] <= res.extras["overlaps"][b][same].max() + 1e-6
    if gt.mask.sum() == 0:
        assert not res.positive.any()


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(1, 3), st.sampled_from(["mmdet", "ultralytics"]))
def test_property_padding_rows_change_nothing(problem, extra, flavour):
    gt, pred, scores = problem
    B = gt.batch_size
    junk = torch.rand(B, extra, 4) * 40
    padded = GroundTruth(torch.cat([gt.boxes, torch.cat([junk[..., :2], junk[..., :2] + 5], -1)], 1),
                         torch.cat([gt.labels, torch.zeros(B, extra, dtype=torch.long)], 1),
                         torch.cat([gt.mask, torch.zeros(B, extra, dtype=torch.bool)], 1))
    a = TaskAlignedAssigner(flavour=flavour)(PRI48, gt, pred_boxes=pred, pred_scores=scores)
    b = TaskAlignedAssigner(flavour=flavour)(PRI48, padded, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(a.gt_index, b.gt_index)
    assert torch.equal(a.quality, b.quality)
    assert torch.equal(a.extras["metrics"], b.extras["metrics"])
    assert not math.isnan(float(a.quality.sum()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("flavour", ["mmdet", "ultralytics"])
def test_other_dtypes(dtype, flavour):
    pri, gt, pred, scores = random_problem(3)
    ref = TaskAlignedAssigner(flavour=flavour)(pri, gt, pred_boxes=pred, pred_scores=scores)
    res = TaskAlignedAssigner(flavour=flavour)(pri, gt, pred_boxes=pred.to(dtype), pred_scores=scores.to(dtype))
    res.validate(gt)
    if dtype == torch.float64:
        assert torch.equal(res.gt_index, ref.gt_index)
