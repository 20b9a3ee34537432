"""Detector.decode / postprocess on hand-set raw outputs, and a tiny overfit run."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from assignlab.models import Detector, HeadOutput
from assignlab.models.detector import postprocess_boxes
from assignlab.models.heads import dfl_integral

LOGIT_075 = math.log(3.0)  # sigmoid(log 3) = 0.75


def _anchor_out(box: torch.Tensor, n_cls: int = 1, cls: float = 0.0, obj: float = 0.0) -> HeadOutput:
    b, n, _ = box.shape
    return HeadOutput(
        cls=torch.full((b, n, n_cls), cls), box=box, obj=torch.full((b, n), obj), kind="anchor", reg_max=0
    )


def test_models_decode_anchor_zero_offsets_give_anchor():
    model = Detector(num_classes=1)
    pri = model.priors((32, 64))
    boxes, scores = model.decode(_anchor_out(torch.zeros(2, pri.num_priors, 4)), pri)
    assert torch.allclose(boxes[0], pri.anchors) and torch.allclose(boxes[1], pri.anchors)
    # first prior: point (4, 4), stride 8, anchor (15, 17) -> (-3.5, -4.5, 11.5, 12.5)
    assert torch.allclose(boxes[0, 0], torch.tensor([-3.5, -4.5, 11.5, 12.5]))
    # prior 1 is (12, 4): row-major
    assert torch.allclose(boxes[0, 1], torch.tensor([4.5, -4.5, 19.5, 12.5]))
    assert torch.allclose(scores, torch.full_like(scores, 0.25))  # sigmoid(0) * sigmoid(0)


def test_models_decode_anchor_hand_computed_offsets():
    model = Detector(num_classes=2)
    pri = model.priors((32, 64))
    n0 = pri.num_level_priors[0] + 1  # level 1 (stride 16), row 0, col 1 -> point (24, 8), anchor (30, 34)
    assert torch.equal(pri.points[n0], torch.tensor([24.0, 8.0]))
    box = torch.zeros(1, pri.num_priors, 4)
    # tx = logit(0.75): cx = 24 + (1.5 - 1) * 16 = 32; ty = -logit(0.75): cy = 8 - 0.5 * 16 = 0
    # tw = logit(0.75): w = (1.5)^2 * 30 = 67.5; th = 0: h = 34
    box[0, n0] = torch.tensor([LOGIT_075, -LOGIT_075, LOGIT_075, 0.0])
    out = _anchor_out(box, n_cls=2)
    out.cls[0, n0] = torch.tensor([0.0, LOGIT_075])
    out.obj[0, n0] = LOGIT_075
    boxes, scores = model.decode(out, pri)
    assert torch.allclose(boxes[0, n0], torch.tensor([32 - 33.75, 0 - 17.0, 32 + 33.75, 0 + 17.0]))
    assert torch.allclose(scores[0, n0], torch.tensor([0.5 * 0.75, 0.75 * 0.75]))
    # extremes: the centre stays within one stride, the size within (0, 4) anchors
    box[0, n0] = torch.tensor([50.0, 50.0, 50.0, 50.0])
    boxes, _ = model.decode(_anchor_out(box, 2), pri)
    assert torch.allclose(boxes[0, n0], torch.tensor([40.0 - 60, 24.0 - 68, 40.0 + 60, 24.0 + 68]))


def test_models_decode_free_softplus_hand_computed():
    model = Detector(num_classes=1, head="free")
    pri = model.priors((32, 64))
    n = 2 * 8 + 3  # level 0, row 2, col 3 -> point (28, 20), stride 8
    assert torch.equal(pri.points[n], torch.tensor([28.0, 20.0]))
    dist = torch.tensor([1.0, 2.0, 0.5, 3.0])  # l, t, r, b in strides
    raw = torch.zeros(1, pri.num_priors, 4)
    raw[0, n] = torch.log(torch.expm1(dist))  # softplus^-1
    out = HeadOutput(cls=torch.zeros(1, pri.num_priors, 1), box=raw, obj=None, kind="free", reg_max=0)
    boxes, scores = model.decode(out, pri)
    assert torch.allclose(boxes[0, n], torch.tensor([28 - 8.0, 20 - 16.0, 28 + 4.0, 20 + 24.0]), atol=1e-5)
    assert torch.allclose(scores, torch.full_like(scores, 0.5))
    # raw 0 -> softplus(0) = ln 2 strides
    d0 = math.log(2.0) * 8
    assert torch.allclose(boxes[0, 0], torch.tensor([4 - d0, 4 - d0, 4 + d0, 4 + d0]), atol=1e-5)


def test_models_decode_free_dfl_hand_computed():
    assert torch.allclose(dfl_integral(torch.zeros(4 * 3), 2), torch.ones(4))
    reg_max = 4
    model = Detector(num_classes=1, head="free", reg_max=reg_max)
    pri = model.priors((32, 32))
    n = pri.num_level_priors[0]  # level 1, row 0, col 0 -> point (8, 8), stride 16
    logits = torch.full((1, pri.num_priors, 4, reg_max + 1), -1e4)
    logits[..., 0] = 0.0
    logits[0, n, 0, :] = torch.tensor([-1e4, 0.0, -1e4, -1e4, -1e4])  # l: one-hot at bin 1 -> 1 stride
    logits[0, n, 1, 0] = 0.0  # t: one-hot at bin 0 -> 0
    logits[0, n, 2, :] = 0.0  # r: uniform over 0..4 -> 2 strides
    logits[0, n, 3, :] = -1e4
    logits[0, n, 3, 3] = 0.0
    logits[0, n, 3, 4] = 0.0  # b: half 3, half 4 -> 3.5 strides
    out = HeadOutput(cls=torch.zeros(1, pri.num_priors, 1), box=logits.flatten(2), obj=None, kind="free",
                     reg_max=reg_max)
    boxes, _ = model.decode(out, pri)
    assert torch.allclose(boxes[0, n], torch.tensor([8 - 1 * 16, 8 - 0.0, 8 + 2 * 16, 8 + 3.5 * 16]), atol=1e-4)
    assert torch.allclose(boxes[0, 0], torch.tensor([4.0, 4.0, 4.0, 4.0]), atol=1e-4)  # all bin 0


_SMALL: dict[str, Detector] = {}


@settings(max_examples=40, deadline=None)
@given(
    raw=st.lists(st.floats(-8, 8), min_size=4, max_size=4),
    idx=st.integers(0, 8 * 8 + 4 * 4 + 2 * 2 - 1),
    kind=st.sampled_from(["anchor", "free"]),
)
def test_models_decode_invariants(raw, idx, kind):
    model = _SMALL.setdefault(kind, Detector(num_classes=1, head=kind, width=0.25))
    pri = model.priors((64, 64))
    box = torch.zeros(1, pri.num_priors, 4)
    box[0, idx] = torch.tensor(raw)
    obj = torch.zeros(1, pri.num_priors) if kind == "anchor" else None
    out = HeadOutput(cls=torch.zeros(1, pri.num_priors, 1), box=box, obj=obj, kind=kind, reg_max=0)
    b = model.decode(out, pri)[0][0, idx]
    p, s = pri.points[idx], pri.strides[idx]
    assert (b[2:] >= b[:2]).all()
    if kind == "anchor":
        c = (b[:2] + b[2:]) / 2
        assert ((c - p).abs() <= s + 1e-4).all()
        awh = pri.anchors[idx, 2:] - pri.anchors[idx, :2]
        assert ((b[2:] - b[:2]) <= 4 * awh + 1e-3).all()
    else:  # the prior point is inside its box
        assert (b[:2] <= p + 1e-5).all() and (b[2:] >= p - 1e-5).all()


def test_models_decode_is_differentiable():
    model = Detector(num_classes=2, head="anchor", width=0.25)
    out = model(torch.rand(1, 3, 64, 64))
    boxes, scores = model.decode(out, model.priors((64, 64)))
    (boxes.sum() + scores.sum()).backward()
    assert model.head.box_preds[0].weight.grad is not None
    assert model.head.box_preds[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="priors"):
        model.decode(out, model.priors((32, 64)))


def test_models_postprocess_nms_removes_duplicate():
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]]], dtype=torch.float)
    # prior 0 and 1 overlap with IoU 90/110 = 0.818, same class 0; prior 3 duplicates prior 0 but as class 1
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.6]]])
    res = postprocess_boxes(boxes, scores, conf=0.05, iou=0.6)
    assert len(res) == 1
    r = res[0]
    assert torch.allclose(r["scores"], torch.tensor([0.9, 0.7, 0.6]))
    assert r["labels"].tolist() == [0, 0, 1]
    assert torch.equal(r["boxes"], boxes[0, [0, 2, 3]])
    # a higher IoU threshold keeps the near-duplicate
    assert len(postprocess_boxes(boxes, scores, conf=0.05, iou=0.85)[0]["scores"]) == 4
    # conf threshold and max_det
    assert postprocess_boxes(boxes, scores, conf=0.75, iou=0.6)[0]["scores"].tolist() == pytest.approx([0.9])
    assert len(postprocess_boxes(boxes, scores, conf=0.05, iou=0.6, max_det=2)[0]["scores"]) == 2
    # single-label mode: prior 3's best class is 1 (0.6), prior 0's is 0
    r1 = postprocess_boxes(boxes, scores, conf=0.05, iou=0.6, multi_label=False)[0]
    assert r1["labels"].tolist() == [0, 0, 1]


def test_models_postprocess_batch_images_independent_and_clipped():
    boxes = torch.tensor([[[-5, 0, 10, 10], [0, 0, 10, 10]], [[0, 0, 10, 10], [50, 50, 90, 70]]], dtype=torch.float)
    scores = torch.tensor([[[0.9], [0.8]], [[0.5], [0.4]]])
    res = postprocess_boxes(boxes, scores, image_size=(60, 80), conf=0.1, iou=0.5)
    # image 0: prior 0 clipped to (0,0,10,10) then duplicates prior 1 -> one box; image 1: two boxes
    assert len(res) == 2
    assert torch.equal(res[0]["boxes"], torch.tensor([[0.0, 0, 10, 10]]))
    assert torch.equal(res[1]["boxes"], torch.tensor([[0.0, 0, 10, 10], [50, 50, 80, 60]]))
    # identical boxes in different images do not suppress each other, max_det is per image
    res = postprocess_boxes(boxes, scores, conf=0.1, iou=0.5, max_det=1)
    assert [len(r["scores"]) for r in res] == [1, 1]
    # nothing above conf -> empty tensors with the right shapes
    res = postprocess_boxes(boxes, scores, conf=0.95)
    assert [tuple(r["boxes"].shape) for r in res] == [(0, 4), (0, 4)]


def test_models_detector_postprocess_end_to_end():
    model = Detector(num_classes=1)
    pri = model.priors((32, 64))
    box = torch.zeros(1, pri.num_priors, 4)
    out = _anchor_out(box, cls=-20.0, obj=-20.0)
    out.cls[0, 5] = 10.0
    out.obj[0, 5] = 10.0
    res = model.postprocess(out, pri, conf=0.25)
    assert len(res[0]["boxes"]) == 1
    exp = pri.anchors[5].clone()
    exp[0::2] = exp[0::2].clamp(0, 64)
    exp[1::2] = exp[1::2].clamp(0, 32)
    assert torch.allclose(res[0]["boxes"][0], exp)


@pytest.mark.parametrize("kind", ["anchor", "free"])
def test_models_overfit_one_image(kind):
    """A few dozen steps on one synthetic image with a simple hand-written loss move the box to the GT."""
    torch.manual_seed(0)
    img = torch.full((1, 3, 64, 64), 0.2)
    gt = torch.tensor([18.0, 22.0, 42.0, 50.0])  # 24 x 28 box, centre (30, 36)
    img[:, :, 22:50, 18:42] = torch.tensor([0.9, 0.6, 0.3])[:, None, None]
    model = Detector(num_classes=1, head=kind, width=0.25)
    pri = model.priors((64, 64))
    # positive: the stride-16 prior whose cell contains the GT centre -> col 1, row 2
    pos = pri.num_level_priors[0] + 2 * 4 + 1
    assert torch.equal(pri.points[pos], torch.tensor([24.0, 40.0]))
    target = torch.zeros(1, pri.num_priors)
    target[0, pos] = 1.0
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def iou_now() -> float:
        with torch.no_grad():
            b, _ = model.decode(model(img), pri)
        return box_iou(b[0, pos : pos + 1], gt[None]).item()

    iou0 = iou_now()
    for _ in range(60):
        out = model(img)
        boxes, scores = model.decode(out, pri)
        # L1 box loss on the positive + BCE on the scores summed over priors / num_pos (= 1)
        loss = (boxes[0, pos] - gt).abs().mean() / 16 + torch.nn.functional.binary_cross_entropy(
            scores[..., 0].clamp(1e-6, 1 - 1e-6), target, reduction="sum"
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    iou1 = iou_now()
    assert iou1 > 0.8 and iou1 > iou0 + 0.25, (iou0, iou1)
    with torch.no_grad():
        _, scores = model.decode(model(img), pri)
    assert scores[0, pos, 0] > 0.5, scores[0, pos, 0]
    assert scores[0].argmax() == pos
