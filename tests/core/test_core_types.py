"""Core types: priors, padded ground truth, assignment result, box helpers, chunking."""

import warnings

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab import Assignment, GroundTruth, make_priors
from assignlab.core import (
    BadBoxError,
    Priors,
    chunk_slices,
    dense_from_matches,
    gt_chunks,
    select_best_per_prior,
)
from assignlab.core.assignment import Matches
from assignlab.core.boxes import batched_box_iof, batched_box_iou, points_in_boxes


# ---------------------------------------------------------------- priors
def test_priors_order_and_centers_non_square():
    p = make_priors((32, 64), strides=(16, 32))
    assert p.num_level_priors == (8, 2)
    assert p.level_shapes == ((2, 4), (1, 2))
    expected = [[8, 8], [24, 8], [40, 8], [56, 8], [8, 24], [24, 24], [40, 24], [56, 24], [16, 16], [48, 16]]
    assert p.points.tolist() == expected
    assert p.strides.tolist() == [16.0] * 8 + [32.0] * 2
    assert p.levels.tolist() == [0] * 8 + [1] * 2
    assert p.grid_xy[:5].tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [0, 1]]
    assert p.anchors is None


def test_priors_anchor_boxes_consecutive_per_location():
    p = make_priors((16, 16), strides=(8,), anchors=[[(4, 4), (8, 16)]], offset=0.0)
    assert p.num_level_priors == (8,)  # 2x2 cells x 2 anchors
    assert p.anchor_ids.tolist() == [0, 1] * 4
    # location (0, 0) with offset 0 -> center (0, 0)
    assert p.anchors[0].tolist() == [-2, -2, 2, 2]
    assert p.anchors[1].tolist() == [-4, -8, 4, 8]
    # location (1, 0): x = 8
    assert p.anchors[2].tolist() == [6, -2, 10, 2]
    assert p.grid_xy[2].tolist() == [1, 0]


def test_priors_default_counts_640():
    p = make_priors(640)
    assert p.num_level_priors == (6400, 1600, 400)
    assert p.points[:2].tolist() == [[4, 4], [12, 4]]
    sq = p.boxes()  # 8*stride squares when anchor-free
    assert sq[0].tolist() == [4 - 32, 4 - 32, 4 + 32, 4 + 32]


def test_priors_validation():
    with pytest.raises(ValueError, match="positive"):
        make_priors((0, 10))
    with pytest.raises(ValueError, match="one list per level"):
        make_priors(64, anchors=[[(1, 1)]])
    with pytest.raises(ValueError, match="sums to"):
        Priors.from_tensors(torch.zeros(3, 2), [2], [8])


# ---------------------------------------------------------------- ground truth
def test_from_lists_pads_with_mask():
    gt = GroundTruth.from_lists(
        boxes=[torch.tensor([[10.0, 10, 50, 60], [100, 80, 120, 90]]), torch.zeros(0, 4)],
        labels=[torch.tensor([0, 2]), torch.zeros(0)],
    )
    assert gt.boxes.shape == (2, 2, 4)
    assert gt.mask.tolist() == [[True, True], [False, False]]
    assert gt.labels.tolist() == [[0, 2], [0, 0]]
    assert gt.num_boxes().tolist() == [2, 0]
    b, lb = gt.image(0)
    assert b.tolist() == [[10, 10, 50, 60], [100, 80, 120, 90]]


def test_from_lists_nan_names_image_and_box():
    with pytest.raises(BadBoxError, match=r"image 1: box 1"):
        GroundTruth.from_lists([torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.0, 0, 1, 1], [0, float("nan"), 2, 2]])])
    with pytest.raises(BadBoxError, match="non-finite"):
        GroundTruth.from_lists([torch.tensor([[0.0, 0, float("inf"), 1]])])


def test_from_lists_degenerate_masked_with_warning_indices_kept():
    boxes = [torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 9], [9, 9, 3, 3], [1, 1, 4, 4]])]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gt = GroundTruth.from_lists(boxes)
    assert any("2 degenerate" in str(x.message) for x in w)
    assert gt.mask.tolist() == [[True, False, False, True]]
    assert gt.num_dropped == 2
    with pytest.raises(BadBoxError, match="box 1"):
        GroundTruth.from_lists(boxes, drop_degenerate=False)


def test_from_lists_clips_to_image():
    gt = GroundTruth.from_lists([torch.tensor([[-5.0, 2, 401, 30], [500, 0, 600, 10]])], image_size=(300, 400))
    assert gt.boxes[0, 0].tolist() == [0, 2, 400, 30]
    assert gt.mask.tolist() == [[True, False]]  # the second box lies fully outside -> zero width


def test_groundtruth_shape_checks():
    with pytest.raises(ValueError):
        GroundTruth(torch.zeros(1, 2, 4), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(TypeError):
        GroundTruth(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))


# ---------------------------------------------------------------- assignment
def test_from_gt_index_defaults_and_labels():
    gi = torch.tensor([[1, -1, 0, -1]])
    ign = torch.tensor([[False, True, True, False]])
    res = Assignment.from_gt_index(gi, ignore=ign)
    assert res.positive.tolist() == [[True, False, True, False]]
    assert res.ignore.tolist() == [[False, True, False, False]]  # a positive is never ignored
    assert res.quality.tolist() == [[1, 0, 1, 0]]
    assert res.cls_weight.tolist() == [[1, 0, 1, 1]]
    assert res.negative.tolist() == [[False, False, False, True]]
    gt = GroundTruth.from_lists([torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]])], [torch.tensor([3, 7])])
    assert res.labels(gt).tolist() == [[7, -1, 3, -1]]
    assert res.target_boxes(gt)[0, 0].tolist() == [1, 1, 5, 5]
    res.validate(gt)


def test_validate_catches_pointer_to_padding():
    gt = GroundTruth.from_lists([torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[0.0, 0, 4, 4], [1, 1, 2, 2]])])
    bad = Assignment.from_gt_index(torch.tensor([[1, -1], [0, -1]]))  # image 0 has only GT 0
    with pytest.raises(AssertionError, match="padded"):
        bad.validate(gt)


def test_select_best_per_prior_example():
    keep = select_best_per_prior(
        torch.tensor([0, 0, 0, 1]), torch.tensor([5, 5, 7, 5]), torch.tensor([0.3, 0.9, 0.1, 0.2]), 10
    )
    assert keep.tolist() == [False, True, True, True]
    # ties -> the first row
    keep = select_best_per_prior(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0.5, 0.5]), 4)
    assert keep.tolist() == [True, False]


def test_dense_from_matches_keeps_sparse_list():
    m = Matches(
        batch=torch.tensor([0, 0, 0]),
        prior=torch.tensor([2, 2, 3]),
        gt=torch.tensor([0, 1, 1]),
        weight=torch.tensor([1.0, 0.5, 0.8]),
        center=torch.tensor([True, False, True]),
        score=torch.tensor([0.2, 0.7, 0.1]),
    )
    res = dense_from_matches(m, 1, 5)
    assert res.gt_index.tolist() == [[-1, -1, 1, 1, -1]]
    assert res.box_weight[0].tolist() == pytest.approx([0, 0, 0.5, 0.8, 0])
    assert len(res.matches) == 3
    res.validate()


# ---------------------------------------------------------------- boxes
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 10_000))
def test_batched_iou_bit_identical_to_torchvision(g, n, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, g, 2, generator=gen) * 50
    a = torch.cat([xy, xy + torch.rand(2, g, 2, generator=gen) * 30], -1)
    xy = torch.rand(n, 2, generator=gen) * 50
    b = torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 30 + 0.1], -1)
    ours = batched_box_iou(a, b)
    assert ours.shape == (2, g, n)
    for i in range(2):
        assert torch.equal(ours[i], torchvision.ops.box_iou(a[i], b))


def test_iof_and_points_in_boxes():
    ign = torch.tensor([[0.0, 0, 10, 10]])
    pri = torch.tensor([[5.0, 5, 15, 15], [0, 0, 20, 20]])
    assert batched_box_iof(ign, pri, "second").tolist() == [[0.25, 0.25]]
    assert batched_box_iof(ign, pri, "first").tolist() == [[0.25, 1.0]]
    pts = torch.tensor([[5.0, 5.0], [10.0, 5.0], [9.995, 5.0]])
    assert points_in_boxes(pts, ign, eps=0.01).tolist() == [[True, False, False]]


def test_chunking():
    assert chunk_slices(10, 3, 9) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert chunk_slices(0, 3, 9) == [slice(0, 0)]
    assert chunk_slices(5, 100, 1) == [slice(i, i + 1) for i in range(5)]  # at least one per chunk
    assert gt_chunks(16, 1000, 8400, 2**25) == [slice(0, 249), slice(249, 498), slice(498, 747), slice(747, 996),
                                                 slice(996, 1000)]
    with pytest.raises(ValueError):
        chunk_slices(3, 1, 0)
