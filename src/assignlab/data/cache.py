"""A RAM cache of decoded images, so that training does not decode every image every epoch.

Mosaic reads four images per sample, so decoding (a few ms per JPEG) quickly dominates the data
pipeline. :func:`build_image_cache` decodes every image of a dataset once, in the main process,
into ONE flat ``uint8`` buffer (plus offsets and shapes). DataLoader workers forked afterwards
share these pages copy-on-write (the loader is rebuilt every epoch, so a cache filled lazily inside
the workers would be thrown away each epoch); a single buffer also travels as one shared-memory
block if the dataset is ever pickled to spawned workers.

Modes:

* ``"ram"``: the decoded originals. Samples are bit-identical to the uncached ones.
* ``"resize"``: each image resized so that its long side is the dataset's ``img_size`` (the
  evaluation letterbox size; :func:`~assignlab.data.mosaic.tile_shape`). Evaluation samples and
  mosaic tiles are bit-identical to the uncached ones (they are resized to exactly that size
  anyway); scale-jittered (non-mosaic) training samples are resized a second time from the cached
  copy, which blurs a little when the jitter enlarges the image (scale > 1).

Size limit: the size is estimated from the annotation / header sizes before anything is decoded;
when it exceeds ``max_mb`` the cache is REFUSED with :class:`CacheTooLargeError` (naming the
estimate, the limit and the smaller ``resize`` estimate) rather than silently skipped, since a run
that falls back to decoding is several times slower (and a ``resize`` cache changes the training
pixels). Example: the face-mask train split (593 images up to 600 x 600) needs about 190 MB as
``ram`` and 119 MB as ``resize`` at 320 px.

Images that cannot be decoded are not cached; reading them later goes through the dataset's usual
bad-image policy (replacement or ``DatasetError``). Under DDP every process holds its own cache
(memory x number of processes); the limit applies per process.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .mosaic import resize_long_side, tile_shape

if TYPE_CHECKING:
    from .dataset import DetectionDataset

__all__ = ["CACHE_MODES", "CacheTooLargeError", "ImageCache", "build_image_cache", "cache_mode", "estimate_cache_bytes"]

logger = logging.getLogger("assignlab.data")

CACHE_MODES = ("ram", "resize")
DEFAULT_CACHE_MAX_MB = 4096.0


class CacheTooLargeError(ValueError):
    """The estimated image cache is larger than the allowed size (the message says by how much)."""


def cache_mode(value: Any) -> str | None:
    """Normalise a ``cache`` option: ``False`` / ``None`` / ``"false"`` / ``"none"`` / ``"off"`` ->
    ``None``; ``True`` / ``"true"`` / ``"ram"`` -> ``"ram"``; ``"resize"`` -> ``"resize"``."""
    if value is None or value is False:
        return None
    if value is True:
        return "ram"
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("", "false", "none", "off", "no", "0"):
            return None
        if v in ("true", "on", "yes", "1"):
            return "ram"
        if v in CACHE_MODES:
            return v
    raise ValueError(f"cache must be one of false, true (= ram), {', '.join(CACHE_MODES)}; got {value!r}")


def estimate_cache_bytes(sizes: list[tuple[int, int]], mode: str, img_size: int) -> int:
    """Bytes of the cache for images of ``sizes`` ((h, w) each), 3 uint8 channels."""
    if mode == "resize":
        sizes = [tile_shape(s, img_size) for s in sizes]
    return int(sum(3 * int(h) * int(w) for h, w in sizes))


class ImageCache:
    """Decoded images ``(3, h, w)`` uint8 of one dataset (see the module docstring).

    Attributes:
        mode: ``"ram"`` or ``"resize"``; size: the resize target (long side) for ``"resize"``.
        nbytes: bytes held; num_cached: images held; num_failed: images that could not be decoded.
    """

    def __init__(self, mode: str, size: int, num_images: int) -> None:
        self.mode = mode
        self.size = int(size)
        self.buffer = torch.empty(0, dtype=torch.uint8)
        self.offsets = np.full(num_images, -1, dtype=np.int64)
        self.shapes = np.zeros((num_images, 2), dtype=np.int64)  # cached (h, w)
        self.orig_sizes = np.zeros((num_images, 2), dtype=np.int64)  # decoded (h, w) before resizing
        self.extra: dict[int, Tensor] = {}  # images whose size differs from the annotation's
        self.num_failed = 0
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def num_cached(self) -> int:
        return int((self.offsets >= 0).sum()) + len(self.extra)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.numel()) + sum(int(t.numel()) for t in self.extra.values())

    def __contains__(self, i: int) -> bool:
        return 0 <= i < len(self.offsets) and (self.offsets[i] >= 0 or i in self.extra)

    def get(self, i: int) -> tuple[Tensor, tuple[int, int]] | None:
        """``(image (3, h, w) uint8 read-only view, original (h, w))`` or None when not cached."""
        if i in self.extra:
            img = self.extra[i]
        else:
            off = int(self.offsets[i])
            if off < 0:
                return None
            h, w = (int(x) for x in self.shapes[i])
            img = self.buffer[off : off + 3 * h * w].view(3, h, w)
        return img, (int(self.orig_sizes[i, 0]), int(self.orig_sizes[i, 1]))


def build_image_cache(
    dataset: DetectionDataset, mode: Any = "ram", max_mb: float = DEFAULT_CACHE_MAX_MB
) -> ImageCache | None:
    """Decode every image of ``dataset`` into an :class:`ImageCache` (None when ``mode`` is off).

    Raises:
        CacheTooLargeError: the estimate exceeds ``max_mb`` megabytes (2**20 bytes).
    """
    m = cache_mode(mode)
    if m is None:
        return None
    if not max_mb > 0:
        raise ValueError(f"cache_max_mb must be > 0, got {max_mb}")
    n = len(dataset)
    S = int(dataset.img_size)
    sizes = [tuple(dataset.record(i).size) for i in range(n)]
    est = estimate_cache_bytes(sizes, m, S)
    limit = float(max_mb) * 2**20
    if est > limit:
        alt = estimate_cache_bytes(sizes, "resize", S)
        hint = f"; cache=resize would need {alt / 2**20:.0f} MB" if m == "ram" else ""
        raise CacheTooLargeError(
            f"{dataset.name}: caching {n} images ({m}) needs about {est / 2**20:.0f} MB, more than the "
            f"limit cache_max_mb={max_mb:g}{hint}; raise cache_max_mb or set cache=false"
        )
    t0 = time.perf_counter()
    cache = ImageCache(m, S, n)
    slots = [tile_shape(s, S) if m == "resize" else s for s in sizes]
    starts = np.concatenate([[0], np.cumsum([3 * h * w for h, w in slots])]).astype(np.int64)
    cache.buffer = torch.empty(int(starts[-1]), dtype=torch.uint8)
    for i in range(n):
        try:
            img = dataset.load_image(i)
        except Exception as e:  # noqa: BLE001 - left to the dataset's bad-image policy at read time
            cache.num_failed += 1
            logger.debug("%s: not cached (cannot decode %s: %s)", dataset.name, dataset.record(i).path, e)
            continue
        orig = (int(img.shape[-2]), int(img.shape[-1]))
        if m == "resize":
            img = resize_long_side(img, S)
        img = img.contiguous()
        cache.orig_sizes[i] = orig
        cache.shapes[i] = (int(img.shape[-2]), int(img.shape[-1]))
        if img.numel() == starts[i + 1] - starts[i] and img.shape[0] == 3:
            cache.buffer[int(starts[i]) : int(starts[i + 1])] = img.reshape(-1)
            cache.offsets[i] = starts[i]
        else:  # the header / annotation size was wrong: keep this one apart
            cache.extra[i] = img.clone()
    cache.seconds = time.perf_counter() - t0
    logger.info(
        "%s: cached %d images (%s, %.0f MB) in %.1f s%s",
        dataset.name,
        cache.num_cached,
        m,
        cache.nbytes / 2**20,
        cache.seconds,
        f"; {cache.num_failed} could not be decoded" if cache.num_failed else "",
    )
    return cache
