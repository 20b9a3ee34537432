"""HAMBox assigner: hand-computed two-stage cases, collisions, ignore option, chunking, batching."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS, HAMBoxAssigner
from assignlab.core import GroundTruth, Priors, make_priors

FAR = [100.0, 100.0, 110.0, 110.0]  # an anchor that overlaps none of the GTs below


def _priors(anchor_boxes):
    a = torch.tensor(anchor_boxes, dtype=torch.float32)
    pts = (a[:, :2] + a[:, 2:]) / 2
    return Priors.from_tensors(pts, [a.shape[0]], [8.0], anchors=a)


def _pred_with_iou(iou):
    """A predicted box whose IoU with the GT [0, 0, 10, 10] is exactly ``iou``: [0, 0, 10, 10*iou]."""
    return [0.0, 0.0, 10.0, 10.0 * iou]


# prior 2 is the only stage-1 positive (anchor == GT); the others are far-away negatives whose
# *predictions* overlap the GT with the IoUs below (six of them reach t2 = 0.5).
PRED_IOUS = {0: 0.6, 1: 0.95, 3: 0.3, 4: 0.8, 5: 0.9, 6: 0.7, 7: 0.85, 8: 0.45}


def _case(pred_ious_per_image):
    anchors = [FAR] * 9
    anchors[2] = [0.0, 0.0, 10.0, 10.0]
    priors = _priors(anchors)
    B = len(pred_ious_per_image)
    gt = GroundTruth.from_lists([torch.tensor([[0.0, 0.0, 10.0, 10.0]])] * B)
    pb = torch.tensor([[FAR] * 9] * B)
    for b, ious in enumerate(pred_ious_per_image):
        pb[b, 2] = torch.tensor([0.0, 0.0, 10.0, 10.0])
        for j, v in ious.items():
            pb[b, j] = torch.tensor(_pred_with_iou(v))
    ps = torch.rand(B, 9, 1)
    return priors, gt, pb, ps


def test_registered():
    assert ASSIGNERS["hambox"] is HAMBoxAssigner
    assert HAMBoxAssigner.requires_predictions


def test_compensates_best_k_minus_m():
    # K=5, M=1, six candidates -> exactly the four best: priors 1 (.95), 5 (.9), 7 (.85), 4 (.8)
    priors, gt, pb, ps = _case([PRED_IOUS])
    res = HAMBoxAssigner(t1=0.35, k=5, t2=0.5)(priors, gt, pred_boxes=pb, pred_scores=ps)
    res.validate(gt)
    assert res.positive[0].nonzero().flatten().tolist() == [1, 2, 4, 5, 7]
    assert res.extras["compensated"][0].nonzero().flatten().tolist() == [1, 4, 5, 7]
    assert res.gt_index[0].tolist() == [-1, 0, 0, -1, 0, 0, -1, 0, -1]
    q = res.quality[0]
    assert q[2].item() == 1.0  # stage-1 positive
    torch.testing.assert_close(q[[1, 5, 7, 4]], torch.tensor([0.95, 0.9, 0.85, 0.8]))
    assert (q[[0, 3, 6, 8]] == 0).all()
    torch.testing.assert_close(res.extras["overlaps"][0, [1, 2, 4]], torch.tensor([0.95, 1.0, 0.8]))
    assert res.extras["anchor_iou"][0, 2].item() == 1.0
    assert (res.box_weight[0][res.positive[0]] == 1).all()
    assert not res.ignore.any()


def test_only_two_candidates_gives_two():
    ious = {0: 0.3, 1: 0.9, 3: 0.3, 4: 0.4, 5: 0.55, 6: 0.2, 7: 0.1, 8: 0.45}
    priors, gt, pb, ps = _case([PRED_IOUS, ious])  # image 1 has only priors 1 and 5 >= t2
    res = HAMBoxAssigner()(priors, gt, pred_boxes=pb, pred_scores=ps)
    res.validate(gt)
    assert res.extras["compensated"][1].nonzero().flatten().tolist() == [1, 5]
    assert res.positive[1].sum().item() == 3
    torch.testing.assert_close(res.quality[1, [1, 5]], torch.tensor([0.9, 0.55]))
    # image 0 unaffected by image 1 (batched, no cross-image leakage)
    assert res.extras["compensated"][0].nonzero().flatten().tolist() == [1, 4, 5, 7]


def test_no_compensation_when_enough_positives():
    priors, gt, pb, ps = _case([PRED_IOUS])
    res = HAMBoxAssigner(k=1)(priors, gt, pred_boxes=pb, pred_scores=ps)
    assert res.positive[0].nonzero().flatten().tolist() == [2]
    assert not res.extras["compensated"].any()


def test_threshold_is_inclusive():
    priors, gt, pb, ps = _case([{1: 0.5, 3: 0.3}])  # exactly t2 -> candidate
    res = HAMBoxAssigner()(priors, gt, pred_boxes=pb, pred_scores=ps)
    assert res.extras["compensated"][0].nonzero().flatten().tolist() == [1]
    assert res.quality[0, 1].item() == pytest.approx(0.5)


def test_ignore_pred_negatives():
    priors, gt, pb, ps = _case([PRED_IOUS])
    res = HAMBoxAssigner(ignore_pred_negatives=True)(priors, gt, pred_boxes=pb, pred_scores=ps)
    res.validate(gt)
    # priors 0 (.6) and 6 (.7) reach t2 but were not among the best 4 -> ignored
    assert res.ignore[0].nonzero().flatten().tolist() == [0, 6]
    assert (res.cls_weight[0, [0, 6]] == 0).all()
    assert res.positive[0].nonzero().flatten().tolist() == [1, 2, 4, 5, 7]


def test_stage1_threshold_no_ignore_band():
    # anchor IoUs with the GT [0,0,10,10]: 0.36 (>= t1 -> positive), 0.34 (negative, not ignored)
    anchors = [[0.0, 0.0, 10.0, 3.6], [0.0, 0.0, 10.0, 3.4], FAR]
    priors = _priors(anchors)
    gt = GroundTruth.from_lists([torch.tensor([[0.0, 0.0, 10.0, 10.0]])])
    pb = torch.tensor([[FAR] * 3])
    res = HAMBoxAssigner(t1=0.35)(priors, gt, pred_boxes=pb, pred_scores=torch.zeros(1, 3, 1))
    assert res.positive[0].tolist() == [True, False, False]
    assert not res.ignore.any()
    torch.testing.assert_close(res.extras["anchor_iou"][0, :2], torch.tensor([0.36, 0.34]))


def test_collision_goes_to_higher_predicted_iou():
    # GT A [0,0,10,10] and GT B [2,0,12,10]; anchors equal to each GT (stage-1 positives);
    # prior 2's prediction [0.5,0,10.5,10] has IoU 95/105 with A and 85/115 with B.
    anchors = [[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], FAR, FAR]
    priors = _priors(anchors)
    gt = GroundTruth.from_lists([torch.tensor([[2.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 10.0]])])
    pb = torch.tensor([[FAR, FAR, [0.5, 0.0, 10.5, 10.0], [2.0, 0.0, 12.0, 6.0]]])
    res = HAMBoxAssigner()(priors, gt, pred_boxes=pb, pred_scores=torch.zeros(1, 4, 1))
    res.validate(gt)
    assert res.gt_index[0].tolist() == [1, 0, 1, 0]
    assert res.quality[0, 2].item() == pytest.approx(95 / 105)
    assert res.quality[0, 3].item() == pytest.approx(0.6)
    assert res.extras["compensated"][0].tolist() == [False, False, True, True]


def test_padded_rows_and_empty():
    priors, gt, pb, ps = _case([PRED_IOUS])
    padded = GroundTruth(
        boxes=torch.cat([gt.boxes, torch.tensor([[[1.0, 1.0, 9.0, 9.0]]])], dim=1),
        labels=torch.zeros(1, 2, dtype=torch.long),
        mask=torch.tensor([[True, False]]),
    )
    a = HAMBoxAssigner()(priors, gt, pred_boxes=pb, pred_scores=ps)
    b = HAMBoxAssigner()(priors, padded, pred_boxes=pb, pred_scores=ps)
    assert torch.equal(a.gt_index, b.gt_index) and torch.equal(a.quality, b.quality)
    e = HAMBoxAssigner()(priors, GroundTruth.empty(1), pred_boxes=pb, pred_scores=ps)
    e.validate()
    assert not e.positive.any() and e.extras["compensated"].shape == (1, 9)


def test_validation_errors():
    for kw, name in [({"t1": 0}, "t1"), ({"t2": 1.5}, "t2"), ({"k": 0}, "k"), ({"k": 2.5}, "k"),
                     ({"square_scale": 0}, "square_scale"), ({"max_pairs": 0}, "max_pairs")]:
        with pytest.raises(ValueError, match=name):
            HAMBoxAssigner(**kw)
    priors, gt, pb, ps = _case([PRED_IOUS])
    with pytest.raises(ValueError, match="pred_boxes"):
        HAMBoxAssigner()(priors, gt)
    with pytest.raises(ValueError, match="pred_boxes"):
        HAMBoxAssigner()(priors, gt, pred_boxes=pb[:, :3], pred_scores=ps)


PRIORS = make_priors((64, 96), anchors=[[(12, 12), (20, 10)], [(32, 32)], [(64, 48)]])


@st.composite
def _batch(draw):
    B = draw(st.integers(1, 3))
    G = draw(st.integers(0, 7))
    coords = st.floats(-10, 110, allow_nan=False, width=32)
    boxes, lists = [], []
    for _ in range(B):
        g = draw(st.integers(0, G))
        bx = []
        for _ in range(g):
            x, y = draw(coords), draw(coords)
            w, h = draw(st.floats(1, 60, width=32)), draw(st.floats(1, 60, width=32))
            bx.append([x, y, x + w, y + h])
        lists.append(torch.tensor(bx, dtype=torch.float32).reshape(-1, 4))
    boxes = GroundTruth.from_lists(lists, pad_to=G)
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    N = PRIORS.num_priors
    pb = PRIORS.anchors[None].expand(B, N, 4) + torch.randn(B, N, 4, generator=gen) * 6
    ps = torch.rand(B, N, 2, generator=gen)
    return boxes, pb, ps


@settings(max_examples=30, deadline=None)
@given(_batch(), st.booleans())
def test_chunked_identical_and_valid(batch, ign):
    gt, pb, ps = batch
    full = HAMBoxAssigner(ignore_pred_negatives=ign)(PRIORS, gt, pred_boxes=pb, pred_scores=ps)
    tiny = HAMBoxAssigner(ignore_pred_negatives=ign, max_pairs=1)(PRIORS, gt, pred_boxes=pb, pred_scores=ps)
    full.validate(gt)
    for f in ("gt_index", "positive", "ignore", "quality", "box_weight", "cls_weight"):
        assert torch.equal(getattr(full, f), getattr(tiny, f)), f
    for k in full.extras:
        assert torch.equal(full.extras[k], tiny.extras[k]), k
    # every GT ends with at most max(M, K) positives; compensated ones are stage-1 negatives
    comp = full.extras["compensated"]
    assert not (comp & (full.extras["anchor_iou"] >= 0.35)).any()
    assert (full.quality[comp] >= 0.5).all()
    if gt.max_boxes:
        per_gt = torch.zeros(gt.batch_size, gt.max_boxes, dtype=torch.long)
        per_gt.scatter_add_(1, full.gt_index.clamp(min=0), comp.long())
        stage1 = torch.zeros_like(per_gt).scatter_add_(1, full.gt_index.clamp(min=0), (full.positive & ~comp).long())
        assert ((per_gt == 0) | (per_gt + stage1 <= 5)).all()
