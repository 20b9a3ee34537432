"""COCO AP via pycocotools on tiny hand-made sets, and the letterbox -> original mapping."""

from __future__ import annotations

import json
import math

import pytest
import torch

from assignlab.engine.evaluate import coco_eval, format_metrics, to_original_coords

# one image 200x200, two 50x50 GT boxes (area 2500: "medium")
GT = {
    "images": [{"id": 7, "width": 200, "height": 200, "file_name": "a.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 50]},
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [100, 100, 50, 50]},
    ],
    "categories": [{"id": 3, "name": "face"}],
}


def det(box, score, cat=3, img=7):
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}


def test_perfect_predictions_ap_1():
    m = coco_eval(GT, [det([10, 10, 50, 50], 0.9), det([100, 100, 50, 50], 0.8)])
    for k in ("AP", "AP50", "AP75", "AP_medium", "AR100"):
        assert m[k] == pytest.approx(1.0), k
    assert math.isnan(m["AP_small"]) and math.isnan(m["AP_large"])  # no GT of those sizes


def test_half_recall():
    # one of two GTs found: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points
    m = coco_eval(GT, [det([10, 10, 50, 50], 0.9)])
    assert m["AP"] == pytest.approx(51 / 101) and m["AP50"] == pytest.approx(51 / 101)


def test_false_positive_ranked_first():
    # FP (score .9) then TP (.8): precision 0.5 at recall 0.5 -> AP = 0.5 * 51/101
    m = coco_eval(GT, [det([150, 0, 40, 40], 0.9), det([10, 10, 50, 50], 0.8)])
    assert m["AP50"] == pytest.approx(0.5 * 51 / 101)


def test_iou_thresholds():
    # single large GT, prediction with IoU 0.72: TP at IoU .50 .55 .60 .65 .70 -> AP = 5/10
    gt = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    m = coco_eval(gt, [det([0, 0, 100, 72], 0.5, cat=1, img=1)])
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(0.5)
    assert m["AP_large"] == pytest.approx(0.5)


def test_no_detections():
    m = coco_eval(GT, [])
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AP_medium"] == 0.0
    assert math.isnan(m["AP_small"])
    assert "AP50" in format_metrics(m)


def test_to_original_coords():
    # 640x480 (w x h) letterboxed into 320: scale 0.5, pad (0, 40)
    b = torch.tensor([[10.0, 50.0, 30.0, 90.0], [-5.0, 30.0, 400.0, 300.0]])
    o = to_original_coords(b, 0.5, (0, 40), (480, 640))
    assert o.tolist() == [[20.0, 20.0, 60.0, 100.0], [0.0, 0.0, 640.0, 480.0]]


def test_results_json_is_coco(tmp_path):
    p = tmp_path / "r.json"
    dets = [det([10, 10, 50, 50], 0.9)]
    p.write_text(json.dumps(dets))
    assert coco_eval(GT, json.loads(p.read_text()))["AP50"] == pytest.approx(51 / 101)
