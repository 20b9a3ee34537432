"""evaluate(): the full prediction path (loader, postprocess, letterbox -> original mapping, COCO)
with an oracle model that returns each image's ground truth."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from assignlab.data import build_dataset, data_config_from_dict
from assignlab.engine.evaluate import evaluate


class Oracle(nn.Module):
    """Returns the letterboxed GT of each image (looked up by the image's pixels)."""

    def __init__(self, dataset, shift: float = 0.0) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.table = {}
        for i in range(len(dataset)):
            img, t = dataset[i]
            self.table[self._key(img)] = (t["boxes"].clone(), t["labels"].clone())
        self.shift = shift

    @staticmethod
    def _key(img: torch.Tensor) -> int:
        return hash(img.numpy().tobytes())

    def forward(self, images):
        return [self.table[self._key(im)] for im in images]

    def priors(self, size):
        return size

    def postprocess(self, out, priors, conf=0.001, iou=0.6, max_det=300):
        res = []
        for boxes, labels in out:
            b = boxes + self.shift
            s = torch.linspace(0.9, 0.5, len(boxes)) if len(boxes) else torch.zeros(0)
            res.append({"boxes": b, "scores": s, "labels": labels})
        return res


@pytest.fixture(scope="module")
def val_set():
    # 96 x 64 (h x w) originals letterboxed into 64: scale 2/3, pad (10.67, 0)
    cfg = data_config_from_dict({"format": "synthetic", "synthetic": {
        "num_train": 1, "num_val": 4, "image_size": [96, 64], "max_objects": 6, "num_classes": 2}})
    return build_dataset(cfg, "val", 64, train=False)


def test_oracle_gets_ap_1(val_set, tmp_path):
    m0 = val_set[0][1]["meta"]
    assert m0.scale != 1.0 and max(m0.pad) > 0  # the mapping is exercised
    out = tmp_path / "pred.json"
    m = evaluate(Oracle(val_set), val_set, 64, batch=3, out_json=out)
    assert m["AP"] == pytest.approx(1.0, abs=1e-6)
    assert m["AP50"] == pytest.approx(1.0)
    dets = json.loads(out.read_text())
    gt = val_set.coco_gt()
    assert len(dets) == len(gt["annotations"]) == int(m["num_detections"])
    # predictions are in original coordinates: same boxes as the GT up to rounding
    by_img = {}
    for a in gt["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a["bbox"])
    for d in dets:
        assert any(max(abs(x - y) for x, y in zip(d["bbox"], g)) < 1e-2 for g in by_img[d["image_id"]])


def test_shifted_oracle_scores_lower(val_set):
    m = evaluate(Oracle(val_set, shift=3.0), val_set, 64, batch=4)
    assert m["AP"] < 0.9
