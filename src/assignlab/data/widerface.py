"""WIDER FACE label files.

Two text layouts are read (detected from the first non-empty line):

RetinaFace style (``train/label.txt``, ``val/label.txt``)::

    # 0--Parade/0_Parade_marchingband_1_465.jpg
    345 211 4 4                                    x y w h          (val)
    449 330 122 149 488.9 373.6 0.0 ... 0.82       x y w h + 5 landmarks (x y flag) + score (train)

Official WIDER style (``wider_face_train_bbx_gt.txt``)::

    0--Parade/0_Parade_marchingband_1_849.jpg
    1                                              number of faces (0 is followed by one zero line)
    449 330 122 149 0 0 0 0 0 0                    x y w h blur expression illumination invalid occlusion pose

Images live in ``images`` (configured) or ``<label file folder>/images``. One class, ``face``.

Faces:
- ``0 0 0 0`` is the "no face" marker and is skipped (the image is a background image);
- a face flagged ``invalid`` (official layout), or with zero / negative width or height, becomes
  an **ignore region** (its corners are re-ordered; regions left with no area after clipping to
  the image are dropped and counted as ``degenerate_ignore``);
- NaN / inf values follow the box policy of :mod:`assignlab.data.dataset`;
- a face line with fewer than 4 numbers, or a non-numeric value, skips the image
  (``bad_label_file``; strict: error naming the file and line).
"""

from __future__ import annotations

import os

import numpy as np

from .config import DataConfig, DataConfigError
from .dataset import DetectionDataset, config_kwargs

__all__ = ["WiderFaceDataset", "parse_wider_labels"]


class _BadLabel(ValueError):
    pass


def parse_wider_labels(path: str) -> list[dict]:
    """Parse a label file into ``[{"file", "line", "faces": [(line_no, [floats])], "error": str|None}]``.

    ``error`` is set (and ``faces`` incomplete) for an image block with a malformed line.
    """
    if not os.path.isfile(path):
        raise DataConfigError(f"WIDER FACE label file {path!r} not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, ln.strip()) for n, ln in enumerate(f, start=1)]
    lines = [(n, s) for n, s in lines if s]
    if not lines:
        return []
    out: list[dict] = []
    if lines[0][1].startswith("#"):
        cur: dict | None = None
        for n, s in lines:
            if s.startswith("#"):
                cur = {"file": s[1:].strip(), "line": n, "faces": [], "error": None, "official": False}
                out.append(cur)
                continue
            if cur is None or cur["error"]:
                continue
            _add_face(cur, n, s)
        return out
    k = 0
    while k < len(lines):
        n, name = lines[k]
        cur = {"file": name, "line": n, "faces": [], "error": None, "official": True}
        out.append(cur)
        k += 1
        if k >= len(lines):
            cur["error"] = f"line {n}: missing face count"
            break
        try:
            count = int(lines[k][1])
        except ValueError:
            cur["error"] = f"line {lines[k][0]}: expected a face count, got {lines[k][1]!r}"
            break  # the layout is lost; stop here
        k += 1
        rows = max(count, 1) if k < len(lines) and count == 0 and _is_zero_line(lines[k][1]) else count
        for n2, s in lines[k : k + rows]:
            _add_face(cur, n2, s)
        k += rows
    return out


def _add_face(block: dict, n: int, s: str) -> None:
    """Append face line ``n`` (text ``s``: ``x y w h ...``) to ``block["faces"]``, or set
    ``block["error"]`` when it is not at least four numbers."""
    try:
        vals = [float(x) for x in s.split()]
    except ValueError:
        block["error"] = f"line {n}: non-numeric value in {s!r}"
        return
    if len(vals) < 4:
        block["error"] = f"line {n}: expected at least 4 numbers (x y w h ...), got {len(vals)}"
        return
    block["faces"].append((n, vals))


def _is_zero_line(s: str) -> bool:
    try:
        return all(float(x) == 0 for x in s.split())
    except ValueError:
        return False


class WiderFaceDataset(DetectionDataset):
    """A split of a WIDER FACE-style dataset (see the module docstring)."""

    format = "widerface"

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
        names = cfg.names or ["face"]
        if len(names) != 1:
            raise DataConfigError(f"{cfg.source or 'data config'}: widerface has one class, got names {names}")
        super().__init__(
            names=names,
            split=split,
            img_size=img_size,
            train=train,
            strict=strict,
            merge_classes=merge_classes,
            **config_kwargs(cfg, split, merge_name=cfg.merge_name or names[0]),
            **kwargs,
        )
        entry = cfg.split_entry(split)
        assert isinstance(entry, str)
        label_path = cfg.resolve(entry)
        img_dir = cfg.images_for(split) or os.path.join(os.path.dirname(label_path), "images")
        for block in parse_wider_labels(label_path):
            if block["error"]:
                self.skip("bad_label_file", label_path, f"{block['file']}: {block['error']}")
                continue
            img_path = os.path.join(img_dir, block["file"])
            size = self.check_image(img_path)
            if size is None:
                continue
            boxes, box_lines, ignore, ign_lines = [], [], [], []
            for n, v in block["faces"]:
                x, y, w, h = v[:4]
                if x == 0 and y == 0 and w == 0 and h == 0:
                    continue  # "no face" marker
                invalid = block["official"] and len(v) >= 8 and v[7] != 0
                if np.isfinite(v[:4]).all() and (invalid or w <= 0 or h <= 0):
                    x1, x2 = sorted((x, x + w))
                    y1, y2 = sorted((y, y + h))
                    ignore.append([x1, y1, x2, y2])
                    ign_lines.append(n)
                else:
                    boxes.append([x, y, x + w, y + h])
                    box_lines.append(n)
            self.add_record(
                path=img_path,
                size=size,
                boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
                labels=np.zeros(len(boxes), dtype=np.int64),
                ignore=np.array(ignore, dtype=np.float64).reshape(-1, 4),
                where=label_path,
                describe=lambda j, ln=box_lines, f=block["file"]: f"{f}, line {ln[j]}",
                ignore_describe=lambda j, ln=ign_lines, f=block["file"]: f"{f}, line {ln[j]} (ignored face)",
            )
        self._finish_loading()
