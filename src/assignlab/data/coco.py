"""COCO JSON datasets.

A split entry names an instances JSON (relative to ``path``). The image folder is ``images``
(one folder or ``{split: folder}``); when not configured it is guessed from the JSON name
(``instances_train2017.json`` -> ``train2017/``, ``images/train2017/``, then ``images/``).

- Category ids (often non-contiguous, 1..90) map to contiguous labels ``0..C-1`` in increasing id
  order; ``dataset.category_ids[label]`` gives the original id back. ``names`` default to the JSON
  category names (a configured ``names`` list must have the same length).
- ``bbox`` ``[x, y, w, h]`` -> xyxy. ``iscrowd=1`` (or ``ignore=1``) annotations become ignore
  regions (with their class in ``ignore_labels``). The annotation ``area`` is kept for
  :meth:`coco_gt` (so COCO small/medium/large ranges match the official ones).
- Image ids are the COCO ids. Images without annotations are valid background images.
- An annotation whose ``image_id`` is not among the images is skipped (``unknown_image_id``;
  strict: :class:`DatasetError` naming the JSON and the annotation id). An unknown ``category_id``
  raises :class:`LabelError` naming the JSON and the annotation id. An annotation without a
  4-number ``bbox`` skips its image (``bad_annotation``; strict: error).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .config import DataConfig, DataConfigError
from .dataset import DatasetError, DetectionDataset, LabelError, config_kwargs

__all__ = ["COCODataset", "coco_image_dir"]


def coco_image_dir(cfg: DataConfig, split: str, json_path: str) -> str:
    """The image folder of a COCO split (configured, or guessed from the JSON file name)."""
    d = cfg.images_for(split)
    if d is not None:
        if not os.path.isdir(d):
            raise DataConfigError(f"{cfg.source or 'data config'}: image folder {d!r} for split {split!r} not found")
        return d
    stem = os.path.splitext(os.path.basename(json_path))[0]
    tag = stem.split("_")[-1] if "_" in stem else stem
    root = cfg.path or "."
    cands = [
        os.path.join(root, tag),
        os.path.join(root, "images", tag),
        os.path.join(root, "images"),
        os.path.join(os.path.dirname(os.path.dirname(json_path)), tag),
    ]
    for c in cands:
        if os.path.isdir(c):
            return os.path.normpath(c)
    raise DataConfigError(
        f"{cfg.source or 'data config'}: no image folder for {json_path}; tried {cands}; set 'images'"
    )


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataConfigError(f"COCO annotation file {path!r} not found")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("categories"), list):
        raise DatasetError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    return d


class COCODataset(DetectionDataset):
    """A split of a COCO-format dataset (see the module docstring)."""

    format = "coco"

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
        entry = cfg.split_entry(split)
        assert isinstance(entry, str)
        json_path = cfg.resolve(entry)
        d = _load_json(json_path)
        cats = sorted(d["categories"], key=lambda c: int(c["id"]))
        self.category_ids = [int(c["id"]) for c in cats]
        cat_to_label = {cid: k for k, cid in enumerate(self.category_ids)}
        json_names = [str(c.get("name", c["id"])) for c in cats]
        if cfg.names is not None and len(cfg.names) != len(cats):
            raise DataConfigError(
                f"{cfg.source or 'data config'}: 'names' has {len(cfg.names)} classes but "
                f"{json_path} has {len(cats)} categories"
            )
        names = cfg.names or json_names
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
        img_dir = coco_image_dir(cfg, split, json_path)
        images = d["images"]
        known = {int(im["id"]) for im in images}
        per_image: dict[int, list[dict]] = {}
        for a in d.get("annotations") or []:
            iid = a.get("image_id")
            if not isinstance(iid, int) or iid not in known:
                if self.strict:
                    raise DatasetError(f"{json_path}: annotation id {a.get('id')} refers to unknown image id {iid!r}")
                self.report.add("unknown_image_id", json_path, f"annotation id {a.get('id')} -> image id {iid!r}")
                continue
            cid = a.get("category_id")
            if cid not in cat_to_label:
                raise LabelError(
                    f"{json_path}: annotation id {a.get('id')}: category_id {cid!r} is not one of the "
                    f"{len(cats)} categories"
                )
            per_image.setdefault(iid, []).append(a)
        for im in images:
            iid = int(im["id"])
            anns = per_image.get(iid, [])
            path = os.path.join(img_dir, str(im.get("file_name", "")))
            bad = [a for a in anns if not _valid_bbox(a.get("bbox"))]
            if bad:
                self.skip(
                    "bad_annotation",
                    json_path,
                    f"image id {iid}: annotation id {bad[0].get('id')} has bbox {bad[0].get('bbox')!r}",
                )
                continue
            hint = (int(im.get("height") or 0), int(im.get("width") or 0))
            size = self.check_image(path, hint if min(hint) > 0 else None)
            if size is None:
                continue
            crowd = np.array([bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)) for a in anns], dtype=bool)
            xywh = np.array([[float(v) for v in a["bbox"]] for a in anns], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            labels = np.array([cat_to_label[a["category_id"]] for a in anns], dtype=np.int64)
            area = np.array([_area(a) for a in anns], dtype=np.float64)
            ids = [a.get("id") for a in anns]
            normal, crowd_rows = np.flatnonzero(~crowd), np.flatnonzero(crowd)
            self.add_record(
                path=path,
                size=size,
                boxes=xyxy[~crowd],
                labels=labels[~crowd],
                ignore=xyxy[crowd],
                ignore_labels=labels[crowd],
                area=area[~crowd],
                image_id=iid,
                where=json_path,
                describe=lambda j, r=normal, ids=ids, iid=iid: f"image id {iid}, annotation id {ids[int(r[j])]}",
                ignore_describe=lambda j, r=crowd_rows, ids=ids, iid=iid: (
                    f"image id {iid}, crowd annotation id {ids[int(r[j])]}"
                ),
            )
        self._finish_loading()

    def category_id(self, label: int) -> int:
        """``label + 1`` (see :meth:`DetectionDataset.coco_gt`); original id: ``category_ids[label]``."""
        return int(label) + 1


def _valid_bbox(b: object) -> bool:
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        return False
    try:
        [float(v) for v in b]
    except (TypeError, ValueError):
        return False
    return True


def _area(a: dict) -> float:
    v = a.get("area")
    try:
        f = float(v)
        if np.isfinite(f) and f > 0:
            return f
    except (TypeError, ValueError):
        pass
    b = a["bbox"]
    return float(b[2]) * float(b[3])
