"""``assignlab compare``: train and evaluate several assigner / loss combinations, one report.

::

    assignlab compare                          # the built-in quick comparison (synthetic data)
    assignlab compare CONFIG.yaml [--out DIR] [--html] [--force] [--only NAME ...] [--check]

Every run of the comparison is an ordinary ``assignlab train`` run (:func:`assignlab.engine.train`)
with the same budget (the ``base`` settings), one per seed, in ``OUT/runs/<name>/seed<k>``. Then one
report is written to ``OUT``:

* ``report.md`` (or, with ``--html``, ``report.html``: one self-contained page, the figures
  base64-embedded) and the figures in ``OUT/figures/``;
* ``results.json``: every number of the report, and for every run and seed the exact
  ``assignlab train ...`` command that reproduces it.

Contents of the report
----------------------
* **Accuracy**: COCO ``AP``, ``AP50``, ``AP75``, ``AP_small/medium/large`` of the *last* epoch
  (the same-budget number; the engine's :func:`~assignlab.engine.evaluate.evaluate` on the val
  split, EMA weights), or for WIDER FACE data with the official ``.mat`` ground truth
  (``widerface_gt``) the WIDER ``easy`` / ``medium`` / ``hard`` AP of
  :mod:`assignlab.engine.widerface_eval` (plus COCO AP50).
* **Seeds**: with several seeds every number is ``mean ± spread`` where the spread is the sample
  standard deviation over the seeds (``n - 1`` in the denominator). A run is compared with the
  baseline (the first run, or ``baseline:``) on the primary metric (``metric:``; default ``AP50``,
  ``hard`` for WIDER): the difference of the means counts only when it is at least as large as the
  larger of the two spreads, otherwise the row says **no difference** (:func:`verdict`). Worked
  example: baseline AP50 over two seeds ``0.50, 0.54`` (mean 0.52, spread 0.0283), run A ``0.55,
  0.57`` (mean 0.56, spread 0.0141): delta +0.04 >= 0.0283 -> *better*; run B ``0.53, 0.55`` (mean
  0.54): delta +0.02 < 0.0283 -> *no difference*.
* **Speed**: training time (sum of the epochs' training loops, validation excluded) and training
  images per second.
* **Assignment statistics** (:mod:`assignlab.analysis.stats`, the numbers of ``assignlab inspect``):
  positives per GT by size bucket, share of GTs with no positive, cells claimed by more than one GT,
  positives per level, with each run's assigner on the model's own priors (the priors it was trained
  with), over the first ``stats_images`` images of the train split (evaluation letterbox, no
  augmentation). Prediction-aware assigners get the predictions of the trained checkpoint (first
  seed's ``last.pt``).
* **Loss curves**: training loss and val AP50 per epoch of every run (mean over seeds), one PNG.
* **Detections**: the first ``draw_images`` val images with each run's detections (first seed's
  ``best.pt``, score >= ``draw_conf``) and the GT boxes, one grid PNG.

Configuration file
------------------
::

    title: My comparison                  # optional
    data: ../data/facemask.yaml           # null = built-in synthetic data; a path (relative to THIS
                                          # file's folder); or an inline data config mapping
    out: runs/compare/facemask            # relative to the working directory; --out overrides
    seeds: [0, 1]
    metric: AP50                          # primary metric for the verdicts (optional)
    baseline: yolov5                      # reference run (default: the first)
    widerface_gt: null                    # folder with wider_{face,easy,medium,hard}_val.mat
    stats_images: 64                      # images for the assignment statistics
    draw_images: 3                        # val images in the detection grid (0 = none)
    draw_conf: 0.3                        # score threshold of the drawn detections
    threads: null                         # torch CPU threads for the comparison (null: torch's default)
    base: {img: 320, epochs: 30, batch: 16, merge_classes: true}   # any TrainConfig keys
    runs:
      - {name: yolov5, assigner: yolov5, loss: yolov5, head: anchor}
      - {name: atss, assigner: atss, assigner_opts: {topk: 9}, loss: focal, head: free, note: "..."}

Every key is validated before anything is trained: unknown keys are refused with the list of
allowed ones, and every (run, seed) :class:`~assignlab.engine.config.TrainConfig` is built and
checked (assigner / loss names and options included). A run may set any ``TrainConfig`` key except
``out``, ``seed``, ``resume`` and ``data`` (set by the comparison); its ``assigner_opts`` /
``loss_opts`` are merged into those of ``base``; ``note`` is free text shown in the report.
``threads`` sets ``torch.set_num_threads`` while the comparison runs (restored afterwards). With an
inline data mapping the comparison writes it to ``OUT/data.yaml`` (relative ``path:`` entries are
taken relative to the config file's folder) so that the reproduce commands can point to it.

Reuse and resumption
--------------------
A run folder whose ``last.pt`` has all epochs, with a ``results.csv`` and the same configuration, is
reused, not retrained; a folder with fewer epochs is resumed (exactly, see
:mod:`assignlab.engine.train`); so an interrupted comparison continues where it stopped and a long
one can be split over several sessions (also with ``--only NAME``). A folder holding a *different*
configuration is an error (``--force`` retrains every selected run from scratch).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import os
import re
import resource
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BUILTIN_CONFIG",
    "COMPARE_KEYS",
    "COCO_KEYS",
    "WIDER_KEYS",
    "CompareConfig",
    "CompareConfigError",
    "RunSpec",
    "add_compare_args",
    "cmd_compare",
    "compare",
    "load_compare_config",
    "mean_spread",
    "reproduce_command",
    "run_state",
    "verdict",
]

#: top-level keys of a comparison config
COMPARE_KEYS = (
    "title", "data", "out", "seeds", "metric", "baseline", "widerface_gt", "stats_images",
    "draw_images", "draw_conf", "threads", "base", "runs",
)
#: keys of a run besides the TrainConfig keys
RUN_EXTRA_KEYS = ("name", "note")
#: TrainConfig keys the comparison sets itself
RESERVED_KEYS = ("out", "seed", "resume", "data")
#: COCO metrics shown in the accuracy table
COCO_KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
#: WIDER FACE settings
WIDER_KEYS = ("easy", "medium", "hard")
#: the marker a finished comparison run leaves in its folder (timing of the session that trained it)
MARKER = "compare_run.json"

#: The built-in quick comparison (``assignlab compare`` with no argument); also shipped as
#: ``configs/compare/quick.yaml``. Three strategies x two seeds on small synthetic images:
#: measured 1 min 58 s wall for the whole ``assignlab compare`` (113 s CPU, one thread) on 2 CPU
#: cores shared with other jobs (load average ~3.7); a second call reuses the runs (13 s).
BUILTIN_CONFIG = """\
# Built-in quick comparison: `assignlab compare` with no argument runs exactly this.
# Three strategies, the same small budget, two seeds, on the built-in synthetic data (two classes:
# with one class the YOLOv5 loss never trains the class logit).
title: Quick comparison (synthetic data)
data:
  format: synthetic
  synthetic: {num_classes: 2, num_train: 96, num_val: 32, seed: 0, min_objects: 2, max_objects: 10,
              min_size: 8, max_size: 0.5}
out: runs/compare/quick
seeds: [0, 1]
metric: AP50
stats_images: 64
draw_images: 3
draw_conf: 0.2
threads: 1    # tiny models gain nothing from a 2nd thread and lose a lot when the cores are shared
base:
  img: 128
  epochs: 10
  batch: 8
  width: 0.25
  lr: 0.02
  warmup_epochs: 0.5
  eval_every: 2
runs:
  - name: yolov5
    note: YOLOv5 assigner and loss, anchor head (one anchor per level)
    assigner: yolov5
    loss: yolov5
    head: anchor
  - name: atss-focal
    note: ATSS on anchor-free points (8*stride squares), focal loss
    assigner: atss
    loss: focal
    head: free
  - name: tal-qfl
    note: task-aligned assigner, quality focal loss, DFL (reg_max 8)
    assigner: tal
    loss: qfl
    head: free
    reg_max: 8
"""


class CompareConfigError(ValueError):
    """A comparison config was refused (the message names the key and lists the allowed ones)."""


# ============================================================================================
# configuration
# ============================================================================================


@dataclass
class RunSpec:
    """One strategy of the comparison: its name, note and the TrainConfig keys it sets."""

    name: str
    settings: dict[str, Any]
    note: str = ""


@dataclass
class CompareConfig:
    """A validated comparison (see the module docstring)."""

    runs: list[RunSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    base: dict[str, Any] = field(default_factory=dict)
    data: str | None = None  # data YAML path for the TrainConfigs (None = synthetic)
    data_inline: dict[str, Any] | None = None  # written to OUT/data.yaml
    data_format: str = "synthetic"
    out: str = "runs/compare"
    title: str = "Assigner comparison"
    metric: str | None = None
    baseline: str | None = None
    widerface_gt: str | None = None
    stats_images: int = 64
    draw_images: int = 3
    draw_conf: float = 0.3
    threads: int | None = None
    source: str = "built-in"

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The accuracy columns: WIDER settings (+ COCO AP50) with ``widerface_gt``, else COCO."""
        return (*WIDER_KEYS, "AP50") if self.widerface_gt else COCO_KEYS

    @property
    def primary(self) -> str:
        return self.metric or ("hard" if self.widerface_gt else "AP50")

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.runs[0].name

    def run_dir(self, run: RunSpec | str, seed: int) -> Path:
        name = run.name if isinstance(run, RunSpec) else run
        return Path(self.out) / "runs" / name / f"seed{seed}"

    def explicit_keys(self, run: RunSpec) -> list[str]:
        """The TrainConfig keys set by ``base`` or the run (shown in its reproduce command)."""
        return sorted({*self.base, *run.settings})

    def train_config(self, run: RunSpec, seed: int):
        """The :class:`TrainConfig` of ``run`` with ``seed`` (validated)."""
        from ..engine.config import ConfigError, load_train_config

        d = dict(self.base)
        for k, v in run.settings.items():
            if k in ("assigner_opts", "loss_opts") and isinstance(v, Mapping) and isinstance(d.get(k), Mapping):
                d[k] = {**d[k], **v}
            else:
                d[k] = v
        d.update({"data": self.data, "seed": int(seed), "out": str(self.run_dir(run, seed)), "resume": False})
        try:
            return load_train_config(None, d)
        except ConfigError as e:
            raise CompareConfigError(f"{self.source}: run {run.name!r} (seed {seed}): {e}") from None


def _allowed_train_keys() -> list[str]:
    from ..engine.config import allowed_keys

    return [k for k in allowed_keys() if k not in RESERVED_KEYS]


def _unknown_key(where: str, key: str, allowed: Sequence[str]) -> CompareConfigError:
    import difflib

    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return CompareConfigError(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def _resolve_path(value: str, base_dir: Path) -> str:
    """A path of the config file (relative to its folder) as the path handed to the engine:
    relative to the working directory when below it, else absolute."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (base_dir / p).resolve()
    rel = os.path.relpath(p)
    return str(p) if rel.startswith("..") else rel


def load_compare_config(
    source: str | Path | Mapping[str, Any] | None = None, out: str | None = None
) -> CompareConfig:
    """Read and validate a comparison config (a YAML file, a mapping, or ``None`` = the built-in
    quick comparison). ``out`` overrides the config's ``out``. Every (run, seed) TrainConfig is
    built once here, so any bad key or value fails before training (:class:`CompareConfigError`)."""
    if source is None:
        raw, where, base_dir = yaml.safe_load(BUILTIN_CONFIG), "built-in quick comparison", Path.cwd()
    elif isinstance(source, Mapping):
        raw, where, base_dir = dict(source), "comparison config", Path.cwd()
    else:
        p = Path(source)
        try:
            raw = yaml.safe_load(p.read_text())
        except OSError as e:
            raise CompareConfigError(f"cannot read comparison config {p}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise CompareConfigError(f"comparison config {p} is not valid YAML: {e}") from None
        where, base_dir = str(p), p.resolve().parent
    if not isinstance(raw, Mapping):
        raise CompareConfigError(f"{where}: expected a mapping with keys {', '.join(COMPARE_KEYS)}")
    for k in raw:
        if k not in COMPARE_KEYS:
            raise _unknown_key(where, str(k), COMPARE_KEYS)
    if "runs" not in raw:
        raise CompareConfigError(f"{where}: 'runs' is required (a list of {{name, assigner, loss, ...}})")

    # seeds
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise CompareConfigError(f"{where}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise CompareConfigError(f"{where}: seeds has duplicates: {seeds}")

    allowed_train = _allowed_train_keys()
    # base
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise CompareConfigError(f"{where}: base must be a mapping of TrainConfig keys, got {base!r}")
    base = {str(k).replace("-", "_"): v for k, v in base.items()}
    for k in base:
        if k in RESERVED_KEYS:
            raise CompareConfigError(f"{where}: base.{k} is set by the comparison itself "
                                     f"(use the top-level 'data' / 'out' / 'seeds'); allowed keys: "
                                     f"{', '.join(allowed_train)}")
        if k not in allowed_train:
            raise _unknown_key(f"{where}: base", k, allowed_train)

    # runs
    runs_raw = raw["runs"]
    if not isinstance(runs_raw, list) or not runs_raw:
        raise CompareConfigError(f"{where}: runs must be a non-empty list of mappings")
    run_allowed = [*RUN_EXTRA_KEYS, *allowed_train]
    runs: list[RunSpec] = []
    for i, r in enumerate(runs_raw):
        if not isinstance(r, Mapping):
            raise CompareConfigError(f"{where}: runs[{i}] must be a mapping, got {r!r}")
        r = {str(k).replace("-", "_"): v for k, v in r.items()}
        name = r.get("name")
        label = f"{where}: runs[{i}]" + (f" ({name!r})" if name else "")
        for k in r:
            if k in RESERVED_KEYS:
                raise CompareConfigError(f"{label}: {k!r} is set by the comparison itself; allowed keys: "
                                         f"{', '.join(run_allowed)}")
            if k not in run_allowed:
                raise _unknown_key(label, k, run_allowed)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CompareConfigError(f"{label}: 'name' is required: letters, digits and _ . + = - "
                                     f"(it names the run folder), got {name!r}")
        if any(x.name == name for x in runs):
            raise CompareConfigError(f"{label}: duplicate run name {name!r}")
        note = r.get("note") or ""
        if not isinstance(note, str):
            raise CompareConfigError(f"{label}: note must be text, got {note!r}")
        runs.append(RunSpec(name=name, note=note, settings={k: v for k, v in r.items() if k not in RUN_EXTRA_KEYS}))

    # data
    data = raw.get("data")
    data_inline = None
    if isinstance(data, Mapping):
        data_inline = dict(data)
        pth = data_inline.get("path")
        if isinstance(pth, str) and not Path(pth).expanduser().is_absolute():
            data_inline["path"] = str((base_dir / pth).resolve())
    elif isinstance(data, str) and data.lower() in ("synthetic", "none", "null"):
        data = None
    elif isinstance(data, str):
        data = _resolve_path(data, base_dir)
    elif data is not None:
        raise CompareConfigError(f"{where}: data must be null (synthetic), a data YAML path or an inline data "
                                 f"config mapping, got {data!r}")
    out_dir = out or raw.get("out") or "runs/compare"
    if not isinstance(out_dir, str):
        raise CompareConfigError(f"{where}: out must be a folder path, got {out_dir!r}")
    if data_inline is not None:
        data = str(Path(out_dir) / "data.yaml")
    try:
        from ..data import load_data_config

        dcfg = load_data_config(data_inline if data_inline is not None else data)
    except (ValueError, OSError) as e:  # DataConfigError is a ValueError
        raise CompareConfigError(f"{where}: data: {e}") from None

    def _int(key: str, default: int, lo: int, hi: int | None = None) -> int:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise CompareConfigError(f"{where}: {key} must be an integer {rng}, got {v!r}")
        return v

    draw_conf = raw.get("draw_conf", 0.3)
    if isinstance(draw_conf, bool) or not isinstance(draw_conf, (int, float)) or not 0 < draw_conf <= 1:
        raise CompareConfigError(f"{where}: draw_conf must be a number in (0, 1], got {draw_conf!r}")
    title = raw.get("title") or "Assigner comparison"
    if not isinstance(title, str):
        raise CompareConfigError(f"{where}: title must be text, got {title!r}")

    wgt = raw.get("widerface_gt")
    if wgt is not None:
        if not isinstance(wgt, str):
            raise CompareConfigError(f"{where}: widerface_gt must be a folder path, got {wgt!r}")
        if dcfg.format != "widerface":
            raise CompareConfigError(f"{where}: widerface_gt is only used with WIDER FACE data "
                                     f"(format widerface); the data is {dcfg.format}")
        wgt = _resolve_path(wgt, base_dir)
        missing = [f for f in ("wider_face_val.mat", *(f"wider_{s}_val.mat" for s in WIDER_KEYS))
                   if not (Path(wgt) / f).is_file()]
        if missing:
            raise CompareConfigError(f"{where}: widerface_gt {wgt}: missing {', '.join(missing)}")

    cfg = CompareConfig(
        runs=runs, seeds=list(seeds), base=base, data=data, data_inline=data_inline, data_format=dcfg.format,
        out=out_dir, title=title, metric=raw.get("metric"), baseline=raw.get("baseline"), widerface_gt=wgt,
        stats_images=_int("stats_images", 64, 1), draw_images=_int("draw_images", 3, 0, 12),
        draw_conf=float(draw_conf), threads=None if raw.get("threads") is None else _int("threads", 1, 1),
        source=where,
    )
    valid_metrics = (*WIDER_KEYS, *COCO_KEYS) if wgt else COCO_KEYS
    if cfg.metric is not None and cfg.metric not in valid_metrics:
        raise CompareConfigError(f"{where}: metric must be one of {', '.join(valid_metrics)}, got {cfg.metric!r}")
    if cfg.baseline is not None and cfg.baseline not in [r.name for r in runs]:
        raise CompareConfigError(f"{where}: baseline {cfg.baseline!r} is not a run name; runs: "
                                 f"{', '.join(r.name for r in runs)}")
    from ..engine.config import ConfigError
    from ..engine.train import build_model

    for r in runs:  # build and validate every TrainConfig now, and each run's model once
        for s in seeds:
            tc = cfg.train_config(r, s)
        try:
            build_model(tc, 1)
        except ConfigError as e:
            raise CompareConfigError(f"{where}: run {r.name!r}: {e}") from None
    return cfg


# ============================================================================================
# reproduce commands
# ============================================================================================

#: TrainConfig key -> dedicated ``assignlab train`` option (the others go through ``--set``)
_DEDICATED = ("data", "assigner", "loss", "head", "reg_max", "width", "img", "epochs", "batch", "workers",
              "lr", "optimizer", "seed", "device", "out", "eval_every")
_ALWAYS = ("data", "assigner", "loss", "head", "seed", "out")


def _yaml_value(v: Any) -> str:
    """A value as ``assignlab train`` parses it back (``yaml.safe_load``): ``[1, 2]``, ``true``..."""
    if isinstance(v, str):
        from ..engine.config import _parse_value

        if _parse_value(v) == v:
            return v
    s = yaml.safe_dump(v, default_flow_style=True, width=10**9).strip()
    if s.endswith("\n..."):
        s = s[:-4].strip()
    elif s.endswith("..."):
        s = s[:-3].strip()
    return s


def reproduce_command(tc: Any, explicit: Sequence[str] = ()) -> str:
    """The ``assignlab train ...`` command line of a TrainConfig, shell-quoted: the options that
    differ from the defaults or are named in ``explicit`` (the keys the comparison config sets),
    and always data, assigner, loss, head, seed and out."""
    from ..engine.config import TrainConfig

    default = TrainConfig()
    explicit = set(explicit)
    args: list[str] = []
    for k in _DEDICATED:
        v = getattr(tc, k)
        if k == "data":
            if v is not None:
                args += ["--data", str(v)]
            continue
        if k in _ALWAYS or k in explicit or v != getattr(default, k):
            args += ["--" + k.replace("_", "-"), _yaml_value(v)]
    for k, v in sorted((tc.assigner_opts or {}).items()):
        args += ["--assigner-opt", f"{k}={_yaml_value(v)}"]
    for k, v in sorted((tc.loss_opts or {}).items()):
        args += ["--loss-opt", f"{k}={_yaml_value(v)}"]
    for k, v in sorted(tc.to_dict().items()):
        if k in _DEDICATED or k in ("assigner_opts", "loss_opts", "resume"):
            continue
        if k in explicit or v != getattr(default, k):
            args += ["--set", f"{k}={_yaml_value(v)}"]
    return "assignlab train " + shlex.join(args)


# ============================================================================================
# seeds: mean, spread, verdict
# ============================================================================================


def mean_spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """``(mean, spread)`` over seeds: the spread is the sample standard deviation (``n - 1``);
    ``None`` with fewer than two finite values (mean ``None`` with none). NaN / None are skipped."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def verdict(delta: float | None, spread_a: float | None, spread_b: float | None) -> str | None:
    """``"better"`` / ``"worse"`` when ``|delta| >= max(spread_a, spread_b)``, else ``"no
    difference"``; ``None`` when no spread is known (one seed) or no delta."""
    if delta is None:
        return None
    spreads = [s for s in (spread_a, spread_b) if s is not None]
    if not spreads:
        return None
    if abs(delta) < max(spreads):
        return "no difference"
    return "better" if delta > 0 else "worse"


# ============================================================================================
# run folders: reuse / resume
# ============================================================================================


def _cfg_diff(saved: Mapping[str, Any], tc: Any) -> list[str]:
    from ..engine.config import RESUME_MUTABLE, load_train_config

    try:
        ref = load_train_config(None, {k: v for k, v in saved.items() if k != "resume"}).to_dict()
    except Exception:  # noqa: BLE001 - a config from another version: everything differs
        return ["(unreadable saved config)"]
    now = tc.to_dict()
    return sorted(k for k in now if k not in RESUME_MUTABLE and k != "resume" and ref.get(k) != now[k])


def run_state(tc: Any) -> tuple[str, str]:
    """``(state, detail)`` of the run folder ``tc.out``: ``"new"`` (no checkpoint), ``"done"`` (all
    epochs, results.csv, same config: reuse), ``"partial"`` (same config, fewer epochs: resume) or
    ``"different"`` (the folder holds another configuration; ``detail`` names the keys)."""
    from ..engine.checkpoint import load_checkpoint

    out = Path(tc.out)
    last = out / "last.pt"
    if not last.is_file():
        return "new", ""
    try:
        ck = load_checkpoint(last)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint is retrained only on --force
        return "different", f"unreadable {last}: {e}"
    diff = _cfg_diff(ck.get("config") or {}, tc)
    if diff:
        return "different", ", ".join(diff)
    epoch = int(ck.get("epoch", 0))
    if epoch >= tc.epochs and (out / "results.csv").is_file():
        return "done", f"{epoch} epochs"
    return "partial", f"{epoch}/{tc.epochs} epochs"


def read_results_csv(path: str | Path) -> list[dict[str, float | None]]:
    """Rows of a run's ``results.csv`` as floats (empty cells -> ``None``)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, float | None] = {}
            for k, v in r.items():
                try:
                    row[k] = float(v) if v not in ("", None) else None
                except ValueError:
                    row[k] = None
            rows.append(row)
    return rows


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


# ============================================================================================
# evaluation helpers (WIDER), statistics, figures
# ============================================================================================


def _dataset(tc: Any, split: str, train: bool = False):
    from ..data import build_dataset, load_data_config

    return build_dataset(load_data_config(tc.data), split, tc.img, train=train, merge_classes=tc.merge_classes,
                         strict=tc.strict, seed=tc.seed)


def widerface_metrics(tc: Any, weights: Path, gt_dir: str, pred_dir: Path, device: str = "cpu") -> dict[str, float]:
    """WIDER easy / medium / hard AP of ``weights`` on the val split: the detections (in original
    image pixels) are written in the WIDER submission layout (``<event>/<image>.txt``, event = the
    image's folder) to ``pred_dir`` and scored by :func:`~assignlab.engine.widerface_eval.evaluate_widerface`."""
    from ..engine.evaluate import predict_dataset
    from ..engine.widerface_eval import evaluate_widerface, write_prediction_file
    from ..models import load_detector

    model = load_detector(weights, map_location=device)
    ds = _dataset(tc, tc.val_split)
    results = predict_dataset(model, ds, tc.img, conf=tc.conf, iou=tc.iou, batch=tc.batch, max_det=tc.max_det,
                              device=device)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    for i in range(len(ds)):
        ann = ds.load_annotations(i)
        p = Path(ann["path"])
        dets = by_image.get(int(ann["image_id"]), [])
        boxes = [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]] for d in dets]
        write_prediction_file(pred_dir, p.parent.name, p.stem, boxes, [d["score"] for d in dets])
    return evaluate_widerface(pred_dir, gt_dir)


def assignment_statistics(tc: Any, weights: Path, num_images: int, device: str = "cpu") -> dict[str, Any]:
    """The ``inspect`` statistics (:class:`~assignlab.analysis.stats.StatsAccumulator` summary) of
    the run's assigner on the trained model's priors, over the first ``num_images`` train images
    (evaluation letterbox); prediction-aware assigners get the model's decoded predictions."""
    import torch

    from ..engine.train import build_assigner
    from ..models import load_detector
    from .cli import _gt_batches, _pred_batches
    from .stats import StatsAccumulator

    model = load_detector(weights, map_location=device)
    assigner = build_assigner(tc)
    ds = _dataset(tc, tc.train_split)
    S = tc.img
    priors = model.priors((S, S), device=torch.device(device))
    acc = StatsAccumulator(num_levels=len(priors.num_level_priors))
    t0 = time.perf_counter()
    if getattr(assigner, "requires_predictions", False):
        for gt, pb, ps in _pred_batches([ds], model, min(tc.batch, 16), torch.device(device), num_images):
            acc.update(priors, gt, assigner(priors, gt, pred_boxes=pb, pred_scores=ps))
    else:
        for gt in _gt_batches([ds], 64, num_images):
            gt = gt.to(device)
            acc.update(priors, gt, assigner(priors, gt))
    s = acc.summary()
    s["prediction_aware"] = bool(getattr(assigner, "requires_predictions", False))
    s["weights"] = str(weights)
    s["seconds"] = round(time.perf_counter() - t0, 3)
    return s


def plot_curves(curves: Mapping[str, Sequence[list[dict[str, float | None]]]], path: Path, dpi: int = 100) -> Path:
    """One PNG: training loss (left) and val AP50 (right) per epoch, one line per run (mean over
    seeds; the band is the min..max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, seed_rows in curves.items():
        for ax, key in zip(axes, ("train/loss", "val/AP50")):
            series: dict[float, list[float]] = {}
            for rows in seed_rows:
                for r in rows:
                    e, v = r.get("epoch"), r.get(key)
                    if e is not None and v is not None and math.isfinite(v):
                        series.setdefault(e, []).append(v)
            if not series:
                continue
            ep = np.array(sorted(series))
            vals = [series[e] for e in ep]
            mean = np.array([np.mean(v) for v in vals])
            (line,) = ax.plot(ep, mean, marker="o", ms=3, label=name)
            if len(seed_rows) > 1:
                ax.fill_between(ep, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
    axes[0].set_title("training loss (each run's own loss: compare shapes, not levels)", fontsize=9)
    axes[0].set_ylabel("loss (log scale)")
    if axes[0].lines:
        axes[0].set_yscale("log")
    axes[1].set_title("val AP50 (validated epochs)", fontsize=9)
    axes[1].set_ylabel("AP50")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_detections(models: Mapping[str, tuple[Path, Any]], num_images: int, conf: float, path: Path,
                    device: str = "cpu", dpi: int = 100, max_det: int = 30) -> Path:
    """A grid PNG: one row per run, the first ``num_images`` val images with the GT boxes (green,
    dashed) and the run's (at most ``max_det``) detections scoring >= ``conf`` (red, with the score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    from ..models import load_detector
    from .draw import _image_np

    names = list(models)
    first_tc = models[names[0]][1]
    ds = _dataset(first_tc, first_tc.val_split)
    k = min(num_images, len(ds))
    samples = [ds[i] for i in range(k)]
    fig, axes = plt.subplots(len(names), max(k, 1), figsize=(2.6 * max(k, 1), 2.8 * len(names)), squeeze=False)
    for ri, name in enumerate(names):
        weights, tc = models[name]
        model = load_detector(weights, map_location=device)
        S = tc.img
        priors = model.priors((S, S), device=torch.device(device))
        for ci in range(max(k, 1)):
            ax = axes[ri][ci]
            ax.set_xticks([])
            ax.set_yticks([])
            if ci >= k:
                continue
            image, target = samples[ci]
            with torch.no_grad():
                dets = model.postprocess(model(image[None].to(device)), priors, conf=conf, iou=tc.iou, max_det=max_det)[0]
            img = _image_np(image)
            H, W = img.shape[:2]
            ax.imshow(img, extent=(0, W, H, 0))
            for x1, y1, x2, y2 in target["boxes"].tolist():
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", lw=0.9, ls="--"))
            for (x1, y1, x2, y2), s in zip(dets["boxes"].tolist(), dets["scores"].tolist()):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", lw=1.0))
                ax.text(x1, y1, f"{s:.2f}", color="white", fontsize=5, va="bottom",
                        bbox={"facecolor": "red", "alpha": 0.6, "pad": 0.5, "lw": 0})
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
            ax.set_xlabel(f"{len(target['boxes'])} GT, {len(dets['boxes'])} det", fontsize=7)
            if ci == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"val detections (score >= {conf:g}; red: detections, green dashed: GT)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ============================================================================================
# the comparison
# ============================================================================================


def _finite(v: Any) -> Any:
    """JSON-safe copy: NaN / inf -> None (recursively)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _prepare_data(cfg: CompareConfig, force: bool) -> None:
    if cfg.data_inline is None:
        return
    p = Path(cfg.data)
    text = yaml.safe_dump(cfg.data_inline, sort_keys=True)
    if p.is_file() and p.read_text() != text:
        if not force:
            raise CompareConfigError(
                f"{p} holds a different inline data config than {cfg.source}; the existing runs were trained "
                f"on it. Use --force to retrain everything, or another --out")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _train_one(cfg: CompareConfig, run: RunSpec, seed: int, force: bool, progress: bool,
               log: Callable[[str], None], device: str | None) -> dict[str, Any]:
    from ..engine.train import train

    tc = cfg.train_config(run, seed)
    if device:
        tc.device = device
    out = Path(tc.out)
    state, detail = run_state(tc)
    if force and state != "new":
        shutil.rmtree(out)
        state, detail = "new", "retrained (--force)"
    if state == "different":
        raise CompareConfigError(
            f"run {run.name!r} seed {seed}: {out} holds a run with a different configuration ({detail}); "
            "use --force to retrain it, or give the run another name")
    marker = out / MARKER
    info: dict[str, Any] = {}
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            info = {}
    if state == "done":
        log(f"[{run.name} seed {seed}] reusing finished run in {out} ({detail})")
        reused = True
    else:
        if state == "partial":
            tc.resume = True
            log(f"[{run.name} seed {seed}] resuming {out} ({detail})")
        else:
            log(f"[{run.name} seed {seed}] training in {out}")
        t0, c0 = time.perf_counter(), _cpu_seconds()
        train(tc, progress=progress)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        info = {
            "wall_seconds": round(float(info.get("wall_seconds", 0.0)) + wall, 3),
            "cpu_seconds": round(float(info.get("cpu_seconds", 0.0)) + cpu, 3),
            "sessions": int(info.get("sessions", 0)) + 1,
        }
        marker.write_text(json.dumps(info, indent=1))
        reused = False
        tc.resume = False
    return {"tc": tc, "reused": reused, "marker": info}


def _seed_record(cfg: CompareConfig, run: RunSpec, seed: int, tc: Any, reused: bool, marker: Mapping[str, Any],
                 n_train: int, device: str, log: Callable[[str], None]) -> dict[str, Any]:
    out = Path(tc.out)
    rows = read_results_csv(out / "results.csv")
    last = rows[-1] if rows else {}
    metrics = {k[4:]: v for k, v in last.items() if k.startswith("val/")}
    if cfg.widerface_gt:
        log(f"[{run.name} seed {seed}] WIDER FACE evaluation")
        metrics.update(widerface_metrics(tc, out / "last.pt", cfg.widerface_gt, out / "widerface_pred", device))
    train_seconds = sum(r.get("time") or 0.0 for r in rows)
    ap50 = [(r.get("val/AP50"), int(r.get("epoch") or 0)) for r in rows if r.get("val/AP50") is not None]
    best = max(ap50, key=lambda x: x[0]) if ap50 else (None, None)
    return {
        "seed": seed,
        "out": str(out),
        "command": reproduce_command(tc, cfg.explicit_keys(run)),
        "reused": reused,
        "epochs": int(last.get("epoch") or 0),
        "metrics": metrics,
        "best_AP50": best[0],
        "best_epoch": best[1],
        "train_seconds": round(train_seconds, 3),
        "images_per_second": (n_train * len(rows) / train_seconds) if train_seconds > 0 else None,
        "wall_seconds": marker.get("wall_seconds"),
        "cpu_seconds": marker.get("cpu_seconds"),
        "rows": rows,
    }


def compare(
    cfg: CompareConfig,
    force: bool = False,
    html_report: bool = False,
    only: Sequence[str] | None = None,
    progress: bool = False,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) every run of ``cfg`` for every seed, evaluate, and write the report.

    ``only``: restrict to these run names. ``device``: training / analysis device (default: the
    runs' ``device``, i.e. ``auto``). Returns the ``results.json`` content (plus ``"report"``: the
    report path)."""
    import torch

    if cfg.threads is None:
        return _compare(cfg, force, html_report, only, progress, device, log)
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _compare(cfg, force, html_report, only, progress, device, log)
    finally:
        torch.set_num_threads(old)


def _compare(cfg: CompareConfig, force: bool, html_report: bool, only: Sequence[str] | None, progress: bool,
             device: str | None, log: Callable[[str], None] | None) -> dict[str, Any]:
    import torch

    log = log or (lambda m: print(m, flush=True))
    t_start, c_start = time.perf_counter(), _cpu_seconds()
    runs = cfg.runs
    if only:
        unknown = [n for n in only if n not in [r.name for r in runs]]
        if unknown:
            raise CompareConfigError(f"--only: unknown run(s) {', '.join(unknown)}; runs: "
                                     f"{', '.join(r.name for r in runs)}")
        runs = [r for r in runs if r.name in only]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_data(cfg, force)
    ana_device = device or ("cuda" if torch.cuda.is_available() and cfg.base.get("device", "auto") != "cpu" else "cpu")

    # 0. refuse folders holding other runs before training anything
    if not force:
        clash = []
        for r in runs:
            for sd in cfg.seeds:
                state, detail = run_state(cfg.train_config(r, sd))
                if state == "different":
                    clash.append(f"{cfg.run_dir(r, sd)} ({detail})")
        if clash:
            raise CompareConfigError("run folder(s) holding a run with a different configuration: "
                                     + "; ".join(clash) + ". Use --force to retrain, or rename the runs")

    # 1. train / reuse (a failing run is reported, the others go on)
    trained: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    failures: list[dict[str, Any]] = []
    for r in runs:
        trained[r.name] = []
        for sd in cfg.seeds:
            try:
                trained[r.name].append((sd, _train_one(cfg, r, sd, force, progress, log, device)))
            except CompareConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - one broken strategy must not lose the others
                import traceback

                log(f"[{r.name} seed {sd}] FAILED: {type(e).__name__}: {e}")
                traceback.print_exc()
                failures.append({"name": r.name, "seed": sd, "error": f"{type(e).__name__}: {e}"})
    runs = [r for r in runs if trained[r.name]]
    if not runs:
        raise RuntimeError("every run failed: " + "; ".join(f"{f['name']} seed {f['seed']}: {f['error']}"
                                                          for f in failures))

    # 2. collect numbers
    n_train_cache: dict[tuple, int] = {}
    results_runs: list[dict[str, Any]] = []
    for r in runs:
        seed_recs = []
        for s, t in trained[r.name]:
            tc = t["tc"]
            key = (tc.data, tc.train_split, tc.img, tc.merge_classes, tc.seed)
            if key not in n_train_cache:
                n_train_cache[key] = len(_dataset(tc, tc.train_split, train=True))
            seed_recs.append(_seed_record(cfg, r, s, tc, t["reused"], t["marker"], n_train_cache[key],
                                          ana_device, log))
        keys = list(dict.fromkeys(k for sr in seed_recs for k in sr["metrics"]))
        mean, spread = {}, {}
        for k in keys:
            mean[k], spread[k] = mean_spread([sr["metrics"].get(k) for sr in seed_recs])
        stats_seed, first = trained[r.name][0]
        tc0 = first["tc"]
        weights = Path(tc0.out) / "last.pt"
        log(f"[{r.name}] assignment statistics ({cfg.stats_images} train images)")
        stats = assignment_statistics(tc0, weights, cfg.stats_images, ana_device)
        results_runs.append({
            "name": r.name,
            "note": r.note,
            "settings": r.settings,
            "assigner": tc0.assigner,
            "assigner_opts": tc0.assigner_opts,
            "loss": tc0.loss,
            "loss_opts": tc0.loss_opts,
            "head": tc0.head,
            "reg_max": tc0.reg_max,
            "anchors": tc0.anchors,
            "seeds": seed_recs,
            "mean": mean,
            "spread": spread,
            "train_seconds": mean_spread([sr["train_seconds"] for sr in seed_recs])[0],
            "images_per_second": mean_spread([sr["images_per_second"] for sr in seed_recs])[0],
            "stats": stats,
            "stats_seed": stats_seed,
        })

    # 3. verdicts against the baseline
    by_name = {x["name"]: x for x in results_runs}
    base_name = cfg.baseline_name if cfg.baseline_name in by_name else results_runs[0]["name"]
    base = by_name[base_name]
    p = cfg.primary
    for x in results_runs:
        m, b = x["mean"].get(p), base["mean"].get(p)
        delta = (m - b) if (m is not None and b is not None) else None
        x["delta"] = delta
        x["verdict"] = "baseline" if x is base else verdict(delta, x["spread"].get(p), base["spread"].get(p))
    ranked = [x for x in results_runs if x["mean"].get(p) is not None]
    best = max(ranked, key=lambda x: x["mean"][p])["name"] if ranked else None

    # 4. figures
    fig_dir = out / "figures"
    figures: dict[str, str] = {}
    curves = {x["name"]: [sr["rows"] for sr in x["seeds"]] for x in results_runs}
    figures["loss_curves"] = str(plot_curves(curves, fig_dir / "loss_curves.png").relative_to(out))
    if cfg.draw_images > 0:
        models = {}
        for r in runs:
            tc0 = trained[r.name][0][1]["tc"]
            w = Path(tc0.out) / "best.pt"
            models[r.name] = (w if w.is_file() else Path(tc0.out) / "last.pt", tc0)
        log(f"drawing detections on {cfg.draw_images} val images")
        figures["detections"] = str(plot_detections(models, cfg.draw_images, cfg.draw_conf, fig_dir / "detections.png",
                                                    device=ana_device).relative_to(out))
    from .plots import plot_inspect

    for pth in plot_inspect({x["name"]: x["stats"] for x in results_runs}, fig_dir):
        figures[pth.stem] = str(pth.relative_to(out))

    wall, cpu = time.perf_counter() - t_start, _cpu_seconds() - c_start
    try:
        load = list(os.getloadavg())
    except OSError:  # pragma: no cover
        load = None
    result = {
        "title": cfg.title,
        "config": cfg.source,
        "data": cfg.data or "synthetic (built-in)",
        "data_format": cfg.data_format,
        "seeds": cfg.seeds,
        "base": cfg.base,
        "metric": p,
        "metric_keys": list(cfg.metric_keys),
        "baseline": base_name,
        "best": best,
        "runs": [{k: v for k, v in x.items()} for x in results_runs],
        "figures": figures,
        "failures": failures,
        "timing": {
            "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "trained": sum(not t["reused"] for ts in trained.values() for _, t in ts),
            "reused": sum(t["reused"] for ts in trained.values() for _, t in ts),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average": load,
        },
    }
    for x in result["runs"]:
        for sr in x["seeds"]:
            sr.pop("rows", None)
    result = _finite(result)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    blocks = _report_blocks(result)
    if html_report:
        path = out / "report.html"
        path.write_text(_render_html(blocks, out, cfg.title))
    else:
        path = out / "report.md"
        path.write_text(_render_markdown(blocks))
    result["report"] = str(path)
    log(f"compare: {len(runs)} run(s) x {len(cfg.seeds)} seed(s) in {wall:.1f} s wall ({cpu:.1f} s CPU) -> {path}")
    return result


# ============================================================================================
# report rendering: a list of blocks -> Markdown or HTML
# ============================================================================================


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _pm(m: float | None, s: float | None) -> str:
    if m is None:
        return "-"
    return _pct(m) + (f" ± {100 * s:.2f}" if s is not None else "")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _settings_text(x: Mapping[str, Any]) -> str:
    parts = [f"{x['assigner']}"]
    if x.get("assigner_opts"):
        parts[0] += " " + ", ".join(f"{k}={_yaml_value(v)}" for k, v in x["assigner_opts"].items())
    parts.append(f"loss {x['loss']}" + (" " + ", ".join(f"{k}={_yaml_value(v)}" for k, v in x["loss_opts"].items())
                                         if x.get("loss_opts") else ""))
    parts.append(f"{x['head']} head" + (f", reg_max {x['reg_max']}" if x.get("reg_max") else ""))
    if x.get("anchors"):
        parts.append(f"{sum(len(lv) for lv in x['anchors'])} anchors")
    other = {k: v for k, v in (x.get("settings") or {}).items()
             if k not in ("assigner", "assigner_opts", "loss", "loss_opts", "head", "reg_max", "anchors")}
    parts += [f"{k}={_yaml_value(v)}" for k, v in other.items()]
    return "; ".join(parts)


def _report_blocks(r: Mapping[str, Any]) -> list[tuple]:
    p = r["metric"]
    keys = r["metric_keys"]
    nseeds = len(r["seeds"])
    t = r["timing"]
    blocks: list[tuple] = [("h", 1, r["title"])]
    base_txt = ", ".join(f"{k}={_yaml_value(v)}" for k, v in (r.get("base") or {}).items())
    load = t.get("load_average")
    blocks.append(("ul", [
        f"data: {r['data']} ({r['data_format']}); config: {r['config']}",
        f"seeds: {', '.join(map(str, r['seeds']))}; common settings: {base_txt or '(defaults)'}",
        f"accuracy of the last epoch (same budget for every run); primary metric **{p}**; baseline "
        f"**{r['baseline']}**" + (f"; best **{r['best']}**" if r.get("best") else ""),
        f"total time {t['wall_seconds']:.1f} s wall, {t['cpu_seconds']:.1f} s CPU ({t['trained']} run(s) trained, "
        f"{t['reused']} reused; {t['threads']} torch threads, {t['cpu_count']} CPUs"
        + (f", load average {load[0]:.1f}" if load else "") + ")",
    ]))

    blocks.append(("h", 2, "Accuracy"))
    what = "mean ± spread (sample std over seeds), " if nseeds > 1 else ""
    blocks.append(("p", f"Values in %: {what}val split, last epoch. Δ{p}: difference of the means with the "
                        f"baseline; a difference smaller than the larger spread is **no difference**."))
    head = ["run", *keys, f"Δ{p}", "verdict", "settings"]
    rows = []
    for x in r["runs"]:
        delta = "-" if x.get("delta") is None else f"{100 * x['delta']:+.2f}"
        rows.append([f"**{x['name']}**" if x["name"] == r.get("best") else x["name"],
                     *[_pm(x["mean"].get(k), x["spread"].get(k)) for k in keys],
                     delta, x.get("verdict") or "-", _settings_text(x)])
    blocks.append(("table", head, rows))
    notes = [f"{x['name']}: {x['note']}" for x in r["runs"] if x.get("note")]
    if notes:
        blocks.append(("ul", notes))
    if r.get("failures"):
        blocks.append(("p", "**Failed runs** (left out of every table; fix and rerun: finished runs are reused):"))
        blocks.append(("ul", [f"{f['name']} seed {f['seed']}: `{f['error']}`" for f in r["failures"]]))

    blocks.append(("h", 2, "Training time"))
    head = ["run", "train time / seed (s)", "images/s", "wall incl. validation (s)", "best AP50 (epoch)"]
    rows = []
    for x in r["runs"]:
        walls = [sr["wall_seconds"] for sr in x["seeds"] if sr.get("wall_seconds") is not None]
        bests = ", ".join(f"{_pct(sr['best_AP50'])} ({sr['best_epoch']})" for sr in x["seeds"])
        rows.append([x["name"], _fmt(x.get("train_seconds"), 1), _fmt(x.get("images_per_second"), 1),
                     _fmt(sum(walls) / len(walls), 1) if walls else "-", bests])
    blocks.append(("table", head, rows))
    blocks.append(("p", "Training time: the epochs' training loops (data, forward, assignment, loss, backward, "
                        "step), validation excluded; images/s = training images x epochs / that time."))

    blocks.append(("h", 2, "Assignment statistics"))
    from .stats import markdown_report

    summaries = {x["name"]: x["stats"] for x in r["runs"]}
    first = next(iter(summaries.values()))
    blocks.append(("p", f"The `assignlab inspect` numbers of each run's assigner on its model's priors, "
                        f"{first.get('images')} train images (evaluation letterbox); prediction-aware assigners "
                        f"({', '.join(n for n, s in summaries.items() if s.get('prediction_aware')) or 'none'}) "
                        f"with the predictions of the seed-{r['runs'][0]['stats_seed']} checkpoint."))
    blocks.append(("mdtable", markdown_report(summaries)))
    for k in ("positives_per_gt", "zero_positive_share", "positives_by_level", "positive_iou"):
        if k in r["figures"]:
            blocks.append(("img", r["figures"][k], k.replace("_", " ")))

    blocks.append(("h", 2, "Loss curves"))
    blocks.append(("img", r["figures"]["loss_curves"], "loss curves"))
    if "detections" in r["figures"]:
        blocks.append(("h", 2, "Detections"))
        blocks.append(("img", r["figures"]["detections"], "detections"))

    blocks.append(("h", 2, "Reproduce"))
    blocks.append(("p", "Each row of the comparison is an ordinary training run:"))
    cmds = []
    for x in r["runs"]:
        for sr in x["seeds"]:
            cmds.append(f"# {x['name']}, seed {sr['seed']}" + (" (reused)" if sr["reused"] else ""))
            cmds.append(sr["command"])
    blocks.append(("code", "\n".join(cmds)))
    return blocks


def _md_cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _render_markdown(blocks: Sequence[tuple]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out += ["#" * b[1] + " " + b[2], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "ul":
            out += [f"- {it}" for it in b[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
            out.append("|" + "---|" * len(b[1]))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
            out.append("")
        elif kind == "mdtable":
            out += [b[1].rstrip("\n"), ""]
        elif kind == "img":
            out += [f"![{b[2]}]({b[1]})", ""]
        elif kind == "code":
            out += ["```sh", b[1], "```", ""]
    return "\n".join(out)


def _inline_md(s: str) -> str:
    """Escape HTML, then ``**bold**`` and ```code``` of the report's Markdown strings."""
    s = html.escape(str(s))
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _html_table(head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{_inline_md(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _md_table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip().startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    cells = [c for c in cells if not all(re.fullmatch(r":?-+:?", x) for x in c if x)]
    return (cells[0], cells[1:]) if cells else ([], [])


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}th,td{border:1px solid #ccc;
padding:3px 7px;text-align:left}th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}pre{background:#f6f8fa;padding:.8em;overflow-x:auto;
font-size:12px}code{background:#f6f8fa;padding:0 2px}
"""


def _render_html(blocks: Sequence[tuple], root: Path, title: str) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            parts.append(f"<h{b[1]}>{_inline_md(b[2])}</h{b[1]}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_md(it)}</li>" for it in b[1]) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(b[1], b[2]))
        elif kind == "mdtable":
            parts.append(_html_table(*_md_table_rows(b[1])))
        elif kind == "img":
            data = base64.b64encode((root / b[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
        elif kind == "code":
            parts.append(f"<pre>{html.escape(b[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ============================================================================================
# command line
# ============================================================================================


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab compare``."""
    parser.description = "Train and evaluate several assigner / loss combinations with the same budget; one report."
    parser.add_argument("config", nargs="?", default=None, metavar="CONFIG.yaml",
                        help="comparison config (default: the built-in quick comparison on synthetic data)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the config's 'out')")
    parser.add_argument("--html", action="store_true", help="write one self-contained report.html instead of report.md")
    parser.add_argument("--force", action="store_true", help="retrain runs whose folders already hold a run")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help="only this run (repeatable); the report then covers these runs")
    parser.add_argument("--device", default=None, help="device for every run (default: the config's, i.e. auto)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and print the runs' train commands and states; train nothing")
    parser.add_argument("--progress", action="store_true", help="tqdm progress bars during training")


def cmd_compare(args: argparse.Namespace) -> int:
    """Run ``assignlab compare``; exit code 2 on a refused configuration."""
    from ..engine.checkpoint import CheckpointError
    from ..engine.config import ConfigError

    try:
        data_errors: tuple[type[Exception], ...] = ()
        from ..data import DataConfigError, DatasetError

        data_errors = (DataConfigError, DatasetError)
    except ImportError:  # pragma: no cover
        pass
    try:
        cfg = load_compare_config(args.config, out=args.out)
        if args.check:
            print(f"{cfg.source}: {len(cfg.runs)} run(s) x {len(cfg.seeds)} seed(s), data {cfg.data or 'synthetic'} "
                  f"({cfg.data_format}), out {cfg.out}")
            for r in cfg.runs:
                for s in cfg.seeds:
                    tc = cfg.train_config(r, s)
                    state, detail = run_state(tc)
                    print(f"[{r.name} seed {s}] {state}{f' ({detail})' if detail else ''}: "
                          f"{reproduce_command(tc, cfg.explicit_keys(r))}")
            return 0
        res = compare(cfg, force=args.force, html_report=args.html, only=args.only, progress=args.progress,
                      device=args.device)
    except (CompareConfigError, ConfigError, CheckpointError, *data_errors) as e:
        print(f"assignlab compare: error: {e}", file=sys.stderr)
        return 2
    if res.get("failures"):
        print(f"assignlab compare: {len(res['failures'])} run(s) failed (see {res['report']})", file=sys.stderr)
        return 1
    return 0
