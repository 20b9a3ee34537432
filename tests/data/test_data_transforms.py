"""Letterbox geometry (hand-computed), training jitter/flip invariants, box dropping."""

from __future__ import annotations

import torch
from data_testutils import make_voc
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.transforms import v2

from assignlab.data import DetectionTransform, Letterbox, build_dataset, load_data_config, to_original


def test_letterbox_non_square_hand_computed():
    # 200 x 100 (h x w) image into 64: scale = min(64/200, 64/100) = 0.32, resized 64 x 32,
    # pad = ((64 - 32) // 2, 0) = (16, 0).
    img = torch.full((3, 200, 100), 200, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 100.0, 200.0]])
    out = DetectionTransform(64, train=False)(img, boxes, torch.tensor([1, 0]))
    assert out.params.scale == 0.32
    assert out.params.pad == (16, 0)
    assert out.params.resized == (64, 32)
    expected = torch.tensor([[10 * 0.32 + 16, 20 * 0.32, 60 * 0.32 + 16, 90 * 0.32], [16.0, 0.0, 48.0, 64.0]])
    torch.testing.assert_close(out.boxes, expected)
    assert out.labels.tolist() == [1, 0]
    assert out.image.shape == (3, 64, 64) and out.image.dtype == torch.float32
    # gray padding left and right of the resized content, content in columns 16..47
    gray = 114 / 255
    assert torch.allclose(out.image[:, :, :16], torch.tensor(gray))
    assert torch.allclose(out.image[:, :, 48:], torch.tensor(gray))
    assert torch.allclose(out.image[:, :, 16:48], torch.tensor(200 / 255))
    assert not out.flipped and out.num_dropped == 0


def test_letterbox_in_v2_compose():
    img = tv_tensors.Image(torch.zeros(3, 50, 100, dtype=torch.uint8))
    bx = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10.0, 20.0, 30.0]]), format="XYXY", canvas_size=(50, 100))
    out_img, out_bx = v2.Compose([Letterbox(32)])(img, bx)
    # scale 0.32, resized 16 x 32, pad (0, 8)
    assert out_img.shape == (3, 32, 32)
    assert out_bx.canvas_size == (32, 32)
    torch.testing.assert_close(out_bx.as_subclass(torch.Tensor), torch.tensor([[3.2, 11.2, 6.4, 17.6]]))


def test_dataset_letterbox_maps_back_to_original(tmp_path):
    # a non-square VOC image 200 (h) x 100 (w): letterboxed to 64, then back to original coords
    y = make_voc(
        tmp_path, {"im0": {"size": (200, 100), "objects": [("cat", [10, 20, 60, 90]), ("dog", [0, 150, 100, 200])]}}
    )
    ds = build_dataset(load_data_config(y), "train", 64, train=False)
    img, t = ds[0]
    m = t["meta"]
    assert m.orig_size == (200, 100) and m.scale == 0.32 and m.pad == (16.0, 0.0) and not m.flipped
    torch.testing.assert_close(t["boxes"][0], torch.tensor([19.2, 6.4, 35.2, 28.8]))
    back = to_original(t["boxes"], m)
    torch.testing.assert_close(back, ds.load_annotations(0)["boxes"], atol=1e-4, rtol=0)
    assert t["labels"].tolist() == [0, 1]


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(20, 300),
    w=st.integers(20, 300),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_train_transform_invariants(h, w, seed, data):
    n = data.draw(st.integers(0, 6))
    xs = [data.draw(st.floats(0, w - 2)) for _ in range(n)]
    ys = [data.draw(st.floats(0, h - 2)) for _ in range(n)]
    boxes = torch.tensor(
        [[x, y, min(w, x + 1 + (w - x) / 2), min(h, y + 1 + (h - y) / 2)] for x, y in zip(xs, ys)]
    ).reshape(-1, 4)
    labels = torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    tf = DetectionTransform(48, train=True, scale_range=(0.5, 1.5), flip_p=0.5)
    out = tf(torch.zeros(3, h, w, dtype=torch.uint8), boxes, labels, generator=g)
    S = 48
    assert out.image.shape == (3, S, S)
    assert len(out.boxes) + out.num_dropped == n
    if len(out.boxes):
        assert (out.boxes >= 0).all() and (out.boxes <= S).all()
        assert (out.boxes[:, 2] > out.boxes[:, 0]).all() and (out.boxes[:, 3] > out.boxes[:, 1]).all()
    # kept boxes that were not clamped map back exactly to the original ones
    p = out.params
    fwd = boxes * p.scale + torch.tensor([p.pad[0], p.pad[1], p.pad[0], p.pad[1]], dtype=torch.float32)
    if out.flipped:
        fwd = torch.stack([S - fwd[:, 2], fwd[:, 1], S - fwd[:, 0], fwd[:, 3]], dim=1)
    inside = ((fwd >= 0) & (fwd <= S)).all(dim=1)
    kept_labels = out.labels.tolist()
    for j in torch.nonzero(inside).flatten().tolist():
        assert j in kept_labels
        torch.testing.assert_close(out.boxes[kept_labels.index(j)], fwd[j])
    # the boxes-only path (for annotation tools) gives the same result
    bx, lb, _, _, nd = tf.apply_boxes(out.params, out.flipped, (h, w), boxes, labels)
    assert torch.equal(bx, out.boxes) and torch.equal(lb, out.labels) and nd == out.num_dropped
    # same generator seed -> same sample
    out2 = tf(torch.zeros(3, h, w, dtype=torch.uint8), boxes, labels, generator=torch.Generator().manual_seed(seed))
    assert out2.params == out.params and out2.flipped == out.flipped


def test_flip_and_crop_drop_counts():
    # jitter x2 with placement at pad (-S, ...) is forced by a tiny canvas: boxes far outside drop
    img = torch.zeros(3, 100, 100, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [45.0, 45.0, 55.0, 55.0], [90.0, 90.0, 100.0, 100.0]])
    tf = DetectionTransform(50, train=True, scale_range=(2.0, 2.0), flip_p=0.0)
    dropped_any = False
    for s in range(20):
        out = tf(img, boxes, torch.arange(3), generator=torch.Generator().manual_seed(s))
        assert out.params.scale == 1.0 and out.params.resized == (100, 100)
        assert len(out.boxes) + out.num_dropped == 3
        dropped_any |= out.num_dropped > 0
        # the centre box is always at least partly visible (pad in [-50, 0])
        assert 1 in out.labels.tolist()
    assert dropped_any


def test_flip_maps_boxes():
    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    img[:, :, :10] = 255
    tf = DetectionTransform(40, train=True, scale_range=(1.0, 1.0), flip_p=1.0)
    out = tf(img, torch.tensor([[0.0, 5.0, 10.0, 15.0]]), torch.tensor([0]))
    assert out.flipped and out.params.pad == (0, 0)
    torch.testing.assert_close(out.boxes, torch.tensor([[30.0, 5.0, 40.0, 15.0]]))
    assert out.image[:, :, 30:].min() == 1.0 and out.image[:, :, :30].max() < 0.5
