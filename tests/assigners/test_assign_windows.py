"""The sparse CPU window path of the IoU assigners (``_grid.plan_windows`` / ``window_iou``) gives
exactly the outputs of the dense ``(B, g, N)`` path, whatever the chunking."""

from __future__ import annotations

import pytest
import torch
from assign_testutils import random_boxes
from torchvision.ops import box_iou

from assignlab.assigners import FCOSAssigner, HAMBoxAssigner, MaxIoUAssigner, NoisyAnchorAssigner, TopKAssigner
from assignlab.assigners._grid import (
    iou_runs,
    level_layouts,
    plan_windows,
    sanitize_gt,
    window_iou,
    window_prior_index,
)
from assignlab.core import GroundTruth, make_priors

ANCHORS = [[(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]]
SIZE = (96, 128)


def hard_gt(seed: int, integer: bool = False, ignore: bool = False) -> GroundTruth:
    """Random boxes plus the awkward ones: outside the image, on its border, tiny, huge, duplicated,
    degenerate (masked out), and an image without GTs."""
    boxes = random_boxes([9, 5, 0], SIZE, seed, div=1.5, min_side=1, integer=integer)
    extra = torch.tensor([[-40.0, -30, -5, -2], [120, 0, 200, 96], [0, 0, 128, 96], [50, 40, 50.5, 40.5],
                          [-10, -10, 300, 300], [20, 20, 20, 60]])
    boxes[0] = torch.cat([boxes[0], extra, boxes[0][:2]])  # the last two duplicate earlier GTs
    labels = [torch.zeros(len(b), dtype=torch.long) for b in boxes]
    ign = None
    if ignore:
        ign = [torch.tensor([[0.0, 0, 40, 30]]), torch.tensor([[60.0, 50, 128, 96], [0, 0, 10, 10]]),
               torch.zeros(0, 4)]
    with pytest.warns(UserWarning, match="degenerate"):
        return GroundTruth.from_lists(boxes, labels, ignore=ign)


def same(a, b):
    for f in ("gt_index", "positive", "ignore", "quality", "box_weight", "cls_weight"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.extras.keys() == b.extras.keys()
    for k in a.extras:
        assert torch.equal(a.extras[k], b.extras[k]), k


def dense(assigner):
    assigner._dense = True
    return assigner


def windows(assigner):
    """Force the sparse path (the default picks the dense one for small problems like these)."""
    assigner._dense = False
    return assigner


@pytest.mark.parametrize("anchors", [None, ANCHORS])
@pytest.mark.parametrize("integer", [False, True])
def test_maxiou_windows_equal_dense(anchors, integer):
    priors = make_priors(SIZE, anchors=anchors)
    for ignore in (False, True):
        gt = hard_gt(1, integer, ignore)
        for kw in ({}, {"gt_max_assign_all": False}, {"pos_iou_thr": 0.7, "neg_iou_thr": (0.1, 0.3),
                                                      "min_pos_iou": 0.3},
                   {"ignore_iof_thr": 0.5}, {"ignore_iof_thr": 0.3, "ignore_wrt_candidates": False},
                   {"match_low_quality": False}):
            ref = dense(MaxIoUAssigner(**kw))(priors, gt)
            assert ref.positive.any()
            for mp in (2**25, 1, 500):
                same(windows(MaxIoUAssigner(max_pairs=mp, **kw))(priors, gt), ref)


@pytest.mark.parametrize("anchors", [None, ANCHORS])
@pytest.mark.parametrize("integer", [False, True])
def test_topk_windows_equal_dense(anchors, integer):
    priors = make_priors(SIZE, anchors=anchors)
    gt = hard_gt(2, integer)
    for kw in ({}, {"k": 1}, {"k": 4, "min_iou": 0.2}, {"k": 500}):
        ref = dense(TopKAssigner(**kw))(priors, gt)
        assert ref.positive.any()
        for mp in (2**25, 1, 500):
            same(windows(TopKAssigner(max_pairs=mp, **kw))(priors, gt), ref)


def test_window_iou_bit_identical_and_covers_every_overlap():
    priors = make_priors(SIZE, anchors=ANCHORS, offset=0.25)
    gt = hard_gt(3)
    pb = priors.boxes(8.0)
    gb, ga, valid = sanitize_gt(gt, torch.float32)
    layouts = level_layouts(priors)
    runs = iou_runs(pb, layouts, gb)
    B, G, N = gt.batch_size, gt.max_boxes, priors.num_priors
    got = torch.zeros(B, G, N)
    seen = torch.zeros(B, G, N, dtype=torch.long)
    for ch in plan_windows(runs, layouts, valid, 700):
        for lv, lay in enumerate(layouts):
            if 0 in ch.sizes[lv]:
                continue
            iou = window_iou(pb, lay, ch, lv, gb[ch.image, ch.gt], ga[ch.image, ch.gt])
            pid = window_prior_index(lay, ch, lv, N)
            assert ((pid // N) == ch.image[:, None]).all()
            prior = pid % N
            assert ((prior >= lay.start) & (prior < lay.stop)).all()
            rows = ch.image[:, None].expand_as(prior)
            gts = ch.gt[:, None].expand_as(prior)
            got[rows, gts, prior] = iou
            seen[rows, gts, prior] += 1
    assert seen.max() <= 1  # no prior twice in a GT's windows
    for b in range(B):
        ref = box_iou(gb[b], pb)
        m = valid[b]
        assert torch.equal(got[b][m], ref[m])  # every overlapping prior is in a window, values exact
        assert (seen[b][~m] == 0).all()


def test_plan_windows_sorted_and_under_budget():
    priors = make_priors(SIZE)
    gt = hard_gt(4)
    pb = priors.boxes(8.0)
    gb, ga, valid = sanitize_gt(gt, torch.float32)
    layouts = level_layouts(priors)
    runs = iou_runs(pb, layouts, gb)
    for budget in (1, 300, 5000, 10**9):
        chunks = plan_windows(runs, layouts, valid, budget)
        ids = torch.cat([ch.image * gt.max_boxes + ch.gt for ch in chunks])
        assert sorted(ids.tolist()) == sorted(torch.nonzero(valid.reshape(-1))[:, 0].tolist())
        for ch in chunks:
            cost = ch.image.numel() * sum(r * c for r, c in ch.sizes)
            assert cost <= budget or ch.image.numel() == 1


@pytest.mark.parametrize("center_sampling", [True, False])
@pytest.mark.parametrize("anchors", [None, ANCHORS])
def test_fcos_windows_equal_dense(center_sampling, anchors):
    priors = make_priors(SIZE, anchors=anchors)
    gt = hard_gt(5)
    for kw in ({}, {"radius": 0.6}, {"radius": 4.0}, {"regress_ranges": ((-1, 20), (20, 40), (40, 1e8))}):
        ref = dense(FCOSAssigner(center_sampling=center_sampling, **kw))(priors, gt)
        assert ref.positive.any()
        for mp in (2**25, 1, 500):
            same(windows(FCOSAssigner(center_sampling=center_sampling, max_pairs=mp, **kw))(priors, gt), ref)


@pytest.mark.parametrize("ign", [False, True])
def test_hambox_windows_equal_dense(ign):
    priors = make_priors(SIZE)
    gt = hard_gt(6)
    g = torch.Generator().manual_seed(0)
    n = priors.num_priors
    pick = torch.randint(0, gt.max_boxes, (3, n), generator=g)
    base = torch.gather(gt.boxes, 1, pick[..., None].expand(3, n, 4))
    pred = base + torch.randn(3, n, 4, generator=g) * 3
    scores = torch.rand(3, n, 1, generator=g)
    for kw in ({}, {"t1": 0.2, "k": 9, "t2": 0.3}):
        ref = dense(HAMBoxAssigner(ignore_pred_negatives=ign, **kw))(priors, gt, pred_boxes=pred, pred_scores=scores)
        assert ref.positive.any() and ref.extras["compensated"].any()
        for mp in (2**25, 1, 500):
            got = windows(HAMBoxAssigner(ignore_pred_negatives=ign, max_pairs=mp, **kw))(priors, gt, pred_boxes=pred,
                                                                              pred_scores=scores)
            same(got, ref)


@pytest.mark.parametrize("anchors", [None, ANCHORS])
def test_noisy_windows_equal_dense(anchors):
    priors = make_priors(SIZE, anchors=anchors)
    for integer in (False, True):  # integer boxes: many tied anchor IoUs at the bag boundary
        gt = hard_gt(7, integer)
        g = torch.Generator().manual_seed(1)
        n = priors.num_priors
        pred = priors.boxes(8.0)[None].expand(3, n, 4) + torch.randn(3, n, 4, generator=g) * 4
        scores = torch.rand(3, n, 2, generator=g)
        for kw in ({}, {"n": 9}, {"n": 700, "gamma": 2.0}):
            ref = dense(NoisyAnchorAssigner(**kw))(priors, gt, pred_boxes=pred, pred_scores=scores)
            assert ref.positive.any()
            for mp in (2**25, 1, 5000):
                got = windows(NoisyAnchorAssigner(max_pairs=mp, **kw))(priors, gt, pred_boxes=pred, pred_scores=scores)
                same(got, ref)


def test_auto_path_on_a_benchmark_sized_batch():
    """640 px, 2 images x 70 GTs (> CACHE_PAIRS pairs): the default picks the window path."""
    from assignlab.bench.assign import make_inputs

    for name, cls in (("maxiou", MaxIoUAssigner), ("noisy", NoisyAnchorAssigner), ("topk", TopKAssigner),
                      ("fcos", FCOSAssigner), ("hambox", HAMBoxAssigner)):
        priors, gt, preds = make_inputs(name, 2, 70, seed=3)
        kw = preds if cls.requires_predictions else {}
        same(cls()(priors, gt, **kw), dense(cls())(priors, gt, **kw))
