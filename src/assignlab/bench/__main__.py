"""``python -m assignlab.bench assign`` (or ``assignlab bench assign``): assignment speed and memory.

Examples::

    python -m assignlab.bench assign                       # every assigner, B=16, 640 px, 10/100/1000 GTs
    python -m assignlab.bench assign --assigners atss tal --gts 100 --out docs/bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["assign"], help="which benchmark")
    p.add_argument("--assigners", nargs="*", default=None, help="names (default: all)")
    p.add_argument("--gts", nargs="*", type=int, default=[10, 100, 1000], help="GTs per image")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-loop", action="store_true", help="skip the per-image loop baseline")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both are run when 'all')")
    p.add_argument("--out", default=None, help="write the rows as JSON here")


def cmd(args: argparse.Namespace) -> int:
    from ..assigners import ASSIGNERS
    from .assign import markdown_table, run_isolated

    names = args.assigners or sorted(ASSIGNERS)
    unknown = [n for n in names if n not in ASSIGNERS]
    if unknown:
        print(f"unknown assigner(s) {unknown}; valid: {sorted(ASSIGNERS)}", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, devices {devices}", flush=True)
    rows = []
    for dev in devices:
        for n in names:
            for g in args.gts:
                r = run_isolated(n, args.batch, g, args.repeats, not args.no_loop and g <= 100, dev)
                rows.append(r)
                print(json.dumps(r), flush=True)
    print(markdown_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m assignlab.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    return cmd(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
