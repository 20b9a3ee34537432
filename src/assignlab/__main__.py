"""``assignlab`` / ``python -m assignlab`` command line.

Subcommands (each module adds its own arguments; imports are lazy so ``--help`` is fast):

=================  ==========================================================
train              train a detector with any assigner and loss
eval               COCO AP of a checkpoint on a dataset split
widerface-eval     WIDER FACE easy / medium / hard AP of a prediction folder
inspect            assignment statistics per GT size, level, ... (no training)
show               draw one image's assignment
heatmap            per-level score maps of a trained model
anchors            box-size statistics, best possible recall, evolved anchors
compare            train + evaluate several strategies, one report
predict            run a trained detector on images
export             export a trained detector to ONNX
bench              assignment speed / memory benchmark
=================  ==========================================================
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, add-arguments function, run function, help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train": ("assignlab.engine.cli", "add_train_args", "cmd_train", "train a detector"),
    "eval": ("assignlab.engine.cli", "add_eval_args", "cmd_eval", "evaluate a checkpoint (COCO AP)"),
    "widerface-eval": ("assignlab.engine.widerface_eval", "add_args", "cmd", "WIDER FACE easy/medium/hard AP"),
    "inspect": ("assignlab.analysis.cli", "add_inspect_args", "cmd_inspect", "assignment statistics"),
    "show": ("assignlab.analysis.cli", "add_show_args", "cmd_show", "draw one image's assignment"),
    "heatmap": ("assignlab.analysis.cli", "add_heatmap_args", "cmd_heatmap", "per-level score maps"),
    "anchors": ("assignlab.analysis.cli", "add_anchors_args", "cmd_anchors", "anchor fitness"),
    "compare": ("assignlab.analysis.cli", "add_compare_args", "cmd_compare", "compare strategies"),
    "predict": ("assignlab.models.cli", "add_predict_args", "cmd_predict", "run a detector on images"),
    "export": ("assignlab.models.cli", "add_export_args", "cmd_export", "export to ONNX"),
    "bench": ("assignlab.bench.__main__", "add_args", "cmd", "assignment benchmark"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="assignlab", description="Label assignment lab for dense detectors.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, add, _run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if only is None or only == name:
            try:
                getattr(importlib.import_module(mod), add)(p)
            except (ModuleNotFoundError, AttributeError) as e:
                p.set_defaults(_unavailable=f"{name} is not available in this build: {e}")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = next((a for a in argv if not a.startswith("-")), None)
    ap = build_parser(only=cmd if cmd in COMMANDS else None)
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    mod, _add, run, _help = COMMANDS[args.command]
    rc = getattr(importlib.import_module(mod), run)(args)
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
