"""The YOLOv5 conformance handlers on the shared fixtures: every ``yolov5_build_targets`` and
``yolov5_autoanchor_metric`` case must PASS (no FAIL, no SKIP)."""

from __future__ import annotations

import json

import pytest

from assignlab.conformance.runner import load_handlers, run_case
from assignlab.conformance.yolov5 import HANDLERS
from conftest import require_shared

KINDS = ("yolov5_build_targets", "yolov5_autoanchor_metric")


def _cases():
    folder = require_shared("conformance", "yolo")
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder, [c for c in manifest["cases"] if c["kind"] in KINDS]


def test_handlers_registered():
    assert set(HANDLERS) == set(KINDS)
    handlers = load_handlers()
    for k in KINDS:
        assert handlers[k] is HANDLERS[k]


def test_all_yolov5_cases_pass():
    folder, cases = _cases()
    names = {c["file"].removesuffix(".npz") for c in cases}
    # the edge, empty and rectangular cases are among them
    assert {"y5_bt_edge_640", "y5_bt_edge_320", "y5_bt_empty_640", "y5_bt_rect_384x640",
            "y5_autoanchor_mixed", "y5_autoanchor_small", "y5_autoanchor_elongated"} <= names
    handlers = load_handlers()
    results = [run_case(c, folder, handlers) for c in cases]
    bad = [r.line() for r in results if r.status != "PASS"]
    assert not bad, "\n".join(bad)
    assert len(results) == 11


@pytest.mark.parametrize("mutation", ["anchor_t", "float32_boxes"])
def test_handler_detects_differences(mutation, monkeypatch):
    """The comparison is sharp: a strictness change or float32 boxes break the edge cases / gxy."""
    from assignlab.conformance import yolov5 as mod
    from assignlab.core import GroundTruth

    folder, cases = _cases()
    if mutation == "anchor_t":
        orig = mod.YOLOv5Assigner

        def loose(anchor_t=4.0, **kw):
            return orig(anchor_t=anchor_t * (1 + 1e-6), **kw)

        monkeypatch.setattr(mod, "YOLOv5Assigner", loose)
        case = next(c for c in cases if c["file"] == "y5_bt_edge_640.npz")
    else:
        orig_gt = mod.gt_from_yolov5_targets

        def f32(*a):
            g = orig_gt(*a)
            return GroundTruth(g.boxes.float(), g.labels, g.mask)

        monkeypatch.setattr(mod, "gt_from_yolov5_targets", f32)
        case = next(c for c in cases if c["file"] == "y5_bt_320_b.npz")
    r = run_case(case, folder, {k: mod.HANDLERS[k] for k in KINDS})
    assert r.status == "FAIL"
