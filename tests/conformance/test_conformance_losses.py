"""The loss conformance cases (mmdetection and YOLO fixtures) all PASS through the runner, none SKIP."""

from __future__ import annotations

import json

import pytest

from assignlab.conformance import mmdet_losses, yolo_losses
from assignlab.conformance.runner import load_handlers, run_case
from conftest import require_shared

OWNED = {"mmdet": mmdet_losses.HANDLERS, "yolo": yolo_losses.HANDLERS}


def _cases(folder: str):
    path = require_shared("conformance", folder)
    manifest = json.loads((path / "manifest.json").read_text())
    return path, [c for c in manifest["cases"] if c["kind"] in OWNED[folder]]


@pytest.mark.parametrize("folder", sorted(OWNED))
def test_loss_cases_pass(folder):
    path, cases = _cases(folder)
    assert cases, f"no loss cases found in {path}"
    results = [run_case(c, path, OWNED[folder]) for c in cases]
    bad = [r.line() for r in results if r.status != "PASS"]
    assert not bad, "\n".join(bad)
    kinds = {c["kind"] for c in cases}
    assert kinds == set(OWNED[folder]), f"kinds without a case: {set(OWNED[folder]) - kinds}"


def test_mmdet_loss_case_count():
    _, cases = _cases("mmdet")
    assert len(cases) == 14  # 7 loss kinds, incl. the zero-area and identical-box edge cases
    assert any(c.get("reference_is_buggy") for c in cases)


def test_runner_dispatches_loss_kinds_to_these_handlers():
    handlers = load_handlers()
    for owned in OWNED.values():
        for kind, fn in owned.items():
            assert handlers.get(kind) is fn, kind
