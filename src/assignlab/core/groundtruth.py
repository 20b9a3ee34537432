"""A padded batch of ground-truth boxes.

Images hold different numbers of boxes. :class:`GroundTruth` pads them to ``(B, G, ...)`` and
records which rows are real in ``mask``. Padding is *always* the mask: a padded row's
coordinates are zeros but nothing ever decides validity from coordinates.

Example, two images with 2 and 0 boxes::

    boxes  (2, 2, 4)  [[[10, 10, 50, 60], [100, 80, 120, 90]],
                       [[ 0,  0,  0,  0], [  0,  0,   0,   0]]]
    labels (2, 2)     [[0, 2], [0, 0]]
    mask   (2, 2)     [[True, True], [False, False]]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GroundTruth", "BadBoxError"]


class BadBoxError(ValueError):
    """A ground-truth box with NaN or infinite coordinates (names the image and the box)."""


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of a batch, padded.

    Attributes:
        boxes: ``(B, G, 4)`` float, ``xyxy`` pixels.
        labels: ``(B, G)`` long class ids.
        mask: ``(B, G)`` bool, True for real boxes.
        ignore: ``(B, I, 4)`` float "don't care" regions (crowd boxes, invalid faces), ``xyxy``.
        ignore_mask: ``(B, I)`` bool, True for real ignore regions.
        num_dropped: how many degenerate boxes :meth:`from_lists` masked out (0 otherwise).
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor
    ignore: Tensor | None = None
    ignore_mask: Tensor | None = None
    num_dropped: int = 0

    def __post_init__(self) -> None:
        if self.boxes.dim() != 3 or self.boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (B, G, 4), got {tuple(self.boxes.shape)}")
        if self.labels.shape != self.boxes.shape[:2] or self.mask.shape != self.boxes.shape[:2]:
            raise ValueError(
                f"labels {tuple(self.labels.shape)} and mask {tuple(self.mask.shape)} must be "
                f"{tuple(self.boxes.shape[:2])}"
            )
        if self.mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor")
        if (self.ignore is None) != (self.ignore_mask is None):
            raise ValueError("ignore and ignore_mask go together")
        if self.ignore is not None and (
            self.ignore.dim() != 3 or self.ignore.shape[0] != self.boxes.shape[0] or self.ignore.shape[-1] != 4
        ):
            raise ValueError(f"ignore must be (B, I, 4), got {tuple(self.ignore.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def max_boxes(self) -> int:
        return int(self.boxes.shape[1])

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    @property
    def has_ignore(self) -> bool:
        return self.ignore is not None and self.ignore.shape[1] > 0

    def num_boxes(self) -> Tensor:
        """``(B,)`` number of real boxes per image."""
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str) -> GroundTruth:
        return GroundTruth(
            boxes=self.boxes.to(device),
            labels=self.labels.to(device),
            mask=self.mask.to(device),
            ignore=None if self.ignore is None else self.ignore.to(device),
            ignore_mask=None if self.ignore_mask is None else self.ignore_mask.to(device),
            num_dropped=self.num_dropped,
        )

    def image(self, b: int) -> tuple[Tensor, Tensor]:
        """The real boxes ``(G_b, 4)`` and labels ``(G_b,)`` of image ``b``."""
        m = self.mask[b]
        return self.boxes[b][m], self.labels[b][m]

    def select_images(self, index: Tensor | slice) -> GroundTruth:
        """The ground truth of a subset of images."""
        return GroundTruth(
            boxes=self.boxes[index],
            labels=self.labels[index],
            mask=self.mask[index],
            ignore=None if self.ignore is None else self.ignore[index],
            ignore_mask=None if self.ignore_mask is None else self.ignore_mask[index],
        )

    @staticmethod
    def empty(batch_size: int, device: torch.device | str | None = None) -> GroundTruth:
        """A batch with no boxes at all."""
        return GroundTruth(
            boxes=torch.zeros(batch_size, 0, 4, device=device),
            labels=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
        )

    @staticmethod
    def from_lists(
        boxes: Sequence[Tensor],
        labels: Sequence[Tensor] | None = None,
        ignore: Sequence[Tensor] | None = None,
        image_size: tuple[int, int] | None = None,
        drop_degenerate: bool = True,
        pad_to: int | None = None,
    ) -> GroundTruth:
        """Pad per-image tensors into a batch.

        Args:
            boxes: one ``(G_i, 4)`` xyxy pixel tensor per image (``G_i`` may be 0).
            labels: one ``(G_i,)`` tensor per image; all zeros (one class) when omitted.
            ignore: optional ``(I_i, 4)`` ignore regions per image.
            image_size: ``(height, width)``; when given, boxes are clipped to the image first.
            drop_degenerate: boxes with zero or negative width or height (after clipping) are
                kept in place but marked invalid in ``mask`` (so indices still match the lists),
                with one warning giving the count; when False they raise :class:`BadBoxError`.
            pad_to: pad to at least this many GT rows (useful for fixed shapes).

        Raises:
            BadBoxError: a box has a NaN or infinite coordinate (the message names image and box).
        """
        if labels is not None and len(labels) != len(boxes):
            raise ValueError(f"{len(boxes)} box tensors but {len(labels)} label tensors")
        if ignore is not None and len(ignore) != len(boxes):
            raise ValueError(f"{len(boxes)} box tensors but {len(ignore)} ignore tensors")
        B = len(boxes)
        device = boxes[0].device if B else torch.device("cpu")
        boxes = [torch.as_tensor(b, dtype=torch.float32, device=device).reshape(-1, 4) for b in boxes]
        for i, b in enumerate(boxes):
            bad = ~torch.isfinite(b).all(dim=1)
            if bool(bad.any()):
                j = int(bad.nonzero()[0, 0])
                raise BadBoxError(
                    f"image {i}: box {j} has a non-finite coordinate {b[j].tolist()} "
                    f"({int(bad.sum())} such boxes in this image)"
                )
        if labels is None:
            labels = [torch.zeros(len(b), dtype=torch.long, device=device) for b in boxes]
        labels = [torch.as_tensor(lb, device=device).reshape(-1).long() for lb in labels]
        for i, (b, lb) in enumerate(zip(boxes, labels)):
            if len(b) != len(lb):
                raise ValueError(f"image {i}: {len(b)} boxes but {len(lb)} labels")
        G = max([len(b) for b in boxes] + [0, pad_to or 0])
        out_boxes = torch.zeros(B, G, 4, device=device)
        out_labels = torch.zeros(B, G, dtype=torch.long, device=device)
        out_mask = torch.zeros(B, G, dtype=torch.bool, device=device)
        dropped = 0
        for i, (b, lb) in enumerate(zip(boxes, labels)):
            if image_size is not None:
                h, w = image_size
                b = torch.stack(
                    [b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], dim=1
                )
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            if not drop_degenerate and not bool(ok.all()):
                j = int((~ok).nonzero()[0, 0])
                raise BadBoxError(f"image {i}: box {j} {b[j].tolist()} has zero or negative width/height")
            dropped += int((~ok).sum())
            n = len(b)
            out_boxes[i, :n] = b
            out_labels[i, :n] = lb
            out_mask[i, :n] = ok
        if dropped:
            warnings.warn(
                f"GroundTruth.from_lists: masked out {dropped} degenerate box(es) (zero or negative "
                "width/height)",
                stacklevel=2,
            )
        ign = ign_mask = None
        if ignore is not None:
            ignore = [torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1, 4) for x in ignore]
            I_ = max([len(x) for x in ignore] + [0])
            ign = torch.zeros(B, I_, 4, device=device)
            ign_mask = torch.zeros(B, I_, dtype=torch.bool, device=device)
            for i, x in enumerate(ignore):
                ok = torch.isfinite(x).all(dim=1) & (x[:, 2] > x[:, 0]) & (x[:, 3] > x[:, 1])
                ign[i, : len(x)] = torch.where(ok[:, None], x, torch.zeros_like(x))
                ign_mask[i, : len(x)] = ok
        return GroundTruth(out_boxes, out_labels, out_mask, ign, ign_mask, num_dropped=dropped)
