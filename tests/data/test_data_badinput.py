"""Issue #7: bad input. Every case in default mode (skip / drop + count) and in strict mode (error)."""

from __future__ import annotations

import warnings

import pytest
import torch
from data_testutils import corrupt_jpeg, make_coco, make_voc, make_yolo, voc_xml

from assignlab.core import BadBoxError
from assignlab.data import DatasetError, LabelError, build_dataset, build_loader, collate, load_data_config


def _yolo(tmp_path, label, extra=None, **kw):
    imgs = {"good": {"label": "0 0.5 0.5 0.2 0.2\n"}, "bad": {"label": label}}
    imgs.update(extra or {})
    cfg = load_data_config(make_yolo(tmp_path, imgs))
    return cfg


def _by_stem(ds):
    return {ds.load_annotations(i)["path"].rsplit("/", 1)[-1].split(".")[0]: i for i in range(len(ds))}


# ---------------------------------------------------------------- boxes
def test_nan_box_dropped_with_count_or_strict_error(tmp_path):
    cfg = _yolo(tmp_path, "0 0.5 0.5 0.2 0.2\n1 nan 0.5 0.2 0.2\n")
    with pytest.warns(UserWarning, match="non-finite"):
        ds = build_dataset(cfg, "train", 64, train=False)
    assert len(ds) == 2
    a = ds.load_annotations(_by_stem(ds)["bad"])
    assert a["labels"].tolist() == [0]  # the NaN box (line 2) is gone, the other kept
    assert ds.report.counts["non_finite_box"] == 1
    assert "line 2" in ds.report.events[0][2] and ds.report.events[0][1].endswith("bad.txt")
    with pytest.raises(BadBoxError, match=r"bad\.txt: line 2: box has a non-finite coordinate"):
        build_dataset(cfg, "train", 64, train=False, strict=True)


def test_inf_in_voc_xml(tmp_path):
    y = make_voc(tmp_path, {"a": {"objects": [("cat", [1, 1, "inf", 9]), ("dog", [2, 2, 8, 8])]}})
    with pytest.warns(UserWarning):
        ds = build_dataset(load_data_config(y), "train", 32, train=False)
    assert ds.load_annotations(0)["labels"].tolist() == [1]
    with pytest.raises(BadBoxError, match=r"a\.xml: object 0 \(cat\)"):
        build_dataset(load_data_config(y), "train", 32, train=False, strict=True)


def test_nan_in_coco_bbox(tmp_path):
    y = make_coco(
        tmp_path,
        images=[{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}],
        annotations=[
            {"id": 5, "image_id": 1, "category_id": 3, "bbox": [float("nan"), 2, 10, 20], "iscrowd": 0},
            {"id": 6, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
        ],
    )
    with pytest.warns(UserWarning):
        ds = build_dataset(load_data_config(y), "train", 32, train=False)
    assert len(ds.load_annotations(0)["boxes"]) == 1
    with pytest.raises(BadBoxError, match="annotation id 5"):
        build_dataset(load_data_config(y), "train", 32, train=False, strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_inverted_zero_area_dropped_and_outside_clipped(tmp_path, strict):
    objs = [
        ("cat", [10, 10, 5, 20]),  # inverted
        ("cat", [10, 10, 10, 20]),  # zero width
        ("dog", [-5, 30, 20, 60]),  # partly outside (image 48 x 64) -> clipped
        ("dog", [70, 10, 90, 20]),  # completely outside -> zero area after clipping -> dropped
        ("cat", [1, 1, 4, 4]),
    ]
    y = make_voc(tmp_path, {"a": {"size": (48, 64), "objects": objs}})
    with pytest.warns(UserWarning, match="dropped 3 degenerate"):
        ds = build_dataset(load_data_config(y), "train", 32, train=False, strict=strict)
    a = ds.load_annotations(0)
    assert a["boxes"].tolist() == [[0, 30, 20, 48], [1, 1, 4, 4]]
    assert ds.report.counts["degenerate_box"] == 3 and ds.report.counts["clipped_box"] == 2


def test_label_out_of_range_names_file_and_line(tmp_path):
    cfg = _yolo(tmp_path, "0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.2 0.2\n")
    for strict in (False, True):
        with pytest.raises(LabelError, match=r"bad\.txt, line 3: class 7 out of range 0\.\.1"):
            build_dataset(cfg, "train", 64, train=False, strict=strict)
    cfg = _yolo(tmp_path / "neg", "-1 0.5 0.5 0.2 0.2\n")
    with pytest.raises(LabelError, match="line 1"):
        build_dataset(cfg, "train", 64, train=False)
    y = make_voc(tmp_path / "voc", {"a": {"objects": [("cat", [1, 1, 9, 9]), ("horse", [2, 2, 8, 8])]}})
    with pytest.raises(LabelError, match=r"a\.xml: object 1 has class 'horse'"):
        build_dataset(load_data_config(y), "train", 32, train=False)
    y = make_coco(
        tmp_path / "coco",
        images=[{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}],
        annotations=[{"id": 9, "image_id": 1, "category_id": 99, "bbox": [1, 2, 3, 4]}],
    )
    with pytest.raises(LabelError, match="annotation id 9: category_id 99"):
        build_dataset(load_data_config(y), "train", 32, train=False)


# ---------------------------------------------------------------- files
def test_corrupt_and_missing_images(tmp_path):
    y = make_voc(
        tmp_path,
        {
            "ok": {"objects": [("cat", [1, 1, 9, 9])]},
            "garbage": {"objects": [("cat", [1, 1, 9, 9])]},
            "gone": {"objects": [("cat", [1, 1, 9, 9])], "no_image": True},
        },
    )
    (tmp_path / "JPEGImages" / "garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    ds = build_dataset(load_data_config(y), "train", 32, train=False)
    assert len(ds) == 1 and ds.load_annotations(0)["path"].endswith("ok.jpg")
    assert ds.report.counts["corrupt_image"] == 1 and ds.report.counts["missing_image"] == 1
    assert ds.report.num_skipped == 2
    assert ds.report.paths("corrupt_image")[0].endswith("garbage.jpg")
    assert "missing_image=1" in ds.report.summary()
    with pytest.raises(DatasetError, match=r"garbage\.jpg: corrupt image"):
        build_dataset(load_data_config(y), "train", 32, train=False, strict=True)


def test_wrong_column_count(tmp_path):
    cfg = _yolo(tmp_path, "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
    ds = build_dataset(cfg, "train", 64, train=False)
    assert len(ds) == 1 and ds.report.counts["bad_label_file"] == 1
    reason = ds.report.events[0]
    assert reason[1].endswith("bad.txt") and "line 2: expected 5 columns" in reason[2]
    with pytest.raises(DatasetError, match=r"bad\.txt: bad label file: line 2: expected 5 columns .* got 4"):
        build_dataset(cfg, "train", 64, train=False, strict=True)
    cfg = _yolo(tmp_path / "txt", "0 0.5 zero 0.2 0.2\n")
    with pytest.raises(DatasetError, match="line 1: non-numeric"):
        build_dataset(cfg, "train", 64, train=False, strict=True)


def test_empty_label_file(tmp_path):
    cfg = _yolo(tmp_path, "\n  \n")
    ds = build_dataset(cfg, "train", 64, train=False)
    assert len(ds) == 2 and ds.report.counts["empty_label_file"] == 1  # kept as background, logged
    a = ds.load_annotations(_by_stem(ds)["bad"])
    assert a["boxes"].shape == (0, 4)
    cfg.skip_empty = True
    ds = build_dataset(cfg, "train", 64, train=False)
    assert len(ds) == 1 and ds.report.num_skipped == 1
    with pytest.raises(DatasetError, match=r"bad\.txt: empty label file"):
        build_dataset(cfg, "train", 64, train=False, strict=True)


def test_xml_without_objects_and_malformed_xml(tmp_path):
    y = make_voc(
        tmp_path,
        {
            "a": {"objects": [("cat", [1, 1, 9, 9])]},
            "empty": {"xml": voc_xml("empty.jpg", 64, 48, [])},
            "broken": {"xml": "<annotation><object><name>cat</name>"},
            "nobox": {"xml": "<annotation><object><name>cat</name></object></annotation>"},
            "noxml": {"xml": "MISSING"},
        },
    )
    cfg = load_data_config(y)
    ds = build_dataset(cfg, "train", 32, train=False)
    c = ds.report.counts
    assert len(ds) == 2 and c["no_objects"] == 1 and c["bad_annotation"] == 2 and c["missing_annotation"] == 1
    i = _by_stem(ds)["empty"]
    assert ds.load_annotations(i)["boxes"].shape == (0, 4)
    bad = dict((p.rsplit("/", 1)[-1], d) for r, p, d in ds.report.events if r == "bad_annotation")
    assert "malformed XML" in bad["broken.xml"] and "no <bndbox>" in bad["nobox.xml"]
    with pytest.raises(DatasetError, match=r"(empty|broken|nobox|noxml)\.xml"):
        build_dataset(cfg, "train", 32, train=False, strict=True)
    # strict on a set whose only problem is the object-less XML
    y2 = make_voc(tmp_path / "b", {"empty": {"xml": voc_xml("empty.jpg", 64, 48, [])}})
    with pytest.raises(DatasetError, match=r"empty\.xml: no objects"):
        build_dataset(load_data_config(y2), "train", 32, train=False, strict=True)


def test_coco_unknown_image_id(tmp_path):
    y = make_coco(
        tmp_path,
        images=[
            {"id": 1, "file_name": "a.jpg", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.jpg", "height": 40, "width": 60, "_no_file": True},
        ],
        annotations=[
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]},
            {"id": 11, "image_id": 42, "category_id": 3, "bbox": [1, 2, 10, 20]},
            {"id": 12, "image_id": 1, "category_id": 7, "bbox": [1, 2]},
        ],
    )
    ds = build_dataset(load_data_config(y), "train", 32, train=False)
    c = ds.report.counts
    # image 1 has a 2-number bbox -> bad_annotation (skipped); image 2's file is missing
    assert c["unknown_image_id"] == 1 and c["bad_annotation"] == 1 and c["missing_image"] == 1 and len(ds) == 0
    with pytest.raises(DatasetError, match=r"train\.json: annotation id 11 refers to unknown image id 42"):
        build_dataset(load_data_config(y), "train", 32, train=False, strict=True)


# ---------------------------------------------------------------- decode failures in __getitem__
def _truncated_voc(tmp_path, n=5):
    imgs = {f"im{k}": {"size": (40, 50), "objects": [("cat", [2, 2, 20, 20])]} for k in range(n)}
    y = make_voc(tmp_path, imgs)
    corrupt_jpeg(tmp_path / "JPEGImages" / "im2.jpg")  # header fine, pixel data cut
    return load_data_config(y)


def test_truncated_jpeg_getitem_default_and_strict(tmp_path):
    cfg = _truncated_voc(tmp_path)
    ev = build_dataset(cfg, "train", 32, train=False)
    assert len(ev) == 5  # passes the header check
    img, t = ev[2]  # evaluation: gray stand-in, original meta, no boxes
    assert t["meta"].path.endswith("im2.jpg") and "im2.jpg" in t["meta"].error
    assert t["boxes"].shape == (0, 4) and torch.allclose(img, torch.tensor(114 / 255))
    tr = build_dataset(cfg, "train", 32, train=True)
    img, t = tr[2]  # training: replaced by the next image
    assert t["meta"].path.endswith("im3.jpg") and "im2.jpg" in t["meta"].error and len(t["boxes"]) <= 1
    st = build_dataset(cfg, "train", 32, train=False, strict=True)
    with pytest.raises(DatasetError, match=r"cannot decode image .*im2\.jpg"):
        st[2]


def test_getitem_errors_are_wrapped_with_path(tmp_path, monkeypatch):
    cfg = _truncated_voc(tmp_path, n=3)
    ds = build_dataset(cfg, "train", 32, train=False)

    def boom(*a, **k):
        raise ZeroDivisionError("kaput")

    monkeypatch.setattr(ds, "transform", boom)
    with pytest.raises(DatasetError, match=r"im0\.jpg \(index 0\): ZeroDivisionError: kaput"):
        ds[0]


def test_loader_with_workers_survives_corrupt_file(tmp_path):
    cfg = _truncated_voc(tmp_path, n=6)
    ds = build_dataset(cfg, "train", 32, train=True)
    loader = build_loader(ds, batch_size=2, shuffle=False, workers=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert sum(len(b) for b in batches) == 6
    errors = [m.error for b in batches for m in b.meta if m.error]
    assert len(errors) == 1 and "im2.jpg" in errors[0]
    assert loader.num_replaced == 1
    strict = build_dataset(cfg, "train", 32, train=True, strict=True)
    with pytest.raises(Exception, match=r"im2\.jpg"):
        list(build_loader(strict, batch_size=2, shuffle=False, workers=2))


def test_empty_images_are_valid_in_batches(tmp_path):
    y = make_voc(
        tmp_path,
        {
            "a": {"objects": [("cat", [1, 1, 9, 9]), ("dog", [3, 3, 30, 30])]},
            "e": {"xml": voc_xml("e.jpg", 64, 48, [])},
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for valid data besides the logged empty XML
        ds = build_dataset(load_data_config(y), "train", 32, train=False)
        b = collate([ds[0], ds[1]])
    assert b.gt.boxes.shape == (2, 2, 4) and b.gt.mask.tolist() == [[True, True], [False, False]]
    assert b.gt.ignore.shape == (2, 0, 4)
