"""ATSSAssigner: hand-computed cases (threshold mean + unbiased std, center test, per-level top-k,
collisions, ignore regions), a loop-per-GT reference on random layouts, batching, chunking and
grid vs dense candidate selection."""

from __future__ import annotations

import pytest
import torch
from assign_testutils import random_boxes
from torchvision.ops import box_iou

from assignlab.assigners import ASSIGNERS, ATSSAssigner
from assignlab.assigners._grid import level_layouts
from assignlab.core import GroundTruth, Priors, make_priors

PRIORS4 = [[0, 0, 10, 10], [10, 10, 20, 20], [5, 5, 15, 15], [32, 32, 38, 42]]
GTS2 = [[0, 0, 10, 9], [0, 10, 10, 19]]
ANCHORS = [[(16, 16), (24, 12)], [(32, 32), (48, 24)], [(64, 64), (96, 48)]]


def box_priors(boxes, nlp=None, strides=None) -> Priors:
    b = torch.as_tensor(boxes, dtype=torch.float32)
    nlp = nlp or [len(b)]
    return Priors.from_tensors((b[:, :2] + b[:, 2:]) / 2, nlp, strides or [8] * len(nlp), anchors=b)


def one_image(boxes, ignore=None) -> GroundTruth:
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    ign = None if ignore is None else [torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 4)]
    return GroundTruth.from_lists([b], [torch.arange(len(b))], ignore=ign)


def test_registered():
    assert ASSIGNERS["atss"] is ATSSAssigner


def test_mmdet_example_by_hand():
    # g0: IoUs 0.9, 0, 20/170, 0 -> mean 0.2544, unbiased std 0.4339, thr 0.6883: p0 (center (5,5)
    #     inside g0) is positive.
    # g1: IoUs 0, 0, 25/165, 0 -> mean 0.0379, std 0.0758, thr 0.1136: p2 passes the IoU test but
    #     its center (10, 10) lies on g1's top edge (t = 0 <= 0.01): not positive.
    res = ATSSAssigner(topk=9)(box_priors(PRIORS4), one_image(GTS2))
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]
    assert not res.ignore.any()
    torch.testing.assert_close(res.extras["overlaps"], torch.tensor([[0.9, 0.0, 0.0, 0.0]]))
    # moving g1 by (0.5, -0.5) puts p2's center 0.5 px inside it. IoUs 4.75/185.25, 4.25/185.75,
    # 30.25/159.75, 0 -> thr 0.0594 + 0.0874 = 0.1468 <= 0.1894: p2 becomes positive for g1
    res = ATSSAssigner(topk=9)(box_priors(PRIORS4), one_image([GTS2[0], [0.5, 9.5, 10.5, 18.5]]))
    assert res.gt_index.tolist() == [[0, -1, 1, -1]]
    torch.testing.assert_close(res.extras["overlaps"], torch.tensor([[0.9, 0.0, 30.25 / 159.75, 0.0]]))


def test_threshold_is_mean_plus_unbiased_std():
    # worked example of the module docstring: IoUs 0.90, 0.15, 0.12, 0.00 -> t = 0.7027
    ious = torch.tensor([0.90, 0.15, 0.12, 0.00])
    assert abs(float(ious.mean() + ious.std()) - 0.7027) < 1e-4
    # IoUs 0.46, 0.40, 0, 0 (one level, all four are candidates): mean 0.215,
    # population std 0.2160 -> 0.4310 (0.46 would pass), unbiased std 0.2495 -> 0.4645 (it fails)
    gt = one_image([[0, 0, 100, 100]])
    priors = box_priors([[0, 0, 100, 46], [0, 0, 100, 40], [200, 200, 210, 210], [300, 300, 310, 310]])
    iou = box_iou(gt.boxes[0], priors.anchors)[0]
    assert iou.mean() + iou.std(correction=0) < iou[0] < iou.mean() + iou.std()
    res = ATSSAssigner()(priors, gt)
    assert not res.positive.any()
    # a better top candidate passes: IoUs 0.50, 0.40, 0, 0 -> thr 0.225 + 0.2630 = 0.4880 <= 0.50
    priors = box_priors([[0, 0, 100, 50], [0, 0, 100, 40], [200, 200, 210, 210], [300, 300, 310, 310]])
    assert ATSSAssigner()(priors, gt).gt_index.tolist() == [[0, -1, -1, -1]]


def test_topk_per_level_and_small_levels():
    # level 0: 4 priors, level 1: 2 priors; topk=3 -> min(3, 4) + min(3, 2) = 5 candidates
    priors = box_priors(
        [[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32], [0, 0, 32, 32], [32, 0, 64, 32]],
        nlp=[4, 2], strides=[16, 32],
    )
    gt = one_image([[0, 0, 30, 30]])
    # squared distances from (15, 15): level 0 p0 98, p1 130, p2 130, p3 162 -> k=3 keeps p0, p1, p2
    # level 1 p4 2, p5 1090 -> both (only 2 priors). IoUs 256/900, 224/932, 224/932, 900/1024, 0
    # mean 0.3288 + unbiased std 0.3272 = 0.6560: only p4 (0.8789, center (16, 16) inside) is positive
    res = ATSSAssigner(topk=3)(priors, gt)
    assert res.gt_index.tolist() == [[-1, -1, -1, -1, 0, -1]]
    torch.testing.assert_close(res.extras["overlaps"][0, 4], torch.tensor(900 / 1024))
    # topk=1: candidates p0 (level 0) and p4 (level 1): thr = 0.5817 + 0.4203 -> 1.002 > 0.8789
    assert not ATSSAssigner(topk=1)(priors, gt).positive.any()


def test_collision_goes_to_higher_iou_then_lower_index():
    priors = box_priors([[0, 0, 20, 20], [100, 100, 120, 120], [200, 0, 220, 20]])
    # g0 and g1 both take p0 (the only prior with IoU > 0, center inside both); IoU 0.8 vs 0.64
    gt = one_image([[0, 0, 20, 16], [0, 0, 16, 16]])
    res = ATSSAssigner()(priors, gt)
    assert res.gt_index.tolist() == [[0, -1, -1]]
    torch.testing.assert_close(res.extras["overlaps"], torch.tensor([[0.8, 0.0, 0.0]]))
    res = ATSSAssigner()(priors, one_image([[0, 0, 16, 16], [0, 0, 20, 16]]))
    assert res.gt_index.tolist() == [[1, -1, -1]]
    # exact duplicates: the lower index
    res = ATSSAssigner()(priors, one_image([[0, 0, 20, 16], [0, 0, 20, 16]]))
    assert res.gt_index.tolist() == [[0, -1, -1]]


def test_ignore_regions():
    # mmdet edge case: p3 [30,32,40,42] is 80 % inside the ignore box [30,30,40,40] -> ignored
    priors = box_priors([[0, 0, 10, 10], [10, 10, 20, 20], [5, 5, 15, 15], [30, 32, 40, 42]])
    gt = one_image(GTS2, ignore=[[30, 30, 40, 40]])
    res = ATSSAssigner(ignore_iof_thr=0.5)(priors, gt)
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]
    assert res.ignore.tolist() == [[False, False, False, True]]
    assert not ATSSAssigner()(priors, gt).ignore.any()  # off by default
    # an ignored prior that is still a candidate (level smaller than topk) and passes stays positive
    gt = one_image(GTS2, ignore=[[0, 0, 10, 10]])
    res = ATSSAssigner(ignore_iof_thr=0.5)(priors, gt)
    assert res.gt_index.tolist() == [[0, -1, -1, -1]]
    assert not res.ignore.any()
    # with topk=1 the ignored p0 is pushed behind p2 (distance inf) and g0 loses it
    res = ATSSAssigner(topk=1, ignore_iof_thr=0.5)(priors, gt)
    assert res.ignore.tolist() == [[True, False, False, False]]
    assert not res.positive.any()  # one candidate: std is NaN, nothing passes (as mmdetection)


def test_no_gt():
    priors = box_priors(PRIORS4)
    gt = GroundTruth(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool),
                     ignore=torch.tensor([[[0.0, 0, 10, 10]]]), ignore_mask=torch.ones(1, 1, dtype=torch.bool))
    res = ATSSAssigner(ignore_iof_thr=0.5)(priors, gt)
    assert res.negative.all() and (res.extras["overlaps"] == 0).all()
    res = ATSSAssigner()(priors, GroundTruth.empty(3))
    assert res.shape == (3, 4) and res.negative.all()


# ---------------------------------------------------------------- reference (loops, mmdet order)
def reference_atss(priors: Priors, gt: GroundTruth, topk: int, square_scale: float = 8.0) -> torch.Tensor:
    pb = priors.boxes(square_scale)
    pts = priors.points
    out = torch.full((gt.batch_size, priors.num_priors), -1, dtype=torch.long)
    for b in range(gt.batch_size):
        boxes = gt.boxes[b]
        best = torch.full((priors.num_priors,), -1.0)
        for g in range(gt.max_boxes):
            if not gt.mask[b, g]:
                continue
            box = boxes[g]
            iou = box_iou(box[None], pb)[0]
            c = (box[:2] + box[2:]) / 2
            d2 = ((pts - c) ** 2).sum(1)
            cands = []
            for s in priors.level_slices():
                n = s.stop - s.start
                order = sorted(range(n), key=lambda i: (float(d2[s.start + i]), i))  # noqa: B023
                cands += [s.start + i for i in order[: min(topk, n)]]
            ci = torch.tensor(cands)
            thr = iou[ci].mean() + iou[ci].std()
            for i in cands:
                inside = min(pts[i, 0] - box[0], pts[i, 1] - box[1], box[2] - pts[i, 0], box[3] - pts[i, 1]) > 0.01
                if iou[i] >= thr and inside and iou[i] > best[i]:
                    best[i] = iou[i]
                    out[b, i] = g
    return out


def random_gt(counts, size, seed) -> GroundTruth:
    return GroundTruth.from_lists(random_boxes(counts, size, seed, div=1.5, min_side=3))


@pytest.mark.parametrize("anchors", [None, ANCHORS])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference_on_random_layouts(anchors, seed):
    priors = make_priors((96, 128), anchors=anchors)
    gt = random_gt([12, 0, 5], (96, 128), seed)
    res = ATSSAssigner(topk=5)(priors, gt)
    res.validate(gt)
    assert torch.equal(res.gt_index, reference_atss(priors, gt, topk=5))
    assert res.positive.sum() > 10


def same(a, b):
    assert torch.equal(a.gt_index, b.gt_index)
    assert torch.equal(a.positive, b.positive) and torch.equal(a.ignore, b.ignore)
    assert torch.equal(a.extras["overlaps"], b.extras["overlaps"])


@pytest.mark.parametrize("anchors", [None, ANCHORS])
def test_batch_chunks_and_grid_vs_dense(anchors):
    priors = make_priors((64, 96), anchors=anchors)
    dense = Priors.from_tensors(priors.points, priors.num_level_priors, priors.level_strides,
                                anchors=priors.anchors, num_anchors=priors.num_anchors)
    assert all(lay.grid for lay in level_layouts(priors)) and not any(lay.grid for lay in level_layouts(dense))
    gt = random_gt([9, 2, 0], (64, 96), seed=5)
    ignore = [torch.tensor([[0.0, 0, 60, 64]]), torch.zeros(0, 4), torch.tensor([[40.0, 0, 96, 64]])]
    gti = GroundTruth(gt.boxes, gt.labels, gt.mask, *_pad_ignore(ignore))
    for g in (gt, gti):
        a = ATSSAssigner(ignore_iof_thr=0.5)
        full = a(priors, g)
        full.validate(g)
        same(full, a(dense, g))
        same(full, ATSSAssigner(ignore_iof_thr=0.5, max_pairs=1)(priors, g))
        same(full, ATSSAssigner(ignore_iof_thr=0.5, max_pairs=1)(dense, g))
        for b in range(3):
            one = a(priors, g.select_images(slice(b, b + 1)))
            assert torch.equal(one.gt_index[0], full.gt_index[b]) and torch.equal(one.ignore[0], full.ignore[b])
    assert full.ignore.any()


def _pad_ignore(per_image):
    n = max(len(x) for x in per_image)
    ign = torch.zeros(len(per_image), n, 4)
    mask = torch.zeros(len(per_image), n, dtype=torch.bool)
    for i, x in enumerate(per_image):
        ign[i, : len(x)] = x
        mask[i, : len(x)] = True
    return ign, mask


def test_constructor_validation():
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=2.5)
    with pytest.raises(ValueError, match="square_scale"):
        ATSSAssigner(square_scale=-1)
