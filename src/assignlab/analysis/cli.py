"""Command-line front ends of the analysis tools (wired in ``assignlab.__main__``).

::

    assignlab inspect --data DATA.yaml --assigner yolov5 --assigner atss [--assigner-opt atss:topk=9] \\
        [--img 320] [--split train|val|train,val|all] [--merge-classes] [--weights W] [--out runs/inspect]
    assignlab show    --data DATA.yaml --index 3 --assigner yolov5 [--split val] --out show.png
    assignlab heatmap --weights W (--image IMG | [--data DATA.yaml] --index I) --out heat.png
    assignlab anchors --data DATA.yaml [--img 320] [--evolve] [--anchors 15,17 30,34 60,68] [--out runs/anchors]

Without ``--data`` every command uses the built-in synthetic dataset.

``inspect``: assignment statistics without training
----------------------------------------------------
Static assigners are run on the annotations only: :meth:`DetectionDataset.load_annotations` (no
image is decoded) mapped through the dataset's own evaluation letterbox
(:func:`letterbox_annotations`: the same ``Letterbox`` parameters, box mapping, clamping and
dropping rule as ``dataset[i]`` with ``train=False``), so the boxes are bit-identical to what a
non-augmented training / validation sample holds. Images are processed in batches (``--batch``,
64) padded by :meth:`GroundTruth.from_lists`.

Prediction-aware assigners (``requires_predictions``, e.g. simota / tal / dsl / hambox / noisy, or
yolov5 with ``ignore_iou``) need a trained model: with ``--weights`` the letterboxed images go
through the model, :meth:`Detector.decode` gives ``pred_boxes`` / ``pred_scores`` (detached) on
the model's own priors; without it they are reported as skipped (in the output and in the
report), the others still run.

Priors: the assigners of :data:`ANCHOR_BASED` get anchor priors -- ``--anchors``, else the anchors
of the ``--weights`` model (anchor head), else :data:`assignlab.models.DEFAULT_ANCHORS` (one per
level) -- and the others anchor-free points (their prior box for the IoU statistics is the
``8 * stride`` square). Prediction-aware assigners always use the model's priors.

Outputs in ``--out`` (default ``runs/inspect``): ``inspect.md`` (settings + the side-by-side table of
:func:`assignlab.analysis.stats.markdown_report`), ``inspect.json`` (settings + every summary) and
the figures of :func:`assignlab.analysis.plots.plot_inspect`.

``--split`` accepts one split, a comma list (``train,val``) or ``all`` (every configured split).

``anchors``: box sizes and anchor fit
-------------------------------------
Label sizes after the letterbox (the same boxes as ``inspect``), their percentiles, the YOLOv5
AutoAnchor metrics of the current anchors (best possible recall and anchors above threshold for
``anchor_t``, :mod:`assignlab.analysis.anchors`), optionally (``--evolve``) new anchors from k-means
+ genetic evolution (``--per-level`` 1 or 3 anchors per level), the adjacent-level ratio check, and
a log-log scatter plot of the box sizes with the anchors and their ``anchor_t`` matching windows.

``--anchors`` syntax: one argument per level, ``w,h`` pairs separated by commas
(``--anchors 10,13,16,30,33,23 30,61,62,45,59,119 116,90,156,198,373,326`` for three per level), or
one argument with levels separated by ``;`` or ``/``.
"""

from __future__ import annotations

import argparse
import inspect as _inspect
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ANCHOR_BASED",
    "add_anchors_args",
    "add_compare_args",
    "add_heatmap_args",
    "add_inspect_args",
    "add_show_args",
    "cmd_anchors",
    "cmd_compare",
    "cmd_heatmap",
    "cmd_inspect",
    "cmd_show",
    "letterbox_annotations",
    "parse_anchors",
    "parse_assigner_opts",
]

#: assigners that match anchor boxes (the others get anchor-free points)
ANCHOR_BASED = frozenset({"yolov5", "maxiou", "topk", "atss", "hambox", "noisy"})
STRIDES = (8, 16, 32)


class CLIError(Exception):
    """A user error: printed without a traceback, exit code 2."""


# ============================================================================ argument parsing
def parse_anchors(specs: Sequence[str] | str | None, num_levels: int = len(STRIDES)) -> list[list[tuple[float, float]]] | None:
    """``--anchors`` strings -> per level a list of ``(w, h)`` (see the module docstring); None if absent.

    >>> parse_anchors(["15,17", "30,34", "60,68"])
    [[(15.0, 17.0)], [(30.0, 34.0)], [(60.0, 68.0)]]
    >>> parse_anchors("10,13,16,30;30,61,62,45;116,90,156,198")[0]
    [(10.0, 13.0), (16.0, 30.0)]
    """
    if not specs:
        return None
    if isinstance(specs, str):
        specs = [specs]
    levels: list[str] = []
    for s in specs:
        levels += [p for p in s.replace("/", ";").split(";") if p.strip()]
    if len(levels) != num_levels:
        raise CLIError(f"--anchors: expected {num_levels} levels (one argument per level, or ';'-separated), "
                       f"got {len(levels)}: {' '.join(specs)}")
    out = []
    for li, lv in enumerate(levels):
        try:
            v = [float(x) for x in lv.replace(" ", ",").split(",") if x.strip()]
        except ValueError as e:
            raise CLIError(f"--anchors: level {li} {lv!r} is not a list of numbers") from e
        if not v or len(v) % 2:
            raise CLIError(f"--anchors: level {li} {lv!r} must hold w,h pairs (an even count of numbers)")
        if min(v) <= 0:
            raise CLIError(f"--anchors: level {li} {lv!r} has a non-positive size")
        out.append([(v[i], v[i + 1]) for i in range(0, len(v), 2)])
    return out


def _format_anchors(anchors: Sequence[Sequence[Sequence[float]]]) -> str:
    """The ``--anchors`` argument string of ``anchors`` (inverse of :func:`parse_anchors`)."""
    return " ".join(",".join(f"{v:g}" for wh in lv for v in (round(wh[0], 1), round(wh[1], 1))) for lv in anchors)


def _parse_value(v: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def parse_assigner_opts(opts: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["atss:topk=9", "yolov5:anchor_t=3"]`` -> ``{"atss": {"topk": 9}, "yolov5": {"anchor_t": 3}}``.

    Values are parsed as YAML. The ``A:`` prefix may be omitted when only one assigner is given.
    """
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for o in opts or []:
        target, kv = None, o
        head, sep, rest = o.partition(":")
        if sep and "=" not in head:
            target, kv = head.strip(), rest
        if target is None:
            if len(names) != 1:
                raise CLIError(f"--assigner-opt {o!r}: prefix the assigner name (A:key=value) when several are given")
            target = names[0]
        if target not in out:
            raise CLIError(f"--assigner-opt {o!r}: {target!r} is not one of the --assigner names {list(names)}")
        k, eq, v = kv.partition("=")
        if not eq or not k.strip():
            raise CLIError(f"--assigner-opt {o!r}: expected [A:]key=value")
        out[target][k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


def _build_assigner(name: str, opts: dict[str, Any]):
    from ..assigners import ASSIGNERS

    if name not in ASSIGNERS:
        raise CLIError(f"unknown assigner {name!r}; available: {', '.join(sorted(ASSIGNERS))}")
    cls = ASSIGNERS[name]
    params = _inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in opts if k not in params or k == "self"]
        if bad:
            valid = [k for k in params if k != "self"]
            raise CLIError(f"{name}: unknown option(s) {bad}; valid: {', '.join(valid)}")
    try:
        return cls(**opts)
    except (TypeError, ValueError) as e:
        raise CLIError(f"{name}: {e}") from e


def _add_data_args(p: argparse.ArgumentParser, split_default: str, multi_split: bool = True) -> None:
    p.add_argument("--data", default=None, metavar="DATA.yaml", help="data YAML or folder (default: synthetic data)")
    help_ = "split: train | val | test" + (", a comma list (train,val) or all" if multi_split else "")
    p.add_argument("--split", default=split_default, help=help_ + f" (default {split_default})")
    p.add_argument("--img", type=int, default=320, help="letterbox size (default 320)")
    p.add_argument("--merge-classes", action="store_true", help="merge all classes into one")


def _add_anchor_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--anchors", nargs="+", default=None, metavar="W,H[,W,H..]",
                   help="anchors per level (one argument per level; default: the detector's default anchors)")


# ============================================================================ data helpers
def _splits(cfg, split: str) -> list[str]:
    from ..data.config import SPLITS

    if split == "all":
        if cfg.format == "synthetic":
            return [s for s in SPLITS if cfg.synthetic.num_images(s) > 0]
        have = [s for s in SPLITS if getattr(cfg, s) not in (None, "", [])]
        if not have:
            raise CLIError("the data config defines no split")
        return have
    out = [s.strip() for s in split.split(",") if s.strip()]
    for s in out:
        if s not in SPLITS:
            raise CLIError(f"unknown split {s!r}; allowed: {', '.join(SPLITS)}, a comma list, or all")
    return out


def _datasets(args, merge: bool | None = None) -> tuple[Any, list]:
    """(DataConfig, [evaluation-mode DetectionDataset per split])."""
    from ..data import DataConfigError, build_dataset, load_data_config

    try:
        cfg = load_data_config(args.data)
        merge = args.merge_classes if merge is None else merge
        dss = [build_dataset(cfg, s, args.img, train=False, merge_classes=merge) for s in _splits(cfg, args.split)]
    except DataConfigError as e:
        raise CLIError(str(e)) from e
    return cfg, dss


def letterbox_annotations(ds, i: int):
    """Letterboxed ``(boxes (G, 4), labels (G,), ignore (I, 4))`` of image ``i`` of an evaluation-mode
    dataset, from its annotations only (no image decoding).

    Exactly what ``ds[i]`` returns (``train=False``): the dataset's ``Letterbox`` parameters for the
    annotated image size, ``new = old * scale + pad`` on ``tv_tensors.BoundingBoxes``, hard clamping
    to the canvas and the ``min_visible`` dropping rule of :class:`DetectionTransform`.
    """
    import torch
    from torch import Tensor
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    if ds.train:
        raise ValueError("letterbox_annotations needs an evaluation-mode dataset (train=False): no jitter")
    ann = ds.load_annotations(i)
    h, w = ann["orig_size"]
    tf = ds.transform
    p = tf.letterbox.params_for((h, w))

    def lb(b: Tensor) -> Tensor:
        bx = tv_tensors.BoundingBoxes(b.float().reshape(-1, 4), format="XYXY", canvas_size=(h, w), clamping_mode=None)
        return tf.letterbox.transform(bx, {"lb": p})

    bx, ig = lb(ann["boxes"]), lb(ann["ignore"])
    area0 = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
    bxc = F.clamp_bounding_boxes(bx, clamping_mode="hard").as_subclass(Tensor)
    area1 = (bxc[:, 2] - bxc[:, 0]) * (bxc[:, 3] - bxc[:, 1])
    keep = (bxc[:, 2] > bxc[:, 0]) & (bxc[:, 3] > bxc[:, 1]) & (area1 >= tf.min_visible * area0)
    igc = F.clamp_bounding_boxes(ig, clamping_mode="hard").as_subclass(Tensor)
    keep_ig = (igc[:, 2] > igc[:, 0]) & (igc[:, 3] > igc[:, 1])
    labels = ann["labels"].reshape(-1).to(torch.long)
    return bxc[keep], labels[keep], igc[keep_ig]


def _gt_batches(datasets: Sequence, batch: int, limit: int | None = None) -> Iterator:
    """GroundTruth batches (letterboxed px, padded) over the datasets' annotations."""
    from ..core import GroundTruth

    n_done = 0
    boxes, labels, ignore = [], [], []
    for ds in datasets:
        for i in range(len(ds)):
            if limit is not None and n_done >= limit:
                break
            b, lab, ig = letterbox_annotations(ds, i)
            boxes.append(b)
            labels.append(lab)
            ignore.append(ig)
            n_done += 1
            if len(boxes) == batch:
                yield GroundTruth.from_lists(boxes, labels, ignore, image_size=(ds.img_size, ds.img_size))
                boxes, labels, ignore = [], [], []
    if boxes:
        s = datasets[0].img_size
        yield GroundTruth.from_lists(boxes, labels, ignore, image_size=(s, s))


def _pred_batches(datasets: Sequence, model, batch: int, device, limit: int | None = None) -> Iterator:
    """``(GroundTruth, pred_boxes, pred_scores)`` batches: decoded images through ``model``."""
    import torch

    from ..data import build_loader

    n_done = 0
    for ds in datasets:
        n = len(ds) if limit is None else max(0, min(len(ds), limit - n_done))
        if n == 0:
            continue
        sub = ds if n == len(ds) else torch.utils.data.Subset(ds, range(n))
        for b in build_loader(sub, batch_size=batch, shuffle=False, workers=0):
            b = b.to(device)
            with torch.no_grad():
                out = model(b.images)
                pb, ps = model.decode(out, model.priors(tuple(b.images.shape[-2:]), device=device))
            yield b.gt, pb.detach(), ps.detach()
        n_done += n


def _load_model(weights: str | None, device: str):
    if not weights:
        return None
    from ..models import Detector

    return Detector.load(weights, map_location=device)


def _check_classes(model, datasets) -> None:
    nc = datasets[0].num_classes
    if model is not None and model.num_classes != nc:
        raise CLIError(f"the model has {model.num_classes} class(es) but the data has {nc} "
                       f"({', '.join(datasets[0].names)}); pass --merge-classes for a one-class model")


def _static_anchors(args, model) -> list[list[tuple[float, float]]]:
    from ..models import DEFAULT_ANCHORS

    a = parse_anchors(args.anchors)
    if a is not None:
        return a
    if model is not None and model.anchors is not None:
        return [[tuple(x) for x in lv] for lv in model.anchors]
    return [[tuple(x) for x in lv] for lv in DEFAULT_ANCHORS]


@dataclass
class _Run:
    name: str
    assigner: Any
    needs_pred: bool
    priors_kind: str  # "anchors" | "points" | "model"
    seconds: float = 0.0


def _image_label(path: str) -> str:
    """File name of an image path (synthetic images keep their ``synthetic://split/i`` name)."""
    return path if "://" in path else Path(path).name


def _data_name(args, cfg, datasets) -> str:
    src = args.data or "synthetic"
    return f"{src} ({cfg.format}), split {'+'.join(d.split for d in datasets)}"


def _handle_errors(fn):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CLIError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# ============================================================================ inspect
def add_inspect_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab inspect``."""
    _add_data_args(parser, "train")
    parser.add_argument("--assigner", action="append", required=True, metavar="A",
                        help="assigner name (repeatable; see assignlab.assigners.ASSIGNERS)")
    parser.add_argument("--assigner-opt", action="append", default=[], metavar="A:K=V",
                        help="assigner option (repeatable), value parsed as YAML; A: may be omitted with one assigner")
    parser.add_argument("--weights", default=None, metavar="W", help="checkpoint for prediction-aware assigners")
    _add_anchor_arg(parser)
    parser.add_argument("--out", default="runs/inspect", metavar="DIR", help="output folder (default runs/inspect)")
    parser.add_argument("--batch", type=int, default=64, help="images per assignment batch (default 64)")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dpi", type=int, default=100, help="figure resolution")


@_handle_errors
def cmd_inspect(args: argparse.Namespace) -> int:
    """Run ``assignlab inspect``."""
    import torch

    from ..core import make_priors
    from .plots import plot_inspect
    from .stats import StatsAccumulator, markdown_report

    t0 = time.perf_counter()
    names = list(dict.fromkeys(args.assigner))
    if len(names) != len(args.assigner):
        raise CLIError("each --assigner may be given once")
    opts = parse_assigner_opts(args.assigner_opt, names)
    runs = []
    for n in names:
        a = _build_assigner(n, opts[n])
        needs = bool(getattr(a, "requires_predictions", False))
        runs.append(_Run(n, a, needs, "model" if needs else ("anchors" if n in ANCHOR_BASED else "points")))
    device = torch.device(args.device)
    model = _load_model(args.weights, args.device)
    skipped: dict[str, str] = {}
    if model is None:
        for r in runs:
            if r.needs_pred:
                skipped[r.name] = "prediction-aware: needs a trained model (pass --weights W)"
                print(f"skipping {r.name}: it is prediction-aware and needs a checkpoint (--weights W)", file=sys.stderr)
        runs = [r for r in runs if not r.needs_pred]
    merge = args.merge_classes
    if model is not None and model.num_classes == 1 and not merge:
        merge = True  # a one-class model: compare against one-class GT
    cfg, datasets = _datasets(args, merge)
    if any(r.needs_pred for r in runs):
        _check_classes(model, datasets)
    S = args.img
    anchors = _static_anchors(args, model)
    priors = {
        "anchors": make_priors((S, S), strides=STRIDES, anchors=anchors, device=device),
        "points": make_priors((S, S), strides=STRIDES, anchors=None, device=device),
    }
    if model is not None:
        priors["model"] = model.priors((S, S), device=device)
    accs = {r.name: StatsAccumulator(num_levels=len(STRIDES)) for r in runs}
    static = [r for r in runs if not r.needs_pred]
    dynamic = [r for r in runs if r.needs_pred]
    n_images = 0
    if static:
        for gt in _gt_batches(datasets, args.batch, args.max_images):
            gt = gt.to(device)
            n_images += gt.batch_size
            for r in static:
                t = time.perf_counter()
                res = r.assigner(priors[r.priors_kind], gt)
                r.seconds += time.perf_counter() - t
                accs[r.name].update(priors[r.priors_kind], gt, res)
    if dynamic:
        model.eval()
        n_dyn = 0
        for gt, pb, ps in _pred_batches(datasets, model, min(args.batch, 16), device, args.max_images):
            n_dyn += gt.batch_size
            for r in dynamic:
                t = time.perf_counter()
                # fresh copies: an assigner must not see another one's in-place changes
                res = r.assigner(priors["model"], gt, pred_boxes=pb.clone(), pred_scores=ps.clone())
                r.seconds += time.perf_counter() - t
                accs[r.name].update(priors["model"], gt, res)
        n_images = max(n_images, n_dyn)
    summaries = {n: a.summary() for n, a in accs.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot_inspect(summaries, out, dpi=args.dpi) if summaries else []
    seconds = time.perf_counter() - t0

    def priors_desc(kind: str) -> str:
        if kind == "anchors":
            return "anchors " + _format_anchors(anchors)
        if kind == "points":
            return "points (IoU statistics: 8*stride squares)"
        return ("model anchors " + _format_anchors(model.anchors)) if model.anchors is not None else "model points"

    settings = {
        "data": args.data or "synthetic",
        "format": cfg.format,
        "splits": [d.split for d in datasets],
        "img_size": S,
        "merge_classes": merge,
        "classes": datasets[0].names,
        "images": n_images,
        "weights": args.weights,
        "strides": list(STRIDES),
        "assigners": {
            r.name: {"repr": repr(r.assigner), "priors": priors_desc(r.priors_kind),
                     "prediction_aware": r.needs_pred, "assign_seconds": round(r.seconds, 3)}
            for r in runs
        },
        "skipped": skipped,
        "seconds": round(seconds, 2),
    }
    (out / "inspect.json").write_text(json.dumps({**settings, "summaries": summaries}, indent=1))
    md = [
        "# Assignment statistics (assignlab inspect)",
        "",
        f"- data: {_data_name(args, cfg, datasets)}, {n_images} images, letterbox {S} px, "
        f"classes: {', '.join(datasets[0].names)}",
        f"- strides {'/'.join(map(str, STRIDES))}" + (f"; weights {args.weights}" if args.weights else ""),
    ]
    for r in runs:
        md.append(f"- **{r.name}**: `{r.assigner!r}` -- priors: {priors_desc(r.priors_kind)}; "
                  f"assignment time {r.seconds:.2f} s")
    for n, why in skipped.items():
        md.append(f"- **{n}**: skipped -- {why}")
    md += ["", markdown_report(summaries) if summaries else "(no assigner could run)", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    md += ["", f"Total time {seconds:.1f} s.", ""]
    (out / "inspect.md").write_text("\n".join(md))
    print(markdown_report(summaries) if summaries else "no assigner could run")
    print(f"{n_images} images, {len(runs)} assigner(s) in {seconds:.1f} s -> {out}/inspect.md, inspect.json, "
          + ", ".join(p.name for p in pngs))
    return 0 if runs else 1


# ============================================================================ show
def add_show_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab show``."""
    _add_data_args(parser, "val", multi_split=False)
    parser.add_argument("--index", type=int, default=0, help="image index in the split (default 0)")
    parser.add_argument("--assigner", required=True, metavar="A", help="assigner name")
    parser.add_argument("--assigner-opt", action="append", default=[], metavar="K=V",
                        help="assigner option (repeatable), value parsed as YAML")
    parser.add_argument("--weights", default=None, metavar="W", help="checkpoint (prediction-aware assigners)")
    _add_anchor_arg(parser)
    parser.add_argument("--out", required=True, metavar="x.png", help="output PNG")
    parser.add_argument("--dpi", type=int, default=100, help="figure resolution (default 100)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


@_handle_errors
def cmd_show(args: argparse.Namespace) -> int:
    """Run ``assignlab show``."""
    import torch

    from ..core import GroundTruth, make_priors
    from .draw import draw_assignment

    opts = parse_assigner_opts(args.assigner_opt, [args.assigner])[args.assigner]
    assigner = _build_assigner(args.assigner, opts)
    needs = bool(getattr(assigner, "requires_predictions", False))
    model = _load_model(args.weights, args.device)
    if needs and model is None:
        raise CLIError(f"{args.assigner} is prediction-aware: it needs a trained model (pass --weights W)")
    merge = args.merge_classes or (model is not None and model.num_classes == 1)
    if "," in args.split or args.split == "all":
        raise CLIError("show takes one --split")
    cfg, (ds,) = _datasets(args, merge)
    if not -len(ds) <= args.index < len(ds):
        raise CLIError(f"--index {args.index} out of range: {ds.name} has {len(ds)} images")
    device = torch.device(args.device)
    image, target = ds[args.index]
    S = args.img
    gt = GroundTruth.from_lists([target["boxes"]], [target["labels"]], [target["ignore"]], image_size=(S, S)).to(device)
    preds = {}
    if needs:
        _check_classes(model, [ds])
        priors = model.priors((S, S), device=device)
        with torch.no_grad():
            pb, ps = model.decode(model.eval()(image[None].to(device)), priors)
        preds = {"pred_boxes": pb, "pred_scores": ps}
    elif args.assigner in ANCHOR_BASED:
        priors = make_priors((S, S), strides=STRIDES, anchors=_static_anchors(args, model), device=device)
    else:
        priors = make_priors((S, S), strides=STRIDES, anchors=None, device=device)
    res = assigner(priors, gt, **preds)
    n_pos = len(res.matches) if res.matches is not None else int(res.positive.sum())
    meta = target["meta"]
    title = (f"{args.assigner} on {_image_label(meta.path)} ({ds.split} #{args.index % len(ds)}): "
             f"{int(gt.mask.sum())} GTs, {n_pos} positives")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_assignment(image, priors, gt, res, title=title, out=str(out), dpi=args.dpi)
    print(f"{title} -> {out}")
    if meta.error:
        print(f"warning: {meta.error}", file=sys.stderr)
    return 0


# ============================================================================ heatmap
def add_heatmap_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab heatmap``."""
    parser.add_argument("--weights", required=True, metavar="W", help="trained checkpoint")
    parser.add_argument("--image", default=None, metavar="IMG",
                        help="image file (default: image --index of --data / --split)")
    parser.add_argument("--data", default=None, metavar="DATA.yaml",
                        help="with --index instead of --image (default: synthetic data)")
    parser.add_argument("--split", default="val", help="split for --index (default val)")
    parser.add_argument("--index", type=int, default=0, help="image index when no --image is given")
    parser.add_argument("--img", type=int, default=None, help="letterbox size (default: checkpoint's, else 320)")
    parser.add_argument("--out", required=True, metavar="x.png", help="output PNG")
    parser.add_argument("--dpi", type=int, default=100, help="figure resolution (default 100)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


@_handle_errors
def cmd_heatmap(args: argparse.Namespace) -> int:
    """Run ``assignlab heatmap``: per-level ``max over classes of score`` (objectness x class
    probability for the anchor head, class probability for the free head)."""
    import torch

    from .draw import draw_heatmaps

    model = _load_model(args.weights, args.device)
    S = int(args.img or model.img_size or 320)
    device = torch.device(args.device)
    if args.image:
        from ..models.predictor import letterbox, to_image_tensor

        try:
            image = letterbox(to_image_tensor(args.image), S)[0]
        except FileNotFoundError as e:
            raise CLIError(f"--image {args.image}: no such file") from e
        except Exception as e:  # noqa: BLE001 - decoder errors of any type
            raise CLIError(f"--image {args.image}: cannot read the image: {type(e).__name__}: {e}") from e
        label = Path(args.image).name
    else:
        ns = argparse.Namespace(data=args.data, split=args.split, img=S, merge_classes=False)
        if "," in args.split or args.split == "all":
            raise CLIError("heatmap takes one --split")
        _, (ds,) = _datasets(ns)
        if not -len(ds) <= args.index < len(ds):
            raise CLIError(f"--index {args.index} out of range: {ds.name} has {len(ds)} images")
        image, target = ds[args.index]
        label = f"{_image_label(target['meta'].path)} ({ds.split} #{args.index % len(ds)})"
    priors = model.priors((S, S), device=device)
    with torch.no_grad():
        _, scores = model.decode(model.eval()(image[None].to(device)), priors)
    s = scores[0].amax(-1)
    what = "objectness x class" if model.kind == "anchor" else "class"
    title = f"{label}: max over classes of {what} score, {Path(args.weights).name}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_heatmaps(image, priors, s, out=str(out), title=title, dpi=args.dpi)
    print(f"{title}; max score {float(s.max()):.3f} -> {out}")
    return 0


# ============================================================================ anchors
def add_anchors_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab anchors``."""
    _add_data_args(parser, "train")
    _add_anchor_arg(parser)
    parser.add_argument("--weights", default=None, metavar="W", help="take the current anchors from this model")
    parser.add_argument("--anchor-t", type=float, default=4.0, help="YOLOv5 anchor_t matching threshold (default 4)")
    parser.add_argument("--evolve", action="store_true", help="fit new anchors (k-means + genetic evolution)")
    parser.add_argument("--per-level", type=int, default=1, choices=[1, 2, 3, 4, 5],
                        help="anchors per level for --evolve (default 1)")
    parser.add_argument("--gen", type=int, default=1000, help="generations of the genetic search (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of --evolve")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images")
    parser.add_argument("--out", default="runs/anchors", metavar="DIR", help="output folder (default runs/anchors)")
    parser.add_argument("--dpi", type=int, default=100, help="figure resolution")


PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def _anchor_report(wh, anchors, thr: float) -> dict[str, Any]:
    import numpy as np

    from .anchors import anchor_fitness, anchor_summary, check_adjacent_levels, ratio_metric

    flat = np.array([a for lv in anchors for a in lv], dtype=np.float32)
    level_of = np.array([li for li, lv in enumerate(anchors) for _ in lv])
    s = anchor_summary(wh, flat, thr)
    x, best = ratio_metric(wh, flat)
    best_level = level_of[x.argmax(1).numpy()] if len(x) else np.zeros(0, dtype=int)
    recalled = (best > 1 / thr).numpy()
    pairs = check_adjacent_levels(anchors, anchor_t=thr, warn=False)
    return {
        "anchors": [[[round(float(w), 2), round(float(h), 2)] for w, h in lv] for lv in anchors],
        "bpr": s["bpr"],
        "aat": s["aat"],
        "fitness": anchor_fitness(wh, flat, thr),
        "mean_best_ratio": s["mean_best"],
        "best_level_share": [float((best_level == li).mean()) if len(wh) else 0.0 for li in range(len(anchors))],
        "unrecalled": int((~recalled).sum()),
        "adjacent_pairs": [
            {"level_a": p.level_a, "anchor_a": p.anchor_a, "level_b": p.level_b, "anchor_b": p.anchor_b,
             "ratio": round(p.ratio, 3)}
            for p in pairs
        ],
    }


def _anchor_md(title: str, r: dict[str, Any], thr: float) -> list[str]:
    lines = [
        f"### {title}",
        "",
        f"- anchors (w, h px per level): {r['anchors']}  (`--anchors {_format_anchors(r['anchors'])}`)",
        f"- best possible recall (anchor_t={thr:g}): **{r['bpr']:.4f}** ({r['unrecalled']} boxes fit no anchor)",
        f"- anchors above threshold per box: {r['aat']:.2f}; fitness {r['fitness']:.4f}; mean best ratio "
        f"{r['mean_best_ratio']:.3f}",
        "- share of boxes whose best anchor is on level 0/1/2...: "
        + " / ".join(f"{v:.2f}" for v in r["best_level_share"]),
    ]
    if r["adjacent_pairs"]:
        lines.append(f"- adjacent-level check: {len(r['adjacent_pairs'])} pair(s) closer than anchor_t "
                     "(a GT shaped like either trains both levels): "
                     + ", ".join(f"L{p['level_a']}a{p['anchor_a']}~L{p['level_b']}a{p['anchor_b']} "
                                 f"(ratio {p['ratio']:.2f})" for p in r["adjacent_pairs"]))
    else:
        lines.append(f"- adjacent-level check: no pair of adjacent-level anchors within anchor_t={thr:g}")
    return lines + [""]


def _plot_anchor_scatter(wh, reports: dict[str, dict], thr: float, path: Path, title: str, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    if len(wh):
        ax.scatter(wh[:, 0], wh[:, 1], s=4, alpha=0.35, color="tab:blue", lw=0, label=f"boxes (n={len(wh)})")
    styles = [("tab:red", "X"), ("tab:green", "*"), ("tab:purple", "P")]
    for (name, r), (col, mk) in zip(reports.items(), styles):
        a = np.array([x for lv in r["anchors"] for x in lv], dtype=np.float64)
        ax.scatter(a[:, 0], a[:, 1], s=140, marker=mk, color=col, edgecolor="k", lw=0.6, zorder=5,
                   label=f"{name} (BPR {r['bpr']:.3f})")
        for w, h in a:  # the anchor_t matching window of each anchor
            ax.add_patch(Rectangle((w / thr, h / thr), w * thr - w / thr, h * thr - h / thr, fill=False,
                                   ls="--", lw=0.8, edgecolor=col, alpha=0.8))
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo = max(0.5, float(wh.min()) * 0.8) if len(wh) else 1.0
    hi = float(wh.max()) * 1.25 if len(wh) else 100.0
    for r in reports.values():
        for lv in r["anchors"]:
            for w, h in lv:
                lo, hi = min(lo, min(w, h) / thr * 0.9), max(hi, max(w, h) * thr * 1.1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.6, zorder=0)
    ax.set_xlabel("box width, px (after letterbox)")
    ax.set_ylabel("box height, px (after letterbox)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.legend(fontsize=8, loc="upper left")
    fig.text(0.99, 0.01, f"dashed: anchor_t={thr:g} matching window of each anchor", ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


@_handle_errors
def cmd_anchors(args: argparse.Namespace) -> int:
    """Run ``assignlab anchors``."""
    import numpy as np

    from .anchors import kmean_anchors
    from .stats import SIZE_NAMES, size_bucket

    t0 = time.perf_counter()
    if args.anchor_t <= 1:
        raise CLIError(f"--anchor-t must be > 1, got {args.anchor_t}")
    model = _load_model(args.weights, "cpu")
    cfg, datasets = _datasets(args)
    boxes = []
    n_img = 0
    for ds in datasets:
        for i in range(len(ds)):
            if args.max_images is not None and n_img >= args.max_images:
                break
            boxes.append(letterbox_annotations(ds, i)[0])
            n_img += 1
    import torch

    b = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    wh_t = (b[:, 2:] - b[:, :2]).float()
    wh = wh_t.numpy()
    side = np.sqrt(wh.prod(1)) if len(wh) else np.zeros(0)
    thr = float(args.anchor_t)

    def pct(v):
        return {f"p{q}": round(float(np.percentile(v, q)), 2) for q in PERCENTILES} if len(v) else {}

    buckets = torch.bincount(size_bucket(b), minlength=len(SIZE_NAMES)).tolist() if len(b) else [0] * len(SIZE_NAMES)
    stats = {
        "count": int(len(wh)),
        "images": n_img,
        "w": pct(wh[:, 0]) if len(wh) else {},
        "h": pct(wh[:, 1]) if len(wh) else {},
        "sqrt_area": pct(side),
        "aspect_w_over_h_median": round(float(np.median(wh[:, 0] / wh[:, 1])), 3) if len(wh) else None,
        "by_size": dict(zip(SIZE_NAMES, buckets)),
    }
    if not len(wh):
        raise CLIError(f"no boxes in {_data_name(args, cfg, datasets)}")
    current = _static_anchors(args, model)
    reports = {"current": _anchor_report(wh_t, current, thr)}
    if args.evolve:
        nl = len(current)
        k = kmean_anchors(wh_t, n=nl * args.per_level, img_size=args.img, thr=thr, gen=args.gen, seed=args.seed)
        evolved = [[(float(w), float(h)) for w, h in k[li * args.per_level:(li + 1) * args.per_level]]
                   for li in range(nl)]
        reports["evolved"] = _anchor_report(wh_t, evolved, thr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "anchors.png"
    dname = _data_name(args, cfg, datasets)
    _plot_anchor_scatter(wh, reports, thr, png, f"{dname}, letterbox {args.img}", args.dpi)
    seconds = time.perf_counter() - t0
    result = {"data": args.data or "synthetic", "splits": [d.split for d in datasets], "img_size": args.img,
              "anchor_t": thr, "boxes": stats, **reports, "seconds": round(seconds, 2)}
    (out / "anchors.json").write_text(json.dumps(result, indent=1))

    def row(name: str, d: dict) -> str:
        return f"| {name} | " + " | ".join(f"{d[f'p{q}']:.1f}" for q in PERCENTILES) + " |"

    md = [
        "# Box sizes and anchor fit (assignlab anchors)",
        "",
        f"- data: {dname}, {n_img} images, {stats['count']} boxes, letterbox {args.img} px",
        f"- median aspect w/h {stats['aspect_w_over_h_median']}; boxes per sqrt(area) bucket: "
        + ", ".join(f"{k} px: {v}" for k, v in stats["by_size"].items()),
        "",
        "| px | " + " | ".join(f"p{q}" for q in PERCENTILES) + " |",
        "|---|" + "---|" * len(PERCENTILES),
        row("width", stats["w"]),
        row("height", stats["h"]),
        row("sqrt(area)", stats["sqrt_area"]),
        "",
    ]
    md += _anchor_md("Current anchors", reports["current"], thr)
    if "evolved" in reports:
        md += _anchor_md(f"Evolved anchors (k-means + {args.gen} generations, {args.per_level} per level)",
                         reports["evolved"], thr)
    md += [f"![box sizes]({png.name})", ""]
    (out / "anchors.md").write_text("\n".join(md))
    print("\n".join(md[:-2]))
    print(f"{seconds:.1f} s -> {out}/anchors.md, anchors.json, {png.name}")
    return 0


# ============================================================================ compare
def add_compare_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab compare``: delegated to :mod:`assignlab.analysis.report`
    (``add_compare_args``, or ``add_args``). A missing module makes the command unavailable."""
    import importlib

    # ModuleNotFoundError when report.py does not exist -> the dispatcher marks the command unavailable
    report = importlib.import_module("assignlab.analysis.report")
    fn = getattr(report, "add_compare_args", None) or report.add_args
    fn(parser)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run ``assignlab compare`` (:mod:`assignlab.analysis.report`: ``cmd_compare``, or ``cmd``)."""
    import importlib

    report = importlib.import_module("assignlab.analysis.report")
    fn = getattr(report, "cmd_compare", None) or report.cmd
    return int(fn(args) or 0)
