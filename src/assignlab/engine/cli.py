"""Command-line front ends of ``assignlab train`` and ``assignlab eval`` (wired in ``__main__``).

::

    assignlab train --data DATA.yaml --assigner atss [--assigner-opt topk=9 ...] --loss focal \\
        --img 320 --epochs 30 --out runs/atss [--config cfg.yaml] [--set key=value ...] [--resume]
    assignlab eval --weights runs/atss/best.pt [--data DATA.yaml] [--split val|test]

Precedence: TrainConfig defaults < ``--config`` YAML < command-line options. Every key of
:class:`~assignlab.engine.config.TrainConfig` can be set with ``--set key=value``. Bad keys,
values, assigner names or options are refused before anything is loaded, with the valid names.
``torchrun --nproc_per_node N -m assignlab train ...`` trains with DDP.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["add_train_args", "cmd_train", "add_eval_args", "cmd_eval", "train_overrides"]

# argparse dest -> TrainConfig key, for the dedicated options
_TRAIN_OPTS: dict[str, tuple[str, type | None, str]] = {
    "data": ("data", str, "data YAML or dataset folder (default: synthetic data)"),
    "assigner": ("assigner", str, "assigner"),
    "loss": ("loss", str, "loss"),
    "head": ("head", str, "detector head: anchor | free"),
    "reg_max": ("reg_max", int, "DFL bins - 1 of the free head (0 = off)"),
    "width": ("width", float, "model width multiplier"),
    "img": ("img", int, "input size (multiple of 32)"),
    "epochs": ("epochs", int, "epochs"),
    "batch": ("batch", int, "global batch size"),
    "workers": ("workers", int, "data loader processes"),
    "lr": ("lr", float, "peak learning rate"),
    "optimizer": ("optimizer", str, "sgd | adamw"),
    "seed": ("seed", int, "random seed"),
    "device": ("device", str, "auto | cpu | cuda | cuda:K"),
    "out": ("out", str, "run folder"),
    "eval_every": ("eval_every", int, "validate every N epochs (0 = last only)"),
}


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab train``."""
    from .config import TrainConfig, assigner_table, loss_names

    try:
        extra = {"assigner": ", ".join(sorted(assigner_table())), "loss": ", ".join(loss_names())}
    except ImportError:  # pragma: no cover - partial installs
        extra = {}
    default = TrainConfig()
    parser.add_argument("--config", metavar="YAML", help="training config YAML (keys of TrainConfig)")
    for dest, (key, typ, help_) in _TRAIN_OPTS.items():
        h = f"{help_}: {extra[dest]}" if dest in extra else help_
        if "default" not in h:
            h += f" (default: {getattr(default, key)})"
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=h)
    parser.add_argument("--assigner-opt", action="append", metavar="K=V", default=[],
                        help="assigner constructor option (repeatable), value parsed as YAML")
    parser.add_argument("--loss-opt", action="append", metavar="K=V", default=[],
                        help="DetectionLoss option (repeatable), value parsed as YAML")
    parser.add_argument("--set", action="append", metavar="K=V", default=[], dest="set_",
                        help="any TrainConfig key (repeatable), e.g. --set ema=false --set warmup_epochs=0.5")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue the run in --out from its last.pt (exactly where it stopped)")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="force tqdm progress bars (default: when stderr is a terminal)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(_train_parser=True)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig values given on the command line (unset options left out)."""
    from .config import parse_kv

    ov: dict[str, Any] = {}
    ov.update(parse_kv(getattr(args, "set_", None), "--set"))
    for dest, (key, _t, _h) in _TRAIN_OPTS.items():
        v = getattr(args, dest, None)
        if v is not None:
            ov[key] = v
    if getattr(args, "assigner_opt", None):
        ov["assigner_opts"] = {**ov.get("assigner_opts", {}), **parse_kv(args.assigner_opt, "--assigner-opt")}
    if getattr(args, "loss_opt", None):
        ov["loss_opts"] = {**ov.get("loss_opts", {}), **parse_kv(args.loss_opt, "--loss-opt")}
    if getattr(args, "resume", None):
        ov["resume"] = True
    return ov


def _data_errors() -> tuple[type[Exception], ...]:
    """The data package's user-facing errors (bad data YAML, unreadable dataset)."""
    try:
        from ..data import DataConfigError, DatasetError
    except ImportError:  # pragma: no cover
        return ()
    return (DataConfigError, DatasetError)


def _fail(cmd: str, e: Exception) -> int:
    print(f"assignlab {cmd}: error: {e}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``assignlab train``; returns the exit code (2 on a refused configuration)."""
    from .checkpoint import CheckpointError
    from .config import RESUME_MUTABLE, ConfigError, load_train_config
    from .train import resume_conflicts, train

    try:
        ov = train_overrides(args)
        cfg = load_train_config(args.config, ov)
        if cfg.resume:
            explicit = dict(ov)
            if args.config:
                explicit = {**(yaml.safe_load(Path(args.config).read_text()) or {}), **ov}
            explicit = {k: v for k, v in explicit.items() if k not in RESUME_MUTABLE}
            bad = resume_conflicts(cfg.out, explicit)
            if bad:
                raise ConfigError("cannot change settings of a run on --resume (it must end exactly as the "
                                  "original would): " + "; ".join(bad))
        res = train(cfg, progress=args.progress)
    except (ConfigError, CheckpointError, *_data_errors()) as e:
        return _fail("train", e)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    from .evaluate import format_metrics

    best = f"{res['best_fitness']:.4f}" if res["best_fitness"] > float("-inf") else "-"
    if res.get("metrics"):
        print(format_metrics(res["metrics"], f"final validation ({res['epochs']} epochs, EMA weights; AP in %)"))
    print(f"done: {res['epochs']} epochs, best val AP50 {best}; weights in {res['out']} (last.pt, best.pt)")
    return 0


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab eval``."""
    parser.add_argument("--weights", required=True, help="checkpoint (best.pt / last.pt)")
    parser.add_argument("--data", default="<from checkpoint>",
                        help="data YAML or folder, 'synthetic' (default: the training run's data)")
    parser.add_argument("--split", default="val", help="split name (val | test | train)")
    parser.add_argument("--img", type=int, default=None, help="input size (default: training size)")
    parser.add_argument("--conf", type=float, default=0.001, help="score threshold")
    parser.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="detections per image")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:K")
    parser.add_argument("--json", default=None, metavar="PATH", help="write COCO-format predictions here")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``assignlab eval``: print the COCO AP table of a checkpoint on a split."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .evaluate import evaluate_checkpoint, format_metrics

    data = args.data
    if isinstance(data, str) and data.lower() == "synthetic":
        data = None
    try:
        m = evaluate_checkpoint(
            args.weights, data=data, split=args.split, img_size=args.img, conf=args.conf, iou=args.iou,
            batch=args.batch, max_det=args.max_det, workers=args.workers, device=args.device,
            out_json=args.json, use_ema=not args.no_ema,
        )
    except (ConfigError, CheckpointError, FileNotFoundError, *_data_errors()) as e:
        return _fail("eval", e)
    title = (f"{args.weights} on split {args.split!r}: {int(m.get('num_images', 0))} images, "
             f"{int(m.get('num_detections', 0))} detections (AP in %)")
    print(format_metrics(m, title))
    if args.json:
        print(f"predictions written to {args.json}")
    return 0
