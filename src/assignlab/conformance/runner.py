"""Run every case of a fixture folder (``manifest.json`` + ``.npz`` files) and report.

A *handler* turns one case into a list of mismatch messages. Handlers live in the modules named in
``HANDLER_MODULES``; each exports ``HANDLERS = {kind: function(case, arrays) -> list[str]}``. A
case whose kind has no handler, or whose handler raises :class:`NotImplementedYet`, is reported
``SKIP`` with the reason; nothing else may skip.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compare import NotImplementedYet

HANDLER_MODULES = (
    "assignlab.conformance.mmdet_static",
    "assignlab.conformance.mmdet_dynamic",
    "assignlab.conformance.mmdet_losses",
    "assignlab.conformance.yolov5",
    "assignlab.conformance.ultralytics",
    "assignlab.conformance.yolox",
    "assignlab.conformance.yolo_losses",
)


@dataclass
class CaseResult:
    name: str
    status: str  # PASS / FAIL / SKIP
    message: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status} {self.name}" + (f": {self.message}" if self.message else "")


def load_handlers() -> dict:
    handlers: dict = {}
    for mod in HANDLER_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # the module itself does not exist yet
                continue
            raise
        handlers.update(getattr(m, "HANDLERS", {}))
    return handlers


def run_case(case: dict, folder: Path, handlers: dict) -> CaseResult:
    name = case["file"].removesuffix(".npz")
    kind = case["kind"]
    fn = handlers.get(kind)
    if fn is None:
        return CaseResult(name, "SKIP", f"{kind} is not implemented yet")
    t0 = time.perf_counter()
    try:
        with np.load(folder / case["file"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        problems = fn(case, arrays)
    except NotImplementedYet as e:
        return CaseResult(name, "SKIP", f"not implemented yet: {e}")
    except Exception as e:  # a crash is a failure, with its cause
        tb = traceback.format_exc(limit=-2).strip().splitlines()
        return CaseResult(name, "FAIL", f"{type(e).__name__}: {e} [{tb[-3] if len(tb) > 2 else ''}]",
                          time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    if problems:
        return CaseResult(name, "FAIL", "; ".join(problems), dt)
    return CaseResult(name, "PASS", "", dt)


def run_folder(folder: str | Path, only: str | None = None) -> list[CaseResult]:
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    handlers = load_handlers()
    out = []
    for case in manifest["cases"]:
        if only and only not in case["file"]:
            continue
        out.append(run_case(case, folder, handlers))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m assignlab.conformance", description=__doc__)
    ap.add_argument("folders", nargs="+", help="fixture folders, each with a manifest.json")
    ap.add_argument("-k", dest="only", default=None, help="only cases whose file name contains this")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only FAIL lines and the summary")
    args = ap.parse_args(argv)
    results: list[CaseResult] = []
    for f in args.folders:
        for r in run_folder(f, args.only):
            results.append(r)
            if not args.quiet or r.status == "FAIL":
                print(r.line(), flush=True)
    n = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
    return 1 if n["FAIL"] else 0
