"""Training augmentation in the datasets: defaults unchanged (checksums of the code before mosaic /
HSV / cache existed), mosaic samples, seeding / resume / workers, close_mosaic, HSV off = identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from data_testutils import voc_xml, write_image

from assignlab.data import build_dataset, build_loader, data_config_from_dict, load_data_config, to_original

SYN = {"format": "synthetic", "synthetic": {"num_train": 6, "image_size": [80, 56], "max_objects": 12}}


def synth(**kw):
    return build_dataset(data_config_from_dict(SYN), "train", 64, train=True, seed=3, **kw)


def voc(root: Path, **kw):
    """Three PNG images (lossless, so the pixels do not depend on the JPEG codec), one difficult
    object (an ignore region) in image ``a``."""
    (root / "ImageSets/Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    specs = {
        "a": ((60, 90), [("cat", [5, 6, 40, 50]), ("dog", [50, 10, 88, 58])], (1,)),
        "b": ((100, 50), [("dog", [0, 0, 20, 30]), ("cat", [10, 40, 48, 98])], ()),
        "c": ((40, 40), [("cat", [2, 2, 38, 38])], ()),
    }
    for k, (iid, (sz, objs, diff)) in enumerate(specs.items()):
        write_image(root / "JPEGImages" / f"{iid}.png", *sz, seed=k, fmt="PNG")
        (root / "Annotations" / f"{iid}.xml").write_text(voc_xml(f"{iid}.png", sz[1], sz[0], objs, diff))
    (root / "ImageSets/Main/train.txt").write_text("a\nb\nc\n")
    (root / "data.yaml").write_text("format: voc\npath: .\ntrain: ImageSets/Main/train.txt\nnames: [cat, dog]\n")
    return build_dataset(load_data_config(root / "data.yaml"), "train", 64, train=True, seed=5, **kw)


def digest(img, t):
    x = img.double()
    w = torch.arange(x.numel(), dtype=torch.float64).reshape(x.shape) % 997 + 1
    h = hashlib.sha256()
    for k in ("boxes", "labels", "ignore", "ignore_labels"):
        h.update(t[k].contiguous().numpy().tobytes())
    return float(x.sum()), float((x * w).sum()), h.hexdigest()[:16], t["meta"].flipped, t["meta"].pad


# Computed with the code before mosaic / HSV / the image cache existed (commit 829639d):
# (dataset, epoch, index) -> (image sum, position-weighted image sum, sha256 of the box tensors,
# flipped, pad). The image sums are compared with a tolerance (resize kernels may round one pixel
# differently on another CPU); boxes, flip and pad exactly.
REFERENCE = {
    ("synth", 0, 0): (5719.7651, 2803222.02, "03a1d752dd1bb943", True, (36.0, 9.0)),
    ("synth", 0, 1): (5857.1767, 2897545.39, "ad382d9786b6fd43", True, (2.0, -16.0)),
    ("synth", 0, 2): (5434.1768, 2624387.35, "d8c27542b26f44a9", True, (6.0, -13.0)),
    ("synth", 1, 0): (6451.2945, 3117830.52, "ac388b617fc0929e", True, (8.0, -15.0)),
    ("synth", 1, 1): (5904.7062, 2911273.98, "e00c387de928ff55", True, (8.0, -8.0)),
    ("synth", 1, 2): (5533.9847, 2717102.82, "e97261beae519b19", False, (8.0, 11.0)),
    ("voc", 0, 0): (6019.1494, 2950609.92, "a0f8d47ce2f7c38a", True, (-2.0, 14.0)),
    ("voc", 0, 1): (5862.7847, 2869621.2, "812d64e68b87db70", True, (19.0, -3.0)),
    ("voc", 0, 2): (6051.8239, 2972622.86, "9907bdbec2d00a37", False, (4.0, 5.0)),
    ("voc", 1, 0): (5786.1808, 2839387.04, "af4028586caac645", True, (10.0, 12.0)),
    ("voc", 1, 1): (5766.7298, 2826893.63, "a939c577274ec32c", True, (30.0, 0.0)),
    ("voc", 1, 2): (6204.6866, 3040281.31, "45506e5979233d5c", False, (-5.0, -17.0)),
}


def same_sample(a, b) -> bool:
    (ia, ta), (ib, tb) = a, b
    return torch.equal(ia, ib) and all(torch.equal(ta[k], tb[k]) for k in ("boxes", "labels", "ignore"))


def test_default_pipeline_matches_the_code_before_augmentation_options(tmp_path):
    for name, ds in (("synth", synth()), ("voc", voc(tmp_path))):
        for ep in (0, 1):
            ds.set_epoch(ep)
            for i in range(3):
                s1, s2, boxes, flipped, pad = digest(*ds[i])
                r1, r2, rboxes, rflipped, rpad = REFERENCE[(name, ep, i)]
                assert (boxes, flipped, pad) == (rboxes, rflipped, rpad), (name, ep, i)
                assert s1 == pytest.approx(r1, rel=1e-6, abs=0.01) and s2 == pytest.approx(r2, rel=1e-6), (name, ep, i)


def test_explicit_off_options_are_identical_to_the_defaults(tmp_path):
    a = synth()
    b = synth(mosaic=0.0, hsv=(0.0, 0.0, 0.0), mosaic_close_epoch=None, cache=False)
    c = synth(mosaic=1.0, mosaic_close_epoch=0)  # mosaic closed from the first epoch on
    for ep in (0, 2):
        for ds in (a, b, c):
            ds.set_epoch(ep)
        for i in range(len(a)):
            assert same_sample(a[i], b[i]) and same_sample(a[i], c[i])
            assert c[i][1]["meta"].mosaic is None


def test_mosaic_samples_meta_and_boxes(tmp_path):
    ds = voc(tmp_path, mosaic=1.0)
    n_ignore = 0
    for ep in range(6):
        ds.set_epoch(ep)
        for i in range(len(ds)):
            img, t = ds[i]
            m = t["meta"]
            assert img.shape == (3, 64, 64) and img.dtype == torch.float32
            assert m.mosaic is not None and len(m.mosaic) == 4 and m.mosaic[0] == i
            assert all(0 <= j < len(ds) for j in m.mosaic)
            b = t["boxes"]
            assert ((b >= 0) & (b <= 64)).all() and ((b[:, 2:] - b[:, :2]) >= 2).all()
            assert len(t["labels"]) == len(b) and t["num_dropped"] >= 0
            n_all = sum(len(ds.load_annotations(j)["boxes"]) for j in m.mosaic)
            assert len(b) + t["num_dropped"] == n_all
            n_ignore += len(t["ignore"])
            ig = t["ignore"]
            assert ((ig >= 0) & (ig <= 64)).all()
    assert n_ignore > 0  # image a's difficult object appears as an ignore region in some mosaics


def test_mosaic_meta_maps_the_first_tile_back(tmp_path):
    """meta.scale / pad describe tile 0 (the indexed image): its boxes that are not clipped map
    back to the original annotation."""
    ds = voc(tmp_path, mosaic=1.0, flip_p=0.0)
    checked = 0
    for ep in range(8):
        ds.set_epoch(ep)
        img, t = ds[2]  # image c, 40 x 40, one box (2, 2, 38, 38) -> tile 64 x 64, scale 1.6
        ann = ds.load_annotations(2)["boxes"]
        m = t["meta"]
        assert m.orig_size == (40, 40)
        for b in t["boxes"]:
            back = to_original(b[None], m)[0]
            if torch.allclose(back, ann[0], atol=1e-3):
                checked += 1
    assert checked >= 1


def test_same_seed_same_batches_and_resume_mid_epoch():
    def batches(ds, epoch, workers=0):
        ds.set_epoch(epoch)
        return list(build_loader(ds, 3, shuffle=True, seed=11 + epoch, workers=workers))

    a = synth(mosaic=0.7, hsv=(0.015, 0.7, 0.4))
    ref = [batches(a, e) for e in range(2)]
    # a new dataset object (a resumed run rebuilds everything) redraws epoch 1 exactly
    b = synth(mosaic=0.7, hsv=(0.015, 0.7, 0.4))
    again = batches(b, 1)
    for x, y in zip(ref[1], again):
        assert torch.equal(x.images, y.images) and torch.equal(x.gt.boxes, y.gt.boxes)
        assert [m.mosaic for m in x.meta] == [m.mosaic for m in y.meta]
    # epochs differ, and both kinds of sample occur with p = 0.7
    assert not torch.equal(ref[0][0].images, ref[1][0].images)
    kinds = {m.mosaic is None for bt in ref[0] + ref[1] for m in bt.meta}
    assert kinds == {True, False}
    # two worker processes give the same batches as the main process
    par = batches(synth(mosaic=0.7, hsv=(0.015, 0.7, 0.4)), 1, workers=2)
    for x, y in zip(ref[1], par):
        assert torch.equal(x.images, y.images) and torch.equal(x.gt.boxes, y.gt.boxes)


def test_close_mosaic_switches_off_at_the_epoch():
    ds = synth(mosaic=1.0, mosaic_close_epoch=2)
    plain = synth()
    for ep in range(4):
        ds.set_epoch(ep)
        plain.set_epoch(ep)
        assert ds.mosaic_active == (ep < 2)
        for i in range(len(ds)):
            s = ds[i]
            if ep < 2:
                assert s[1]["meta"].mosaic is not None
            else:  # after closing: exactly the plain pipeline
                assert s[1]["meta"].mosaic is None and same_sample(s, plain[i])
    # evaluation datasets never draw mosaics (nor colours)
    ev = build_dataset(data_config_from_dict(SYN), "val", 64, train=False, mosaic=1.0, hsv=(0.5, 0.5, 0.5))
    ev0 = build_dataset(data_config_from_dict(SYN), "val", 64, train=False)
    assert not ev.mosaic_active and same_sample(ev[0], ev0[0])


def test_hsv_changes_only_colours():
    plain, hsv = synth(), synth(hsv=(0.015, 0.7, 0.4))
    for i in range(3):
        (a, ta), (b, tb) = plain[i], hsv[i]
        assert torch.equal(ta["boxes"], tb["boxes"]) and ta["meta"] == tb["meta"]
        assert not torch.equal(a, b) and 0 <= b.min() and b.max() <= 1


def test_bad_options():
    with pytest.raises(ValueError, match="mosaic must be a probability"):
        synth(mosaic=1.5)
    with pytest.raises(ValueError, match="hsv must be three gains"):
        synth(hsv=(0.1, 0.2))
