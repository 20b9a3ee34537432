"""Small on-disk dataset builders for the data tests (VOC, YOLO, COCO, WIDER FACE in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, h: int, w: int, seed: int = 0, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = (rng.uniform(0, 255, (h, w, 3))).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def corrupt_jpeg(path: Path) -> Path:
    """Overwrite ``path`` with a JPEG cut in half (header OK, pixel data truncated)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def voc_xml(filename: str, w: int, h: int, objects: list[tuple[str, list[float]]], difficult=()) -> str:
    objs = []
    for k, (name, box) in enumerate(objects):
        d = 1 if k in difficult else 0
        objs.append(
            f"<object><name>{name}</name><difficult>{d}</difficult><bndbox>"
            f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            "</bndbox></object>"
        )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size>{''.join(objs)}</annotation>"
    )


def make_voc(root: Path, images: dict[str, dict], split: str = "train", names=("cat", "dog")) -> Path:
    """``images``: id -> {"size": (h, w), "objects": [(name, box)], "xml": str (raw override),
    "difficult": (indices), "no_image": bool}. Returns the YAML path."""
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for k, (iid, spec) in enumerate(images.items()):
        h, w = spec.get("size", (48, 64))
        if not spec.get("no_image"):
            write_image(root / "JPEGImages" / f"{iid}.jpg", h, w, seed=k)
        xml = spec.get("xml") or voc_xml(f"{iid}.jpg", w, h, spec.get("objects", []), spec.get("difficult", ()))
        if spec.get("xml") != "MISSING":
            (root / "Annotations" / f"{iid}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    y = root / "data.yaml"
    y.write_text(f"format: voc\npath: .\n{split}: ImageSets/Main/{split}.txt\nnames: {list(names)}\n")
    return y


def make_yolo(root: Path, images: dict[str, dict], names=("a", "b")) -> Path:
    """``images``: stem -> {"size": (h, w), "label": str | None (None = no label file)}."""
    for k, (stem, spec) in enumerate(images.items()):
        h, w = spec.get("size", (48, 64))
        write_image(root / "images" / "train" / f"{stem}.jpg", h, w, seed=k)
        if spec.get("label") is not None:
            lp = root / "labels" / "train" / f"{stem}.txt"
            lp.parent.mkdir(parents=True, exist_ok=True)
            lp.write_text(spec["label"])
    y = root / "data.yaml"
    y.write_text(f"path: .\ntrain: images/train\nnames: {list(names)}\n")
    return y


def make_coco(root: Path, images: list[dict], annotations: list[dict], categories=None) -> Path:
    """Writes images (``{"id", "file_name", "height", "width"}``) and the JSON; returns the YAML."""
    categories = categories or [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
    for k, im in enumerate(images):
        if not im.get("_no_file"):
            write_image(root / "imgs" / im["file_name"], im["height"], im["width"], seed=k)
    clean = [{k: v for k, v in im.items() if not k.startswith("_")} for im in images]
    (root / "ann").mkdir(parents=True, exist_ok=True)
    (root / "ann" / "train.json").write_text(
        json.dumps({"images": clean, "annotations": annotations, "categories": categories})
    )
    y = root / "data.yaml"
    y.write_text("format: coco\npath: .\ntrain: ann/train.json\nimages: imgs\n")
    return y
