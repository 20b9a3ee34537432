"""The procedural dataset: determinism, splits, object statistics, contrast, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from assignlab.data import SyntheticConfig, SyntheticDataset, build_dataset, load_data_config


def test_default_is_synthetic_and_deterministic():
    cfg = load_data_config(None)
    assert cfg.format == "synthetic"
    a = build_dataset(cfg, "train", 128, train=False)
    b = build_dataset(load_data_config("synthetic"), "train", 128, train=False)
    assert len(a) == 256 and a.names == ["object"]
    assert len(build_dataset(cfg, "val", 128, train=False)) == 64
    for i in (0, 7):
        ia, ta = a[i]
        ib, tb = b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    # order of access does not matter (no hidden state)
    _ = b[3]
    assert torch.equal(a[7][0], b[7][0])


def test_splits_and_seeds_differ():
    cfg = SyntheticConfig(num_train=4, num_val=4)
    tr = SyntheticDataset(cfg, "train", 96, train=False, seed=0)
    va = SyntheticDataset(cfg, "val", 96, train=False, seed=0)
    other = SyntheticDataset(cfg, "train", 96, train=False, seed=1)
    assert not torch.equal(tr[0][0], va[0][0])
    assert not torch.equal(tr[0][0], other[0][0])
    fixed = SyntheticDataset(SyntheticConfig(num_train=4, seed=5), "train", 96, train=False, seed=123)
    again = SyntheticDataset(SyntheticConfig(num_train=4, seed=5), "train", 96, train=False, seed=0)
    assert torch.equal(fixed[1][0], again[1][0])  # the config seed wins


def test_object_statistics():
    cfg = SyntheticConfig(num_train=40)
    ds = SyntheticDataset(cfg, "train", 256, train=False)
    anns = [ds.load_annotations(i) for i in range(len(ds))]
    n = np.array([len(a["boxes"]) for a in anns])
    boxes = torch.cat([a["boxes"] for a in anns])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes >= 0).all() and (boxes <= 256).all() and (w > 0).all() and (h > 0).all()
    assert n.min() >= 1 and n.max() <= cfg.max_objects and n.mean() > 12
    side = torch.minimum(w, h)
    assert side.min() >= 4 - 1e-4 and torch.maximum(w, h).max() <= 0.4 * 256 * 1.5
    s = (w * h).sqrt()
    assert (s < 16).float().mean() > 0.3  # mostly small objects
    assert (s > 48).any()  # ... and some large ones
    # crowding: many boxes have a neighbour within one box size
    a = anns[0]["boxes"]
    c = (a[:, :2] + a[:, 2:]) / 2
    d = torch.cdist(c, c) + torch.eye(len(c)) * 1e9
    assert (d.min(dim=1).values < 40).float().mean() > 0.3


def test_objects_contrast_with_background():
    ds = SyntheticDataset(SyntheticConfig(num_train=6, min_objects=3, max_objects=6), "train", 128, train=False)
    diffs = []
    for i in range(len(ds)):
        img = ds.load_image(i).float() / 255
        for x1, y1, x2, y2 in ds.load_annotations(i)["boxes"].tolist():
            if min(x2 - x1, y2 - y1) < 12:
                continue
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            inner = img[:, cy - 2 : cy + 2, cx - 2 : cx + 2].mean()
            ring = torch.cat(
                [
                    img[:, max(0, int(y1) - 3) : int(y1) - 1, int(x1) : int(x2)].flatten(),
                    img[:, int(y2) + 1 : int(y2) + 3, int(x1) : int(x2)].flatten(),
                ]
            )
            if ring.numel():
                diffs.append(abs(float(inner) - float(ring.mean())))
    assert len(diffs) >= 5 and float(np.median(diffs)) > 0.15


def test_multiclass_and_merge():
    cfg = load_data_config({"format": "synthetic", "synthetic": {"num_classes": 3, "num_train": 10}})
    ds = build_dataset(cfg, "train", 128, train=False)
    assert ds.names == ["ellipse", "rectangle", "face"]
    labels = torch.cat([ds.load_annotations(i)["labels"] for i in range(10)])
    assert set(labels.tolist()) == {0, 1, 2}
    assert torch.equal(labels, torch.cat([torch.from_numpy(ds.kinds(i)) for i in range(10)]))
    m = build_dataset(cfg, "train", 128, train=False, merge_classes=True)
    assert m.names == ["object"] and m.load_annotations(0)["labels"].unique().tolist() == [0]


def test_non_square_image_size_and_train_augmentation():
    cfg = SyntheticConfig(num_train=4, image_size=(96, 160))
    ds = SyntheticDataset(cfg, "train", 128, train=True, seed=0)
    img, t = ds[0]
    assert img.shape == (3, 128, 128) and t["meta"].orig_size == (96, 160)
    ev = SyntheticDataset(cfg, "train", 128, train=False, seed=0)
    _, te = ev[0]
    assert te["meta"].scale == 0.8 and te["meta"].pad == (0.0, 25.0)


def test_generation_is_fast():
    ds = SyntheticDataset(SyntheticConfig(num_train=20), "train", 256, train=True)
    ds[0]
    t0 = time.process_time()
    for i in range(1, 11):
        ds[i]
    per = (time.process_time() - t0) / 10
    assert per < 0.1, f"{per * 1000:.1f} ms per 256 px image"


def test_bad_synthetic_options():
    from assignlab.data import DataConfigError

    with pytest.raises(DataConfigError, match="num_classes must be 1, 2 or 3"):
        load_data_config({"synthetic": {"num_classes": 5}})
    with pytest.raises(DataConfigError, match="unknown synthetic key.*'size'.*allowed: num_train"):
        load_data_config({"synthetic": {"size": 5}})
