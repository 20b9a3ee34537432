"""YOLO txt datasets (Ultralytics layout).

A split entry is an image folder (searched recursively), an image-list ``.txt`` file (one path
per line; ``./x`` relative to the list file's folder, other relative paths relative to ``path``), or
a list of those. The label file of ``.../images/.../<stem>.<ext>`` is
``.../labels/.../<stem>.txt`` (the last ``/images/`` replaced by ``/labels/``), one object per line::

    <class> <cx> <cy> <w> <h>              normalised to [0, 1]
    <class> <x1> <y1> <x2> <y2> ...        a polygon (Ultralytics segments): its bounding box is used

An image without a label file is a background image (valid, as in Ultralytics; counted as
``no_label_file``). A label file that exists but is empty is kept as background and logged
(``empty_label_file``), skipped with ``skip_empty: true``, an error when strict. A line with another
column count or a non-numeric value skips the image (``bad_label_file``; strict: error). A class
outside ``0..C-1`` (or not an integer) raises :class:`LabelError` naming the file and line. NaN / inf
coordinates follow the box policy of :mod:`assignlab.data.dataset`.
"""

from __future__ import annotations

import os

import numpy as np

from .config import IMAGE_SUFFIXES, DataConfig, DataConfigError
from .dataset import DetectionDataset, LabelError, config_kwargs

__all__ = ["YOLODataset", "image_to_label_path", "list_images"]


def image_to_label_path(img_path: str) -> str:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = img_path.rpartition(sa)
    base = (head + sb + tail) if sep else img_path
    return os.path.splitext(base)[0] + ".txt"


def list_images(cfg: DataConfig, entry: str | list[str]) -> list[str]:
    """Absolute image paths of a split entry (folders searched recursively, sorted)."""
    out: list[str] = []
    for e in entry if isinstance(entry, list) else [entry]:
        p = cfg.resolve(e)
        if os.path.isdir(p):
            found = []
            for dirpath, _, files in os.walk(p):
                found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
            out += sorted(found)
        elif os.path.isfile(p) and p.lower().endswith(".txt"):
            parent = os.path.dirname(p)
            with open(p, encoding="utf-8") as f:
                for line in f:
                    s = line.strip()
                    if not s:
                        continue
                    if s.startswith("./"):
                        out.append(os.path.normpath(os.path.join(parent, s)))
                    else:
                        out.append(cfg.resolve(s))
        else:
            raise DataConfigError(
                f"{cfg.source or 'data config'}: split entry {e!r} ({p}) is neither an image "
                "folder nor an image-list .txt file"
            )
    return out


class YOLODataset(DetectionDataset):
    """A split of a YOLO-format dataset (see the module docstring)."""

    format = "yolo"

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
        assert cfg.names is not None
        names = cfg.names
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
        C = len(names)
        for img_path in list_images(cfg, cfg.split_entry(split)):
            label_path = image_to_label_path(img_path)
            rows: list[list[float]] = []
            line_nos: list[int] = []
            if os.path.isfile(label_path):
                try:
                    parsed = self._parse(label_path, C)
                except _BadLine as e:
                    self.skip("bad_label_file", label_path, str(e))
                    continue
                if parsed is None:
                    if not self.empty_annotation("empty_label_file", label_path):
                        continue
                else:
                    rows, line_nos = parsed
            else:
                self.report.add("no_label_file", label_path, log=False)
            size = self.check_image(img_path)
            if size is None:
                continue
            h, w = size
            arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
            cx, cy, bw, bh = arr[:, 1] * w, arr[:, 2] * h, arr[:, 3] * w, arr[:, 4] * h
            boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
            self.add_record(
                path=img_path,
                size=size,
                boxes=boxes,
                labels=arr[:, 0].astype(np.int64),
                where=label_path,
                describe=lambda j, ln=line_nos: f"line {ln[j]}",
            )
        self._finish_loading()

    @staticmethod
    def _parse(label_path: str, C: int) -> tuple[list[list[float]], list[int]] | None:
        """Rows ``[cls, cx, cy, w, h]`` and their line numbers; None for an empty file."""
        with open(label_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        rows, line_nos = [], []
        for n, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            k = len(parts)
            if not (k == 5 or (k >= 7 and (k - 1) % 2 == 0)):
                raise _BadLine(
                    f"line {n}: expected 5 columns (class cx cy w h) or a polygon "
                    f"(class x1 y1 x2 y2 x3 y3 ...), got {k}"
                )
            try:
                vals = [float(x) for x in parts]
            except ValueError:
                raise _BadLine(f"line {n}: non-numeric value in {line.strip()!r}") from None
            c = vals[0]
            if not (np.isfinite(c) and float(c).is_integer() and 0 <= c < C):
                raise LabelError(f"{label_path}, line {n}: class {parts[0]} out of range 0..{C - 1} ({C} classes)")
            if k == 5:
                rows.append(vals)
            else:
                xs, ys = np.array(vals[1::2]), np.array(vals[2::2])
                x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
                rows.append([c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
            line_nos.append(n)
        if not rows:
            return None
        return rows, line_nos


class _BadLine(ValueError):
    pass
