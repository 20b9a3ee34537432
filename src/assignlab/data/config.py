"""Dataset configuration: a small Ultralytics-style YAML, validated.

A dataset is described by a YAML file (read with ``yaml.safe_load`` only)::

    # facemask.yaml  (Pascal VOC)
    format: voc
    path: ../shared/data/facemask        # relative to this file's folder
    train: ImageSets/Main/train.txt      # image-set list files, relative to path
    val: ImageSets/Main/val.txt
    names: [with_mask, without_mask, mask_weared_incorrect]
    merge_name: face                     # the single class name when merge_classes is on

    # coco128.yaml  (YOLO txt; ``format`` may be omitted: image folders => yolo)
    path: .
    train: images/train2017              # labels: replace /images/ by /labels/, suffix .txt
    val: images/val2017
    names: [person, bicycle, ...]        # or {0: person, 1: bicycle, ...}; ``nc`` is checked

    # tiny_coco.yaml  (COCO JSON)
    format: coco
    path: tiny_coco
    train: annotations/instances_train2017.json
    val: annotations/instances_val2017.json
    images: {train: train2017, val: val2017}   # or one folder; default: guessed from the json name

    # wider.yaml  (RetinaFace-style label.txt)
    format: widerface
    path: widerface
    train: train/label.txt               # images default to <label.txt folder>/images
    val: val/label.txt

    # synthetic (the default when no data is given)
    format: synthetic
    synthetic: {num_train: 256, num_val: 64, num_classes: 1}

Keys (anything else is rejected, naming the allowed keys):

=================  ===============================================================================
``format``         ``voc | yolo | coco | widerface | synthetic``; inferred when absent (a ``.json``
                   split => coco, a ``label.txt`` split => widerface, a list file beside an
                   ``Annotations/`` folder => voc, image folders / image list files => yolo).
``path``           dataset root; relative paths are relative to the YAML file's folder (default:
                   that folder). Split entries are relative to ``path``. Environment variables are
                   expanded: ``${NAME}`` (an error when unset) or ``${NAME:-default}``; a variable's
                   relative value is taken against the working directory, a relative default
                   against the YAML file's folder. The bundled configs use
                   ``${ASSIGNLAB_SHARED:-../../../shared}/data/...``.
``train/val/test`` split entries (``test`` optional; an empty value means "no such split"). yolo
                   accepts a list of folders / list files.
``names``          class names (list, or ``{index: name}`` mapping with keys ``0..C-1``). Optional
                   for voc (scanned from the XML files, sorted), coco (from the JSON categories),
                   widerface (``[face]``) and synthetic.
``nc``             number of classes, checked against ``names``.
``images``         coco / widerface image folder, one path or ``{split: path}``.
``annotations``    voc annotation folder (default ``Annotations``); ``images`` for voc defaults to
                   ``JPEGImages``.
``merge_classes``  merge every class into one (also a :func:`build_dataset` argument).
``merge_name``     name of the merged class (default ``face`` when every class name mentions
                   "face" or "mask", else ``object``).
``skip_empty``     drop images whose label file / XML is present but empty (default: keep them as
                   background images, logged and counted).
``verify_images``  open every image header when the dataset is built, skipping missing or
                   unreadable files up front (default true).
``synthetic``      options of the procedural dataset (see :class:`SyntheticConfig`).
``download``       accepted for Ultralytics compatibility and ignored (nothing is ever downloaded).
=================  ===============================================================================

:func:`load_data_config` also accepts a dataset *folder* (the layout is recognised: a single YAML
inside it, ``ImageSets/Main`` => voc, ``annotations/*.json`` => coco, ``*/label.txt`` =>
widerface, ``images/`` + ``labels/`` => yolo), the string ``"synthetic"`` or ``None`` (synthetic).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "FORMATS",
    "SPLITS",
    "DataConfig",
    "DataConfigError",
    "SyntheticConfig",
    "load_data_config",
    "data_config_from_dict",
]

FORMATS = ("voc", "yolo", "coco", "widerface", "synthetic")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DataConfigError(ValueError):
    """A dataset configuration with an unknown key or an invalid value."""


@dataclass
class SyntheticConfig:
    """Options of the procedural dataset (:mod:`assignlab.data.synthetic`).

    Attributes:
        num_train / num_val / num_test: images per split.
        image_size: original image size, ``int`` (square) or ``(h, w)``; ``None`` = the training
            size passed to :func:`build_dataset` (the letterbox is then the identity).
        num_classes: 1 (``["object"]``), 2 (``["ellipse", "rectangle"]``) or 3 (adds ``"face"``).
        min_objects / max_objects: objects per image (uniform).
        min_size: smallest object side in pixels (4 px by default).
        max_size: largest object size ``sqrt(w * h)`` as a fraction of the shorter image side (0.4).
        crowd: fraction of objects placed in tight clusters around a few centres.
        seed: base seed; ``None`` = the ``seed`` argument of :func:`build_dataset`.
    """

    num_train: int = 256
    num_val: int = 64
    num_test: int = 64
    image_size: int | tuple[int, int] | None = None
    num_classes: int = 1
    min_objects: int = 4
    max_objects: int = 40
    min_size: float = 4.0
    max_size: float = 0.4
    crowd: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        for k in ("num_train", "num_val", "num_test", "min_objects", "max_objects", "num_classes"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DataConfigError(f"synthetic.{k} must be a non-negative int, got {v!r}")
        if not 1 <= self.num_classes <= 3:
            raise DataConfigError(f"synthetic.num_classes must be 1, 2 or 3, got {self.num_classes}")
        if self.min_objects > self.max_objects:
            raise DataConfigError(f"synthetic.min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        if self.image_size is not None:
            s = self.image_size
            if isinstance(s, (list, tuple)):
                if len(s) != 2 or not all(isinstance(x, int) and x >= 16 for x in s):
                    raise DataConfigError(f"synthetic.image_size must be an int or [h, w] >= 16, got {s!r}")
                self.image_size = (int(s[0]), int(s[1]))
            elif isinstance(s, bool) or not isinstance(s, int) or s < 16:
                raise DataConfigError(f"synthetic.image_size must be an int >= 16 or [h, w], got {s!r}")
        if not (isinstance(self.min_size, (int, float)) and self.min_size >= 1):
            raise DataConfigError(f"synthetic.min_size must be >= 1 px, got {self.min_size!r}")
        if not (isinstance(self.max_size, (int, float)) and 0 < self.max_size <= 1):
            raise DataConfigError(f"synthetic.max_size must be a fraction in (0, 1], got {self.max_size!r}")
        if not (isinstance(self.crowd, (int, float)) and 0 <= self.crowd <= 1):
            raise DataConfigError(f"synthetic.crowd must be in [0, 1], got {self.crowd!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise DataConfigError(f"synthetic.seed must be an int or null, got {self.seed!r}")

    def names(self) -> list[str]:
        return [["object"], ["ellipse", "rectangle"], ["ellipse", "rectangle", "face"]][self.num_classes - 1]

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


@dataclass
class DataConfig:
    """A validated dataset description (see the module docstring for the YAML keys).

    ``path`` is absolute after loading. ``train``/``val``/``test`` keep the YAML values (``None``
    when the split does not exist). ``names`` is ``None`` when it is to be read from the data.
    """

    format: str = "synthetic"
    path: str | None = None
    train: str | list[str] | None = None
    val: str | list[str] | None = None
    test: str | list[str] | None = None
    names: list[str] | None = None
    images: str | dict[str, str] | None = None
    annotations: str | None = None
    merge_classes: bool = False
    merge_name: str | None = None
    skip_empty: bool = False
    verify_images: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    source: str | None = None  # the YAML file (or folder) this came from, for messages

    def split_entry(self, split: str) -> str | list[str]:
        """The YAML entry of ``split``; a clear error when the split is not configured."""
        if split not in SPLITS:
            raise DataConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        v = getattr(self, split)
        if v is None or v == [] or v == "":
            have = [s for s in SPLITS if getattr(self, s) not in (None, "", [])]
            raise DataConfigError(
                f"{self.source or 'data config'}: split {split!r} is not configured (available: {have})"
            )
        return v

    def resolve(self, p: str) -> str:
        """A path from the YAML, made absolute against ``path``."""
        p = os.path.expanduser(p)
        return os.path.normpath(p if os.path.isabs(p) else os.path.join(self.path or ".", p))

    def images_for(self, split: str) -> str | None:
        """The configured image folder of ``split`` (absolute), or None."""
        if self.images is None:
            return None
        if isinstance(self.images, str):
            return self.resolve(self.images)
        v = self.images.get(split)
        return None if v is None else self.resolve(v)

    def effective_merge_name(self, names: list[str]) -> str:
        if self.merge_name:
            return self.merge_name
        if names and all(("face" in n.lower() or "mask" in n.lower()) for n in names):
            return "face"
        return "object"


_KEYS = (
    "format",
    "path",
    "train",
    "val",
    "test",
    "names",
    "nc",
    "images",
    "annotations",
    "merge_classes",
    "merge_name",
    "skip_empty",
    "verify_images",
    "synthetic",
    "download",
)


def _err(src: str, msg: str) -> DataConfigError:
    return DataConfigError(f"{src}: {msg}")


def _as_bool(src: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _err(src, f"{key!r} must be true or false, got {v!r}")
    return v


def _as_str_or_none(src: str, key: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise _err(src, f"{key!r} must be a path string, got {v!r}")
    return str(v)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(src: str, key: str, v: str) -> str:
    """Expand ``${NAME}`` / ``${NAME:-default}`` in a path value.

    A set variable's relative value is made absolute against the working directory (so
    ``ASSIGNLAB_SHARED=../shared`` means what it says in the shell); a default is substituted as
    written (relative to the YAML file's folder like any other relative path)::

        ${ASSIGNLAB_SHARED:-../../../shared}/data/facemask
        # ASSIGNLAB_SHARED=/data/shared -> /data/shared/data/facemask
        # unset                         -> ../../../shared/data/facemask (next to the YAML file)
    """

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        val = os.environ.get(name)
        if val:
            return os.path.abspath(os.path.expanduser(val))
        if default is None:
            raise _err(src, f"{key!r} uses ${{{name}}} but the environment variable {name} is not set "
                            f"(set it, or write ${{{name}:-default}})")
        return default

    return _ENV_REF.sub(sub, v)


def _names(src: str, v: Any, nc: Any) -> list[str] | None:
    if v is None:
        names = None
    elif isinstance(v, Mapping):
        keys = list(v.keys())
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys) or sorted(keys) != list(
            range(len(keys))
        ):
            raise _err(src, f"'names' mapping keys must be the integers 0..{len(keys) - 1}, got {keys}")
        names = [v[k] for k in range(len(keys))]
    elif isinstance(v, (list, tuple)):
        names = list(v)
    else:
        raise _err(src, f"'names' must be a list or an {{index: name}} mapping, got {v!r}")
    if names is not None:
        bad = [n for n in names if not isinstance(n, (str, int)) or isinstance(n, bool) or str(n) == ""]
        if bad or not names:
            raise _err(src, f"'names' must be non-empty strings, got {names!r}")
        names = [str(n) for n in names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _err(src, f"duplicate class names {dup}")
    if nc is not None:
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise _err(src, f"'nc' must be a positive int, got {nc!r}")
        if names is None:
            names = [str(i) for i in range(nc)]
        elif len(names) != nc:
            raise _err(src, f"'nc' is {nc} but 'names' lists {len(names)} classes")
    return names


def _split_value(src: str, key: str, v: Any) -> str | list[str] | None:
    if v is None or v == "":
        return None
    if isinstance(v, (list, tuple)):
        if not v or not all(isinstance(x, str) and x for x in v):
            raise _err(src, f"{key!r} must be a path or a list of paths, got {v!r}")
        return list(v)
    if not isinstance(v, str):
        raise _err(src, f"{key!r} must be a path or a list of paths, got {v!r}")
    return v


def _infer_format(cfg: DataConfig) -> str:
    if cfg.train is None and cfg.val is None and cfg.test is None:
        return "synthetic"
    entries: list[str] = []
    for s in SPLITS:
        v = getattr(cfg, s)
        if v is not None:
            entries += v if isinstance(v, list) else [v]
    first = entries[0]
    low = first.lower()
    if low.endswith(".json"):
        return "coco"
    if os.path.basename(low) == "label.txt" or low.endswith("_bbx_gt.txt"):
        return "widerface"
    ann = cfg.resolve(cfg.annotations or "Annotations")
    if low.endswith(".txt") and os.path.isdir(ann) and "imagesets" in low.replace("\\", "/"):
        return "voc"
    if low.endswith(".txt") and os.path.isdir(ann) and not os.path.isdir(cfg.resolve("labels")):
        return "voc"
    return "yolo"


def data_config_from_dict(d: Mapping[str, Any], base_dir: str | os.PathLike = ".", source: str = "") -> DataConfig:
    """Validate a parsed YAML mapping; relative ``path`` values are relative to ``base_dir``."""
    src = source or "data config"
    if not isinstance(d, Mapping):
        raise _err(src, f"must be a mapping of keys ({', '.join(_KEYS)}), got {type(d).__name__}")
    unknown = [k for k in d if k not in _KEYS]
    if unknown:
        raise _err(src, f"unknown key(s) {unknown}; allowed keys: {', '.join(_KEYS)}")
    fmt = d.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise _err(src, f"'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    base = Path(base_dir).expanduser().resolve()
    p = _as_str_or_none(src, "path", d.get("path"))
    if p is not None:
        p = _expand_env(src, "path", p)
    root = base if p is None else Path(os.path.expanduser(p))
    if not root.is_absolute():
        root = base / root
    images = d.get("images")
    if images is not None and not isinstance(images, str):
        if not isinstance(images, Mapping) or not all(k in SPLITS and isinstance(v, str) for k, v in images.items()):
            raise _err(
                src, f"'images' must be a folder or a {{split: folder}} mapping (splits {SPLITS}), got {images!r}"
            )
        images = dict(images)
    syn = d.get("synthetic") or {}
    if not isinstance(syn, Mapping):
        raise _err(src, f"'synthetic' must be a mapping, got {syn!r}")
    allowed_syn = [f.name for f in dataclasses.fields(SyntheticConfig)]
    bad_syn = [k for k in syn if k not in allowed_syn]
    if bad_syn:
        raise _err(src, f"unknown synthetic key(s) {bad_syn}; allowed: {', '.join(allowed_syn)}")
    try:
        syn_cfg = SyntheticConfig(**syn)
    except DataConfigError as e:
        raise _err(src, str(e)) from None
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise _err(src, f"synthetic: {e}") from None
    merge_name = _as_str_or_none(src, "merge_name", d.get("merge_name"))
    cfg = DataConfig(
        format=fmt or "synthetic",
        path=str(os.path.normpath(root)),
        train=_split_value(src, "train", d.get("train")),
        val=_split_value(src, "val", d.get("val")),
        test=_split_value(src, "test", d.get("test")),
        names=_names(src, d.get("names"), d.get("nc")),
        images=images,
        annotations=_as_str_or_none(src, "annotations", d.get("annotations")),
        merge_classes=_as_bool(src, "merge_classes", d.get("merge_classes", False)),
        merge_name=merge_name,
        skip_empty=_as_bool(src, "skip_empty", d.get("skip_empty", False)),
        verify_images=_as_bool(src, "verify_images", d.get("verify_images", True)),
        synthetic=syn_cfg,
        source=source or None,
    )
    if fmt is None:
        cfg.format = "synthetic" if "synthetic" in d else _infer_format(cfg)
    if cfg.format != "synthetic" and cfg.train is None and cfg.val is None and cfg.test is None:
        raise _err(src, f"format {cfg.format!r} needs at least one of 'train', 'val', 'test'")
    if cfg.format == "synthetic" and cfg.names is not None and len(cfg.names) != syn_cfg.num_classes:
        raise _err(src, f"synthetic: {len(cfg.names)} names for num_classes={syn_cfg.num_classes}")
    if cfg.format == "yolo" and cfg.names is None:
        raise _err(src, "yolo format needs 'names' (or 'nc')")
    if cfg.format != "yolo":
        for s in SPLITS:
            if isinstance(getattr(cfg, s), list):
                raise _err(src, f"{s!r}: a list of entries is only supported for the yolo format")
    return cfg


def _detect_folder(root: Path) -> dict[str, Any]:
    """A config mapping guessed from a dataset folder's layout."""
    yamls = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    if len(yamls) == 1:
        return {"__yaml__": str(yamls[0])}
    main = root / "ImageSets" / "Main"
    if main.is_dir():
        d: dict[str, Any] = {"format": "voc", "path": "."}
        for s in SPLITS:
            if (main / f"{s}.txt").is_file():
                d[s] = f"ImageSets/Main/{s}.txt"
        return d
    jsons = sorted((root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
    if jsons:
        d = {"format": "coco", "path": "."}
        for s in SPLITS:
            hits = [j for j in jsons if s in j.stem.lower().split("_")[-1] or j.stem.lower().endswith(s)]
            if hits:
                d[s] = f"annotations/{hits[0].name}"
        return d
    labels = {s: f"{s}/label.txt" for s in SPLITS if (root / s / "label.txt").is_file()}
    if labels:
        return {"format": "widerface", "path": ".", **labels}
    if (root / "images").is_dir() and (root / "labels").is_dir():
        d = {"format": "yolo", "path": "."}
        for sub in sorted(p.name for p in (root / "images").iterdir() if p.is_dir()):
            for s in SPLITS:
                if sub.lower().startswith(s) and s not in d:
                    d[s] = f"images/{sub}"
        return d
    raise DataConfigError(
        f"{root}: cannot recognise the dataset layout (expected a single *.yaml, ImageSets/Main (voc), "
        "annotations/*.json (coco), <split>/label.txt (widerface) or images/ + labels/ (yolo))"
    )


def load_data_config(path: str | os.PathLike | Mapping[str, Any] | None) -> DataConfig:
    """Load and validate a dataset description.

    Args:
        path: a YAML file, a dataset folder (layout recognised, see the module docstring), a mapping
            (already parsed YAML; relative paths against the working directory), ``"synthetic"`` or
            ``None`` (the default procedural dataset).

    Raises:
        DataConfigError: unknown keys (the allowed ones are listed), bad values, missing file.
    """
    if path is None or (isinstance(path, str) and path == "synthetic"):
        return DataConfig(format="synthetic", source="synthetic")
    if isinstance(path, Mapping):
        return data_config_from_dict(path, ".", source="data config")
    p = Path(path).expanduser()
    if p.is_dir():
        d = _detect_folder(p.resolve())
        if "__yaml__" not in d:
            return data_config_from_dict(d, p.resolve(), source=str(p))
        p = Path(d["__yaml__"])
    if not p.is_file():
        raise DataConfigError(f"data config {str(p)!r} not found")
    try:
        with open(p, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DataConfigError(f"{p}: invalid YAML: {e}") from None
    if d is None:
        d = {}
    return data_config_from_dict(d, p.resolve().parent, source=str(p))
