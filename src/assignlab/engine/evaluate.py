"""COCO-style box AP of a detector on a dataset split, with ``pycocotools``.

Pipeline: the dataset's letterboxed images go through the model and its post-processing
(score threshold ``conf``, class-wise NMS at ``iou``, at most ``max_det`` boxes per image); each
box is mapped back to the ORIGINAL image's pixels with the image's :class:`ImageMeta`::

    x_orig = (x_letterboxed - pad_x) / scale        y_orig = (y_letterboxed - pad_y) / scale

and clipped to the original image. Example: a 640x480 (w x h) image letterboxed to 320 has
``scale = 0.5`` and ``pad = (0, 40)``; the letterboxed box ``(10, 50, 30, 90)`` is
``(20, 20, 60, 100)`` in the original image. Boxes are written as COCO results
(``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``) and scored against
``dataset.coco_gt()`` (also in original coordinates) by ``pycocotools.cocoeval.COCOeval``.

Returned metrics (fractions in [0, 1]; ``nan`` where COCO reports -1, i.e. no GT in that range):
``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``AP_small`` / ``AP_medium`` / ``AP_large`` (area
< 32², 32²..96², > 96² px), ``AR1``, ``AR10``, ``AR100``. COCO uses at most 100 detections per
image for AP, whatever ``max_det``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .ema import unwrap_model

__all__ = ["METRIC_KEYS", "coco_eval", "evaluate", "evaluate_checkpoint", "to_original_coords", "format_metrics"]

METRIC_KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100")


def to_original_coords(
    boxes: torch.Tensor, scale: float, pad: Sequence[float], orig_size: Sequence[int]
) -> torch.Tensor:
    """``(K, 4)`` letterboxed xyxy -> original-image xyxy, clipped to ``orig_size = (h, w)``."""
    px, py = float(pad[0]), float(pad[1])
    off = boxes.new_tensor([px, py, px, py])
    out = (boxes - off) / float(scale)
    h, w = float(orig_size[0]), float(orig_size[1])
    lim = boxes.new_tensor([w, h, w, h])
    return torch.minimum(out.clamp(min=0), lim)


def _complete_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a COCO GT dict with the fields pycocotools needs filled in (area, iscrowd, id)."""
    anns = []
    for i, a in enumerate(gt.get("annotations", [])):
        a = dict(a)
        x, y, w, h = (float(v) for v in a["bbox"])
        a.setdefault("area", w * h)
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        anns.append(a)
    return {
        "info": dict(gt.get("info", {})),
        "images": [dict(im) for im in gt.get("images", [])],
        "annotations": anns,
        "categories": [dict(c) for c in gt.get("categories", [])],
    }


def coco_eval(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO bbox metrics of ``detections`` (COCO results list) against the GT dict ``gt``.

    ``image_ids`` restricts the evaluation (default: every image of ``gt``). With no detection at
    all, every AP/AR is 0 (``nan`` for size ranges without GT).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gtd = _complete_gt(gt)
    ids = sorted(int(i) for i in (image_ids if image_ids is not None else (im["id"] for im in gtd["images"])))
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if not verbose else contextlib.nullcontext():
        coco_gt = COCO()
        coco_gt.dataset = gtd
        coco_gt.createIndex()
        if not detections:
            return _empty_metrics(gtd, ids)
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        E = COCOeval(coco_gt, coco_dt, "bbox")
        E.params.imgIds = ids
        E.evaluate()
        E.accumulate()
        E.summarize()
    return {k: (float("nan") if float(v) < 0 else float(v)) for k, v in zip(METRIC_KEYS, E.stats)}


def _empty_metrics(gtd: dict[str, Any], ids: list[int]) -> dict[str, float]:
    idset = set(ids)
    areas = [a["area"] for a in gtd["annotations"] if a["image_id"] in idset and not a.get("iscrowd", 0)]
    ranges = {"AP_small": (0, 32**2), "AP_medium": (32**2, 96**2), "AP_large": (96**2, float("inf"))}
    out = {k: (0.0 if areas else float("nan")) for k in METRIC_KEYS}
    for k, (lo, hi) in ranges.items():
        out[k] = 0.0 if any(lo <= a < hi for a in areas) else float("nan")
    return out


def _category_ids(names: Sequence[str], gt: Mapping[str, Any]) -> list[int]:
    """COCO category id of each label index: by name when the GT's categories carry the names,
    else by order."""
    cats = list(gt.get("categories", []))
    by_name = {str(c.get("name")): int(c["id"]) for c in cats}
    if names and all(n in by_name for n in names):
        return [by_name[n] for n in names]
    if len(cats) >= len(names):
        return [int(c["id"]) for c in cats[: len(names)]]
    raise ValueError(
        f"cannot map {len(names)} class names to the {len(cats)} COCO categories of the dataset's GT"
    )


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: Any,
    img_size: int,
    conf: float = 0.001,
    iou: float = 0.6,
    batch: int = 8,
    max_det: int = 300,
    workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """COCO results (original image coords) of ``model`` on every image of ``dataset``."""
    from ..data import build_loader

    ds_size = getattr(dataset, "img_size", None)
    if ds_size is not None and int(ds_size) != int(img_size):
        raise ValueError(f"the dataset letterboxes to {ds_size} px but img_size={img_size} was asked; "
                         "build the dataset with the evaluation size")
    model = unwrap_model(model)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    names = list(getattr(dataset, "names", []))
    gt = dataset.coco_gt()
    cat_ids = _category_ids(names or [str(c["name"]) for c in gt.get("categories", [])], gt)
    loader = build_loader(dataset, batch_size=batch, shuffle=False, workers=workers)
    results: list[dict[str, Any]] = []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    try:
        for b in it:
            images = b.images.to(device, non_blocking=True).float()
            out = model(images)
            priors = model.priors(tuple(images.shape[-2:]))
            dets = model.postprocess(out, priors, conf=conf, iou=iou, max_det=max_det)
            for det, meta in zip(dets, b.meta):
                if det["boxes"].numel() == 0:
                    continue
                bx = to_original_coords(det["boxes"].float().cpu(), meta.scale, meta.pad, meta.orig_size)
                wh = bx[:, 2:] - bx[:, :2]
                for (x1, y1), (w, h), s, lab in zip(
                    bx[:, :2].tolist(), wh.tolist(), det["scores"].float().cpu().tolist(), det["labels"].cpu().tolist()
                ):
                    results.append({
                        "image_id": int(meta.image_id),
                        "category_id": cat_ids[int(lab)],
                        "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                        "score": round(float(s), 5),
                    })
    finally:
        model.train(was_training)
    return results


def evaluate(
    model: nn.Module,
    dataset: Any,
    img_size: int,
    conf: float = 0.001,
    iou: float = 0.6,
    batch: int = 8,
    out_json: str | Path | None = None,
    max_det: int = 300,
    workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """COCO AP of ``model`` on ``dataset`` (see the module docstring).

    ``out_json``: also write the predictions as a COCO results JSON file. The model's
    train/eval mode is restored afterwards. The returned dict also holds ``num_images`` and
    ``num_detections``.
    """
    results = predict_dataset(
        model, dataset, img_size, conf=conf, iou=iou, batch=batch, max_det=max_det, workers=workers,
        device=device, progress=progress,
    )
    if out_json is not None:
        p = Path(out_json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(results))
    gt = dataset.coco_gt()
    metrics = coco_eval(gt, results)
    metrics["num_images"] = float(len(gt.get("images", [])))
    metrics["num_detections"] = float(len(results))
    return metrics


def evaluate_checkpoint(
    weights: str | Path,
    data: str | None = "<from checkpoint>",
    split: str = "val",
    img_size: int | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    batch: int = 8,
    max_det: int = 300,
    workers: int = 0,
    device: str = "auto",
    out_json: str | Path | None = None,
    use_ema: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    """Load a training checkpoint (EMA weights when present) and :func:`evaluate` it on ``split``.

    ``data``: data YAML, ``None`` for synthetic data, or the default: the data of the training
    run (and its ``merge_classes`` setting). ``img_size`` defaults to the training size.
    """
    from ..data import build_dataset, load_data_config
    from .checkpoint import CheckpointError, load_checkpoint
    from .train import build_model_from_checkpoint, resolve_device

    ck = load_checkpoint(weights)
    cfg = ck.get("config") or {}
    if data == "<from checkpoint>":
        data = cfg.get("data")
    size = int(img_size or cfg.get("img") or 320)
    dev = resolve_device(device)
    model = build_model_from_checkpoint(ck, use_ema=use_ema).to(dev)
    dcfg = load_data_config(data)
    ds = build_dataset(dcfg, split, size, train=False, merge_classes=bool(cfg.get("merge_classes", False)),
                       strict=bool(cfg.get("strict", False)), seed=int(cfg.get("seed", 0)))
    names = list(ck.get("names") or [])
    if names and list(ds.names) != names:
        raise CheckpointError(
            f"{weights} was trained on classes {names} but {data or 'synthetic data'} split {split!r} "
            f"has {list(ds.names)}"
        )
    return evaluate(model, ds, size, conf=conf, iou=iou, batch=batch, out_json=out_json, max_det=max_det,
                    workers=workers, device=dev, progress=progress)


def format_metrics(metrics: Mapping[str, float], title: str | None = None) -> str:
    """A small fixed-width table of the AP metrics (percent)."""
    lines = [title] if title else []
    keys = [k for k in METRIC_KEYS if k in metrics]
    lines.append("  ".join(f"{k:>9}" for k in keys))
    lines.append("  ".join(
        f"{'-':>9}" if (isinstance(metrics[k], float) and math.isnan(metrics[k])) else f"{100 * metrics[k]:9.2f}"
        for k in keys
    ))
    return "\n".join(lines)
