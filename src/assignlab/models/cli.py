"""Command-line front ends of ``assignlab predict`` and ``assignlab export`` (wired in ``__main__``).

::

    assignlab predict --weights runs/atss/best.pt --source photos/ --out runs/predict \\
        [--img 320] [--conf 0.25] [--iou 0.5] [--max-det 300] [--save-txt]
    assignlab export --weights runs/atss/best.pt --format onnx [--img 320] [--dynamic-batch] \\
        [--with-decode] [--out det.onnx]

``predict``
-----------
``--source`` is one image, a folder of images (not recursive; suffixes in :data:`IMAGE_SUFFIXES`)
or a ``.txt`` file listing one image path per line (relative paths are relative to the list
file's folder; blank lines and ``#`` comments are skipped). Every image goes through
:func:`assignlab.models.predictor.predict` (letterbox -> model -> NMS -> exact inverse letterbox),
and ``--out`` receives:

* ``<stem>.<ext>``: a copy of the image with the boxes, class names and scores drawn (JPEG input
  gives JPEG output, every other format PNG);
* ``predictions.json``: COCO *results* format, one entry per detection::

      {"image_id": 0, "category_id": 1, "bbox": [x, y, w, h], "score": 0.91}

  with ``image_id`` the index of the image in the (sorted) source list, ``category_id = label + 1``
  (the convention of :meth:`DetectionDataset.coco_gt`) and ``bbox`` in ORIGINAL image pixels;
* ``image_ids.json``: the ``image_id`` -> file mapping (``images``: id, file_name, stem, width,
  height, output) and the ``categories`` (id, name), so the results can be joined with a GT file;
* with ``--save-txt``, ``labels/<stem>.txt``: YOLO format ``cls cx cy w h conf`` normalised by the
  original image width / height, one line per detection.

Files that cannot be decoded are reported by name on stderr and skipped; the summary at the end
gives their count. The exit code is 1 only when no image at all could be read.

``export``
----------
Calls :func:`assignlab.models.export.export_onnx`, then loads the file with onnxruntime, runs it on
a random input and prints the maximum absolute difference to PyTorch for every output. The exit
code is 1 when some output differs by more than ``atol + rtol * |torch|``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_SUFFIXES",
    "add_export_args",
    "add_predict_args",
    "cmd_export",
    "cmd_predict",
    "draw_detections",
    "list_sources",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FALLBACK_IMG_SIZE = 320  # when neither --img nor the checkpoint gives a size

# distinct, readable box colours (RGB), cycled by class
_PALETTE = [
    (255, 56, 56), (44, 153, 168), (255, 157, 151), (0, 194, 255), (255, 112, 31), (72, 249, 10),
    (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (255, 178, 29), (132, 56, 255),
]


# --------------------------------------------------------------------------------------- predict
def add_predict_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab predict``."""
    parser.add_argument("--weights", required=True, metavar="W", help="checkpoint (Detector.load format)")
    parser.add_argument("--source", required=True, metavar="PATH",
                        help="an image, a folder of images, or a .txt file listing images")
    parser.add_argument("--img", type=int, default=None,
                        help=f"letterbox size (default: the checkpoint's training size, else {FALLBACK_IMG_SIZE})")
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold")
    parser.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--save-txt", action="store_true", help="also write YOLO-format labels/<stem>.txt")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:K)")
    parser.add_argument("--line-width", type=int, default=None, help="box line width in px (default: from image size)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def list_sources(source: str | Path) -> list[Path]:
    """The image files of ``source`` (see the module docstring). Raises ``FileNotFoundError``."""
    p = Path(source)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file() and p.suffix.lower() == ".txt":
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            f = Path(s).expanduser()
            if not f.is_absolute() and not (f.exists() and not (p.parent / f).exists()):
                f = p.parent / f  # relative to the list file (unless only the cwd-relative one exists)
            out.append(f)
        return out
    if p.is_file():
        return [p]
    raise FileNotFoundError(f"--source {source}: no such file or folder")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def draw_detections(image, boxes, labels, scores, names, line_width: int | None = None):
    """Draw ``boxes`` ``(K, 4)`` xyxy px with ``"name score"`` tags on a copy of a PIL RGB image."""
    from PIL import ImageDraw

    img = image.convert("RGB").copy()
    w, h = img.size
    lw = line_width or max(1, round(min(w, h) / 250))
    font = _font(max(10, round(min(w, h) / 40)))
    draw = ImageDraw.Draw(img)
    for (x1, y1, x2, y2), lab, sc in zip(boxes, labels, scores):
        col = _PALETTE[int(lab) % len(_PALETTE)]
        draw.rectangle([x1, y1, x2, y2], outline=col, width=lw)
        tag = f"{names[int(lab)]} {float(sc):.2f}"
        l, t, r, b = draw.textbbox((0, 0), tag, font=font)
        tw, th = r - l, b - t
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1  # above the box, else inside it
        tx = min(max(0, x1), max(0, w - tw - 2))
        draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=col)
        draw.text((tx + 1 - l, ty + 1 - t), tag, fill=(255, 255, 255), font=font)
    return img


def _output_name(path: Path, used: set[str]) -> str:
    ext = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    stem = path.stem
    name, k = stem, 1
    while name in used:  # same stem from two folders of a list file
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    return name + ext


def _read(path: Path):
    """``(PIL RGB image, (3, H, W) uint8 tensor)``; raises on an unreadable file."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        rgb = im.convert("RGB")
    t = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
    return rgb, t


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``assignlab predict``."""
    import torch
    from tqdm import tqdm

    from .predictor import load_detector, predict

    try:
        files = list_sources(args.source)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not files:
        print(f"error: no images found in {args.source} (suffixes: {', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
        return 2
    model = load_detector(args.weights, map_location=torch.device(args.device))
    size = int(args.img or model.img_size or FALLBACK_IMG_SIZE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.save_txt:
        (out / "labels").mkdir(exist_ok=True)
    names = list(model.names)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    unreadable: list[tuple[Path, str]] = []
    used: set[str] = set()
    pending: list[tuple[int, Path, Any, Any]] = []
    n_det = 0

    def flush() -> None:
        nonlocal n_det
        if not pending:
            return
        dets = predict(model, [t for *_, t in pending], img_size=size, conf=args.conf, iou=args.iou,
                       max_det=args.max_det, batch_size=len(pending))
        for (image_id, path, pil, _t), d in zip(pending, dets):
            w, h = pil.size
            name = _output_name(path, used)
            boxes = d["boxes"].tolist()
            scores = d["scores"].tolist()
            labels = d["labels"].tolist()
            n_det += len(boxes)
            drawn = draw_detections(pil, boxes, labels, scores, names, args.line_width)
            if name.endswith(".jpg"):
                drawn.save(out / name, quality=92)
            else:
                drawn.save(out / name)
            images.append({"id": image_id, "file_name": str(path), "stem": path.stem, "width": w, "height": h,
                           "output": name})
            for (x1, y1, x2, y2), lab, sc in zip(boxes, labels, scores):
                results.append({
                    "image_id": image_id,
                    "category_id": int(lab) + 1,
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(sc), 5),
                })
            if args.save_txt:
                lines = [
                    f"{lab} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
                    f"{(y2 - y1) / h:.6f} {sc:.5f}"
                    for (x1, y1, x2, y2), lab, sc in zip(boxes, labels, scores)
                ]
                (out / "labels" / (Path(name).stem + ".txt")).write_text("".join(s + "\n" for s in lines))
        pending.clear()

    bar = tqdm(files, desc="predict", unit="img", disable=not args.progress or len(files) < 2, file=sys.stderr)
    for image_id, path in enumerate(bar):
        try:
            pil, t = _read(path)
        except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable"
            unreadable.append((path, f"{type(e).__name__}: {e}"))
            tqdm.write(f"skipped unreadable image {path}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        pending.append((image_id, path, pil, t))
        if len(pending) >= args.batch:
            flush()
    flush()
    bar.close()

    (out / "predictions.json").write_text(json.dumps(results))
    meta = {
        "weights": str(args.weights),
        "img_size": size,
        "conf": args.conf,
        "iou": args.iou,
        "images": images,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "unreadable": [{"file_name": str(p), "error": err} for p, err in unreadable],
    }
    (out / "image_ids.json").write_text(json.dumps(meta, indent=1))
    dt = time.perf_counter() - t0
    print(f"{len(images)} images, {n_det} detections in {dt:.1f} s -> {out}/ (predictions.json, image_ids.json"
          + (", labels/" if args.save_txt else "") + ")")
    if unreadable:
        print(f"{len(unreadable)} unreadable file(s) skipped: " + ", ".join(str(p) for p, _ in unreadable),
              file=sys.stderr)
    return 1 if not images else 0


# ---------------------------------------------------------------------------------------- export
def add_export_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``assignlab export``."""
    parser.add_argument("--weights", required=True, metavar="W", help="checkpoint (Detector.load format)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    parser.add_argument("--img", type=int, default=None,
                        help=f"input size H = W (default: the checkpoint's training size, else {FALLBACK_IMG_SIZE})")
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    parser.add_argument("--with-decode", action="store_true",
                        help="bake the box decoding in (outputs boxes, scores) instead of raw head outputs")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--out", default=None, metavar="PATH", help="output file (default: weights with .onnx)")
    parser.add_argument("--atol", type=float, default=1e-3, help="parity tolerance, absolute")
    parser.add_argument("--rtol", type=float, default=1e-4, help="parity tolerance, relative")


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``assignlab export`` and the onnxruntime parity check."""
    import numpy as np
    import torch

    from .export import export_onnx, onnx_output_names
    from .predictor import load_detector

    model = load_detector(args.weights, map_location="cpu")
    size = int(args.img or model.img_size or FALLBACK_IMG_SIZE)
    out = Path(args.out) if args.out else Path(args.weights).with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = export_onnx(model, out, img_size=size, dynamic_batch=args.dynamic_batch,
                       with_decode=args.with_decode, opset=args.opset)
    print(f"exported {args.weights} -> {path} ({Path(path).stat().st_size / 1e6:.2f} MB, input images "
          f"({'batch' if args.dynamic_batch else 1}, 3, {size}, {size}), outputs "
          f"{', '.join(onnx_output_names(model, args.with_decode))}) in {time.perf_counter() - t0:.1f} s")

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 if args.dynamic_batch else 1, 3, size, size, generator=g)
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ho = model(x)
        if args.with_decode:
            ref = list(model.decode(ho, model.priors((size, size))))
        else:
            ref = [ho.cls, ho.box] + ([ho.obj] if ho.obj is not None else [])
    ok = True
    parts = []
    worst = 0.0
    for name, o, r in zip(onnx_output_names(model, args.with_decode), got, ref):
        r = r.numpy()
        if o.shape != r.shape:
            print(f"parity: output {name} has shape {o.shape}, PyTorch {r.shape}", file=sys.stderr)
            ok = False
            continue
        d = float(np.abs(o - r).max()) if o.size else 0.0
        worst = max(worst, d)
        parts.append(f"{name} {d:.3g}")
        ok &= bool(np.allclose(o, r, atol=args.atol, rtol=args.rtol))
    print(f"onnxruntime parity (batch {x.shape[0]}): max abs diff {worst:.3g} ({', '.join(parts)}) -> "
          + ("OK" if ok else f"MISMATCH (atol {args.atol}, rtol {args.rtol})"))
    return 0 if ok else 1
