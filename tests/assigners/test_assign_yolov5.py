"""YOLOv5 assigner: hand-computed neighbour / border / anchor_t cases, every variant, properties.

Most cases use one level, stride 8, an 8 x 8 grid (64 x 64 px) and a single 8 x 8 px anchor
(1 x 1 grid unit), so grid coordinates are pixel coordinates / 8 and a prior index is
``gj * 8 + gi``. Coordinates are dyadic (exact in float32) unless a test says otherwise.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS
from assignlab.assigners.yolov5 import YOLOV5S_ANCHORS, YOLOv5Assigner, max_iou_over_gts, yolov5_targets
from assignlab.core import GroundTruth, make_priors
from assignlab.core.boxes import batched_box_iou

S = 8.0
P1 = make_priors((64, 64), strides=(8,), anchors=[[(8, 8)]])


def box(gx, gy, gw=1.0, gh=1.0, s=S):
    """xyxy px box from a grid-unit centre / size."""
    cx, cy, w, h = gx * s, gy * s, gw * s, gh * s
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def gt_of(*boxes, labels=None, dtype=torch.float32):
    b = torch.tensor([list(x) for x in boxes], dtype=dtype).reshape(1, -1, 4)
    lab = torch.tensor(labels if labels is not None else list(range(len(boxes)))).reshape(1, -1)
    return GroundTruth(b, lab, torch.ones(lab.shape, dtype=torch.bool))


def cells(res, gt_row=None):
    """Sorted (gi, gj) of the match rows (optionally of one GT), duplicates kept; one-level P1."""
    m = res.matches
    keep = torch.ones(len(m), dtype=torch.bool) if gt_row is None else m.gt == gt_row
    return sorted((int(p) % 8, int(p) // 8) for p in m.prior[keep])


# ---------------------------------------------------------------- the reference rule
def test_registered():
    assert ASSIGNERS["yolov5"] is YOLOv5Assigner


def test_neighbour_rule_and_tbox():
    gt = gt_of(box(3.25, 5.75))
    res = YOLOv5Assigner()(P1, gt)
    # x: frac .25 < .5 and 3.25 > 1 -> x-1 (cell 2); (8 - 3.25) % 1 = .75 -> no x+1
    # y: frac .75 -> no y-1; (8 - 5.75) % 1 = .25 and 2.25 > 1 -> y+1 (cell 6)
    assert cells(res) == [(2, 5), (3, 5), (3, 6)]
    t = yolov5_targets(res.matches, P1, gt)
    rows = sorted(zip(t.gi.tolist(), t.gj.tolist(), t.tbox.tolist()))
    assert rows == [(2, 5, [1.25, 0.75, 1.0, 1.0]), (3, 5, [0.25, 0.75, 1.0, 1.0]), (3, 6, [0.25, -0.25, 1.0, 1.0])]
    assert t.anch.tolist() == [[1.0, 1.0]] * 3
    assert res.matches.center.tolist().count(True) == 1
    assert res.positive.sum() == 3 and res.positive[0, 5 * 8 + 3]
    res.validate(gt)


def test_fraction_exactly_half_gives_no_neighbour():
    res = YOLOv5Assigner()(P1, gt_of(box(3.5, 4.5)))
    assert cells(res) == [(3, 4)]


def test_border_rules_and_clamp():
    a = YOLOv5Assigner()
    # gx = 0.25: frac < .5 but "gx > 1" fails -> no x-1; gy = 7.75: (8 - 7.75) % 1 = .25 < .5 but
    # "ny - gy > 1" fails -> no y+1 (and no x+1 / y-1: fractions .75)
    assert cells(a(P1, gt_of(box(0.25, 7.75)))) == [(0, 7)]
    # same fractions away from the border give both neighbours
    assert cells(a(P1, gt_of(box(2.25, 5.75)))) == [(1, 5), (2, 5), (2, 6)]
    # gx == 1.0 exactly: "gx > 1" is false -> no x-1; the x+1 "neighbour" trunc(1.5) = 1 is the
    # centre cell again -> an exact duplicate row (same for y)
    res = a(P1, gt_of(box(1.0, 1.0)))
    assert cells(res) == [(1, 1), (1, 1), (1, 1)]
    # gx == nx (the right image border): centre trunc(8) = 8 is clamped to 7 and equals the x-1
    # neighbour trunc(7.5) = 7 -> duplicate; tbox x = 8 - 7 = 1.0 (clamp before tbox)
    gt = gt_of(box(8.0, 3.75))
    res = a(P1, gt)
    assert cells(res) == [(7, 3), (7, 3), (7, 4)]
    t = yolov5_targets(res.matches, P1, gt)
    assert sorted(t.tbox[:, 0].tolist()) == [1.0, 1.0, 1.0]
    res.validate(gt)
    # dense view has one GT per prior even with duplicates
    assert res.positive.sum() == 2


def test_anchor_t_is_strict_both_ways():
    a = YOLOv5Assigner()
    # w = 4 cells on a 1-cell anchor: r = 4 -> not < 4 -> no match; h irrelevant
    assert len(a(P1, gt_of(box(3.5, 3.5, 4.0, 1.0))).matches) == 0
    assert len(a(P1, gt_of(box(3.5, 3.5, 3.96875, 1.0))).matches) == 1
    # w = 0.25 cells: 1/r = 4 -> no match
    assert len(a(P1, gt_of(box(3.5, 3.5, 0.25, 1.0))).matches) == 0
    assert len(a(P1, gt_of(box(3.5, 3.5, 0.2578125, 1.0))).matches) == 1
    assert len(YOLOv5Assigner(anchor_t=4.0001)(P1, gt_of(box(3.5, 3.5, 4.0, 1.0))).matches) == 1


def test_worked_example_yolov5s_level0():
    pri = make_priors((640, 640), anchors=YOLOV5S_ANCHORS)
    gt = gt_of([28.08 - 20, 32.0, 28.08 + 20, 72.0])  # centre (28.08, 52) px = (3.51, 6.5) cells at P3
    res = YOLOv5Assigner()(pri, gt)
    t = yolov5_targets(res.matches, pri, gt)
    _, _, (b, a, gj, gi), anch, _ = t.level_rows(0)
    assert sorted(zip(a.tolist(), gj.tolist(), gi.tolist())) == [(1, 6, 3), (1, 6, 4), (2, 6, 3), (2, 6, 4)]
    # P4 (gwh 2.5): all three anchors fit; P5 (gwh 1.25): only anchor 0 (3.625 / 1.25 = 2.9)
    assert sorted(set(t.level_rows(1)[2][1].tolist())) == [0, 1, 2]
    assert sorted(set(t.level_rows(2)[2][1].tolist())) == [0]
    assert t.anch[t.level == 0].unique(dim=0).tolist() == [[2.0, 3.75], [4.125, 2.875]]


def test_float64_boxes_from_normalized_labels_are_exact():
    # YOLOv5 computes gx = float32(x) * float32(nx); a float64 box cx -/+ w/2 reproduces it exactly
    x = torch.tensor(0.123456789, dtype=torch.float32)
    ref = x * torch.tensor(80.0)
    cx = (x * torch.tensor(640.0)).double()
    gt = gt_of([float(cx) - 10, 100.0, float(cx) + 10, 120.0], dtype=torch.float64)
    pri = make_priors((640, 640), anchors=YOLOV5S_ANCHORS)
    res = YOLOv5Assigner()(pri, gt)
    t = yolov5_targets(res.matches, pri, gt)
    centre = t.tbox[t.level == 0][:, 0] + t.gi[t.level == 0]
    assert (centre == ref).all()


def test_multi_level_prior_index():
    pri = make_priors((64, 96), strides=(8, 16), anchors=[[(8, 8), (16, 16)], [(32, 32)]])
    gt = gt_of(box(5.5, 2.5, 2.0, 2.0))  # 16 x 16 px centred at (44, 20)
    res = YOLOv5Assigner()(pri, gt)
    t = yolov5_targets(res.matches, pri, gt)
    assert (pri.levels[t.prior] == t.level).all()
    assert (pri.anchor_ids[t.prior] == t.anchor).all()
    assert (pri.grid_xy[t.prior, 0] == t.gi).all() and (pri.grid_xy[t.prior, 1] == t.gj).all()
    # level 0: both anchors fit (r = 2, 1), centre cell (5, 2) only (fractions .5)
    # level 1 (gxy 2.75, 1.25, gwh 1): anchor 32 px = 2 cells fits; x: frac .75 -> x+1? (6-2.75)=3.25
    # -> frac .25 -> cell 3; y: frac .25, 1.25 > 1 -> y-1 cell 0
    got = sorted(zip(t.level.tolist(), t.anchor.tolist(), t.gi.tolist(), t.gj.tolist()))
    assert got == [(0, 0, 5, 2), (0, 1, 5, 2), (1, 0, 2, 0), (1, 0, 2, 1), (1, 0, 3, 1)]


# ---------------------------------------------------------------- variant a: distance weighting
@pytest.mark.parametrize(
    "gx,cell,w", [(3.51, 4, 0.51), (3.99, 4, 0.99), (3.49, 2, 0.51), (3.01, 2, 0.99)]
)
def test_distance_weighting_examples(gx, cell, w):
    a = YOLOv5Assigner(distance_weighting=True)
    for axis in (0, 1):
        g = (gx, 5.5) if axis == 0 else (5.5, gx)
        gt = gt_of(box(*g))
        res = a(P1, gt)
        m = res.matches
        assert len(m) == 2
        ij = [(int(p) % 8, int(p) // 8) for p in m.prior]
        wts = dict(zip(ij, m.weight.tolist()))
        ctr = (3, 5) if axis == 0 else (5, 3)
        nb = (cell, 5) if axis == 0 else (5, cell)
        assert wts[ctr] == 1.0
        assert wts[nb] == pytest.approx(w, abs=1e-5)
        p = nb[1] * 8 + nb[0]
        for field in (res.quality, res.box_weight, res.cls_weight):
            assert float(field[0, p]) == pytest.approx(w, abs=1e-5)
        assert bool(m.center[ij.index(ctr)]) and not bool(m.center[ij.index(nb)])


def test_distance_weighting_duplicate_rows_weigh_one():
    res = YOLOv5Assigner(distance_weighting=True)(P1, gt_of(box(8.0, 3.75)))
    # clamped centre (7, 3) twice (weight 1: the GT centre lies on the cell's border), y+1 (7, 4)
    rows = sorted((int(p) % 8, int(p) // 8, float(w)) for p, w in zip(res.matches.prior, res.matches.weight))
    assert rows == [(7, 3, 1.0), (7, 3, 1.0), (7, 4, 0.75)]


# ---------------------------------------------------------------- variant b: adaptive radius
def test_adaptive_radius_small_gt_gets_only_centre_cell():
    a = YOLOv5Assigner(adaptive_radius=True)
    for g in [(3.51, 5.5), (3.01, 3.99), (1.0, 1.0)]:
        res = a(P1, gt_of(box(*g, 0.75, 0.75)))  # 6 x 6 px < one 8 px cell
        assert len(res.matches) == 1 and bool(res.matches.center[0])
    res = a(P1, gt_of(box(3.5, 3.5, 1.0, 1.0)))  # exactly one cell: neighbours at exactly .5 -> excluded
    assert len(res.matches) == 1


def test_adaptive_radius_counts():
    pri = make_priors((128, 128), strides=(8,), anchors=[[(32, 32)]])  # 16 x 16 cells, 4-cell anchor
    a = YOLOv5Assigner(adaptive_radius=True)  # radius 2
    n = lambda *g: len(a(pri, gt_of(box(*g))).matches)  # noqa: E731
    assert n(7.25, 7.25, 6.0, 6.0) == 16  # half-side min(3, 2) = 2: centres (5.25, 9.25) -> 4 x 4
    assert n(7.5, 7.5, 6.0, 6.0) == 9  # at a cell centre: |d| < 2 -> 3 x 3
    assert n(7.25, 7.25, 2.0, 2.0) == 4  # half-side 1 -> 2 x 2
    assert n(0.25, 0.25, 6.0, 6.0) == 4  # corner: centres 0.5, 1.5 inside the grid -> 2 x 2
    big = YOLOv5Assigner(adaptive_radius=True, radius=5)(pri, gt_of(box(7.25, 7.25, 6.0, 6.0)))
    assert len(big.matches) == 36  # the GT box (half-side 3) limits it: 6 x 6
    # distance weights in adaptive mode: 1 - d / (radius - 0.5), d = Chebyshev distance to the cell
    res = YOLOv5Assigner(adaptive_radius=True, distance_weighting=True)(pri, gt_of(box(7.25, 7.25, 6.0, 6.0)))
    w = {(int(p) % 16, int(p) // 16): float(x) for p, x in zip(res.matches.prior, res.matches.weight)}
    assert w[(7, 7)] == 1.0
    assert w[(5, 7)] == pytest.approx(1 - 1.25 / 1.5)
    assert w[(8, 8)] == pytest.approx(1 - 0.75 / 1.5)
    assert w[(5, 5)] == pytest.approx(1 - 1.25 / 1.5)


# ---------------------------------------------------------------- variant c: ignore_iou
def test_ignore_iou_marks_only_negatives():
    gt = gt_of(box(3.5, 3.5, 2.0, 2.0))
    N = P1.num_priors
    pb = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(1, N, 1)
    g = gt.boxes[0, 0]
    pb[0, 0] = g  # IoU 1 on a negative -> ignored
    pb[0, 1] = torch.tensor([g[0], g[1], g[0] + 8, g[3]])  # IoU 0.5 -> stays negative at 0.6
    pb[0, 3 * 8 + 3] = g  # the positive centre cell: stays positive
    a = YOLOv5Assigner(ignore_iou=0.6)
    assert a.requires_predictions and not YOLOv5Assigner().requires_predictions
    res = a(P1, gt, pred_boxes=pb)
    assert res.ignore[0].nonzero().flatten().tolist() == [0]
    assert res.positive.equal(YOLOv5Assigner()(P1, gt).positive)
    assert res.cls_weight[0, 0] == 0
    assert res.extras["pred_max_iou"][0, 1] == pytest.approx(0.5)
    res.validate(gt)
    with pytest.raises(ValueError, match="pred_boxes"):
        a(P1, gt)


def test_max_iou_over_gts_matches_box_iou_and_chunking():
    gen = torch.Generator().manual_seed(0)
    g = torch.rand(2, 7, 4, generator=gen) * 50
    g[..., 2:] += g[..., :2] + 1
    p = torch.rand(2, 30, 4, generator=gen) * 50
    p[..., 2:] += p[..., :2] + 1
    mask = torch.rand(2, 7, generator=gen) > 0.3
    ref = batched_box_iou(g, p).masked_fill(~mask[..., None], 0).amax(1)
    for mp in (1, 60, 10**6):
        assert torch.equal(max_iou_over_gts(g, mask, p, mp), ref)


# ---------------------------------------------------------------- variant d: dedup
def _collision():
    # A (3.25, 3.25) 1 x 1: wh-IoU 1 with the anchor; B (3.75, 3.75) 1.5 x 1.5: wh-IoU 1/2.25.
    # Both have centre cell (3, 3); A adds (2, 3) (3, 2), B adds (4, 3) (3, 4).
    return gt_of(box(3.25, 3.25), box(3.75, 3.75, 1.5, 1.5))


def test_dedup_none_keeps_collision_and_dense_takes_best_score():
    gt = _collision()
    res = YOLOv5Assigner()(P1, gt)
    assert len(res.matches) == 6
    assert cells(res).count((3, 3)) == 2
    assert res.gt_index[0, 27] == 0  # A fits the anchor better
    # overlaps = IoU of the prior's anchor box [24, 24, 32, 32] with A [22, 22, 30, 30]
    assert res.extras["overlaps"][0, 27] == pytest.approx(36 / 92)
    assert res.positive.sum() == 5


def test_dedup_unique_reduces_matches():
    gt = _collision()
    res = YOLOv5Assigner(dedup="unique")(P1, gt)
    assert len(res.matches) == 5
    m = res.matches
    assert m.gt[m.prior == 27].tolist() == [0]
    assert res.gt_index[0, 27] == 0
    # exact duplicates (gx integer) collapse too
    assert len(YOLOv5Assigner(dedup="unique")(P1, gt_of(box(1.0, 1.0))).matches) == 1


def test_dedup_best_pred_iou():
    gt = _collision()
    N = P1.num_priors
    pb = torch.zeros(1, N, 4)
    pb[0, 27] = gt.boxes[0, 1]  # the shared cell predicts B's box exactly
    a = YOLOv5Assigner(dedup="best_pred_iou")
    res = a(P1, gt, pred_boxes=pb)
    m = res.matches
    assert len(m) == 5
    assert m.gt[m.prior == 27].tolist() == [1]
    assert res.gt_index[0, 27] == 1
    assert res.extras["overlaps"][0, 27] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pred_boxes"):
        a(P1, gt)


# ---------------------------------------------------------------- variant e: recovery
def test_recover_unmatched():
    pri = make_priors((64, 64), strides=(8, 16), anchors=[[(8, 8), (16, 16)], [(32, 32)]])
    tiny = [20.0, 20.0, 22.0, 22.0]  # 2 x 2 px: ratios 4, 8, 16 -> unmatched; best = level 0 anchor 0
    ok = [8.0, 8.0, 24.0, 24.0]  # 16 px: fits
    gt = GroundTruth(
        torch.tensor([[tiny, ok], [ok, [0.0, 0, 0, 0]]]), torch.tensor([[0, 1], [1, 0]]),
        torch.tensor([[True, True], [True, False]]),
    )
    plain = YOLOv5Assigner()(pri, gt)
    assert not (plain.matches.gt[plain.matches.batch == 0] == 0).any()
    assert plain.extras["num_recovered"].tolist() == [0, 0]
    res = YOLOv5Assigner(recover_unmatched=True)(pri, gt)
    assert res.extras["num_recovered"].tolist() == [1, 0]
    assert res.extras["recovered"].tolist() == [[True, False], [False, False]]
    m = res.matches
    sel = (m.batch == 0) & (m.gt == 0)
    assert sel.sum() == 1
    p = int(m.prior[sel][0])
    assert int(pri.levels[p]) == 0 and int(pri.anchor_ids[p]) == 0
    assert pri.grid_xy[p].tolist() == [2, 2]  # centre (21, 21) px -> cell (2, 2) at stride 8
    assert len(m) == len(plain.matches) + 1
    res.validate(gt)


# ---------------------------------------------------------------- config and inputs
@pytest.mark.parametrize(
    "kw,name",
    [({"anchor_t": 1.0}, "anchor_t"), ({"neighbor_thr": 1.5}, "neighbor_thr"), ({"radius": 0}, "radius"),
     ({"ignore_iou": 1.0}, "ignore_iou"), ({"dedup": "first"}, "dedup"), ({"max_pairs": 0}, "max_pairs")],
)
def test_bad_config(kw, name):
    with pytest.raises(ValueError, match=name):
        YOLOv5Assigner(**kw)


def test_needs_anchor_priors():
    with pytest.raises(ValueError, match="anchor"):
        YOLOv5Assigner()(make_priors((64, 64)), gt_of(box(3, 3)))


def test_neighbor_thr_one_gives_cross():
    res = YOLOv5Assigner(neighbor_thr=1.0)(P1, gt_of(box(3.25, 4.75)))
    assert cells(res) == sorted([(3, 4), (2, 4), (4, 4), (3, 3), (3, 5)])


# ---------------------------------------------------------------- properties
@st.composite
def batches(draw):
    B = draw(st.integers(1, 3))
    G = draw(st.integers(0, 6))
    ctr = draw(st.lists(st.tuples(st.floats(0, 64), st.floats(0, 64)), min_size=B * G, max_size=B * G))
    wh = draw(st.lists(st.tuples(st.floats(1, 70), st.floats(1, 70)), min_size=B * G, max_size=B * G))
    valid = draw(st.lists(st.booleans(), min_size=B * G, max_size=B * G))
    boxes = torch.tensor([[c[0] - s[0] / 2, c[1] - s[1] / 2, c[0] + s[0] / 2, c[1] + s[1] / 2]
                          for c, s in zip(ctr, wh)], dtype=torch.float32).reshape(B, G, 4)
    return GroundTruth(boxes, torch.zeros(B, G, dtype=torch.long), torch.tensor(valid, dtype=torch.bool).reshape(B, G))


P3 = make_priors((64, 64), strides=(8, 16, 32), anchors=[[(6, 8), (12, 10)], [(20, 24), (40, 18)], [(50, 60)]])
VARIANTS = [
    {},
    {"distance_weighting": True, "recover_unmatched": True},
    {"adaptive_radius": True, "radius": 1.5, "distance_weighting": True, "dedup": "unique"},
    {"ignore_iou": 0.3, "dedup": "best_pred_iou", "recover_unmatched": True},
]


def _preds(gt, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pb = P3.anchors[None].repeat(gt.batch_size, 1, 1) + torch.randn(gt.batch_size, P3.num_priors, 4, generator=gen) * 6
    return {"pred_boxes": pb}


def _same(r1, r2):
    for f in ("gt_index", "positive", "ignore", "quality", "box_weight", "cls_weight"):
        assert torch.equal(getattr(r1, f), getattr(r2, f)), f
    for f in ("batch", "prior", "gt", "weight", "center", "score"):
        assert torch.equal(getattr(r1.matches, f), getattr(r2.matches, f)), f
    assert r1.extras.keys() == r2.extras.keys()
    for k in r1.extras:
        assert torch.equal(r1.extras[k], r2.extras[k]), k


@settings(max_examples=40, deadline=None)
@given(gt=batches(), v=st.integers(0, len(VARIANTS) - 1), mp=st.integers(1, 200))
def test_property_padded_never_matched_and_chunking_identical(gt, v, mp):
    kw = VARIANTS[v]
    pred = _preds(gt)
    res = YOLOv5Assigner(**kw)(P3, gt, **pred)
    res.validate(gt)
    m = res.matches
    if len(m):
        assert gt.mask[m.batch, m.gt].all()
    # padded rows with garbage coordinates change nothing
    garbage = torch.where(gt.mask[..., None], gt.boxes, torch.tensor([5.0, 5.0, 40.0, 50.0]))
    res_g = YOLOv5Assigner(**kw)(P3, GroundTruth(garbage, gt.labels, gt.mask), **pred)
    _same(res, res_g)
    # tiny memory budget: identical results
    _same(res, YOLOv5Assigner(max_pairs=mp, **kw)(P3, gt, **pred))
    if kw.get("recover_unmatched"):
        assert (res.extras["num_recovered"] <= gt.mask.sum(1)).all()
        matched = torch.zeros_like(gt.mask)
        matched[m.batch, m.gt] = True
        if kw.get("dedup", "none") == "none":
            assert torch.equal(matched, gt.mask)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), G=st.integers(0, 5), v=st.integers(0, len(VARIANTS) - 1))
def test_property_zero_gts_no_matches(B, G, v):
    gt = GroundTruth(torch.rand(B, G, 4) * 20 + torch.tensor([0.0, 0.0, 25.0, 25.0]),
                     torch.zeros(B, G, dtype=torch.long), torch.zeros(B, G, dtype=torch.bool))
    for g in (gt, GroundTruth.empty(B)):
        res = YOLOv5Assigner(**VARIANTS[v])(P3, g, **_preds(g))
        assert len(res.matches) == 0
        assert not res.positive.any()
        assert res.extras["num_recovered"].tolist() == [0] * B
        res.validate(g)
