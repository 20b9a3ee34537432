"""MaxIoUAssigner: hand-computed cases (thresholds, ignore band, low-quality ties and order, ignore
regions, bug #8289), batching, chunking, grid vs dense path, bit-exact IoU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from assign_testutils import random_boxes
from torchvision.ops import box_iou

from assignlab.assigners import ASSIGNERS, MaxIoUAssigner
from assignlab.assigners._grid import level_iou, level_layouts, prior_areas, sanitize_gt
from assignlab.core import GroundTruth, Priors, make_priors

ANCHORS = [[(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]]


def box_priors(boxes) -> Priors:
    b = torch.as_tensor(boxes, dtype=torch.float32)
    return Priors.from_tensors((b[:, :2] + b[:, 2:]) / 2, [len(b)], [8], anchors=b)


def one_image(boxes, labels=None, ignore=None) -> GroundTruth:
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    lab = torch.as_tensor(labels if labels is not None else [0] * len(b)).long()
    ign = None if ignore is None else [torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 4)]
    return GroundTruth.from_lists([b], [lab], ignore=ign)


# mmdetection's unit-test layout
PRIORS4 = [[0, 0, 10, 10], [10, 10, 20, 20], [5, 5, 15, 15], [32, 32, 38, 42]]
GTS2 = [[0, 0, 10, 9], [0, 10, 10, 19]]


def test_registered():
    assert ASSIGNERS["maxiou"] is MaxIoUAssigner


def test_mmdet_basic_example():
    # IoU g0: 0.9, 0, 20/170, 0 ; g1: 0, 0 (touching), 25/165, 0
    gt = one_image(GTS2, [2, 3])
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5)(box_priors(PRIORS4), gt)
    res.validate(gt)
    assert res.gt_index.tolist() == [[0, -1, 1, -1]]
    assert res.positive.tolist() == [[True, False, True, False]]
    assert not res.ignore.any()
    assert res.labels(gt).tolist() == [[2, -1, 3, -1]]
    torch.testing.assert_close(res.extras["max_overlaps"], torch.tensor([[0.9, 0.0, 25 / 165, 0.0]]))
    torch.testing.assert_close(res.extras["overlaps"], torch.tensor([[0.9, 0.0, 25 / 165, 0.0]]))
    assert res.quality.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_rpn_thresholds_drop_weak_low_quality_match():
    # g1's best IoU 0.1515 < min_pos_iou 0.3: p2 is a plain negative (0.1515 < 0.3)
    res = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)(box_priors(PRIORS4), one_image(GTS2))
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]
    assert not res.ignore.any()


def test_ignore_band_and_negative_range():
    # GT [0,0,10,10]; priors with IoU 1, 0.45, 0.3, 0.05, 0
    priors = box_priors([[0, 0, 10, 10], [0, 0, 10, 4.5], [0, 0, 3, 10], [0, 0, 10, 0.5], [50, 50, 60, 60]])
    gt = one_image([[0, 0, 10, 10]])
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)(priors, gt)
    assert res.gt_index.tolist() == [[0, -1, -1, -1, -1]]
    assert res.ignore.tolist() == [[False, True, False, False, False]]  # 0.45 in [0.4, 0.5)
    torch.testing.assert_close(res.extras["max_overlaps"], torch.tensor([[1.0, 0.45, 0.3, 0.05, 0.0]]))
    # negatives only in [0.1, 0.4): 0.05 and 0 fall below the range and are ignored too
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.4))(priors, gt)
    assert res.ignore.tolist() == [[False, True, False, True, True]]
    assert res.negative.tolist() == [[False, False, True, False, False]]


def test_low_quality_ties_all_or_first():
    # two priors tie exactly at the GT's best IoU (0.25), below pos_iou_thr
    priors = box_priors([[0, 0, 20, 20], [20, 0, 40, 20], [100, 100, 110, 110]])
    gt = one_image([[15, 0, 25, 10]])  # IoU 50 / (400 + 100 - 50) = 1/9 with p0 and with p1
    iou = box_iou(gt.boxes[0], priors.anchors)[0]
    assert iou[0] == iou[1] > 0
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.05)(priors, gt)
    assert res.gt_index.tolist() == [[0, 0, -1]]
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.05, gt_max_assign_all=False)(priors, gt)
    assert res.gt_index.tolist() == [[0, -1, -1]]
    assert res.ignore.tolist() == [[False, True, False]]  # 1/9 is in the band [0.05, 0.5)
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.05, match_low_quality=False)(priors, gt)
    assert res.gt_index.tolist() == [[-1, -1, -1]]


def test_low_quality_last_gt_wins_and_overrides_threshold_match():
    # p0 is the best prior of g0 (IoU 0.6 >= 0.5: threshold positive for g0) AND of g1 (0.3)
    priors = box_priors([[0, 0, 10, 10], [40, 40, 50, 50]])
    gt = one_image([[0, 0, 10, 6], [0, 0, 3, 10]])
    iou = box_iou(gt.boxes[0], priors.anchors)
    torch.testing.assert_close(iou[:, 0], torch.tensor([0.6, 0.3]))
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)(priors, gt)
    assert res.gt_index.tolist() == [[1, -1]]  # the low-quality loop ends with g1
    torch.testing.assert_close(res.extras["overlaps"], torch.tensor([[0.3, 0.0]]))
    torch.testing.assert_close(res.extras["max_overlaps"], torch.tensor([[0.6, 0.0]]))
    # same boxes in the other order: g0 (now index 1) wins
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)(priors, one_image([[0, 0, 3, 10], [0, 0, 10, 6]]))
    assert res.gt_index.tolist() == [[1, -1]]


def test_bug_8289_far_and_zero_width_gts_stay_unmatched():
    priors = box_priors(PRIORS4)
    # far away GT: IoU 0 with every prior; mmdet would make all 4 priors positive
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)(priors, one_image([[100, 100, 110, 110]]))
    assert res.gt_index.tolist() == [[-1, -1, -1, -1]]
    assert res.negative.all()
    # zero-width GT kept in place (mask True) next to a normal one: it never matches
    gt = GroundTruth(
        boxes=torch.tensor([[[0.0, 0, 10, 9], [5, 5, 5, 15]]]),
        labels=torch.zeros(1, 2, dtype=torch.long),
        mask=torch.ones(1, 2, dtype=torch.bool),
    )
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)(priors, gt)
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]
    # masked-out GT with a perfect box never matches either
    gt = dataclasses.replace(gt, boxes=torch.tensor([[[0.0, 0, 10, 9], [10, 10, 20, 20]]]),
                             mask=torch.tensor([[True, False]]))
    res = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)(priors, gt)
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]
    res.validate(gt)


def test_ignore_regions_wrt_prior_or_ignore_box():
    # p1 [0,0,20,20] (area 400) covers the ignore box [0,0,10,10] (area 100): iof 0.25 w.r.t. the
    # prior, 1.0 w.r.t. the ignore box. The GT equals p1 (IoU 1), yet an ignored prior cannot be positive.
    priors = box_priors([[30, 30, 50, 50], [0, 0, 20, 20], [2, 0, 22, 20]])
    gt = one_image([[0, 0, 20, 20]], ignore=[[0, 0, 10, 10]])
    res = MaxIoUAssigner(ignore_iof_thr=0.5, ignore_wrt_candidates=True)(priors, gt)
    assert res.gt_index.tolist() == [[-1, 0, 0]]
    res = MaxIoUAssigner(ignore_iof_thr=0.5, ignore_wrt_candidates=False)(priors, gt)
    # p1 and p2 both cover > half of the ignore box (p2: 8*10/100 = 0.8): both ignored, none positive
    assert res.gt_index.tolist() == [[-1, -1, -1]]
    assert res.ignore.tolist() == [[False, True, True]]
    torch.testing.assert_close(res.extras["max_overlaps"], torch.tensor([[0.0, -1.0, -1.0]]))
    res.validate(gt)
    # ignore regions are off by default
    assert MaxIoUAssigner()(priors, gt).gt_index.tolist() == [[-1, 0, 0]]


def test_no_gt_all_negative_and_ignore_not_applied():
    priors = box_priors(PRIORS4)
    gt = GroundTruth(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool),
                     ignore=torch.tensor([[[0.0, 0, 10, 10]]] * 2), ignore_mask=torch.ones(2, 1, dtype=torch.bool))
    res = MaxIoUAssigner(ignore_iof_thr=0.5)(priors, gt)
    assert res.negative.all() and (res.extras["max_overlaps"] == 0).all()
    # one image without GT (all rows padded) next to one with a GT
    gt = GroundTruth(torch.tensor([[[0.0, 0, 10, 9]], [[0.0, 0, 10, 10]]]), torch.zeros(2, 1, dtype=torch.long),
                     torch.tensor([[True], [False]]), ignore=torch.tensor([[[30.0, 30, 40, 40]]] * 2),
                     ignore_mask=torch.ones(2, 1, dtype=torch.bool))
    res = MaxIoUAssigner(ignore_iof_thr=0.5, ignore_wrt_candidates=False)(box_priors(
        [[0, 0, 10, 10], [30, 32, 40, 42]]), gt)
    assert res.gt_index.tolist() == [[0, -1], [-1, -1]]
    assert res.ignore.tolist() == [[False, True], [False, False]]
    assert res.extras["max_overlaps"][1].tolist() == [0.0, 0.0]


def random_gt(B: int, counts: list[int], size: tuple[int, int], seed: int, integer: bool = False) -> GroundTruth:
    out = random_boxes(counts, size, seed, div=2, min_side=2, integer=integer)
    return GroundTruth.from_lists(out, [torch.arange(n) % 5 for n in counts])


def same(a, b):
    assert torch.equal(a.gt_index, b.gt_index)
    assert torch.equal(a.positive, b.positive) and torch.equal(a.ignore, b.ignore)
    for k in a.extras:
        assert torch.equal(a.extras[k], b.extras[k]), k


@pytest.mark.parametrize("anchors", [None, ANCHORS])
def test_batch_equals_per_image_and_chunked_equals_unchunked(anchors):
    priors = make_priors((96, 128), anchors=anchors)
    gt = random_gt(3, [7, 0, 3], (96, 128), seed=1)
    for kw in ({}, {"neg_iou_thr": (0.1, 0.4), "min_pos_iou": 0.2}, {"gt_max_assign_all": False}):
        a = MaxIoUAssigner(**kw)
        full = a(priors, gt)
        full.validate(gt)
        assert full.positive.any()
        for b in range(3):
            one = a(priors, gt.select_images(slice(b, b + 1)))
            assert torch.equal(one.gt_index[0], full.gt_index[b]) and torch.equal(one.ignore[0], full.ignore[b])
            assert torch.equal(one.extras["max_overlaps"][0], full.extras["max_overlaps"][b])
        same(MaxIoUAssigner(max_pairs=1, **kw)(priors, gt), full)  # one GT per chunk
        same(MaxIoUAssigner(max_pairs=3 * priors.num_priors * 2, **kw)(priors, gt), full)


@pytest.mark.parametrize("anchors", [None, ANCHORS])
def test_grid_path_equals_dense_path(anchors):
    priors = make_priors((80, 112), anchors=anchors, offset=0.0)
    dense = Priors.from_tensors(priors.points, priors.num_level_priors, priors.level_strides, anchors=priors.anchors)
    assert not any(lay.grid for lay in level_layouts(dense))
    gt = random_gt(2, [9, 4], (80, 112), seed=2)
    same(MaxIoUAssigner()(priors, gt), MaxIoUAssigner()(dense, gt))


@pytest.mark.parametrize("anchors", [None, [[(10.5, 13.25)], [(45.254834, 22.627417)], [(90.50967, 181.01933)]]])
def test_level_iou_bit_identical_to_torchvision(anchors):
    priors = make_priors((64, 96), anchors=anchors, offset=0.25)
    gt = random_gt(2, [5, 3], (64, 96), seed=3)
    pb = priors.boxes(8.0)
    gb, ga, valid = sanitize_gt(gt, torch.float32)
    for lay in level_layouts(priors):
        assert lay.grid
        got = level_iou(pb, prior_areas(pb), lay, gb, ga)  # (B, n, g)
        for b in range(2):
            ref = box_iou(gt.boxes[b], pb[lay.slice]).T
            m = valid[b]
            assert torch.equal(got[b][:, m], ref[:, m])
            assert (got[b][:, ~m] == 0).all()


def test_constructor_validation():
    with pytest.raises(ValueError, match="pos_iou_thr"):
        MaxIoUAssigner(pos_iou_thr=0.0)
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.6)
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(neg_iou_thr=(0.3, 0.1))
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(neg_iou_thr=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="min_pos_iou"):
        MaxIoUAssigner(min_pos_iou=-0.1)
    with pytest.raises(ValueError, match="square_scale"):
        MaxIoUAssigner(square_scale=0)
    with pytest.raises(ValueError, match="max_pairs"):
        MaxIoUAssigner(max_pairs=0)
