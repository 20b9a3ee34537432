"""Mosaic augmentation: four images around a random centre, then a random scale and crop.

Mosaic was introduced with YOLOv4 (Bochkovskiy, Wang, Liao, "YOLOv4: Optimal Speed and Accuracy of
Object Detection", arXiv 2020, Sec. 3.3) and is the default training augmentation of YOLOv5 and
Ultralytics YOLOv8 (``mosaic=1.0``, switched off for the last ``close_mosaic=10`` epochs). This
module follows the Ultralytics geometry (``Mosaic._mosaic4`` followed by ``RandomPerspective``
with only scale and translation), written for ``(3, H, W)`` uint8 tensors.

Geometry, for an output side ``S``:

1. every tile (the indexed image and three random ones) is resized so that its long side is ``S``
   (``(h, w) -> (round(h * r), round(w * r))``, ``r = S / max(h, w)``: the same size as the
   evaluation letterbox);
2. a centre ``(xc, yc)`` is drawn uniformly in ``[S/2, 3S/2)`` on a ``2S x 2S`` gray canvas; tile 0
   (the indexed image) is placed with its bottom-right corner at the centre, tile 1 with its
   bottom-left corner, tile 2 with its top-right corner, tile 3 with its top-left corner; what
   falls outside the canvas is cut;
3. a random affine map ``u = g * (x - S) + t`` (scale ``g ~ U(scale_range)``, default
   ``U(0.5, 1.5)``, translation ``t ~ U(0.5 - translate, 0.5 + translate) * S``) takes the canvas to
   the ``S x S`` output. Equivalently the canvas square ``window = (x0, y0, side)`` with
   ``side = round(S / g)``, ``x0 = round(S - t_x / g)`` is resized to ``S x S``, so a point maps as
   ``u = (x - x0) * S / side`` (exact for the boxes; the window may reach past the canvas, which
   is gray);
4. an optional horizontal flip (probability ``flip_p``) of the output.

Worked example (``S = 64``, four 64 x 64 tiles so that ``r = 1``, centre ``(64, 64)``,
``g = 1``, ``t = (32, 32)``): ``side = 64``, ``window = (32, 32, 64)``, the output is the canvas
square ``[32, 96)^2``. A box ``(40, 40, 56, 56)`` of tile 0 lies at the same canvas coordinates
(tile 0 covers ``[0, 64)^2``) and becomes ``(8, 8, 24, 24)``; a box ``(8, 40, 24, 56)`` of tile 1
(placed at ``[64, 128) x [0, 64)``) becomes ``(40, 8, 56, 24)``.

Boxes are clipped to the output. A box is dropped (and counted in ``num_dropped``) when what is
left of it is less than ``min_visible`` (25 %) of the box mapped without clipping, or narrower or
lower than ``min_size`` (2 px): e.g. tile 0's ``(16, 40, 36, 56)`` above maps to
``(-16, 8, 4, 24)``, keeps 4 of 20 px of width (20 % < 25 %) and is dropped; ``(16, 40, 40, 56)``
keeps 8 of 24 px (33 %) and becomes ``(0, 8, 8, 24)``. (Ultralytics' ``box_candidates`` uses
``> 2 px`` and 10 % of the canvas-clipped box.) Ignore regions follow the same map and are dropped
only when nothing of them is left.

Randomness: :meth:`Mosaic.sample` draws, in this order, the three other dataset indices, the
centre, the scale, the translation and the flip from the ``torch.Generator`` it is given. Datasets
pass their per-sample generator seeded by ``(seed, epoch, index)``, so a mosaic sample is the same
whatever the number of workers or processes, and a resumed run redraws exactly the same mosaics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from .transforms import GRAY

__all__ = ["Mosaic", "MosaicOutput", "MosaicParams", "MosaicTile", "tile_shape", "resize_long_side"]


def tile_shape(orig_size: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` of an image of ``orig_size`` resized so that its long side is ``size``.

    Same rounding as the evaluation letterbox: a 200 x 100 image at ``size=64`` -> ``(64, 32)``.
    """
    h, w = int(orig_size[0]), int(orig_size[1])
    r = min(size / h, size / w)
    return max(1, round(h * r)), max(1, round(w * r))


def resize_long_side(image: Tensor, size: int) -> Tensor:
    """Resize ``(3, h, w)`` to :func:`tile_shape` (antialiased bilinear; a no-op when it already is)."""
    nh, nw = tile_shape((int(image.shape[-2]), int(image.shape[-1])), size)
    if tuple(image.shape[-2:]) == (nh, nw):
        return image
    return F.resize(image, [nh, nw], antialias=True)


@dataclass(frozen=True)
class MosaicParams:
    """The random choices of one mosaic sample (see the module docstring)."""

    size: int  # S, the output side
    center: tuple[int, int]  # (xc, yc) where the four tiles meet, on the 2S x 2S canvas
    window: tuple[int, int, int]  # (x0, y0, side): the canvas square resized to S x S
    flipped: bool = False

    @property
    def ratio(self) -> float:
        """Output pixels per canvas pixel, ``S / side``."""
        return self.size / self.window[2]


@dataclass
class MosaicTile:
    """One input image of a mosaic: ``image`` (3, h, w) uint8, either the original of
    ``orig_size`` or already resized to :func:`tile_shape`; boxes in ORIGINAL pixels."""

    image: Tensor
    orig_size: tuple[int, int]
    boxes: Tensor  # (G, 4)
    labels: Tensor  # (G,)
    ignore: Tensor | None = None  # (I, 4)
    ignore_labels: Tensor | None = None  # (I,)


@dataclass
class MosaicOutput:
    image: Tensor  # (3, S, S) float32 in [0, 1]
    boxes: Tensor  # (G', 4) output px xyxy
    labels: Tensor  # (G',)
    ignore: Tensor  # (I', 4)
    ignore_labels: Tensor  # (I',)
    tile_index: Tensor  # (G',) which tile (0..3) each kept box came from
    params: MosaicParams
    num_dropped: int


class Mosaic:
    """Four-image mosaic with a random scale / translation crop and a horizontal flip.

    Args:
        size: output side ``S``.
        scale_range: range of the scale ``g`` of the canvas (``(0.5, 1.5)``: Ultralytics
            ``scale=0.5``).
        translate: translation range as a fraction of ``S`` around the centred crop (0.1).
        flip_p: horizontal flip probability.
        min_visible: drop a box when less than this fraction of it is left after clipping.
        min_size: drop a box narrower or lower than this (output px) after clipping.
    """

    def __init__(
        self,
        size: int,
        scale_range: tuple[float, float] = (0.5, 1.5),
        translate: float = 0.1,
        flip_p: float = 0.5,
        min_visible: float = 0.25,
        min_size: float = 2.0,
    ) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if not (0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if not 0 <= translate <= 0.5:
            raise ValueError(f"translate must be in [0, 0.5], got {translate}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if not 0 <= min_visible <= 1:
            raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        self.size = int(size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.translate = float(translate)
        self.flip_p = float(flip_p)
        self.min_visible = float(min_visible)
        self.min_size = float(min_size)

    # ------------------------------------------------------------------ parameters
    def sample(self, num_images: int, generator: torch.Generator | None = None) -> tuple[list[int], MosaicParams]:
        """Draw the three other image indices (uniform over ``range(num_images)``) and the geometry."""
        if num_images < 1:
            raise ValueError("mosaic needs a dataset with at least one image")
        S = self.size
        others = torch.randint(0, num_images, (3,), generator=generator).tolist()
        xc, yc = torch.randint(S // 2, S + S // 2, (2,), generator=generator).tolist()
        lo, hi = self.scale_range
        g = lo + (hi - lo) * float(torch.rand((), generator=generator))
        t = (0.5 - self.translate + 2 * self.translate * torch.rand(2, generator=generator, dtype=torch.float64)) * S
        side = max(1, round(S / g))
        x0, y0 = round(S - float(t[0]) / g), round(S - float(t[1]) / g)
        flipped = bool(self.flip_p > 0 and float(torch.rand((), generator=generator)) < self.flip_p)
        return [int(k) for k in others], MosaicParams(S, (int(xc), int(yc)), (x0, y0, side), flipped)

    def tile_rects(self, params: MosaicParams, shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        """Placement ``(x1, y1, x2, y2)`` of each resized tile ``(h, w)`` on the canvas (not clipped)."""
        xc, yc = params.center
        (h0, w0), (h1, w1), (h2, w2), (h3, w3) = shapes
        return [
            (xc - w0, yc - h0, xc, yc),  # top left: bottom-right corner at the centre
            (xc, yc - h1, xc + w1, yc),  # top right
            (xc - w2, yc, xc, yc + h2),  # bottom left
            (xc, yc, xc + w3, yc + h3),  # bottom right
        ]

    # ------------------------------------------------------------------ boxes
    def tile_maps(self, params: MosaicParams, tiles: Sequence[MosaicTile]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per tile (rows 0..3), ``(mul, off, lo, hi)`` each ``(4, 4)`` float32 over ``x1 y1 x2 y2``:
        a box in original pixels maps to ``box * mul + off`` in output pixels, and is clipped to
        ``[lo, hi]``, the part of the tile left visible by the canvas and the output."""
        S, two = self.size, 2 * self.size
        x0, y0, _ = params.window
        r = params.ratio
        shapes = [tile_shape(t.orig_size, S) for t in tiles]
        mul, off, lo, hi = [], [], [], []
        for t, shape, rect in zip(tiles, shapes, self.tile_rects(params, shapes)):
            sx, sy = shape[1] / t.orig_size[1] * r, shape[0] / t.orig_size[0] * r
            mul.append([sx, sy, sx, sy])
            off.append([(rect[0] - x0) * r, (rect[1] - y0) * r] * 2)
            lx, ly = max((max(rect[0], 0) - x0) * r, 0.0), max((max(rect[1], 0) - y0) * r, 0.0)
            hx, hy = min((min(rect[2], two) - x0) * r, float(S)), min((min(rect[3], two) - y0) * r, float(S))
            lo.append([lx, ly, lx, ly])
            hi.append([hx, hy, hx, hy])
        m, o, lo_t, hi_t = (torch.tensor(v, dtype=torch.float32) for v in (mul, off, lo, hi))
        return m, o, lo_t, hi_t

    @staticmethod
    def _place(maps: tuple[Tensor, ...], boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(full, clipped, tile id)`` of the concatenated boxes of the four tiles (output px)."""
        mul, off, lo, hi = maps
        counts = torch.tensor([len(b) for b in boxes])
        tid = torch.repeat_interleave(torch.arange(len(boxes)), counts)
        full = torch.cat([b.float().reshape(-1, 4) for b in boxes]) * mul[tid] + off[tid]
        return full, torch.minimum(torch.maximum(full, lo[tid]), hi[tid]), tid

    def apply_boxes(
        self, params: MosaicParams, tiles: Sequence[MosaicTile]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
        """``(boxes, labels, ignore, ignore_labels, tile_index, num_dropped)`` in output pixels
        (flip included), without touching the pixels."""
        maps = self.tile_maps(params, tiles)
        full, clip, tid = self._place(maps, [t.boxes for t in tiles])
        w, h = clip[:, 2] - clip[:, 0], clip[:, 3] - clip[:, 1]
        a0 = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
        keep = (w >= self.min_size) & (h >= self.min_size) & (w > 0) & (h > 0) & (w * h >= self.min_visible * a0)
        labels = torch.cat([t.labels.reshape(-1).long() for t in tiles])
        no_ig = torch.zeros(0, 4)
        _, gi, _ = self._place(maps, [t.ignore if t.ignore is not None else no_ig for t in tiles])
        il = torch.cat([
            (t.ignore_labels if t.ignore_labels is not None else torch.zeros(len(t.ignore), dtype=torch.long))
            .reshape(-1).long()
            for t in tiles
            if t.ignore is not None
        ] or [torch.zeros(0, dtype=torch.long)])
        ki = (gi[:, 2] > gi[:, 0]) & (gi[:, 3] > gi[:, 1])
        boxes, ignore = clip[keep], gi[ki]
        if params.flipped:
            S = float(self.size)
            boxes = torch.stack([S - boxes[:, 2], boxes[:, 1], S - boxes[:, 0], boxes[:, 3]], 1)
            ignore = torch.stack([S - ignore[:, 2], ignore[:, 1], S - ignore[:, 0], ignore[:, 3]], 1)
        return boxes, labels[keep], ignore, il[ki], tid[keep], int((~keep).sum())

    # ------------------------------------------------------------------ pixels
    def render(self, params: MosaicParams, tiles: Sequence[MosaicTile]) -> Tensor:
        """The ``(3, S, S)`` uint8 mosaic image (flip included)."""
        x0, y0, side = params.window
        two = 2 * self.size
        window = torch.full((3, side, side), GRAY, dtype=torch.uint8)
        shapes = [tile_shape(t.orig_size, self.size) for t in tiles]
        for t, shape, (a1, b1, a2, b2) in zip(tiles, shapes, self.tile_rects(params, shapes)):
            # visible part: tile rectangle ∩ canvas ∩ window (canvas coordinates)
            c1, d1 = max(a1, 0, x0), max(b1, 0, y0)
            c2, d2 = min(a2, two, x0 + side), min(b2, two, y0 + side)
            if c2 <= c1 or d2 <= d1:
                continue
            img = t.image
            if img.dtype != torch.uint8:
                raise TypeError(f"mosaic tiles must be uint8 images, got {img.dtype}")
            if tuple(img.shape[-2:]) != shape:
                img = F.resize(img, list(shape), antialias=True)
            window[:, d1 - y0 : d2 - y0, c1 - x0 : c2 - x0] = img[:, d1 - b1 : d2 - b1, c1 - a1 : c2 - a1]
        out = window if side == self.size else F.resize(window, [self.size, self.size], antialias=True)
        if params.flipped:
            out = out.flip(-1)
        return out

    def __call__(self, params: MosaicParams, tiles: Sequence[MosaicTile]) -> MosaicOutput:
        """Build the mosaic of four ``tiles`` (tile 0 = the indexed image) for ``params``."""
        if len(tiles) != 4:
            raise ValueError(f"mosaic needs 4 tiles, got {len(tiles)}")
        image = F.to_dtype(self.render(params, tiles), torch.float32, scale=True)
        boxes, labels, ignore, ignore_labels, src, dropped = self.apply_boxes(params, tiles)
        return MosaicOutput(image, boxes, labels, ignore, ignore_labels, src, params, dropped)
