"""Several anchors per location (YOLOv5 style, ``A = 3`` per level) end to end.

Head output order == :func:`assignlab.make_priors` order (checked with an exact integer code of
level / row / column / anchor / channel), decoding of a hand-set case, initial biases, the
per-level loss terms over ``H * W * A`` priors, short training runs (YOLOv5 assigner + loss,
ATSS + focal), checkpoint -> ``Detector.load`` -> ``predict``, ONNX parity, config validation.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assignlab import GroundTruth, make_priors
from assignlab.assigners import ATSSAssigner, YOLOv5Assigner
from assignlab.engine.config import ConfigError, load_train_config
from assignlab.losses.detection import DetectionLoss
from assignlab.losses.yolov5 import YOLOv5Loss
from assignlab.models import DetectionHead, Detector, HeadOutput
from assignlab.models.export import export_onnx, head_output_from_onnx
from assignlab.models.heads import flatten_levels

# 3 anchors per level, pixels (small enough for 64 px synthetic images)
A3 = [[(10.0, 12.0), (15.0, 17.0), (20.0, 22.0)],
      [(24.0, 26.0), (30.0, 34.0), (40.0, 44.0)],
      [(60.0, 68.0), (80.0, 90.0), (100.0, 110.0)]]
LOGIT_075 = math.log(3.0)  # sigmoid(log 3) = 0.75


def _code(level, row, col, a, k):
    """An exact float32 integer identifying (level, row, col, anchor, channel)."""
    return level * 4096 + row * 64 + col + a * 16384 + k * 65536


# ---------------------------------------------------------------------------------------- order
def test_models_multi_anchor_flatten_levels_order():
    m = torch.arange(2 * 3 * 5 * 2 * 4, dtype=torch.float32).reshape(2, 15, 2, 4)  # A=3, K=5, 2x4
    flat = flatten_levels([m], num_anchors=3)
    assert flat.shape == (2, 24, 5)
    # prior (row 1, col 2, anchor 1) = index (1 * 4 + 2) * 3 + 1 = 19 -> channels 5..9 at [1, 2]
    assert torch.equal(flat[:, 19], m[:, 5:10, 1, 2])
    assert torch.equal(flatten_levels([m[:, :5]]), flatten_levels([m[:, :5]], num_anchors=1))
    with pytest.raises(ValueError, match="anchors"):
        flatten_levels([m[:, :14]], num_anchors=3)


def test_models_multi_anchor_head_output_follows_prior_order():
    """Feed features whose channels are (row, col, level); 1x1 weights make every output channel
    an exact integer code of (level, row, col, anchor, channel): prior i must carry its own code."""
    na, C, H, W = 3, 2, 64, 96
    head = DetectionHead(num_classes=C, in_channels=3, kind="anchor", tower_depth=0, num_anchors=na)
    pri = make_priors((H, W), strides=(8, 16, 32), anchors=A3, offset=0.5)
    feats = []
    for lv, (rows, cols) in enumerate(pri.level_shapes):
        r = torch.arange(rows, dtype=torch.float32)[:, None].expand(rows, cols)
        c = torch.arange(cols, dtype=torch.float32)[None, :].expand(rows, cols)
        feats.append(torch.stack([r, c, torch.full_like(r, lv)])[None].repeat(2, 1, 1, 1))
    with torch.no_grad():
        for convs, k_count in ((head.cls_preds, C), (head.box_preds, 4), (head.obj_preds, 1)):
            for conv in convs:
                assert conv.out_channels == na * k_count
                for a in range(na):
                    for k in range(k_count):
                        ch = a * k_count + k  # anchor-major channels
                        conv.weight[ch, :, 0, 0] = torch.tensor([64.0, 1.0, 4096.0])
                        conv.bias[ch] = a * 16384 + k * 65536
    cls, box, obj = head(feats)
    N = pri.num_priors
    assert N == 3 * (8 * 12 + 4 * 6 + 2 * 3)
    assert cls.shape == (2, N, C) and box.shape == (2, N, 4) and obj.shape == (2, N)
    col, row = pri.grid_xy[:, 0], pri.grid_xy[:, 1]
    lv, a = pri.levels, pri.anchor_ids
    for out, k_count in ((cls, C), (box, 4), (obj[..., None], 1)):
        for k in range(k_count):
            exp = _code(lv, row, col, a, k).float()
            assert torch.equal(out[0, :, k], exp) and torch.equal(out[1, :, k], exp)
    # spot check of the documented formula: level 1, row 2, col 3, anchor 2
    i = pri.num_level_priors[0] + (2 * 6 + 3) * 3 + 2
    assert box[0, i, 1].item() == _code(1, 2, 3, 2, 1)
    assert pri.anchors[i].tolist() == [56.0 - 20, 40.0 - 22, 56.0 + 20, 40.0 + 22]  # point (56, 40), 40x44


def _detector_with_coded_features(model: Detector, pri) -> None:
    """Replace the tower by identity and the FPN output by (row, col, level, 0...) maps."""
    model.head.towers = nn.ModuleList(nn.Identity() for _ in range(3))

    def hook(_mod, _inp, outs):
        res = []
        for lv, o in enumerate(outs):
            b, c, rows, cols = o.shape
            f = torch.zeros(b, c, rows, cols)
            f[:, 0] = torch.arange(rows, dtype=torch.float32)[:, None]
            f[:, 1] = torch.arange(cols, dtype=torch.float32)[None, :]
            f[:, 2] = float(lv)
            res.append(f)
        return res

    model.neck.register_forward_hook(hook)


def test_models_multi_anchor_detector_decode_hand_set():
    """Full Detector: anchor 1 predicts t_x = logit(0.75), anchor 2 t_w = logit(0.75) and t_h =
    -logit(0.75), anchor 0 t = 0; cls logit = column; obj logit = row. Decoded boxes / scores are
    checked against hand-computed values at chosen priors and against the formula everywhere."""
    model = Detector(num_classes=1, width=0.25, anchors=A3).eval()
    pri = model.priors((32, 64))
    _detector_with_coded_features(model, pri)
    with torch.no_grad():
        for lvl in range(3):
            for conv in (model.head.cls_preds[lvl], model.head.box_preds[lvl], model.head.obj_preds[lvl]):
                conv.weight.zero_()
                conv.bias.zero_()
            model.head.box_preds[lvl].bias[1 * 4 + 0] = LOGIT_075   # anchor 1: t_x
            model.head.box_preds[lvl].bias[2 * 4 + 2] = LOGIT_075   # anchor 2: t_w
            model.head.box_preds[lvl].bias[2 * 4 + 3] = -LOGIT_075  # anchor 2: t_h
            for a in range(3):
                model.head.cls_preds[lvl].weight[a, 1] = 1.0  # column
                model.head.obj_preds[lvl].weight[a, 0] = 1.0  # row
        out = model(torch.zeros(1, 3, 32, 64))
        boxes, scores = model.decode(out, pri)
    # level 1 (stride 16, 2 x 4 cells), row 1, col 2 -> point (40, 24); index 96 + 6 * 3 + a
    base = 4 * 8 * 3 + (1 * 4 + 2) * 3
    assert torch.equal(pri.points[base], torch.tensor([40.0, 24.0]))
    # anchor 0 (24 x 26), t = 0 -> the anchor itself
    assert torch.allclose(boxes[0, base], torch.tensor([28.0, 11.0, 52.0, 37.0]))
    # anchor 1 (30 x 34), t_x = logit 0.75 -> centre x = 40 + 0.5 * 16 = 48
    assert torch.allclose(boxes[0, base + 1], torch.tensor([33.0, 7.0, 63.0, 41.0]))
    # anchor 2 (40 x 44): w = 1.5^2 * 40 = 90, h = 0.5^2 * 44 = 11
    assert torch.allclose(boxes[0, base + 2], torch.tensor([-5.0, 18.5, 85.0, 29.5]))
    # score = sigmoid(col) * sigmoid(row) = sigmoid(2) * sigmoid(1) for the three anchors
    exp = torch.sigmoid(torch.tensor(2.0)) * torch.sigmoid(torch.tensor(1.0))
    assert torch.allclose(scores[0, base : base + 3, 0], exp.expand(3))
    # every prior: decode formula with its own cell / anchor
    col, row = pri.grid_xy[:, 0].float(), pri.grid_xy[:, 1].float()
    assert torch.allclose(scores[0, :, 0], torch.sigmoid(col) * torch.sigmoid(row))
    a = pri.anchor_ids
    s = pri.strides.float()
    awh = pri.anchors[:, 2:] - pri.anchors[:, :2]
    cx = pri.points[:, 0] + torch.where(a == 1, 0.5, 0.0) * s
    w = awh[:, 0] * torch.where(a == 2, 2.25, 1.0)
    h = awh[:, 1] * torch.where(a == 2, 0.25, 1.0)
    ref = torch.stack([cx - w / 2, pri.points[:, 1] - h / 2, cx + w / 2, pri.points[:, 1] + h / 2], -1)
    assert torch.allclose(boxes[0], ref, atol=1e-4)


def test_models_multi_anchor_shapes_init_config():
    torch.manual_seed(0)
    m = Detector(num_classes=2, width=0.25, anchors=A3)
    assert m.num_anchors == 3 and m.head.num_anchors == 3
    pri = m.priors((64, 96))
    assert pri.num_anchors == (3, 3, 3) and pri.num_priors == 3 * 126
    out = m(torch.rand(2, 3, 64, 96))
    assert out.cls.shape == (2, 378, 2) and out.box.shape == (2, 378, 4) and out.obj.shape == (2, 378)
    # initial biases as with one anchor: obj logit(0.01) and cls log(0.6 / (C - 0.99)) for every anchor
    for lvl in range(3):
        assert torch.allclose(m.head.obj_preds[lvl].bias, torch.full((3,), math.log(0.01 / 0.99)))
        assert torch.allclose(m.head.cls_preds[lvl].bias, torch.full((6,), math.log(0.6 / 1.01)))
        assert torch.equal(m.head.box_preds[lvl].bias, torch.zeros(12))
    one = Detector(num_classes=2, width=0.25)
    assert m.head.obj_preds[0].weight.shape[1:] == one.head.obj_preds[0].weight.shape[1:]
    # config round trip keeps the 3 anchors per level
    cfg = m.config()
    assert cfg["anchors"] == [[list(a) for a in lv] for lv in A3]
    m2 = Detector(**cfg)
    m2.load_state_dict(m.state_dict())
    assert m2.priors((64, 96)).anchors.tolist() == pri.anchors.tolist()
    # one-anchor models keep their state-dict shapes (checkpoints stay loadable)
    assert one.head.obj_preds[0].weight.shape[0] == 1 and one.num_anchors == 1
    assert Detector(num_classes=1, head="free").num_anchors == 1


@pytest.mark.parametrize(
    "anchors,match",
    [
        ([[(1, 1), (2, 2)], [(3, 3)], [(4, 4)]], r"same number of \(w, h\) anchors.*\[2, 1, 1\]"),
        ([[(1, 1), (2, 2, 3)], [(3, 3), (1, 1)], [(4, 4), (1, 1)]], r"level 0 anchor 1 must be a \(w, h\) pair"),
        ([[(1, 1), (2, -2)], [(3, 3), (1, 1)], [(4, 4), (1, 1)]], r"positive size"),
        ([[], [(3, 3)], [(4, 4)]], r"level 0 has no"),
        ([[(1, 1)], [(3, 3)]], r"3 levels"),
    ],
)
def test_models_multi_anchor_refused(anchors, match):
    with pytest.raises(ValueError, match=match):
        Detector(1, anchors=anchors)


def test_models_multi_anchor_free_head_unchanged():
    with pytest.raises(ValueError, match="anchors"):
        Detector(1, head="free", anchors=A3)
    with pytest.raises(ValueError, match="num_anchors"):
        DetectionHead(1, 8, kind="free", num_anchors=3)


def test_models_multi_anchor_train_config_validation():
    c = load_train_config(None, {"anchors": [[list(a) for a in lv] for lv in A3]})
    assert c.anchors == [[list(a) for a in lv] for lv in A3]
    with pytest.raises(ConfigError, match=r"same number of \[w, h\] pairs on every level.*\[3, 1, 3\]"):
        load_train_config(None, {"anchors": [[list(a) for a in A3[0]], [[1, 2]], [list(a) for a in A3[2]]]})


# ---------------------------------------------------------------------------------------- losses
def _empty_gt(b: int) -> GroundTruth:
    return GroundTruth(boxes=torch.zeros(b, 1, 4), labels=torch.zeros(b, 1, dtype=torch.long),
                       mask=torch.zeros(b, 1, dtype=torch.bool))


def test_models_multi_anchor_objectness_level_means_cover_all_anchors():
    """Level l's objectness mean runs over its B * H * W * A priors (YOLOv5: (B, na, H, W))."""
    pri = make_priors((64, 64), anchors=A3)
    n0 = pri.num_level_priors[0]
    assert n0 == 8 * 8 * 3
    B, N = 2, pri.num_priors
    obj = torch.zeros(B, N)
    obj[1, n0 - 1] = 10.0  # the last anchor of the last cell of level 0
    out = HeadOutput(cls=torch.zeros(B, N, 2), box=torch.zeros(B, N, 4), obj=obj, kind="anchor", reg_max=0)
    boxes = torch.zeros(B, N, 4)
    gt = _empty_gt(B)
    l2, big = math.log(2.0), F.softplus(torch.tensor(10.0)).item()
    exp = 4.0 * ((2 * n0 - 1) * l2 + big) / (2 * n0) + 1.0 * l2 + 0.4 * l2
    assign = YOLOv5Assigner()(pri, gt)
    assert assign.matches is not None and assign.matches.prior.numel() == 0
    _, parts = YOLOv5Loss()(out, boxes, pri, gt, assign)
    assert parts["obj"].item() == pytest.approx(exp, rel=1e-5)
    _, parts = DetectionLoss(cls_loss="focal")(out, boxes, pri, gt, assign)
    assert parts["obj"].item() == pytest.approx(exp, rel=1e-5)


# ---------------------------------------------------------------------------------------- training
def _synthetic_batch(n: int = 4, size: int = 64):
    from assignlab.data import build_dataset
    from assignlab.data.config import DataConfig, SyntheticConfig

    cfg = DataConfig(format="synthetic", synthetic=SyntheticConfig(num_train=n, num_val=2, max_objects=8))
    ds = build_dataset(cfg, "train", size, train=False, seed=0)
    items = [ds[i] for i in range(n)]
    images = torch.stack([im for im, _ in items])
    gt = GroundTruth.from_lists(boxes=[t["boxes"] for _, t in items], labels=[t["labels"] for _, t in items])
    return images, gt


@pytest.mark.parametrize("setup", ["yolov5", "atss-focal"])
def test_models_multi_anchor_training_steps(setup):
    torch.manual_seed(0)
    images, gt = _synthetic_batch()
    model = Detector(num_classes=1, width=0.25, anchors=A3)
    pri = model.priors(tuple(images.shape[-2:]))
    if setup == "yolov5":
        assigner, loss_fn = YOLOv5Assigner(), YOLOv5Loss()
    else:
        assigner, loss_fn = ATSSAssigner(topk=9), DetectionLoss(cls_loss="focal")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, box, npos = [], [], []
    for _ in range(16):
        out = model(images)
        boxes, scores = model.decode(out, pri)
        assign = assigner(pri, gt, pred_boxes=boxes.detach(), pred_scores=scores.detach())
        assign.validate(gt)
        total, parts = loss_fn(out, boxes, pri, gt, assign)
        assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
        box.append(parts["box"].item())
        npos.append(int(assign.positive.sum()))
    # all three anchors of a location get positives
    assert set(pri.anchor_ids[assign.positive.any(0)].tolist()) == {0, 1, 2}
    assert min(npos) > 0
    # YOLOv5's objectness target is the predicted box's CIoU, so its loss first rises while the
    # boxes improve (6.27 -> 6.66 -> 4.65 here); ATSS + focal falls from the start (5.23 -> 3.61)
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    assert np.mean(box[-3:]) < np.mean(box[:3]), box


def test_models_multi_anchor_engine_run_checkpoint_predict(tmp_path):
    """2 epochs of ``train`` on synthetic data -> last.pt keeps the anchors -> load -> predict."""
    import yaml

    from assignlab.engine.checkpoint import load_checkpoint
    from assignlab.engine.train import build_model_from_checkpoint, train

    data = tmp_path / "syn.yaml"
    data.write_text(yaml.safe_dump({"format": "synthetic", "synthetic": {
        "num_train": 8, "num_val": 4, "image_size": 64, "max_objects": 8}}))
    anchors = [[list(a) for a in lv] for lv in A3]
    cfg = load_train_config(None, {
        "data": str(data), "assigner": "yolov5", "loss": "yolov5", "head": "anchor", "img": 64, "batch": 4,
        "width": 0.25, "warmup_epochs": 0.5, "epochs": 2, "out": str(tmp_path / "run"), "anchors": anchors})
    res = train(cfg, progress=False)
    assert all(math.isfinite(h["train/loss"]) for h in res["history"])
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["model_config"]["anchors"] == anchors
    model = Detector.load(tmp_path / "run" / "last.pt")
    assert model.anchors == A3 and model.num_anchors == 3 and model.img_size == 64
    m2 = build_model_from_checkpoint(ck)
    assert m2.anchors == A3
    img = (torch.rand(3, 80, 50) * 255).to(torch.uint8)
    r = model.predict(img, conf=0.001)[0]
    assert r["boxes"].shape[1] == 4 and len(r["boxes"]) > 0
    assert (r["boxes"][:, 2] <= 50).all() and (r["boxes"][:, 3] <= 80).all()
    r2 = m2.predict(img, conf=0.001)[0]
    assert torch.allclose(r["boxes"], r2["boxes"]) and torch.allclose(r["scores"], r2["scores"])


# ---------------------------------------------------------------------------------------- export
def test_models_multi_anchor_onnx_parity(tmp_path):
    SIZE = 96
    torch.manual_seed(0)
    model = Detector(num_classes=3, width=0.25, anchors=A3)
    with torch.no_grad():
        for conv in list(model.head.cls_preds) + list(model.head.box_preds) + list(model.head.obj_preds):
            conv.weight.normal_(0, 0.3)
            conv.bias.zero_()
        model.train()
        model(torch.rand(4, 3, SIZE, SIZE))
    model.eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x)
        rb, rs = model.decode(ref, model.priors(SIZE))
    assert ref.cls.shape == (2, 3 * (144 + 36 + 9), 3)

    raw = export_onnx(model, tmp_path / "raw.onnx", img_size=SIZE, dynamic_batch=True)
    got = ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    for g, r in zip(got, (ref.cls, ref.box, ref.obj)):
        assert g.shape == tuple(r.shape)
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0)
    pri = model.priors(SIZE)
    dt = model.postprocess(ref, pri, conf=0.2, iou=0.5)
    do = model.postprocess(head_output_from_onnx(got, model), pri, conf=0.2, iou=0.5)
    for a, b in zip(dt, do):
        # same detections up to the order of scores tied within float rounding (1e-7 apart)
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        same = ((a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1) < 1e-3) & (
            a["labels"][:, None] == b["labels"][None])
        assert same.any(1).all() and same.any(0).all()

    dec = export_onnx(model, tmp_path / "dec.onnx", img_size=SIZE, with_decode=True, batch=2)
    boxes, scores = ort.InferenceSession(dec, opts, providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})
    np.testing.assert_allclose(boxes, rb.numpy(), atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(scores, rs.numpy(), atol=1e-5, rtol=0)
