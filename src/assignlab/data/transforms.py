"""Letterbox, flip and scale jitter with :mod:`torchvision.transforms.v2` and ``tv_tensors``.

**Letterbox** (YOLO-style): resize keeping the aspect ratio so that the image fits an
``S x S`` square, then pad with gray ``114`` (``114/255`` for float images). Boxes follow with
``new = old * scale + pad`` exactly, and the parameters go into :class:`ImageMeta`, so that
``original = (letterboxed - pad) / scale``. The image itself is resized to
``round(h * scale) x round(w * scale)`` (at most half a pixel off the exact box mapping).

Worked example: a 200 x 100 (h x w) image, ``S = 64``::

    scale = min(64/200, 64/100) = 0.32       new size 64 x 32 (h x w)
    pad   = ((64 - 32) // 2, (64 - 64) // 2) = (16, 0)
    box (10, 20, 60, 90) -> (10*0.32+16, 20*0.32, 60*0.32+16, 90*0.32) = (19.2, 6.4, 35.2, 28.8)

**Training** adds scale jitter (``scale *= U(lo, hi)``, default ``(0.5, 1.5)``) with a random
placement of the resized image on the canvas (a negative pad crops), and a horizontal flip with
probability ``flip_p``. Datasets draw these choices from a generator seeded with
``(seed, epoch, index)`` (see ``DetectionDataset.set_epoch``), so augmentation does not depend on
the number of DataLoader workers.

After the geometric steps boxes are clamped to the canvas; a box whose clamped area is zero, or
less than ``min_visible`` (10 %) of its area before clamping (mostly cropped away by the jitter),
is dropped and counted (``num_dropped``). Ignore regions are clamped and dropped only when empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["LetterboxParams", "Letterbox", "DetectionTransform", "TransformOutput", "GRAY"]

GRAY = 114  # letterbox fill, uint8 (114 / 255 for float images)


@dataclass(frozen=True)
class LetterboxParams:
    """``new = orig * scale + pad``; ``resized`` = (h, w) of the image before padding."""

    scale: float
    pad: tuple[int, int]  # (pad_x, pad_y), may be negative (crop)
    resized: tuple[int, int]
    size: int


class Letterbox(v2.Transform):
    """Aspect-preserving resize into an ``size x size`` canvas padded with gray.

    Args:
        size: canvas side ``S``.
        scale_range: ``None`` (no jitter, centred) or ``(lo, hi)``: the fit scale is multiplied by
            ``U(lo, hi)`` and the image placed at a random offset (cropped when larger than S).

    Usable in a ``v2.Compose`` like any transform; :meth:`make_params` + :meth:`transform` can also be
    called explicitly to keep the parameters (as :class:`DetectionTransform` does).
    """

    def __init__(self, size: int, scale_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if scale_range is not None and not (0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        self.size = int(size)
        self.scale_range = scale_range

    def params_for(self, orig_size: tuple[int, int], generator: torch.Generator | None = None) -> LetterboxParams:
        """Letterbox parameters for an image of ``orig_size = (h, w)`` (random when jittering)."""
        h, w = orig_size
        S = self.size
        scale = min(S / h, S / w)
        if self.scale_range is not None:
            lo, hi = self.scale_range
            scale *= lo + (hi - lo) * float(torch.rand((), generator=generator))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if self.scale_range is None:
            px, py = (S - nw) // 2, (S - nh) // 2
        else:
            px = int(torch.randint(min(0, S - nw), max(0, S - nw) + 1, (), generator=generator))
            py = int(torch.randint(min(0, S - nh), max(0, S - nh) + 1, (), generator=generator))
        return LetterboxParams(scale=scale, pad=(px, py), resized=(nh, nw), size=S)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        for x in flat_inputs:
            if isinstance(x, tv_tensors.Image):
                return {"lb": self.params_for((int(x.shape[-2]), int(x.shape[-1])))}
        for x in flat_inputs:
            if isinstance(x, tv_tensors.BoundingBoxes):
                return {"lb": self.params_for(tuple(x.canvas_size))}
        raise TypeError("Letterbox needs a tv_tensors.Image or BoundingBoxes input")

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        p: LetterboxParams = params["lb"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            if inpt.format != tv_tensors.BoundingBoxFormat.XYXY:
                raise ValueError(f"Letterbox expects XYXY boxes, got {inpt.format}")
            off = torch.tensor([p.pad[0], p.pad[1], p.pad[0], p.pad[1]], dtype=inpt.dtype, device=inpt.device)
            out = inpt.as_subclass(Tensor) * p.scale + off
            return tv_tensors.wrap(out, like=inpt, canvas_size=(p.size, p.size))
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(self._image(inpt.as_subclass(Tensor), p), like=inpt)
        return inpt

    @staticmethod
    def _image(img: Tensor, p: LetterboxParams) -> Tensor:
        nh, nw = p.resized
        if tuple(img.shape[-2:]) != (nh, nw):
            img = F.resize(img, [nh, nw], antialias=True)
        S = p.size
        fill = GRAY if img.dtype == torch.uint8 else GRAY / 255.0
        canvas = torch.full((*img.shape[:-2], S, S), fill, dtype=img.dtype, device=img.device)
        px, py = p.pad
        x0, x1 = max(0, px), min(S, px + nw)
        y0, y1 = max(0, py), min(S, py + nh)
        if x1 > x0 and y1 > y0:
            canvas[..., y0:y1, x0:x1] = img[..., y0 - py : y1 - py, x0 - px : x1 - px]
        return canvas


@dataclass
class TransformOutput:
    image: Tensor  # (3, S, S) float32 in [0, 1]
    boxes: Tensor  # (G', 4) letterboxed xyxy
    labels: Tensor  # (G',)
    ignore: Tensor  # (I', 4)
    ignore_labels: Tensor  # (I',)
    params: LetterboxParams
    flipped: bool
    num_dropped: int


class DetectionTransform:
    """The per-sample pipeline: letterbox (+ scale jitter and flip when training), clamp, drop.

    Args:
        size: output side ``S``.
        train: enable scale jitter and horizontal flip.
        scale_range: jitter range of the fit scale (training only).
        flip_p: horizontal flip probability (training only).
        min_visible: drop a box when clamping to the canvas leaves less than this fraction of it.
    """

    def __init__(
        self,
        size: int,
        train: bool = False,
        scale_range: tuple[float, float] = (0.5, 1.5),
        flip_p: float = 0.5,
        min_visible: float = 0.1,
    ) -> None:
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.size = int(size)
        self.train = train
        self.flip_p = flip_p
        self.min_visible = min_visible
        self.letterbox = Letterbox(size, scale_range if train else None)

    def sample(
        self, orig_size: tuple[int, int], generator: torch.Generator | None = None
    ) -> tuple[LetterboxParams, bool]:
        """Draw the letterbox parameters and the flip decision for an image of ``(h, w)``."""
        params = self.letterbox.params_for(orig_size, generator)
        flipped = bool(self.train and self.flip_p > 0 and float(torch.rand((), generator=generator)) < self.flip_p)
        return params, flipped

    def apply_boxes(
        self,
        params: LetterboxParams,
        flipped: bool,
        orig_size: tuple[int, int],
        boxes: Tensor,
        labels: Tensor,
        ignore: Tensor | None = None,
        ignore_labels: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """Boxes only (no image): ``(boxes, labels, ignore, ignore_labels, num_dropped)`` exactly as
        :meth:`__call__` produces them for the same parameters (for annotation-only tools)."""
        h, w = orig_size
        bx = tv_tensors.BoundingBoxes(
            boxes.float().reshape(-1, 4), format="XYXY", canvas_size=(h, w), clamping_mode=None
        )
        ig = tv_tensors.BoundingBoxes(
            (ignore if ignore is not None else torch.zeros(0, 4)).float().reshape(-1, 4),
            format="XYXY",
            canvas_size=(h, w),
            clamping_mode=None,
        )
        if ignore_labels is None:
            ignore_labels = torch.zeros(len(ig), dtype=torch.long)
        p = {"lb": params}
        bx, ig = self.letterbox.transform(bx, p), self.letterbox.transform(ig, p)
        if flipped:
            bx, ig = F.horizontal_flip(bx), F.horizontal_flip(ig)
        # clamp to the canvas, then drop what became empty / mostly cut away
        area0 = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
        bxc = F.clamp_bounding_boxes(bx, clamping_mode="hard").as_subclass(Tensor)
        area1 = (bxc[:, 2] - bxc[:, 0]) * (bxc[:, 3] - bxc[:, 1])
        keep = (bxc[:, 2] > bxc[:, 0]) & (bxc[:, 3] > bxc[:, 1]) & (area1 >= self.min_visible * area0)
        igc = F.clamp_bounding_boxes(ig, clamping_mode="hard").as_subclass(Tensor)
        keep_ig = (igc[:, 2] > igc[:, 0]) & (igc[:, 3] > igc[:, 1])
        return (
            bxc[keep],
            labels.reshape(-1)[keep],
            igc[keep_ig],
            ignore_labels.reshape(-1)[keep_ig],
            int((~keep).sum()),
        )

    def __call__(
        self,
        image: Tensor,
        boxes: Tensor,
        labels: Tensor,
        ignore: Tensor | None = None,
        ignore_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        orig_size: tuple[int, int] | None = None,
    ) -> TransformOutput:
        """``image`` (3, h, w) uint8 or float; ``boxes`` (G, 4) xyxy original px.

        ``generator`` drives the random choices (torch's global generator when None).
        ``orig_size``: ``(h, w)`` the boxes refer to when ``image`` is a resized copy (e.g. from a
        ``resize`` image cache); default: the image's own size.
        """
        if orig_size is None:
            h, w = int(image.shape[-2]), int(image.shape[-1])
        else:
            h, w = int(orig_size[0]), int(orig_size[1])
        params, flipped = self.sample((h, w), generator)
        img = self.letterbox.transform(tv_tensors.Image(image), {"lb": params})
        if flipped:
            img = F.horizontal_flip(img)
        bx, lb, ig, ig_lb, dropped = self.apply_boxes(params, flipped, (h, w), boxes, labels, ignore, ignore_labels)
        return TransformOutput(
            image=F.to_dtype(img, torch.float32, scale=True).as_subclass(Tensor),
            boxes=bx,
            labels=lb,
            ignore=ig,
            ignore_labels=ig_lb,
            params=params,
            flipped=flipped,
            num_dropped=dropped,
        )
