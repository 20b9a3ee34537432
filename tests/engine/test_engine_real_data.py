"""The same pipeline trains on the other shared layouts without code changes: one short epoch each on
coco128 (YOLO txt, 80 classes, two background images) and tiny COCO (COCO JSON with crowd regions)."""

import importlib
import math

import pytest

from assignlab.engine.config import load_train_config
from conftest import REPO, require_shared

train_mod = importlib.import_module("assignlab.engine.train")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["coco128", "tiny_coco"])
def test_one_short_epoch_on_real_layouts(which, tmp_path):
    if which == "coco128":
        data = require_shared("data", "coco128", "coco128.yaml")
    else:
        require_shared("data", "tiny_coco")
        data = REPO / "configs" / "data" / "tiny_coco.yaml"
    cfg = load_train_config(None, {
        "data": str(data), "assigner": "atss", "loss": "focal", "head": "free", "width": 0.25, "img": 64,
        "epochs": 1, "batch": 16, "out": str(tmp_path / which), "warmup_epochs": 0.0,
    })
    res = train_mod.train(cfg, progress=False)
    assert len(res["names"]) == 80
    row = res["history"][-1]
    assert math.isfinite(row["train/loss"]) and row["train/loss"] > 0
    assert 0.0 <= res["metrics"]["AP50"] <= 1.0
    assert (tmp_path / which / "last.pt").exists()
