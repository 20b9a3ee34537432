"""The prediction-aware assigners through the runner: every ``SimOTAAssigner`` /
``TaskAlignedAssigner`` / ``DynamicSoftLabelAssigner`` case of the mmdetection fixtures and every
``ultralytics_tal`` / ``yolox_simota`` case of the YOLO fixtures must PASS, none SKIP.

Each case is also replayed on :func:`make_priors` grid priors when those equal the stored priors
exactly, so the per-axis (grid) geometry path is held to the same reference as the dense one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from assignlab.conformance import mmdet_dynamic, ultralytics, yolox
from assignlab.conformance.runner import load_handlers, run_case
from assignlab.core import make_priors
from conftest import require_shared

OWNED = {"mmdet": mmdet_dynamic.HANDLERS, "yolo": {**ultralytics.HANDLERS, **yolox.HANDLERS}}


def _cases(folder: str):
    path = require_shared("conformance", folder)
    manifest = json.loads((path / "manifest.json").read_text())
    return path, [c for c in manifest["cases"] if c["kind"] in OWNED[folder]]


def _load(path, case):
    with np.load(path / case["file"], allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("folder", sorted(OWNED))
def test_dynamic_cases_pass(folder):
    path, cases = _cases(folder)
    assert cases, f"no cases of {sorted(OWNED[folder])} in {path}"
    results = [run_case(c, path, OWNED[folder]) for c in cases]
    bad = [r.line() for r in results if r.status != "PASS"]
    assert not bad, "\n".join(bad)
    assert {c["kind"] for c in cases} == set(OWNED[folder])


def test_case_counts():
    _, mm = _cases("mmdet")
    by_kind = {k: sum(c["kind"] == k for c in mm) for k in mmdet_dynamic.HANDLERS}
    assert by_kind == {"SimOTAAssigner": 10, "TaskAlignedAssigner": 9, "DynamicSoftLabelAssigner": 10}
    _, yo = _cases("yolo")
    assert sorted(c["file"] for c in yo) == sorted(
        ["tal_320.npz", "tal_640.npz", "tal_edge_320.npz", "tal_empty_320.npz",
         "yolox_simota_320.npz", "yolox_simota_640.npz"]
    )


def test_runner_dispatches_to_these_handlers():
    handlers = load_handlers()
    for owned in OWNED.values():
        for kind, fn in owned.items():
            assert handlers.get(kind) is fn, kind


def _grid_like(points: np.ndarray, image_hw, strides, offset: float):
    """make_priors grid priors, if their points equal ``points`` exactly (else None)."""
    pri = make_priors(tuple(int(v) for v in image_hw), strides=tuple(int(s) for s in strides), offset=offset)
    if pri.points.shape != points.shape or not torch.equal(pri.points, torch.from_numpy(points).float()):
        return None
    return pri


def test_mmdet_cases_on_grid_priors():
    path, cases = _cases("mmdet")
    replayed = 0
    for case in cases:
        if case["file"].startswith("edge_") or case["kind"] == "TaskAlignedAssigner":
            continue  # hand-made priors / TAL only reads anchor centres at its top-k
        arrays = _load(path, case)
        pri = _grid_like(arrays["priors"][:, :2], arrays["img_shape"], arrays["strides"], 0.5)
        assert pri is not None, case["file"]
        fn = OWNED["mmdet"][case["kind"]]
        assert fn(case, arrays, priors=pri) == [], case["file"]
        replayed += 1
    assert replayed == 14


def test_yolo_cases_on_grid_priors():
    path, cases = _cases("yolo")
    replayed = 0
    for case in cases:
        arrays = _load(path, case)
        hw = case["params"]["image_hw"]
        strides = case["params"].get("strides", [8, 16, 32])
        if case["kind"] == "ultralytics_tal":
            points = arrays["anc_points"]
        else:
            st = arrays["expanded_strides"]
            points = np.stack([(arrays["x_shifts"] + 0.5) * st, (arrays["y_shifts"] + 0.5) * st], 1).astype(np.float32)
        pri = _grid_like(points, hw, strides, 0.5)
        assert pri is not None, case["file"]
        assert OWNED["yolo"][case["kind"]](case, arrays, priors=pri) == [], case["file"]
        replayed += 1
    assert replayed == 6
