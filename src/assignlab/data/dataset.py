"""The dataset base class shared by every format, and the bad-input policy.

Annotations are parsed once, when the dataset is built, into one :class:`Record` per image
(boxes in ORIGINAL pixels, already cleaned). ``__getitem__`` decodes the image and letterboxes it;
:meth:`DetectionDataset.load_annotations` never decodes an image.

Bad input (issue #7). Every problem is recorded in :attr:`DetectionDataset.report` (a
:class:`LoadReport`: counts per reason, logged on the ``assignlab.data`` logger, one summary line at
the end of loading):

=====================================  ====================================  ======================
problem                                default (``strict=False``)            ``strict=True``
=====================================  ====================================  ======================
box with NaN / inf coordinate          box dropped, counted, warning         ``BadBoxError`` naming
                                       (``non_finite_box``)                  the file and the box
inverted / zero-area box               dropped, counted, one warning         same
                                       (``degenerate_box``)
box partly outside the image           clipped to the image (``clipped_box``)  same
label out of range / unknown class     ``LabelError`` naming file and line   same
missing image file                     image skipped (``missing_image``)     ``DatasetError``
corrupt image (header unreadable)      image skipped (``corrupt_image``)     ``DatasetError``
image undecodable in ``__getitem__``   warning; replaced (see below)         ``DatasetError``
label line with wrong column count /   image skipped (``bad_label_file`` /   ``DatasetError``
malformed XML / bad COCO annotation    ``bad_annotation``)
missing VOC XML                        image skipped (``missing_annotation``) ``DatasetError``
empty label file / XML w/o objects     kept as a background image, logged   ``DatasetError``
                                       (``empty_label_file`` / ``no_objects``;
                                       ``skip_empty: true`` skips it)
COCO annotation with unknown image id  annotation skipped                    ``DatasetError``
                                       (``unknown_image_id``)
=====================================  ====================================  ======================

Images without any box (background images, a YOLO image without a label file, a COCO image
without annotations) are valid and are not counted as problems.

An image that passes the header check but cannot be decoded (e.g. a truncated JPEG) is handled in
``__getitem__``: with ``strict=True`` a :class:`DatasetError` naming the file is raised; otherwise
a warning is logged and the sample is replaced (training: the next readable image; evaluation:
a gray image without boxes keeping the original :class:`ImageMeta`), with ``meta.error`` naming
the unreadable file, so nothing crashes inside a DataLoader worker. Any other exception raised
while building a sample is re-raised as :class:`DatasetError` with the file path and index.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..core.groundtruth import BadBoxError
from .cache import DEFAULT_CACHE_MAX_MB, ImageCache, build_image_cache
from .color import hsv_enabled, random_hsv
from .loader import ImageMeta
from .mosaic import Mosaic, MosaicOutput, MosaicTile, tile_shape
from .transforms import DetectionTransform, TransformOutput

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = [
    "DatasetError",
    "LabelError",
    "LoadReport",
    "Record",
    "DetectionDataset",
    "read_image",
    "read_image_size",
]

logger = logging.getLogger("assignlab.data")

# reasons that remove a whole image from the dataset
SKIP_REASONS = (
    "missing_image",
    "corrupt_image",
    "missing_annotation",
    "bad_annotation",
    "bad_label_file",
    "empty_label_file",
    "no_objects",
)
_MAX_LOGGED_PER_REASON = 20


class DatasetError(RuntimeError):
    """A dataset file that cannot be used (the message names the file)."""


class LabelError(DatasetError, ValueError):
    """A class label out of range or an unknown class name (names the file and the line/object)."""


class LoadReport:
    """Counts of everything odd met while loading a dataset, per reason.

    ``counts`` keys: the skip reasons above, plus ``non_finite_box``, ``degenerate_box``,
    ``clipped_box``, ``size_mismatch``, ``unknown_image_id``, and informational ones
    (``background_images``, ``ignore_regions``, ``no_label_file``). ``events`` keeps
    ``(reason, path, detail)`` for each logged event.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: Counter[str] = Counter()
        self.events: list[tuple[str, str, str]] = []

    def add(self, reason: str, path: str = "", detail: str = "", n: int = 1, log: bool = True) -> None:
        if n <= 0:
            return
        self.counts[reason] += n
        if log:
            self.events.append((reason, path, detail))
            k = sum(1 for e in self.events if e[0] == reason)
            if k <= _MAX_LOGGED_PER_REASON:
                logger.warning("%s: %s: %s%s", self.name, reason, path, f" ({detail})" if detail else "")
            elif k == _MAX_LOGGED_PER_REASON + 1:
                logger.warning("%s: %s: further events not logged individually", self.name, reason)

    @property
    def num_skipped(self) -> int:
        return sum(self.counts[r] for r in SKIP_REASONS if r not in ("empty_label_file", "no_objects")) + int(
            self.counts["skipped_empty"]
        )

    def paths(self, reason: str) -> list[str]:
        return [p for r, p, _ in self.events if r == reason]

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.counts.items())]
        return f"{self.name}: " + (", ".join(parts) if parts else "no problems")


@dataclass
class Record:
    """One image's annotations in original pixels (cleaned: clipped, degenerate boxes removed)."""

    path: str
    image_id: int
    size: tuple[int, int]  # (h, w)
    boxes: np.ndarray  # (G, 4) float32 xyxy
    labels: np.ndarray  # (G,) int64
    ignore: np.ndarray  # (I, 4) float32 xyxy
    ignore_labels: np.ndarray  # (I,) int64
    area: np.ndarray | None = None  # (G,) COCO "area" when the source has one


def read_image(path: str) -> Tensor:
    """Decode an image file to a ``(3, H, W)`` uint8 RGB tensor (Pillow; EXIF orientation is NOT
    applied: annotations refer to the stored pixel grid; alpha dropped, grayscale expanded)."""
    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def read_image_size(path: str) -> tuple[int, int]:
    """``(h, w)`` from the image header, without decoding the pixels."""
    with Image.open(path) as im:
        w, h = im.size
    return int(h), int(w)


def empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


def config_kwargs(cfg: DataConfig, split: str, merge_name: str) -> dict[str, Any]:
    """The :class:`DetectionDataset` arguments a file-format reader takes from its data config:
    ``merge_name`` (as given), ``skip_empty``, ``verify_images`` and the dataset name
    ``"<basename of cfg.path>/<split>"``."""
    return {
        "merge_name": merge_name,
        "skip_empty": cfg.skip_empty,
        "verify_images": cfg.verify_images,
        "name": f"{os.path.basename(cfg.path or '')}/{split}",
    }


class DetectionDataset(Dataset):
    """Base class: records + letterbox transform + bad-input policy (see the module docstring).

    Subclasses fill ``self.records`` through :meth:`check_image` / :meth:`add_record` /
    :meth:`skip`, then call :meth:`_finish_loading`. ``__getitem__`` returns
    ``(image (3, S, S) float32 in [0, 1], {"boxes", "labels", "ignore", "ignore_labels", "meta"})``
    with letterboxed boxes.

    Training augmentation (``train=True`` only; the defaults keep the plain letterbox + scale
    jitter + flip pipeline bit-for-bit):

    * ``mosaic``: probability of a four-image :class:`~assignlab.data.mosaic.Mosaic` sample
      (the indexed image + three drawn from the sample's generator); ``mosaic_close_epoch``: first
      epoch (0-based, see :meth:`set_epoch`) from which mosaic is off (Ultralytics
      ``close_mosaic``; None = never). The mosaic's random scale range and flip probability are
      ``scale_range`` (default ``(0.5, 1.5)``, Ultralytics ``scale=0.5``) and ``flip_p``;
    * ``hsv``: ``(h, s, v)`` colour jitter amplitudes (:mod:`assignlab.data.color`), after the
      geometric steps, also on mosaic samples.

    Every random choice of sample ``i`` comes from one generator seeded with ``(seed, epoch, i)``,
    in the order: mosaic decision (only when ``mosaic > 0`` and mosaic is on this epoch), then the
    mosaic or letterbox parameters, then the flip, then the colour gains (only when ``hsv`` is on).

    Attributes:
        names: class names (``[merge_name]`` after ``merge_classes``).
        report: the :class:`LoadReport` of this dataset.
        split, format, img_size, train, strict, mosaic, mosaic_close_epoch, hsv.
        image_cache: the :class:`~assignlab.data.cache.ImageCache` once :meth:`cache_images` ran.
    """

    format = ""

    def __init__(
        self,
        *,
        names: Sequence[str],
        split: str,
        img_size: int,
        train: bool,
        strict: bool = False,
        merge_classes: bool = False,
        merge_name: str = "object",
        skip_empty: bool = False,
        verify_images: bool = True,
        name: str = "",
        scale_range: tuple[float, float] = (0.5, 1.5),
        flip_p: float = 0.5,
        seed: int = 0,
        mosaic: float = 0.0,
        mosaic_close_epoch: int | None = None,
        hsv: Sequence[float] | None = None,
    ) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be >= 1, got {img_size}")
        if isinstance(mosaic, bool) or not 0.0 <= float(mosaic) <= 1.0:
            raise ValueError(f"mosaic must be a probability in [0, 1], got {mosaic!r}")
        if hsv is not None:
            hsv = tuple(float(x) for x in hsv)
            if len(hsv) != 3 or not all(0.0 <= x <= 1.0 for x in hsv):
                raise ValueError(f"hsv must be three gains (h, s, v) in [0, 1], got {hsv!r}")
        self.source_names = list(names)
        self.num_source_classes = len(self.source_names)
        self.merge_classes = merge_classes
        self.names = [merge_name] if merge_classes else list(names)
        self.split = split
        self.img_size = int(img_size)
        self.train = train
        self.strict = strict
        self.skip_empty = skip_empty
        self.verify_images = verify_images
        self.name = name or f"{self.format}/{split}"
        self.report = LoadReport(self.name)
        self.records: list[Record] = []
        self.transform = DetectionTransform(img_size, train=train, scale_range=scale_range, flip_p=flip_p)
        self._coco_gt: dict | None = None
        self.seed = int(seed)
        self.epoch = 0
        self.mosaic = float(mosaic)
        self.mosaic_close_epoch = None if mosaic_close_epoch is None else int(mosaic_close_epoch)
        self.hsv = hsv
        self.mosaic_transform = Mosaic(img_size, scale_range=scale_range, flip_p=flip_p) if self.mosaic > 0 else None
        self.image_cache: ImageCache | None = None

    def set_epoch(self, epoch: int) -> None:
        """Training augmentation of sample ``i`` is drawn from a generator seeded with
        ``(seed, epoch, i)``: reproducible whatever the number of workers; new each epoch."""
        self.epoch = int(epoch)

    @property
    def mosaic_active(self) -> bool:
        """Mosaic is drawn this epoch: training, ``mosaic > 0`` and before ``mosaic_close_epoch``."""
        return (
            self.train
            and self.mosaic > 0
            and (self.mosaic_close_epoch is None or self.epoch < self.mosaic_close_epoch)
        )

    def cache_images(self, mode: bool | str = "ram", max_mb: float = DEFAULT_CACHE_MAX_MB) -> ImageCache | None:
        """Decode every image into a RAM cache now (see :mod:`assignlab.data.cache`; ``mode``
        ``"ram"`` / ``True`` keeps originals, ``"resize"`` resizes the long side to ``img_size``,
        ``False`` drops the cache). Call it in the main process before building the loader.

        Raises:
            CacheTooLargeError: the estimated size exceeds ``max_mb``.
        """
        self.image_cache = build_image_cache(self, mode, max_mb)
        return self.image_cache

    def _load(self, i: int) -> tuple[Tensor, tuple[int, int] | None]:
        """``(image (3, h, w) uint8, original (h, w) or None = the image's own size)``, from the
        cache when it holds image ``i``."""
        if self.image_cache is not None:
            hit = self.image_cache.get(i)
            if hit is not None:
                return hit
        return self.load_image(i), None

    def _generator(self, i: int) -> torch.Generator | None:
        if not self.train:
            return None
        g = torch.Generator()
        g.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_033 + i) % (2**63 - 1))
        return g

    @property
    def num_classes(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ building helpers
    def skip(self, reason: str, path: str, detail: str = "") -> None:
        """Skip an image for ``reason`` (logged + counted), or raise when strict."""
        if self.strict:
            raise DatasetError(f"{path}: {reason.replace('_', ' ')}" + (f": {detail}" if detail else ""))
        self.report.add(reason, path, detail)

    def empty_annotation(self, reason: str, path: str) -> bool:
        """An empty label file / XML without objects: True = keep the image as background."""
        if self.strict:
            raise DatasetError(
                f"{path}: {reason.replace('_', ' ')} (empty images must have no label file "
                "in strict mode, or use strict=False)"
            )
        self.report.add(reason, path, "skipped (skip_empty)" if self.skip_empty else "kept as a background image")
        if self.skip_empty:
            self.report.add("skipped_empty", path, log=False)
        return not self.skip_empty

    def check_image(self, path: str, size_hint: tuple[int, int] | None = None) -> tuple[int, int] | None:
        """The image's ``(h, w)``; None when it is missing or unreadable (skipped, or raised if strict).

        The header is read when there is no ``size_hint`` or when ``verify_images`` is on.
        """
        if not os.path.isfile(path):
            self.skip("missing_image", path, "file not found")
            return None
        if size_hint is not None and not self.verify_images and min(size_hint) > 0:
            return size_hint
        try:
            size = read_image_size(path)
        except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable"
            self.skip("corrupt_image", path, f"{type(e).__name__}: {e}")
            return None
        if size_hint is not None and tuple(size_hint) != size and min(size_hint) > 0:
            self.report.add("size_mismatch", path, f"annotation says (h, w)={tuple(size_hint)}, image is {size}")
        return size

    def sanitize(
        self,
        boxes: np.ndarray,
        size: tuple[int, int] | None,
        where: str,
        describe: Callable[[int], str],
        kind: str = "box",
    ) -> np.ndarray:
        """Apply the box policy; returns the bool keep-mask and clips ``boxes`` in place.

        Args:
            boxes: ``(G, 4)`` float64 xyxy, modified in place (clipped).
            where: the annotation file, for messages.
            describe: row index -> "line 7" / "object 2" / "annotation id 42".
        """
        keep = np.ones(len(boxes), dtype=bool)
        if len(boxes) == 0:
            return keep
        finite = np.isfinite(boxes).all(axis=1)
        if not finite.all():
            j = int(np.flatnonzero(~finite)[0])
            msg = f"{where}: {describe(j)}: {kind} has a non-finite coordinate {boxes[j].tolist()}"
            n_bad = int((~finite).sum())
            if self.strict:
                raise BadBoxError(msg + f" ({n_bad} such {kind}es in this file)")
            self.report.add(
                f"non_finite_{kind}",
                where,
                f"{describe(j)} {boxes[j].tolist()}" + (f" and {n_bad - 1} more" if n_bad > 1 else ""),
                n=n_bad,
            )
            keep &= finite
        if size is not None:
            h, w = size
            fb = boxes[keep]
            clipped = fb.copy()
            clipped[:, 0::2] = clipped[:, 0::2].clip(0, w)
            clipped[:, 1::2] = clipped[:, 1::2].clip(0, h)
            changed = (np.abs(clipped - fb) > 1e-3).any(axis=1)  # ignore float round-off
            if changed.any():
                self.report.add(f"clipped_{kind}", where, n=int(changed.sum()), log=False)
            boxes[keep] = clipped
        degenerate = keep & ~((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        if degenerate.any():
            j = int(np.flatnonzero(degenerate)[0])
            self.report.add(
                f"degenerate_{kind}",
                where,
                f"{describe(j)} {boxes[j].tolist()}",
                n=int(degenerate.sum()),
                log=kind == "box",
            )
            keep &= ~degenerate
        return keep

    def add_record(
        self,
        *,
        path: str,
        size: tuple[int, int],
        boxes: np.ndarray,
        labels: np.ndarray,
        where: str,
        describe: Callable[[int], str],
        ignore: np.ndarray | None = None,
        ignore_labels: np.ndarray | None = None,
        ignore_describe: Callable[[int], str] | None = None,
        area: np.ndarray | None = None,
        image_id: int | None = None,
    ) -> Record:
        """Clean the boxes (policy above) and append a :class:`Record` (image id = index by default)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        keep = self.sanitize(boxes, size, where, describe)
        if ignore is None:
            ignore = np.zeros((0, 4))
            ignore_labels = np.zeros((0,), dtype=np.int64)
        ignore = np.asarray(ignore, dtype=np.float64).reshape(-1, 4).copy()
        ignore_labels = (
            np.zeros(len(ignore), dtype=np.int64)
            if ignore_labels is None
            else np.asarray(ignore_labels, dtype=np.int64).reshape(-1)
        )
        keep_ig = self.sanitize(ignore, size, where, ignore_describe or describe, kind="ignore")
        rec = Record(
            path=path,
            image_id=len(self.records) if image_id is None else int(image_id),
            size=(int(size[0]), int(size[1])),
            boxes=boxes[keep].astype(np.float32),
            labels=labels[keep],
            ignore=ignore[keep_ig].astype(np.float32),
            ignore_labels=ignore_labels[keep_ig],
            area=None if area is None else np.asarray(area, dtype=np.float64).reshape(-1)[keep],
        )
        if len(rec.boxes) == 0:
            self.report.add("background_images", path, log=False)
        self.report.add("ignore_regions", path, n=len(rec.ignore), log=False)
        self.records.append(rec)
        return rec

    def _finish_loading(self) -> None:
        c = self.report.counts
        dropped = c["degenerate_box"] + c["non_finite_box"]
        if dropped:
            warnings.warn(
                f"{self.name}: dropped {c['degenerate_box']} degenerate (zero-area or inverted) and "
                f"{c['non_finite_box']} non-finite box(es); see dataset.report",
                stacklevel=3,
            )
        nb = sum(len(r.boxes) for r in self.records)
        level = logging.WARNING if self.report.num_skipped or dropped else logging.INFO
        logger.log(
            level,
            "%s: %d images, %d boxes, %d skipped images | %s",
            self.name,
            len(self.records),
            nb,
            self.report.num_skipped,
            self.report.summary(),
        )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records)

    def record(self, i: int) -> Record:
        return self.records[i]

    def load_image(self, i: int) -> Tensor:
        """Decode image ``i`` to ``(3, h, w)`` uint8."""
        return read_image(self.record(i).path)

    def load_annotations(self, i: int) -> dict:
        """Annotations of image ``i`` in original pixels, without decoding the image.

        Returns ``{"boxes": (G, 4) float32 xyxy, "labels": (G,) long (0..C-1, 0 after merge),
        "ignore": (I, 4) float32, "ignore_labels": (I,) long, "orig_size": (h, w), "path",
        "image_id"}``.
        """
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {self.name} with {len(self)} images")
        r = self.record(i)
        labels = torch.from_numpy(r.labels.copy())
        ignore_labels = torch.from_numpy(r.ignore_labels.copy())
        if self.merge_classes:
            labels = torch.zeros_like(labels)
            ignore_labels = torch.zeros_like(ignore_labels)
        return {
            "boxes": torch.from_numpy(r.boxes.copy()),
            "labels": labels,
            "ignore": torch.from_numpy(r.ignore.copy()),
            "ignore_labels": ignore_labels,
            "orig_size": r.size,
            "path": r.path,
            "image_id": r.image_id,
        }

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        return self._get(i, attempts=0)

    def _get(self, i: int, attempts: int) -> tuple[Tensor, dict]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {self.name} with {len(self)} images")
        path = f"<index {i}>"
        try:
            rec = self.record(i)
            path = rec.path
            gen = self._generator(i)
            if gen is not None and self.mosaic_active and float(torch.rand((), generator=gen)) < self.mosaic:
                return self._mosaic_sample(i, gen)
            try:
                image, orig = self._load(i)
            except Exception as e:  # noqa: BLE001 - decoder errors of any type
                msg = f"{self.name}: cannot decode image {path}: {type(e).__name__}: {e}"
                if self.strict:
                    raise DatasetError(msg) from e
                return self._replacement(i, rec, msg, attempts)
            return self._sample(image, self.load_annotations(i), rec, i, gen, orig)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"{self.name}: error loading {path} (index {i}): {type(e).__name__}: {e}") from e

    def _replacement(self, i: int, rec: Record, msg: str, attempts: int) -> tuple[Tensor, dict]:
        logger.warning("%s (replaced)", msg)
        self.report.add("unreadable_at_load", rec.path, log=False)
        if self.train and len(self) > 1 and attempts < min(len(self) - 1, 10):
            image, target = self._get((i + 1) % len(self), attempts + 1)
            meta: ImageMeta = target["meta"]
            meta.error = meta.error or f"{msg}; replaced by {meta.path}"
            return image, target
        # evaluation (or nothing readable nearby): a gray image without boxes, original meta
        h, w = rec.size
        gray = torch.full((3, max(h, 1), max(w, 1)), 114, dtype=torch.uint8)
        ann = self.load_annotations(i)
        ann = {
            **ann,
            "boxes": ann["boxes"][:0],
            "labels": ann["labels"][:0],
            "ignore": ann["ignore"][:0],
            "ignore_labels": ann["ignore_labels"][:0],
        }
        image, target = self._sample(gray, ann, rec, i)
        target["meta"].error = f"{msg}; replaced by a gray image without boxes"
        return image, target

    def _sample(
        self,
        image: Tensor,
        ann: dict,
        rec: Record,
        index: int,
        generator: torch.Generator | None = None,
        orig_size: tuple[int, int] | None = None,
    ) -> tuple[Tensor, dict]:
        """Letterbox (+ jitter, flip, colour) one image; ``orig_size`` when ``image`` is a resized
        cached copy; ``generator`` continues the sample's random stream (a new one when None)."""
        if generator is None:
            generator = self._generator(index)
        if orig_size is None:
            orig_size = (int(image.shape[-2]), int(image.shape[-1]))
        out = self.transform(
            image, ann["boxes"], ann["labels"], ann["ignore"], ann["ignore_labels"], generator, orig_size=orig_size
        )
        meta = ImageMeta(
            path=rec.path,
            image_id=rec.image_id,
            orig_size=orig_size,
            scale=float(out.params.scale),
            pad=(float(out.params.pad[0]), float(out.params.pad[1])),
            flipped=out.flipped,
        )
        return self._finish(out, meta, generator)

    def _finish(self, out: TransformOutput | MosaicOutput, meta: ImageMeta,
                generator: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        """The sample of a transformed image (plain or mosaic): colour jitter and the target dict."""
        target = {
            "boxes": out.boxes,
            "labels": out.labels,
            "ignore": out.ignore,
            "ignore_labels": out.ignore_labels,
            "meta": meta,
            "num_dropped": out.num_dropped,
        }
        return self._color(out.image, generator), target

    def _color(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        if generator is None or not hsv_enabled(self.hsv):
            return image
        return random_hsv(image, self.hsv, generator)

    def _mosaic_tile(self, j: int) -> tuple[int, Tensor, tuple[int, int], str | None]:
        """``(index used, image, original size, error)`` for mosaic tile ``j``: an undecodable
        image is replaced by the next readable one (``DatasetError`` when strict)."""
        err = None
        for k in range(min(len(self), 11)):
            jj = (j + k) % len(self)
            try:
                image, orig = self._load(jj)
            except Exception as e:  # noqa: BLE001 - decoder errors of any type
                msg = f"{self.name}: cannot decode image {self.record(jj).path}: {type(e).__name__}: {e}"
                if self.strict:
                    raise DatasetError(msg) from e
                logger.warning("%s (replaced in a mosaic)", msg)
                self.report.add("unreadable_at_load", self.record(jj).path, log=False)
                err = err or msg
                continue
            if orig is None:
                orig = (int(image.shape[-2]), int(image.shape[-1]))
            return jj, image, orig, (f"{err}; replaced by {self.record(jj).path}" if err else None)
        raise DatasetError(f"{self.name}: no readable image for a mosaic near index {j}: {err}")

    def _mosaic_sample(self, i: int, generator: torch.Generator) -> tuple[Tensor, dict]:
        """A four-image mosaic sample: image ``i`` top left, three others drawn from ``generator``."""
        mt = self.mosaic_transform
        if mt is None:  # mosaic switched on after construction
            mt = self.mosaic_transform = Mosaic(
                self.img_size, scale_range=self.transform.letterbox.scale_range or (0.5, 1.5),
                flip_p=self.transform.flip_p,
            )
        others, params = mt.sample(len(self), generator)
        tiles, used, errors = [], [], []
        for j in [i, *others]:
            jj, image, orig, err = self._mosaic_tile(j)
            ann = self.load_annotations(jj)
            tiles.append(MosaicTile(image, orig, ann["boxes"], ann["labels"], ann["ignore"], ann["ignore_labels"]))
            used.append(jj)
            if err:
                errors.append(err)
        out = mt(params, tiles)
        rec0 = self.record(used[0])
        # the first tile's letterbox-like mapping: out = orig * scale + pad (before the flip)
        h0, w0 = tiles[0].orig_size
        r0 = min(self.img_size / h0, self.img_size / w0)
        (x1, y1, _, _) = mt.tile_rects(params, [tile_shape(t.orig_size, self.img_size) for t in tiles])[0]
        x0, y0, _ = params.window
        meta = ImageMeta(
            path=rec0.path,
            image_id=rec0.image_id,
            orig_size=(int(h0), int(w0)),
            scale=float(r0 * params.ratio),
            pad=(float((x1 - x0) * params.ratio), float((y1 - y0) * params.ratio)),
            flipped=params.flipped,
            error="; ".join(errors) if errors else None,
            mosaic=tuple(used),
        )
        return self._finish(out, meta, generator)

    # ------------------------------------------------------------------ evaluation
    def category_id(self, label: int) -> int:
        """COCO category id written by :meth:`coco_gt` for a contiguous label: ``label + 1``."""
        return int(label) + 1

    def coco_gt(self) -> dict:
        """The ground truth as a COCO-format dict in ORIGINAL image coordinates (for pycocotools).

        - ``images``: ``{"id": image_id, "file_name", "width", "height"}``;
        - ``categories``: ``{"id": label + 1, "name"}`` (contiguous labels shifted by one, for
          every format; for coco datasets ``self.category_ids[label]`` gives the original id);
        - ``annotations``: ``bbox`` ``[x, y, w, h]``, ``area`` (the source's COCO area when it has
          one, else ``w * h``), ``iscrowd=0``; ignore regions (COCO crowd, invalid faces, VOC
          difficult) are written with ``iscrowd=1`` and ``ignore=1`` so pycocotools ignores
          detections on them. Annotation ids start at 1.
        """
        if self._coco_gt is not None:
            return self._coco_gt
        images, anns = [], []
        k = 1
        for i in range(len(self)):
            r = self.record(i)
            a = self.load_annotations(i)
            h, w = r.size
            images.append({"id": int(r.image_id), "file_name": os.path.basename(r.path), "width": w, "height": h})
            for j, (b, lb) in enumerate(zip(a["boxes"].tolist(), a["labels"].tolist())):
                bw, bh = b[2] - b[0], b[3] - b[1]
                area = float(r.area[j]) if r.area is not None else bw * bh
                anns.append(
                    {
                        "id": k,
                        "image_id": int(r.image_id),
                        "category_id": self.category_id(lb),
                        "bbox": [b[0], b[1], bw, bh],
                        "area": area,
                        "iscrowd": 0,
                        "ignore": 0,
                    }
                )
                k += 1
            for b, lb in zip(a["ignore"].tolist(), a["ignore_labels"].tolist()):
                bw, bh = b[2] - b[0], b[3] - b[1]
                anns.append(
                    {
                        "id": k,
                        "image_id": int(r.image_id),
                        "category_id": self.category_id(lb),
                        "bbox": [b[0], b[1], bw, bh],
                        "area": bw * bh,
                        "iscrowd": 1,
                        "ignore": 1,
                    }
                )
                k += 1
        cats = [{"id": self.category_id(c), "name": n, "supercategory": "none"} for c, n in enumerate(self.names)]
        self._coco_gt = {
            "info": {"description": f"assignlab {self.name}"},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": cats,
        }
        return self._coco_gt

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.names)} classes, "
            f"img_size={self.img_size}, train={self.train})"
        )
