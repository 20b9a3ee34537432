"""``python -m assignlab.bench assign|train`` (or ``assignlab bench ...``): benchmarks, never tests.

* ``assign``: assignment speed and peak memory per assigner (B=16, 640 px, 10/100/1000 GTs per image),
  batched call vs a per-image loop of the same assigner.
* ``train``: training step time split into forward / assign / loss / backward, train and inference
  images/s, and the share of a step spent in assignment + loss (default 320 px, 100 GTs per image).

Examples::

    python -m assignlab.bench assign                       # every assigner, B=16, 640 px, 10/100/1000 GTs
    python -m assignlab.bench assign --assigners atss tal --gts 100 --out docs/bench.json
    python -m assignlab.bench train --img 320 --gts 100
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["assign", "train"], help="which benchmark")
    p.add_argument("--assigners", nargs="*", default=None, help="names (default: all)")
    p.add_argument("--gts", nargs="*", type=int, default=None, help="GTs per image (assign: 10 100 1000; train: 100)")
    p.add_argument("--img", type=int, default=320, help="train: input size")
    p.add_argument("--steps", type=int, default=5, help="train: timed steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-loop", action="store_true", help="skip the per-image loop baseline")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both are run when 'all')")
    p.add_argument("--out", default=None, help="write the rows as JSON here")


def cmd_train(args: argparse.Namespace) -> int:
    from .throughput import available_pairs, bench_inference, bench_train_step, markdown_table

    pairs = [p for p in available_pairs() if not args.assigners or p[0] in args.assigners]
    gts = (args.gts or [100])[0]
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; img {args.img}, batch {args.batch}, {gts} GTs/image", flush=True)
    rows = []
    for a, loss, head, reg_max in pairs:
        try:
            r = bench_train_step(a, loss, head, reg_max, img=args.img, batch=args.batch, gts=gts, steps=args.steps)
        except Exception as e:  # report and go on: a benchmark row, not a test
            r = {"assigner": a, "loss": loss, "head": head, "error": f"{type(e).__name__}: {e}"}
        rows.append(r)
        print(json.dumps(r), flush=True)
    inf = [bench_inference(h, img=args.img, batch=args.batch) for h in ("anchor", "free")]
    print(markdown_table(rows))
    for r in inf:
        print(f"inference ({r['head']} head, {r['img']} px, batch {r['batch']}): {r['infer_images_per_s']:.1f} images/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"train": rows, "inference": inf}, f, indent=1)
    return 0


def cmd(args: argparse.Namespace) -> int:
    if args.what == "train":
        return cmd_train(args)
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
            for g in args.gts or [10, 100, 1000]:
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
