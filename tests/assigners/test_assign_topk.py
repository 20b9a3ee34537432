"""TopKAssigner: hand-computed cases (k best per GT, collisions, min_iou, small vs large GTs), a
loop reference on random layouts, batching, chunking, grid vs dense."""

from __future__ import annotations

import pytest
import torch
from assign_testutils import random_boxes
from torchvision.ops import box_iou

from assignlab.assigners import ASSIGNERS, TopKAssigner
from assignlab.core import GroundTruth, Priors, make_priors

ANCHORS = [[(16, 16), (24, 12)], [(32, 32), (48, 24)], [(64, 64), (96, 48)]]
ROW = [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [20, 0, 30, 10], [100, 100, 110, 110]]


def box_priors(boxes) -> Priors:
    b = torch.as_tensor(boxes, dtype=torch.float32)
    return Priors.from_tensors((b[:, :2] + b[:, 2:]) / 2, [len(b)], [8], anchors=b)


def one_image(boxes) -> GroundTruth:
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return GroundTruth.from_lists([b], [torch.arange(len(b))])


def test_registered():
    assert ASSIGNERS["topk"] is TopKAssigner


def test_hand_example_tie_to_lower_gt():
    # IoU g0 [0,0,10,10]:  1, 1/3, 0, 0, 0      -> top-2 p0, p1
    # IoU g1 [10,0,20,10]: 0, 1/3, 1, 0, 0      -> top-2 p2, p1 ; p1 ties 1/3 vs 1/3 -> g0
    res = TopKAssigner(k=2)(box_priors(ROW), one_image([[0, 0, 10, 10], [10, 0, 20, 10]]))
    assert res.gt_index.tolist() == [[0, 0, 1, -1, -1]]
    torch.testing.assert_close(res.extras["overlaps"], torch.tensor([[1.0, 1 / 3, 1.0, 0.0, 0.0]]))
    assert res.negative.tolist() == [[False, False, False, True, True]]
    assert res.quality.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]


def test_collision_goes_to_higher_iou():
    # g1 [8,0,18,10]: p1 70/130 = 0.538, p2 80/120 = 0.667 -> top-2 p2, p1; g0 keeps p0 but loses p1
    res = TopKAssigner(k=2)(box_priors(ROW), one_image([[0, 0, 10, 10], [8, 0, 18, 10]]))
    assert res.gt_index.tolist() == [[0, 1, 1, -1, -1]]
    torch.testing.assert_close(res.extras["overlaps"][0, :3], torch.tensor([1.0, 70 / 130, 80 / 120]))


def test_min_iou_and_k_larger_than_priors():
    gt = one_image([[0, 0, 10, 10], [10, 0, 20, 10]])
    assert TopKAssigner(k=2, min_iou=0.5)(box_priors(ROW), gt).gt_index.tolist() == [[0, -1, 1, -1, -1]]
    # k = 50 > 5 priors: every prior with IoU > 0 (never the IoU-0 ones)
    assert TopKAssigner(k=50)(box_priors(ROW), gt).gt_index.tolist() == [[0, 0, 1, -1, -1]]


def test_small_and_large_gts_get_k_positives_each():
    priors = make_priors((128, 128), anchors=ANCHORS)
    gt = one_image([[4, 4, 9, 9], [60, 40, 124, 120]])  # 5x5 px and 64x80 px, far apart
    res = TopKAssigner(k=9)(priors, gt)
    res.validate(gt)
    counts = torch.bincount(res.gt_index[res.positive], minlength=2)
    assert counts.tolist() == [9, 9]
    # the tiny GT's best IoU is small, yet it has its 9 positives
    assert res.extras["overlaps"][res.gt_index == 0].max() < 0.2


def reference_topk(priors: Priors, gt: GroundTruth, k: int, min_iou: float, square_scale: float = 8.0):
    pb = priors.boxes(square_scale)
    out = torch.full((gt.batch_size, priors.num_priors), -1, dtype=torch.long)
    best = torch.full((gt.batch_size, priors.num_priors), -1.0)
    for b in range(gt.batch_size):
        for g in range(gt.max_boxes):
            if not gt.mask[b, g]:
                continue
            iou = box_iou(gt.boxes[b, g][None], pb)[0]
            order = sorted(range(len(iou)), key=lambda i: (-float(iou[i]), i))  # noqa: B023
            for i in order[:k]:
                if iou[i] > min_iou and iou[i] > best[b, i]:
                    best[b, i] = iou[i]
                    out[b, i] = g
    return out


def random_gt(counts, size, seed) -> GroundTruth:
    return GroundTruth.from_lists(random_boxes(counts, size, seed, div=2, min_side=2))


@pytest.mark.parametrize("anchors", [None, ANCHORS])
def test_matches_loop_reference(anchors):
    priors = make_priors((64, 96), anchors=anchors)
    gt = random_gt([10, 0, 4], (64, 96), seed=7)
    for k, min_iou in ((9, 0.0), (4, 0.2)):
        res = TopKAssigner(k=k, min_iou=min_iou)(priors, gt)
        res.validate(gt)
        assert torch.equal(res.gt_index, reference_topk(priors, gt, k, min_iou))


def same(a, b):
    assert torch.equal(a.gt_index, b.gt_index) and torch.equal(a.positive, b.positive)
    assert torch.equal(a.extras["overlaps"], b.extras["overlaps"])


@pytest.mark.parametrize("anchors", [None, ANCHORS])
def test_batch_chunks_grid_vs_dense(anchors):
    priors = make_priors((64, 96), anchors=anchors)
    dense = Priors.from_tensors(priors.points, priors.num_level_priors, priors.level_strides, anchors=priors.anchors)
    gt = random_gt([6, 1, 0], (64, 96), seed=8)
    a = TopKAssigner(k=7)
    full = a(priors, gt)
    same(full, a(dense, gt))
    same(full, TopKAssigner(k=7, max_pairs=1)(priors, gt))
    same(full, TopKAssigner(k=7, max_pairs=2 * 3 * priors.num_priors)(dense, gt))
    for b in range(3):
        one = a(priors, gt.select_images(slice(b, b + 1)))
        assert torch.equal(one.gt_index[0], full.gt_index[b])
    assert not full.positive[2].any() and full.positive[1].sum() == 7


def test_constructor_validation():
    with pytest.raises(ValueError, match="k must"):
        TopKAssigner(k=0)
    with pytest.raises(ValueError, match="min_iou"):
        TopKAssigner(min_iou=1.0)
    with pytest.raises(ValueError, match="square_scale"):
        TopKAssigner(square_scale=0)
