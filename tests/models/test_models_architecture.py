"""MiniVGG / FPN / heads: shapes, strides, plain convolutions, flattening order, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from assignlab import make_priors
from assignlab.models import FPN, DetectionHead, Detector, MiniVGG, count_macs
from assignlab.models.heads import flatten_levels
from assignlab.models.mini_vgg import scale_channels


def test_models_minivgg_strides_and_shapes():
    m = MiniVGG().eval()
    c3, c4, c5 = m(torch.zeros(2, 3, 224, 224))
    assert c3.shape == (2, 48, 28, 28)
    assert c4.shape == (2, 96, 14, 14)
    assert c5.shape == (2, 192, 7, 7)
    assert m.out_channels == (48, 96, 192)
    # odd size: each stride-2 conv (pad 1) gives ceil(n / 2) -> same as make_priors' ceil(H / s)
    c3, c4, c5 = m(torch.zeros(1, 3, 100, 60))
    assert [tuple(c.shape[-2:]) for c in (c3, c4, c5)] == [(13, 8), (7, 4), (4, 2)]
    assert make_priors((100, 60)).level_shapes == ((13, 8), (7, 4), (4, 2))


def test_models_minivgg_maxpool_and_width():
    m = MiniVGG(width=0.5, downsample="maxpool").eval()
    assert m.out_channels == (24, 48, 96)
    outs = m(torch.zeros(1, 3, 100, 60))
    assert [tuple(c.shape[-2:]) for c in outs] == [(13, 8), (7, 4), (4, 2)]
    with pytest.raises(ValueError, match="downsample"):
        MiniVGG(downsample="avg")
    assert (scale_channels(64, 0.5), scale_channels(64, 0.3), scale_channels(16, 0.25)) == (32, 16, 8)


def test_models_no_depthwise_convs():
    model = Detector(num_classes=2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    assert all(c.groups == 1 for c in convs)
    assert all(c.kernel_size in ((3, 3), (1, 1)) for c in convs)


@pytest.mark.parametrize("fuse", ["add", "concat"])
def test_models_fpn_levels_same_channels(fuse):
    fpn = FPN((16, 32, 64), 24, fuse=fuse).eval()
    feats = [torch.rand(2, 16, 13, 8), torch.rand(2, 32, 7, 4), torch.rand(2, 64, 4, 2)]
    outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 24, 13, 8), (2, 24, 7, 4), (2, 24, 4, 2)]


def test_models_fpn_top_down_reaches_fine_level():
    """Changing only C5 must change P3 (top-down path) and changing only C3 must not change P5."""
    torch.manual_seed(0)
    fpn = FPN((8, 8, 8), 8).eval()
    feats = [torch.rand(1, 8, 8, 8), torch.rand(1, 8, 4, 4), torch.rand(1, 8, 2, 2)]
    base = fpn(feats)
    c5 = [feats[0], feats[1], feats[2] + 1.0]
    assert not torch.allclose(fpn(c5)[0], base[0])
    c3 = [feats[0] + 1.0, feats[1], feats[2]]
    assert torch.equal(fpn(c3)[2], base[2])


def test_models_flatten_levels_matches_prior_order():
    """A map holding each cell's own centre flattens to exactly make_priors' points."""
    h, w, strides = 40, 72, (8, 16, 32)
    pri = make_priors((h, w), strides)
    maps = []
    for s, (rows, cols) in zip(strides, pri.level_shapes):
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        maps.append(torch.stack([(xs + 0.5) * s, (ys + 0.5) * s]).float()[None].repeat(2, 1, 1, 1))
    flat = flatten_levels(maps)
    assert flat.shape == (2, pri.num_priors, 2)
    assert torch.equal(flat[0], pri.points)
    assert torch.equal(flat[1], pri.points)


@pytest.mark.parametrize("kind", ["anchor", "free"])
def test_models_detector_output_order_is_level_row_major(kind):
    """out.cls[:, start_l + r * cols + c] is the level-l prediction map at (r, c)."""
    torch.manual_seed(0)
    model = Detector(num_classes=2, head=kind, width=0.25).eval()
    x = torch.rand(1, 3, 40, 72)
    out = model(x)
    pri = model.priors((40, 72))
    assert out.cls.shape == (1, pri.num_priors, 2)
    feats = model.neck(model.backbone(x))
    for li, sl in enumerate(pri.level_slices()):
        t = model.head.towers[li](feats[li])
        cls_map = model.head.cls_preds[li](t)  # (1, 2, rows, cols)
        rows, cols = pri.level_shapes[li]
        assert cls_map.shape[-2:] == (rows, cols)
        for r, c in [(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1), (rows // 2, cols // 2)]:
            n = sl.start + r * cols + c
            assert torch.allclose(out.cls[0, n], cls_map[0, :, r, c], atol=1e-6)
            assert torch.equal(pri.grid_xy[n], torch.tensor([c, r]))
        if kind == "anchor":
            obj_map = model.head.obj_preds[li](t)
            assert torch.allclose(out.obj[0, sl.start + cols + 1], obj_map[0, 0, 1, 1], atol=1e-6)


@pytest.mark.parametrize("kind,reg_max,box_dim", [("anchor", 0, 4), ("free", 0, 4), ("free", 7, 32)])
def test_models_head_output_shapes(kind, reg_max, box_dim):
    model = Detector(num_classes=3, head=kind, reg_max=reg_max, width=0.25)
    out = model(torch.rand(2, 3, 64, 96))
    n = 8 * 12 + 4 * 6 + 2 * 3
    assert out.cls.shape == (2, n, 3)
    assert out.box.shape == (2, n, box_dim)
    assert out.kind == kind and out.reg_max == reg_max
    if kind == "anchor":
        assert out.obj.shape == (2, n)
    else:
        assert out.obj is None


def test_models_head_bias_init_prior_prob():
    head = DetectionHead(num_classes=4, in_channels=8, kind="anchor", prior_prob=0.01)
    expected = -math.log(99.0)  # -4.5951
    for conv in head.obj_preds:
        assert torch.allclose(conv.bias, torch.full_like(conv.bias, expected))
    for conv in head.cls_preds:  # P(class | object), YOLOv5's log(0.6 / (C - 0.99)) = -1.6111 for C = 4
        assert torch.allclose(conv.bias, torch.full_like(conv.bias, math.log(0.6 / 3.01)))
    one = DetectionHead(num_classes=1, in_channels=8, kind="anchor")
    assert torch.allclose(one.cls_preds[0].bias, torch.tensor([math.log(60.0)]))  # sigmoid = 0.9836
    for conv in head.box_preds:
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    free = DetectionHead(num_classes=1, in_channels=8, kind="free", init_distance=1.0)
    assert torch.allclose(free.box_preds[0].bias, torch.full((4,), math.log(math.e - 1)))
    # a fresh detector starts with scores ~ 0.01 (free: cls; anchor: obj * 0.98)
    torch.manual_seed(0)
    for kind, expect in (("free", 0.01), ("anchor", 0.0098)):
        model = Detector(num_classes=1, head=kind, width=0.25).eval()
        out = model(torch.rand(1, 3, 64, 64))
        _, scores = model.decode(out, model.priors((64, 64)))
        assert scores.mean().item() == pytest.approx(expect, rel=0.3)


def test_models_config_roundtrip_and_validation():
    m = Detector(num_classes=3, head="anchor", width=0.5, anchors=[(10, 12), (20, 24), (40, 48)], fuse="concat")
    cfg = m.config()
    assert cfg["anchors"] == [[[10.0, 12.0]], [[20.0, 24.0]], [[40.0, 48.0]]]
    m2 = Detector(**cfg)
    assert m2.config() == cfg
    m2.load_state_dict(m.state_dict())
    free = Detector(num_classes=1, head="free", reg_max=16)
    assert Detector(**free.config()).config() == free.config()
    with pytest.raises(ValueError, match="anchors"):
        Detector(1, head="free", anchors=[[(1, 1)]] * 3)
    with pytest.raises(ValueError, match="anchors"):
        Detector(1, anchors=[[(1, 1), (2, 2)], [(3, 3)], [(4, 4)]])
    with pytest.raises(ValueError, match="reg_max"):
        Detector(1, head="anchor", reg_max=4)
    with pytest.raises(ValueError, match="strides"):
        Detector(1, strides=(4, 8, 16))
    with pytest.raises(ValueError, match="head"):
        Detector(1, head="yolo")


def test_models_priors_cached_and_match_make_priors():
    m = Detector(num_classes=1)
    p1 = m.priors((64, 96))
    assert m.priors((64, 96)) is p1
    ref = make_priors((64, 96), (8, 16, 32), anchors=[[(15, 17)], [(30, 34)], [(60, 68)]], offset=0.5)
    assert torch.equal(p1.points, ref.points)
    assert torch.equal(p1.anchors, ref.anchors)
    assert m.priors(64).image_size == (64, 64)
    assert Detector(num_classes=1, head="free").priors((64, 96)).anchors is None


def test_models_macs_about_150m_at_224():
    model = Detector(num_classes=1)
    macs = count_macs(model, 224)
    assert abs(macs - 150e6) / 150e6 < 0.2, macs
    assert model.training  # count_macs restores the mode
    # width scales cost roughly quadratically
    assert count_macs(Detector(num_classes=1, width=0.5), 224) < 0.35 * macs


@pytest.mark.parametrize("kind", ["anchor", "free"])
def test_models_detector_is_channels_last_and_layout_agnostic(kind, tmp_path):
    # NHWC weights (faster oneDNN convolutions on the CPU); inputs in either layout give the same
    # output bits, and the layout survives .to() and a state_dict round trip into a fresh model
    torch.manual_seed(0)
    m = Detector(num_classes=2, head=kind, width=0.25, reg_max=4 if kind == "free" else 0).eval()
    convs = [p for p in m.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a = m(x)
        b = m(x.contiguous(memory_format=torch.channels_last))
    for t, u in ((a.cls, b.cls), (a.box, b.box)):
        assert torch.equal(t, u) and torch.isfinite(t).all()
    m2 = Detector(num_classes=2, head=kind, width=0.25, reg_max=4 if kind == "free" else 0).to("cpu").eval()
    m2.load_state_dict(m.state_dict())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in m2.parameters() if p.dim() == 4)
    with torch.no_grad():
        assert torch.equal(m2(x).cls, a.cls)
    # NCHW weights (e.g. a user's .to(memory_format=contiguous_format)) still run, to rounding
    m3 = Detector(num_classes=2, head=kind, width=0.25, reg_max=4 if kind == "free" else 0).eval()
    m3.load_state_dict(m.state_dict())
    m3.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        torch.testing.assert_close(m3(x).cls, a.cls, rtol=1e-4, atol=1e-5)
