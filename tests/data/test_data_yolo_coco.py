"""YOLO (coco128) and COCO JSON (tiny_coco) readers on the shared data, plus small fixtures."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from data_testutils import make_coco, make_yolo

from assignlab.data import build_dataset, load_data_config
from assignlab.data.yolo import image_to_label_path
from conftest import require_shared


@pytest.fixture(scope="module")
def coco128_cfg():
    return load_data_config(require_shared("data", "coco128", "coco128.yaml"))


def test_coco128_yaml_without_format_is_yolo(coco128_cfg):
    cfg = coco128_cfg
    assert cfg.format == "yolo"
    assert cfg.path == str(require_shared("data", "coco128").resolve())
    assert len(cfg.names) == 80 and cfg.names[0] == "person" and cfg.names[79] == "toothbrush"
    assert cfg.test is None
    # the folder holding a single YAML loads that YAML
    assert load_data_config(require_shared("data", "coco128")).names == cfg.names


@pytest.mark.parametrize("split,n_box,n_classes,n_bg", [("train", 929, 71, 2), ("val", 898, 73, 0)])
def test_coco128_counts(coco128_cfg, split, n_box, n_classes, n_bg):
    ds = build_dataset(coco128_cfg, split, 320, train=False, strict=True)  # clean data: strict passes
    anns = [ds.load_annotations(i) for i in range(len(ds))]
    assert len(ds) == 128
    assert sum(len(a["boxes"]) for a in anns) == n_box
    assert len({int(x) for a in anns for x in a["labels"]}) == n_classes
    empty = [a["path"].rsplit("/", 1)[-1] for a in anns if len(a["boxes"]) == 0]
    assert len(empty) == n_bg
    if split == "train":
        assert sorted(empty) == ["000000000250.jpg", "000000000508.jpg"]
        assert ds.report.counts["no_label_file"] == 2
    assert ds.report.num_skipped == 0 and ds.report.counts["degenerate_box"] == 0


def test_coco128_box_denormalisation(coco128_cfg):
    ds = build_dataset(coco128_cfg, "train", 320, train=False)
    i = next(k for k in range(len(ds)) if ds.load_annotations(k)["path"].endswith("000000000009.jpg"))
    a = ds.load_annotations(i)
    h, w = a["orig_size"]
    assert (h, w) == (480, 640)
    # first label line: "45 0.479492 0.688771 0.955609 0.5955"
    cx, cy, bw, bh = 0.479492 * w, 0.688771 * h, 0.955609 * w, 0.5955 * h
    exp = torch.tensor([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    exp = exp.clamp(min=0)
    exp[2] = exp[2].clamp(max=w)
    torch.testing.assert_close(a["boxes"][0], exp, atol=1e-3, rtol=0)
    assert a["labels"][0] == 45
    # the grayscale image (mode L) decodes to 3 equal channels
    from PIL import Image

    gray = [k for k in range(len(ds)) if Image.open(ds.load_annotations(k)["path"]).mode == "L"]
    assert len(gray) == 1
    img, _ = ds[gray[0]]
    assert img.shape == (3, 320, 320) and torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_label_path_rule():
    assert image_to_label_path("/d/images/train2017/a.b.jpg") == "/d/labels/train2017/a.b.txt"
    assert image_to_label_path("/images/x/images/y/1.png") == "/images/x/labels/y/1.txt"


def test_yolo_polygon_and_dict_names(tmp_path):
    y = make_yolo(tmp_path, {"p": {"size": (100, 200), "label": "1 0.1 0.2 0.5 0.2 0.3 0.6\n0 0.5 0.5 0.2 0.4\n"}})
    y.write_text("path: .\ntrain: images/train\nnames: {0: a, 1: b}\nnc: 2\n")
    ds = build_dataset(load_data_config(y), "train", 64, train=False)
    a = ds.load_annotations(0)
    torch.testing.assert_close(a["boxes"], torch.tensor([[20.0, 20.0, 100.0, 60.0], [80.0, 30.0, 120.0, 70.0]]))
    assert a["labels"].tolist() == [1, 0] and ds.names == ["a", "b"]


@pytest.fixture(scope="module")
def tiny_coco_cfg():
    root = require_shared("data", "tiny_coco")
    return load_data_config(root)  # folder layout recognised: annotations/*.json


@pytest.mark.parametrize("split,n_img,n_ann,n_crowd,n_bg", [("train", 50, 470, 5, 1), ("val", 50, 382, 5, 2)])
def test_tiny_coco_counts_and_crowd(tiny_coco_cfg, split, n_img, n_ann, n_crowd, n_bg):
    assert tiny_coco_cfg.format == "coco"
    ds = build_dataset(tiny_coco_cfg, split, 320, train=False, strict=True)
    anns = [ds.load_annotations(i) for i in range(len(ds))]
    assert len(ds) == n_img and len(ds.names) == 80 and ds.names[0] == "person"
    assert sum(len(a["boxes"]) for a in anns) == n_ann - n_crowd
    assert sum(len(a["ignore"]) for a in anns) == n_crowd  # iscrowd -> ignore regions
    assert sum(1 for a in anns if len(a["boxes"]) + len(a["ignore"]) == 0) == n_bg
    # contiguous labels; category_ids maps back to the original (non-contiguous) ids
    assert ds.category_ids[:3] == [1, 2, 3] and ds.category_ids[-1] == 90 and len(ds.category_ids) == 80
    gt = ds.coco_gt()
    crowd = [x for x in gt["annotations"] if x["iscrowd"]]
    assert len(crowd) == n_crowd and all(x["ignore"] == 1 for x in crowd)
    assert {im["id"] for im in gt["images"]} == {a["image_id"] for a in anns}
    # areas are the original COCO (segmentation) areas for normal boxes
    assert all(x["area"] > 0 for x in gt["annotations"])
    # crowd regions come through a batch as ignore regions
    k = next(i for i, a in enumerate(anns) if len(a["ignore"]))
    img, t = ds[k]
    assert t["ignore"].shape[0] >= 1


def test_tiny_coco_matches_json(tiny_coco_cfg):
    import json

    root = require_shared("data", "tiny_coco")
    d = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    ds = build_dataset(tiny_coco_cfg, "val", 320, train=False)
    i = next(k for k in range(len(ds)) if ds.load_annotations(k)["image_id"] == 397133)
    a = ds.load_annotations(i)
    first = next(x for x in d["annotations"] if x["image_id"] == 397133 and not x["iscrowd"])
    x, y, w, h = first["bbox"]
    assert [x, y, x + w, y + h] == pytest.approx(a["boxes"][0].tolist(), abs=1e-3)
    assert ds.category_ids[int(a["labels"][0])] == first["category_id"]
    cnt = Counter(x["image_id"] for x in d["annotations"] if not x["iscrowd"])
    assert len(a["boxes"]) == cnt[397133]


def test_coco_fixture_mapping_and_coco_gt_ids(tmp_path):
    y = make_coco(
        tmp_path,
        images=[{"id": 11, "file_name": "a.jpg", "height": 40, "width": 60}],
        annotations=[
            {"id": 1, "image_id": 11, "category_id": 7, "bbox": [1, 2, 10, 20], "area": 150.0, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [30, 5, 10, 10], "area": 100, "iscrowd": 1},
        ],
    )
    ds = build_dataset(load_data_config(y), "train", 64, train=False)
    assert ds.names == ["car", "train"] and ds.category_ids == [3, 7]
    a = ds.load_annotations(0)
    assert a["image_id"] == 11 and a["labels"].tolist() == [1] and a["ignore_labels"].tolist() == [0]
    gt = ds.coco_gt()
    assert gt["annotations"][0]["category_id"] == 2 and gt["annotations"][0]["area"] == 150.0
    assert gt["annotations"][1]["iscrowd"] == 1 and gt["annotations"][1]["category_id"] == 1
