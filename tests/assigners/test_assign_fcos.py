"""FCOSAssigner: hand-computed cases (inside / center sampling, size ranges per level, smallest
area, centerness), a loop reference (mmdetection's per-point formulation), batching, chunking,
grid vs dense."""

from __future__ import annotations

import math

import pytest
import torch
from assign_testutils import random_boxes

from assignlab.assigners import ASSIGNERS, FCOSAssigner
from assignlab.assigners.fcos import default_regress_ranges
from assignlab.core import GroundTruth, Priors, make_priors


def one_image(boxes) -> GroundTruth:
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return GroundTruth.from_lists([b], [torch.arange(len(b))])


def test_registered_and_default_ranges():
    assert ASSIGNERS["fcos"] is FCOSAssigner
    assert default_regress_ranges((8, 16, 32)) == ((-1.0, 64.0), (64.0, 128.0), (128.0, math.inf))
    assert default_regress_ranges((8, 16, 32, 64, 128)) == (
        (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))
    assert default_regress_ranges((16,)) == ((-1.0, math.inf),)


def test_docstring_example_center_sampling():
    # image 40 x 64: level 0 has 5 rows x 8 cols of points at 4, 12, 20, ...
    priors = make_priors((40, 64))
    gt = one_image([[10, 10, 50, 30]])
    res = FCOSAssigner()(priors, gt)
    res.validate(gt)
    # center box [18, 10, 42, 30]: x in {20, 28, 36} (cols 2-4), y in {12, 20, 28} (rows 1-3)
    expect = sorted(r * 8 + c for r in (1, 2, 3) for c in (2, 3, 4))
    assert res.positive[0].nonzero()[:, 0].tolist() == expect
    assert (res.gt_index[0, expect] == 0).all()
    # point (28, 20) = index 19: l 18, t 10, r 22, b 10 -> centerness sqrt(18 / 22)
    torch.testing.assert_close(res.extras["centerness"][0, 19], torch.tensor(math.sqrt(18 / 22)))
    assert (res.extras["centerness"][0][~res.positive[0]] == 0).all()
    # its 64 x 64 square [-4, -12, 60, 52] contains the 40 x 20 GT: IoU 800 / 4096
    torch.testing.assert_close(res.extras["overlaps"][0, 19], torch.tensor(800 / 4096))
    assert (res.extras["overlaps"][0][~res.positive[0]] == 0).all()


def test_without_center_sampling_whole_box():
    priors = make_priors((40, 64))
    res = FCOSAssigner(center_sampling=False)(priors, one_image([[10, 10, 50, 30]]))
    # strictly inside: x in {12, ..., 44} (cols 1-5), y in {12, 20, 28} (rows 1-3); a point on
    # the border (x = 10 or 50) would not count. Level 1 (24, 24) / (40, 24): max distance 26 / 30
    # is outside [64, 128]
    expect = sorted(r * 8 + c for r in (1, 2, 3) for c in range(1, 6))
    assert res.positive[0].nonzero()[:, 0].tolist() == expect


def test_border_points_are_outside():
    priors = make_priors((32, 32), strides=(8,))  # points 4, 12, 20, 28
    res = FCOSAssigner(center_sampling=False)(priors, one_image([[4, 4, 20, 20]]))
    # x in (4, 20) strictly: 12 only (4 and 20 lie on the border)
    assert res.positive[0].nonzero()[:, 0].tolist() == [1 * 4 + 1]


def test_smallest_area_wins_and_ties_to_lower_index():
    priors = make_priors((64, 64), strides=(8,))
    big, small = [0, 0, 60, 60], [16, 16, 40, 40]
    res = FCOSAssigner(center_sampling=False)(priors, one_image([big, small]))
    # the points strictly inside the small box go to it, the rest of the big box to the big one
    inside_small = [r * 8 + c for r in (2, 3, 4) for c in (2, 3, 4)]  # 20, 28, 36
    assert (res.gt_index[0, inside_small] == 1).all()
    assert (res.gt_index[0, 0] == 0) and res.positive[0].sum() == 49  # 7 x 7 points inside the big box
    res = FCOSAssigner(center_sampling=False)(priors, one_image([small, big, small]))
    assert (res.gt_index[0, inside_small] == 0).all()  # duplicate of equal area: lower index


def test_size_ranges_select_the_level():
    priors = make_priors((256, 256))
    gt = one_image([[0, 0, 200, 200]])  # center (100, 100); radius 1.5 strides
    res = FCOSAssigner()(priors, gt)
    pos = res.positive[0]
    assert not pos[priors.levels == 0].any()  # every inside point is >= 100 px from some side: > 64
    # level 1 (stride 16, center box (76, 124)): points 88, 104, 120 -> max distance 112, 104, 120,
    # all in [64, 128]
    lvl1 = [priors.level_slices()[1].start + r * 16 + c for r in (5, 6, 7) for c in (5, 6, 7)]
    assert sorted(pos.nonzero()[:, 0][priors.levels[pos] == 1].tolist()) == sorted(lvl1)
    # level 2 (stride 32, box 100 +- 48): points 80, 112 give max distance 120 < 128 (out);
    # 144 gives 144 >= 128 (in): positives are exactly those with a coordinate 144
    p2 = priors.points[pos & (priors.levels == 2)]
    assert len(p2) == 5 and ((p2 == 144).any(dim=1)).all()
    # explicit ranges: everything on level 0
    res = FCOSAssigner(regress_ranges=((0, 1e8), (1e8, 2e8), (2e8, 3e8)))(priors, gt)
    assert res.positive[0].sum() > 0 and not res.positive[0][priors.levels > 0].any()


def test_bad_regress_ranges():
    with pytest.raises(ValueError, match="regress_ranges"):
        FCOSAssigner(regress_ranges=((0, 64), (64, 32)))
    with pytest.raises(ValueError, match="regress_ranges"):
        FCOSAssigner(regress_ranges=((0, 64),))(make_priors((64, 64)), one_image([[0, 0, 10, 10]]))
    with pytest.raises(ValueError, match="radius"):
        FCOSAssigner(radius=0)
    with pytest.raises(ValueError, match="square_scale"):
        FCOSAssigner(square_scale=0)


def reference_fcos(priors: Priors, gt: GroundTruth, ranges, center_sampling: bool, radius: float):
    """mmdetection's FCOSHead._get_targets_single, one image at a time, in float32."""
    out = torch.full((gt.batch_size, priors.num_priors), -1, dtype=torch.long)
    xs, ys = priors.points[:, 0:1], priors.points[:, 1:2]
    lo = torch.tensor([ranges[int(lv)][0] for lv in priors.levels])[:, None]
    hi = torch.tensor([ranges[int(lv)][1] for lv in priors.levels])[:, None]
    for b in range(gt.batch_size):
        boxes = gt.boxes[b][gt.mask[b]]
        idx = gt.mask[b].nonzero()[:, 0]
        if len(boxes) == 0:
            continue
        x1, y1, x2, y2 = boxes.T
        areas = ((x2 - x1) * (y2 - y1))[None].repeat(len(xs), 1)
        l_, t_, r_, b_ = xs - x1, ys - y1, x2 - xs, y2 - ys
        if center_sampling:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            s = priors.strides[:, None] * radius
            cx1 = torch.where(cx - s > x1, cx - s, x1)
            cy1 = torch.where(cy - s > y1, cy - s, y1)
            cx2 = torch.where(cx + s > x2, x2, cx + s)
            cy2 = torch.where(cy + s > y2, y2, cy + s)
            inside = torch.stack([xs - cx1, ys - cy1, cx2 - xs, cy2 - ys], -1).min(-1).values > 0
        else:
            inside = torch.stack([l_, t_, r_, b_], -1).min(-1).values > 0
        md = torch.stack([l_, t_, r_, b_], -1).max(-1).values
        in_range = (md >= lo) & (md <= hi)
        areas[~inside] = math.inf
        areas[~in_range] = math.inf
        m, arg = areas.min(dim=1)
        out[b] = torch.where(m < math.inf, idx[arg], -1)
    return out


def random_gt(counts, size, seed) -> GroundTruth:
    return GroundTruth.from_lists(random_boxes(counts, size, seed, div=1, min_side=2))


@pytest.mark.parametrize("center_sampling", [True, False])
@pytest.mark.parametrize("strides", [(8, 16, 32), (8, 16, 32, 64, 128)])
def test_matches_loop_reference(center_sampling, strides):
    priors = make_priors((160, 224), strides=strides)
    gt = random_gt([15, 0, 6], (160, 224), seed=len(strides) + center_sampling)
    a = FCOSAssigner(center_sampling=center_sampling)
    res = a(priors, gt)
    res.validate(gt)
    ref = reference_fcos(priors, gt, a.level_ranges(priors), center_sampling, 1.5)
    assert torch.equal(res.gt_index, ref)
    assert res.positive.sum() > 20


def test_batch_chunks_grid_vs_dense_and_anchors():
    anchors = [[(16, 16), (24, 12)], [(32, 32), (48, 24)], [(64, 64), (96, 48)]]
    gt = random_gt([7, 2, 0], (96, 128), seed=11)
    for anc in (None, anchors):
        priors = make_priors((96, 128), anchors=anc)
        dense = Priors.from_tensors(priors.points, priors.num_level_priors, priors.level_strides,
                                    anchors=priors.anchors, num_anchors=priors.num_anchors)
        a = FCOSAssigner()
        full = a(priors, gt)
        for other in (a(dense, gt), FCOSAssigner(max_pairs=1)(priors, gt), FCOSAssigner(max_pairs=5)(dense, gt)):
            assert torch.equal(full.gt_index, other.gt_index)
            assert torch.equal(full.extras["centerness"], other.extras["centerness"])
        for b in range(3):
            assert torch.equal(a(priors, gt.select_images(slice(b, b + 1))).gt_index[0], full.gt_index[b])
        if anc is not None:  # the anchors of one location share its result
            gi = full.gt_index.reshape(3, -1, 2)
            assert torch.equal(gi[..., 0], gi[..., 1])
        assert full.positive.any()
