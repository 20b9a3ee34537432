"""mmdetection's static assigners through the runner: every ``MaxIoUAssigner`` / ``ATSSAssigner``
case (random ``maxiou_*`` / ``atss_*`` and the ``edge_*`` unit-test cases) must PASS, none SKIP.
Each case is checked on the stored priors (dense path) and, when reproducible, on make_priors
grid priors (factorised path)."""

from __future__ import annotations

import json

import numpy as np
import torch

from assignlab.conformance import mmdet_static
from assignlab.conformance.runner import load_handlers, run_case
from conftest import require_shared

KINDS = ("MaxIoUAssigner", "ATSSAssigner")


def _cases():
    path = require_shared("conformance", "mmdet")
    manifest = json.loads((path / "manifest.json").read_text())
    return path, [c for c in manifest["cases"] if c["kind"] in KINDS]


def test_static_assigner_cases_pass():
    path, cases = _cases()
    results = [run_case(c, path, mmdet_static.HANDLERS) for c in cases]
    bad = [r.line() for r in results if r.status != "PASS"]
    assert not bad, "\n".join(bad)
    names = {c["file"] for c in cases}
    # the families named in the task: random, ignore, edge and the #8289 buggy-reference cases
    for prefix in ("maxiou_retinanet", "maxiou_rpn", "maxiou_ignore", "atss_320", "atss_640", "atss_ignore",
                   "edge_maxiou", "edge_atss", "edge_maxiou_bug8289"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert sum(bool(c.get("reference_is_buggy")) for c in cases) == 2
    assert len(cases) == 41


def test_random_cases_also_run_on_grid_priors():
    path, cases = _cases()
    n_grid = 0
    for c in cases:
        if c["group"] != "assigner":
            continue
        with np.load(path / c["file"]) as z:
            arrays = {k: z[k] for k in z.files}
        grid = mmdet_static.grid_priors_from_case(arrays, exact_points=c["kind"] == "ATSSAssigner")
        assert grid is not None, c["file"]
        assert torch.equal(grid.anchors, torch.from_numpy(arrays["priors"]))
        n_grid += 1
    assert n_grid == 30


def test_buggy_reference_really_differs():
    """The #8289 cases: mmdet's own output differs from ours (we compare with intended_*)."""
    path, cases = _cases()
    for c in cases:
        if not c.get("reference_is_buggy"):
            continue
        with np.load(path / c["file"]) as z:
            arrays = {k: z[k] for k in z.files}
        assert not np.array_equal(arrays["gt_inds"], arrays["intended_gt_inds"])
        assert run_case(c, path, mmdet_static.HANDLERS).status == "PASS"


def test_runner_dispatches_to_these_handlers():
    handlers = load_handlers()
    for kind in KINDS:
        assert handlers.get(kind) is mmdet_static.HANDLERS[kind], kind
