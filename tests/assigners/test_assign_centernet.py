"""CenterNet assigner: hand-computed radius, Gaussian values, peaks, collisions, levels, chunking."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS, CenterNetAssigner
from assignlab.assigners.centernet import gaussian_radius
from assignlab.core import GroundTruth, Priors, make_priors

PRIORS = make_priors((128, 128))  # grids 16x16 (s8), 8x8 (s16), 4x4 (s32)


def _idx(col, row, level=0, priors=PRIORS):
    start = sum(priors.num_level_priors[:level])
    return start + row * priors.level_shapes[level][1] + col


def test_registered():
    assert ASSIGNERS["centernet"] is CenterNetAssigner
    assert not CenterNetAssigner.requires_predictions


def test_gaussian_radius_hand_computed():
    # 10 x 10 cells, m = 0.7: r1 = (20 + sqrt(400 - 4*100*0.3/1.7)) / 2 = 19.075,
    # r2 = (40 + sqrt(1600 - 16*30)) / 2 = 36.733, r3 = (-28 + sqrt(784 + 4*2.8*30)) / 2 = 2.7332
    r = gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), 0.7)
    assert r.item() == pytest.approx((-28 + math.sqrt(1120)) / 2, rel=1e-6)
    assert r.item() == pytest.approx(2.7332, abs=1e-4)
    # 4 x 20 cells, m = 0.7: case 3: a=2.8, b=-33.6, c=-24 -> (-33.6 + sqrt(1128.96 + 268.8)) / 2
    r = gaussian_radius(torch.tensor([4.0]), torch.tensor([20.0]), 0.7)
    assert r.item() == pytest.approx((-33.6 + math.sqrt(33.6**2 + 4 * 2.8 * 24)) / 2, rel=1e-6)
    # 1 x 1 cell -> 0.27332 (case 3 scales linearly: a tenth of the 10 x 10 one) -> radius 0 after flooring; larger overlap -> smaller radius
    assert gaussian_radius(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(0.27332, abs=1e-5)
    a = gaussian_radius(torch.tensor([30.0]), torch.tensor([12.0]), 0.3)
    b = gaussian_radius(torch.tensor([30.0]), torch.tensor([12.0]), 0.7)
    assert a > b


def test_heatmap_peak_and_neighbours():
    # 80 x 80 px at stride 8 = 10 x 10 cells -> r = 2, sigma = 5/6; center (64, 64) -> cell (8, 8)
    gt = GroundTruth.from_lists([torch.tensor([[24.0, 24, 104, 104]])], labels=[torch.tensor([1])])
    res = CenterNetAssigner(num_classes=3)(PRIORS, gt)
    res.validate(gt)
    heat = res.extras["heatmap"]
    assert heat.shape == (1, PRIORS.num_priors, 3)
    c = _idx(8, 8)
    assert res.positive[0].nonzero().flatten().tolist() == [c]
    assert res.gt_index[0, c].item() == 0 and res.quality[0, c].item() == 1.0
    h = heat[0, :, 1]
    assert h[c].item() == 1.0  # exactly 1
    two_s2 = 2 * (5 / 6) ** 2
    for (dx, dy), want in {
        (1, 0): math.exp(-1 / two_s2),  # 0.4868
        (0, -1): math.exp(-1 / two_s2),
        (1, 1): math.exp(-2 / two_s2),  # 0.2369
        (-2, 1): math.exp(-5 / two_s2),
        (2, 2): math.exp(-8 / two_s2),  # 0.0032
        (3, 0): 0.0,  # outside the (2r+1)^2 window
        (0, -3): 0.0,
    }.items():
        assert h[_idx(8 + dx, 8 + dy)].item() == pytest.approx(want, rel=1e-5, abs=1e-7), (dx, dy)
    assert h[_idx(8, 9)].item() == pytest.approx(0.4868, abs=1e-4)
    # the window holds exactly 25 non-zeros; other classes and other levels are empty
    assert (h > 0).sum().item() == 25
    assert (heat[0, :, [0, 2]] == 0).all()
    assert (h[PRIORS.levels != 0] == 0).all()
    assert res.cls_weight.eq(1).all() and not res.ignore.any()


def test_overlapping_gaussians_take_the_max_and_classes_separate():
    # two same-class GTs 2 cells apart + one of another class at the same place as the first
    boxes = torch.tensor([[24.0, 24, 104, 104], [40.0, 24, 120, 104], [24.0, 24, 104, 104]])
    gt = GroundTruth.from_lists([boxes], labels=[torch.tensor([0, 0, 2])])
    res = CenterNetAssigner(num_classes=3)(PRIORS, gt)
    h0 = res.extras["heatmap"][0, :, 0]
    two_s2 = 2 * (5 / 6) ** 2
    # cell (9, 8): distance 1 from both centers (8, 8) and (10, 8)
    assert h0[_idx(9, 8)].item() == pytest.approx(math.exp(-1 / two_s2), rel=1e-5)
    assert h0[_idx(8, 8)].item() == 1.0 and h0[_idx(10, 8)].item() == 1.0
    assert res.extras["heatmap"][0, _idx(8, 8), 2].item() == 1.0
    assert res.extras["heatmap"][0, _idx(10, 8), 2].item() == pytest.approx(math.exp(-4 / two_s2), rel=1e-5)
    # same center cell for GT 0 and GT 2 (same size): tie -> lower GT index; GT 1 has its own cell
    assert res.gt_index[0, _idx(8, 8)].item() == 0
    assert res.gt_index[0, _idx(10, 8)].item() == 1
    assert res.positive.sum().item() == 2


def test_collision_goes_to_smaller_gt():
    big = [24.0, 24, 104, 104]  # center (64, 64)
    small = [60.0, 60, 68, 68]  # center (64, 64), 1 x 1 cell -> r = 0
    gt = GroundTruth.from_lists([torch.tensor([big, small])])
    res = CenterNetAssigner()(PRIORS, gt)
    assert res.positive.sum().item() == 1
    assert res.gt_index[0, _idx(8, 8)].item() == 1
    # the big GT keeps its Gaussian in the heatmap
    assert (res.extras["heatmap"][0, :, 0] > 0).sum().item() == 25


def test_level_choice_and_size_ranges():
    gt = GroundTruth.from_lists([torch.tensor([[24.0, 24, 104, 104], [0.0, 0, 16, 16]])])
    r1 = CenterNetAssigner(level=1)(PRIORS, gt)  # stride 16: 5 x 5 cells -> centers (4,4), (0,0)
    assert sorted(r1.positive[0].nonzero().flatten().tolist()) == sorted([_idx(4, 4, 1), _idx(0, 0, 1)])
    assert (r1.extras["heatmap"][0, PRIORS.levels != 1] == 0).all()
    # max(w, h) / 2: 40 and 8 -> ranges send GT 0 to level 2 and GT 1 to level 0
    r2 = CenterNetAssigner(size_ranges=[(0, 16), (16, 32), (32, 1e8)])(PRIORS, gt)
    assert r2.gt_index[0, _idx(2, 2, 2)].item() == 0
    assert r2.gt_index[0, _idx(1, 1, 0)].item() == 1
    # outside every range: below -> first level, above -> last level
    r3 = CenterNetAssigner(size_ranges=[(10, 16), (16, 20), (20, 30)])(PRIORS, gt)
    assert r3.gt_index[0, _idx(2, 2, 2)].item() == 0
    assert r3.gt_index[0, _idx(1, 1, 0)].item() == 1
    with pytest.raises(ValueError, match="size_ranges"):
        CenterNetAssigner(size_ranges=[(0, 16)])(PRIORS, gt)
    with pytest.raises(ValueError, match="level"):
        CenterNetAssigner(level=3)(PRIORS, gt)


def test_edge_cases_clipping_and_outside():
    gt = GroundTruth.from_lists(
        [torch.tensor([[-50.0, -50, 300, 300], [200.0, 200, 260, 260], [5.0, 5, 5.5, 5.4]])]
    )
    res = CenterNetAssigner()(PRIORS, gt)
    res.validate(gt)
    # GT 0 clipped to the image -> center (64, 64); GT 1 is outside the image -> no target;
    # GT 2 is sub-pixel -> radius 0, a single peak at cell (0, 0)
    assert res.gt_index[0, _idx(8, 8)].item() == 0
    assert res.gt_index[0, _idx(0, 0)].item() == 2
    assert res.positive.sum().item() == 2
    assert torch.isfinite(res.extras["heatmap"]).all()


def test_from_tensors_priors_and_num_classes_sources():
    p = make_priors((64, 64), strides=(8, 16))
    q = Priors.from_tensors(p.points, p.num_level_priors, p.level_strides)  # no level_shapes
    gt = GroundTruth.from_lists([torch.tensor([[8.0, 8, 40, 40]])], labels=[torch.tensor([4])])
    a = CenterNetAssigner()(p, gt)
    b = CenterNetAssigner()(q, gt)
    assert a.extras["heatmap"].shape[-1] == 5  # max label + 1
    assert torch.equal(a.gt_index, b.gt_index)
    torch.testing.assert_close(a.extras["heatmap"], b.extras["heatmap"])
    c = CenterNetAssigner()(p, gt, pred_scores=torch.zeros(1, p.num_priors, 7))
    assert c.extras["heatmap"].shape[-1] == 7
    with pytest.raises(ValueError, match="labels"):
        CenterNetAssigner(num_classes=2)(p, gt)


def test_validation_errors():
    for kw, name in [({"min_overlap": 1.0}, "min_overlap"), ({"level": -1}, "level"),
                     ({"level": 0, "size_ranges": [(0, 1)]}, "exclusive"), ({"size_ranges": [(5, 1)]}, "size_ranges"),
                     ({"num_classes": 0}, "num_classes"), ({"square_scale": 0}, "square_scale")]:
        with pytest.raises(ValueError, match=name):
            CenterNetAssigner(**kw)
    anchored = make_priors((64, 64), anchors=[[(8, 8), (16, 16)], [(32, 32)], [(64, 64)]])
    with pytest.raises(ValueError, match="anchor-free"):
        CenterNetAssigner()(anchored, GroundTruth.empty(1))
    e = CenterNetAssigner(num_classes=2)(PRIORS, GroundTruth.empty(2))
    e.validate()
    assert e.extras["heatmap"].shape == (2, PRIORS.num_priors, 2) and not e.positive.any()


@st.composite
def _batch(draw):
    B, G = draw(st.integers(1, 3)), draw(st.integers(0, 8))
    coords = st.floats(-20, 140, allow_nan=False, width=32)
    lists, labels = [], []
    for _ in range(B):
        bx = []
        for _ in range(draw(st.integers(0, G))):
            x, y = draw(coords), draw(coords)
            bx.append([x, y, x + draw(st.floats(0.25, 120, width=32)), y + draw(st.floats(0.25, 120, width=32))])
        lists.append(torch.tensor(bx, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(draw(st.lists(st.integers(0, 2), min_size=len(bx), max_size=len(bx)))))
    return GroundTruth.from_lists(lists, labels=labels, pad_to=G)


@settings(max_examples=30, deadline=None)
@given(_batch(), st.sampled_from([None, [(0, 16), (16, 40), (40, 1e8)]]))
def test_chunked_identical_and_peaks(gt, ranges):
    full = CenterNetAssigner(size_ranges=ranges, num_classes=3)(PRIORS, gt)
    tiny = CenterNetAssigner(size_ranges=ranges, num_classes=3, max_pairs=1)(PRIORS, gt)
    full.validate(gt)
    for f in ("gt_index", "positive", "ignore", "quality", "box_weight", "cls_weight"):
        assert torch.equal(getattr(full, f), getattr(tiny, f)), f
    assert torch.equal(full.extras["heatmap"], tiny.extras["heatmap"])
    heat = full.extras["heatmap"]
    assert ((heat >= 0) & (heat <= 1)).all()
    # every positive sits on a peak of its GT's class; at most one positive per GT
    lab = full.labels(gt)
    pos = full.positive
    assert (heat.gather(2, lab.clamp(min=0)[..., None])[..., 0][pos] == 1).all()
    if gt.max_boxes:
        cnt = torch.zeros(gt.batch_size, gt.max_boxes, dtype=torch.long).scatter_add_(
            1, full.gt_index.clamp(min=0), pos.long()
        )
        assert (cnt <= 1).all()


def _crowded(seed, B=3, G=60, size=200, C=3):
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(B, G).uniform_(math.log(2), math.log(size), generator=g))
    cxy = torch.rand(B, G, 2, generator=g) * (size + 40) - 20  # some centers outside the image
    boxes = torch.cat([cxy - side[..., None] / 2, cxy + side[..., None] / 2], -1)
    boxes[:, 1] = boxes[:, 0]  # exact duplicates and shared centers
    boxes[:, 3, :2] = boxes[:, 0, :2]
    labels = torch.randint(0, C, (B, G), generator=g)
    mask = torch.rand(B, G, generator=g) > 0.1
    return make_priors((size, size)), GroundTruth(boxes, labels, mask)


@pytest.mark.parametrize("kw", [{}, {"size_ranges": [(0, 16), (16, 40), (40, 1e8)]}, {"level": 2},
                                {"min_overlap": 0.1}, {"max_pairs": 3000}])
def test_windowed_path_identical_to_dense(kw, monkeypatch):
    # the (2R+1)^2-window splatting must equal the dense (B, G, N) formula bit for bit, with the exact
    # (CPU) and the sync-free (image-bound) window size, in float32 and float64
    for seed in range(3):
        priors, gt = _crowded(seed)
        for boxes in (gt.boxes, gt.boxes.double()):
            g = GroundTruth(boxes, gt.labels, gt.mask)
            outs = []
            for static in (False, True):
                a = CenterNetAssigner(num_classes=3, **kw)
                a._static_window = static
                outs.append(a(priors, g))
            with monkeypatch.context() as m:
                m.setattr(CenterNetAssigner, "_full_grid", staticmethod(lambda priors: False))
                outs.append(CenterNetAssigner(num_classes=3, **kw)(priors, g))
            assert outs[0].positive.any()
            for res in outs[:2]:
                for f in ("gt_index", "positive", "quality"):
                    assert torch.equal(getattr(res, f), getattr(outs[2], f)), f
                for k in ("heatmap", "overlaps"):
                    assert torch.equal(res.extras[k], outs[2].extras[k]), k
