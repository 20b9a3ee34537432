"""Pascal VOC datasets (XML annotations + JPEG images).

Layout (the usual VOCdevkit one; folder names configurable with ``images`` / ``annotations``)::

    <path>/ImageSets/Main/train.txt     one image id per line (the split entry names this file)
    <path>/JPEGImages/<id>.jpg          (.png / .jpeg / the XML's <filename> suffix also found)
    <path>/Annotations/<id>.xml

Coordinates are used as given (no ``-1``: the convention of the source is not stated; e.g. the
facemask set has both ``xmax == width`` and ``xmax == width + 1``, which are clipped to the image).
Objects flagged ``<difficult>1</difficult>`` become ignore regions. Class names come from the
config, or, when it has none, from scanning every XML of every configured split (sorted), so that
all splits agree. An object whose name is not a class raises :class:`LabelError` (file + object).
Stray text inside ``<object>`` (e.g. facemask's ``maksssksksss0.xml``) is ignored.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from .config import SPLITS, DataConfig, DataConfigError
from .dataset import DetectionDataset, LabelError, config_kwargs

__all__ = ["VOCDataset", "parse_voc_xml", "scan_voc_names"]

_NAMES_CACHE: dict[tuple, list[str]] = {}


def _read_ids(list_file: str) -> list[str]:
    if not os.path.isfile(list_file):
        raise DataConfigError(f"VOC image-set list {list_file!r} not found")
    ids = []
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                ids.append(parts[0])
    return ids


def parse_voc_xml(path: str) -> dict:
    """Parse one VOC XML: ``{"filename", "size": (h, w) | None, "objects": [dict]}``.

    Each object: ``{"name", "difficult", "box": [xmin, ymin, xmax, ymax] floats}``.

    Raises:
        ValueError: malformed XML, an object without name or ``bndbox``, a non-numeric coordinate
            (the message names the object; the caller adds the file).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"malformed XML: {e}") from None
    size = None
    s = root.find("size")
    if s is not None:
        try:
            w, h = int(float(s.findtext("width", "0"))), int(float(s.findtext("height", "0")))
            if w > 0 and h > 0:
                size = (h, w)
        except ValueError:
            size = None
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"object {k} has no <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"object {k} ({name}) has no <bndbox>")
        try:
            box = [float((bb.findtext(t) or "").strip()) for t in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise ValueError(f"object {k} ({name}): non-numeric or missing bndbox coordinate") from None
        try:
            difficult = int(float((obj.findtext("difficult") or "0").strip() or 0))
        except ValueError:
            difficult = 0
        objects.append({"name": name, "difficult": difficult, "box": box})
    return {"filename": (root.findtext("filename") or "").strip(), "size": size, "objects": objects}


def _dirs(cfg: DataConfig, split: str) -> tuple[str, str]:
    img_dir = cfg.images_for(split) or cfg.resolve("JPEGImages")
    ann_dir = cfg.resolve(cfg.annotations or "Annotations")
    return img_dir, ann_dir


def scan_voc_names(cfg: DataConfig) -> list[str]:
    """Sorted class names found in the XMLs of every configured split (cached per config)."""
    lists = tuple(cfg.resolve(getattr(cfg, s)) for s in SPLITS if isinstance(getattr(cfg, s), str))
    ann_dir = cfg.resolve(cfg.annotations or "Annotations")
    key = (ann_dir, lists)
    if key not in _NAMES_CACHE:
        names: set[str] = set()
        for lf in lists:
            for i in _read_ids(lf):
                try:
                    names.update(o["name"] for o in parse_voc_xml(os.path.join(ann_dir, i + ".xml"))["objects"])
                except (OSError, ValueError):
                    continue  # reported when the split itself is loaded
        if not names:
            raise DataConfigError(f"{cfg.source or ann_dir}: no object names found in the VOC XML files; set 'names'")
        _NAMES_CACHE[key] = sorted(names)
    return list(_NAMES_CACHE[key])


def _find_image(img_dir: str, image_id: str, filename: str) -> str:
    cands = [os.path.join(img_dir, image_id + ext) for ext in (".jpg", ".png", ".jpeg", ".JPG", ".PNG")]
    if filename:
        suffix = os.path.splitext(filename)[1]
        if suffix:
            cands.insert(0, os.path.join(img_dir, image_id + suffix))
    for c in cands:
        if os.path.isfile(c):
            return c
    return cands[0] if filename else os.path.join(img_dir, image_id + ".jpg")


class VOCDataset(DetectionDataset):
    """A split of a Pascal VOC dataset (see the module docstring)."""

    format = "voc"

    def __init__(
        self,
        cfg: DataConfig,
        split: str,
        img_size: int,
        train: bool,
        merge_classes: bool = False,
        strict: bool = False,
        **kwargs,
    ) -> None:
        names = cfg.names or scan_voc_names(cfg)
        super().__init__(
            names=names,
            split=split,
            img_size=img_size,
            train=train,
            strict=strict,
            merge_classes=merge_classes,
            **config_kwargs(cfg, split, merge_name=cfg.effective_merge_name(names)),
            **kwargs,
        )
        entry = cfg.split_entry(split)
        assert isinstance(entry, str)
        img_dir, ann_dir = _dirs(cfg, split)
        index = {n: c for c, n in enumerate(names)}
        for image_id in _read_ids(cfg.resolve(entry)):
            xml_path = os.path.join(ann_dir, image_id + ".xml")
            if not os.path.isfile(xml_path):
                self.skip("missing_annotation", xml_path, "XML file not found")
                continue
            try:
                ann = parse_voc_xml(xml_path)
            except (OSError, ValueError) as e:
                self.skip("bad_annotation", xml_path, str(e))
                continue
            objs = ann["objects"]
            if not objs and not self.empty_annotation("no_objects", xml_path):
                continue
            img_path = _find_image(img_dir, image_id, ann["filename"])
            size = self.check_image(img_path, ann["size"])
            if size is None:
                continue
            labels = []
            for k, o in enumerate(objs):
                if o["name"] not in index:
                    raise LabelError(
                        f"{xml_path}: object {k} has class {o['name']!r}, not one of the {len(names)} classes {names}"
                    )
                labels.append(index[o["name"]])
            boxes = np.array([o["box"] for o in objs], dtype=np.float64).reshape(-1, 4)
            labels_a = np.array(labels, dtype=np.int64)
            diff = np.array([o["difficult"] > 0 for o in objs], dtype=bool)
            normal_rows = np.flatnonzero(~diff)
            diff_rows = np.flatnonzero(diff)
            self.add_record(
                path=img_path,
                size=size,
                boxes=boxes[~diff],
                labels=labels_a[~diff],
                ignore=boxes[diff],
                ignore_labels=labels_a[diff],
                where=xml_path,
                describe=lambda j, r=normal_rows, o=objs: f"object {int(r[j])} ({o[int(r[j])]['name']})",
                ignore_describe=lambda j, r=diff_rows, o=objs: f"difficult object {int(r[j])}",
            )
        self._finish_loading()
