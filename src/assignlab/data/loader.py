"""Batches: per-image metadata, the collate function and the DataLoader factory.

A :class:`Batch` is what the trainer consumes::

    images  (B, 3, S, S) float32 in [0, 1]        letterboxed to S x S
    gt      GroundTruth: boxes (B, G, 4) letterboxed px xyxy, labels (B, G), mask (B, G),
            ignore (B, I, 4) + ignore_mask (B, I)   (I may be 0)
    meta    list of ImageMeta, one per image

``ImageMeta`` records how to go back to the original image:
``original = (letterboxed - pad) / scale`` (after undoing a horizontal flip, ``x -> S - x``, for
training samples with ``flipped=True``; evaluation samples are never flipped).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..core.groundtruth import GroundTruth

__all__ = ["Batch", "ImageMeta", "DetectionLoader", "build_loader", "collate", "to_original"]

logger = logging.getLogger("assignlab.data")


@dataclass
class ImageMeta:
    """Where a letterboxed sample came from.

    Attributes:
        path: the image file (``synthetic://<split>/<index>`` for procedural images).
        image_id: stable int id (the COCO id for coco datasets; the dataset index otherwise).
        orig_size: ``(h, w)`` of the original image.
        scale: letterbox scale, ``new = orig * scale``.
        pad: ``(pad_x, pad_y)`` added left/top after scaling (negative when a scale-jittered
            training image was cropped).
        flipped: the sample was flipped horizontally after letterboxing (training only).
        error: set when the image could not be read and was replaced (training: by the next
            readable image, whose path is in ``path``; evaluation: by a gray image without boxes);
            the message names the unreadable file.
        mosaic: dataset indices of the four tiles of a mosaic training sample (tile 0 = the
            indexed image, top left), else None. For a mosaic sample ``scale`` / ``pad`` map the
            first tile only (``orig_size`` is its size).
    """

    path: str
    image_id: int
    orig_size: tuple[int, int]
    scale: float
    pad: tuple[float, float]
    flipped: bool = False
    error: str | None = None
    mosaic: tuple[int, ...] | None = None


def to_original(boxes: Tensor, meta: ImageMeta, size: int | None = None) -> Tensor:
    """Map ``(N, 4)`` letterboxed xyxy boxes back to original-image pixels.

    ``size`` (the letterbox side) is only needed for flipped samples.

    Example: a 200 x 100 (h x w) image letterboxed to 64: ``scale = 64/200 = 0.32``, new size
    64 x 32, ``pad = (16, 0)``; the letterboxed box ``(20, 8, 36, 24)`` maps back to
    ``((20-16)/0.32, 8/0.32, (36-16)/0.32, 24/0.32) = (12.5, 25, 62.5, 75)``.
    """
    b = boxes.clone()
    if meta.flipped:
        if size is None:
            raise ValueError("to_original: the sample is flipped, pass the letterbox size")
        b[:, [0, 2]] = size - boxes[:, [2, 0]]
    pad = torch.tensor([meta.pad[0], meta.pad[1], meta.pad[0], meta.pad[1]], dtype=b.dtype, device=b.device)
    return (b - pad) / meta.scale


@dataclass
class Batch:
    """A collated batch (see the module docstring)."""

    images: Tensor
    gt: GroundTruth
    meta: list[ImageMeta]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.images.to(device, non_blocking=True), self.gt.to(device), self.meta)

    def pin_memory(self) -> Batch:
        gt = self.gt
        pinned = GroundTruth(
            gt.boxes.pin_memory(),
            gt.labels.pin_memory(),
            gt.mask.pin_memory(),
            None if gt.ignore is None else gt.ignore.pin_memory(),
            None if gt.ignore_mask is None else gt.ignore_mask.pin_memory(),
            gt.num_dropped,
        )
        return Batch(self.images.pin_memory(), pinned, self.meta)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def collate(samples: Sequence[tuple[Tensor, dict]]) -> Batch:
    """Stack ``(image, target)`` samples into a :class:`Batch` (GTs padded, always with ignore).

    ``batch.gt.num_dropped`` counts the boxes the per-sample transforms dropped.
    """
    if not samples:
        raise ValueError("collate: empty batch")
    images = torch.stack([s[0] for s in samples])
    size = (int(images.shape[-2]), int(images.shape[-1]))
    gt = GroundTruth.from_lists(
        boxes=[s[1]["boxes"] for s in samples],
        labels=[s[1]["labels"] for s in samples],
        ignore=[s[1]["ignore"] for s in samples],
        image_size=size,
    )
    dropped = sum(int(s[1].get("num_dropped", 0)) for s in samples)
    if dropped:  # boxes the transforms dropped (cropped away / degenerate) are counted here too
        gt = dataclasses.replace(gt, num_dropped=gt.num_dropped + dropped)
    return Batch(images, gt, [s[1]["meta"] for s in samples])


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader generator; numpy / random follow it.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class DetectionLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` yielding :class:`Batch` objects.

    Replaced unreadable images (``ImageMeta.error``) are logged in the main process as they
    arrive and counted in :attr:`num_replaced` (worker processes cannot log reliably).
    """

    num_replaced: int = 0

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for batch in super().__iter__():
            for m in batch.meta:
                if m.error:
                    self.num_replaced += 1
                    logger.warning("%s", m.error)
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to a :class:`DistributedSampler` (reshuffles per epoch)."""
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
) -> DetectionLoader:
    """A seeded DataLoader over a detection dataset, yielding :class:`Batch`.

    Shuffling order and the workers' random streams derive from ``seed`` (the datasets' own
    augmentation is seeded per sample, see ``DetectionDataset.set_epoch``). With
    ``distributed=True`` a :class:`DistributedSampler` splits the data across ranks; call
    ``loader.set_epoch(epoch)`` each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    g = torch.Generator()
    g.manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    return DetectionLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=g,
        worker_init_fn=_seed_worker if workers > 0 else None,
    )
