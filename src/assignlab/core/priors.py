"""Priors: the points (and optional anchor boxes) of a multi-level detection grid.

One :class:`Priors` object is computed per input size and shared by the model's decoder, the
assigners and the analysis tools, so all three agree on the order of priors:

* level by level (stride 8, then 16, then 32, ...),
* row-major inside a level (``y`` outer, ``x`` inner),
* the anchors of one location consecutive.

Example, a 32x64 (H x W) image, strides 16 and 32, one anchor per location and ``offset=0.5``::

    level 0 (stride 16): 2 x 4 cells -> centers (8, 8) (24, 8) (40, 8) (56, 8) (8, 24) ... (56, 24)
    level 1 (stride 32): 1 x 2 cells -> centers (16, 16) (48, 16)
    num_level_priors = (8, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Priors", "make_priors"]

AnchorSpec = Sequence[Sequence[Sequence[float]]]  # per level: list of (w, h) in pixels


@dataclass(frozen=True)
class Priors:
    """The priors of one input size (shared by every image of a batch).

    Attributes:
        points: ``(N, 2)`` prior centers ``(cx, cy)`` in pixels.
        strides: ``(N,)`` float stride of each prior's level, in pixels.
        levels: ``(N,)`` long level index of each prior.
        anchors: ``(N, 4)`` anchor boxes ``xyxy`` in pixels, or ``None`` for anchor-free priors.
        anchor_ids: ``(N,)`` long index of the anchor among those of its location (0 when anchor-free).
        grid_xy: ``(N, 2)`` long cell column and row of each prior within its level.
        num_level_priors: number of priors of each level, in order.
        level_shapes: ``(rows, cols)`` of each level's grid.
        level_strides: stride of each level in pixels.
        num_anchors: anchors per location of each level (1 when anchor-free).
        level_anchors: per level, the ``(w, h)`` anchor sizes in pixels (empty when anchor-free).
        image_size: ``(height, width)`` of the input in pixels.
        offset: where in its cell a prior center sits (0 = top-left corner, 0.5 = cell center).
    """

    points: Tensor
    strides: Tensor
    levels: Tensor
    anchors: Tensor | None
    anchor_ids: Tensor
    grid_xy: Tensor
    num_level_priors: tuple[int, ...]
    level_shapes: tuple[tuple[int, int], ...]
    level_strides: tuple[float, ...]
    num_anchors: tuple[int, ...]
    level_anchors: tuple[tuple[tuple[float, float], ...], ...] = field(default=())
    image_size: tuple[int, int] = (0, 0)
    offset: float = 0.5

    @property
    def num_priors(self) -> int:
        return int(self.points.shape[0])

    def __len__(self) -> int:
        return self.num_priors

    @property
    def device(self) -> torch.device:
        return self.points.device

    def level_slices(self) -> list[slice]:
        """Index ranges of each level in the concatenated prior order."""
        out, start = [], 0
        for n in self.num_level_priors:
            out.append(slice(start, start + n))
            start += n
        return out

    def boxes(self, square_scale: float = 8.0) -> Tensor:
        """The anchor boxes, or, for anchor-free priors, squares of side ``square_scale * stride``
        centred on each point (ATSS / TOOD use ``octave_base_scale = 8``)."""
        if self.anchors is not None:
            return self.anchors
        half = self.strides[:, None] * (square_scale / 2)
        return torch.cat([self.points - half, self.points + half], dim=1)

    def to(self, device: torch.device | str) -> Priors:
        """A copy on ``device``."""
        kw = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("points", "strides", "levels", "anchors", "anchor_ids", "grid_xy"):
            if kw[k] is not None:
                kw[k] = kw[k].to(device)
        return Priors(**kw)

    @staticmethod
    def from_tensors(
        points: Tensor,
        num_level_priors: Sequence[int],
        level_strides: Sequence[float],
        anchors: Tensor | None = None,
        image_size: tuple[int, int] = (0, 0),
        num_anchors: Sequence[int] | None = None,
    ) -> Priors:
        """Wrap explicit prior tensors (e.g. from another framework) as :class:`Priors`.

        ``points`` ``(N, 2)`` centers in pixels; ``anchors`` ``(N, 4)`` xyxy or None. Level
        shapes are not known from this and are recorded as ``(0, 0)``; ``grid_xy`` is derived
        from the points and strides assuming offset 0.
        """
        nlp = tuple(int(n) for n in num_level_priors)
        if sum(nlp) != points.shape[0]:
            raise ValueError(f"num_level_priors sums to {sum(nlp)} but there are {points.shape[0]} priors")
        if len(level_strides) != len(nlp):
            raise ValueError("level_strides and num_level_priors must have the same length")
        device = points.device
        levels = torch.repeat_interleave(torch.arange(len(nlp), device=device), torch.tensor(nlp, device=device))
        strides = torch.tensor([float(s) for s in level_strides], dtype=points.dtype, device=device)[levels]
        na = tuple(num_anchors) if num_anchors is not None else (1,) * len(nlp)
        anchor_ids = torch.cat(
            [torch.arange(n, device=device) % a for n, a in zip(nlp, na)]
        ) if nlp else torch.zeros(0, dtype=torch.long, device=device)
        grid_xy = torch.floor(points / strides[:, None]).long()
        return Priors(
            points=points,
            strides=strides,
            levels=levels,
            anchors=anchors,
            anchor_ids=anchor_ids,
            grid_xy=grid_xy,
            num_level_priors=nlp,
            level_shapes=((0, 0),) * len(nlp),
            level_strides=tuple(float(s) for s in level_strides),
            num_anchors=na,
            image_size=image_size,
            offset=0.0,
        )


def make_priors(
    image_size: int | tuple[int, int],
    strides: Sequence[int] = (8, 16, 32),
    anchors: AnchorSpec | None = None,
    offset: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Priors:
    """Priors for an input of ``image_size`` = ``(height, width)`` (or one int for a square).

    Args:
        image_size: input size in pixels, ``(height, width)``.
        strides: stride of each level; level ``i`` has ``ceil(H / s) x ceil(W / s)`` cells.
        anchors: ``None`` for anchor-free priors, else per level a list of ``(w, h)`` anchor sizes in
            pixels, e.g. YOLOv5s ``[[(10, 13), (16, 30), (33, 23)], [(30, 61), ...], [...]]``.
            Every level must be given; levels may have different numbers of anchors.
        offset: center of a prior within its cell, in cells. 0.5 (YOLO, FCOS) puts it at the cell
            center ``((i + 0.5) * s)``; 0 (mmdetection ``AnchorGenerator``) at the corner ``(i * s)``.

    Returns:
        :class:`Priors` with ``N = sum(rows * cols * anchors)`` priors.

    Example::

        >>> p = make_priors((640, 640))
        >>> p.num_level_priors
        (6400, 1600, 400)
        >>> p.points[:2]
        tensor([[ 4.,  4.],
                [12.,  4.]])
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not strides or any(s <= 0 for s in strides):
        raise ValueError(f"strides must be positive, got {tuple(strides)}")
    if anchors is not None and len(anchors) != len(strides):
        raise ValueError(f"anchors must give one list per level ({len(strides)} levels), got {len(anchors)}")
    device = torch.device(device) if device is not None else torch.device("cpu")

    pts, strd, lvl, anc, aid, gxy, nlp, shapes, nas, lanc = [], [], [], [], [], [], [], [], [], []
    for li, s in enumerate(strides):
        rows, cols = -(-h // s), -(-w // s)
        level_anchors = [tuple(float(v) for v in a) for a in anchors[li]] if anchors is not None else []
        if anchors is not None and not level_anchors:
            raise ValueError(f"level {li} has no anchors")
        na = max(1, len(level_anchors))
        ys, xs = torch.meshgrid(
            torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"
        )
        cell = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # (rows*cols, 2) (x, y)
        cell = cell.repeat_interleave(na, dim=0)  # anchors of a location consecutive
        centers = (cell.to(dtype) + offset) * s
        n = centers.shape[0]
        pts.append(centers)
        gxy.append(cell)
        strd.append(torch.full((n,), float(s), dtype=dtype, device=device))
        lvl.append(torch.full((n,), li, dtype=torch.long, device=device))
        aid.append(torch.arange(na, device=device).repeat(rows * cols))
        if anchors is not None:
            wh = torch.tensor(level_anchors, dtype=dtype, device=device).repeat(rows * cols, 1)
            anc.append(torch.cat([centers - wh / 2, centers + wh / 2], dim=1))
        nlp.append(n)
        shapes.append((rows, cols))
        nas.append(na)
        lanc.append(tuple(level_anchors))

    return Priors(
        points=torch.cat(pts),
        strides=torch.cat(strd),
        levels=torch.cat(lvl),
        anchors=torch.cat(anc) if anchors is not None else None,
        anchor_ids=torch.cat(aid),
        grid_xy=torch.cat(gxy),
        num_level_priors=tuple(nlp),
        level_shapes=tuple(shapes),
        level_strides=tuple(float(s) for s in strides),
        num_anchors=tuple(nas),
        level_anchors=tuple(lanc),
        image_size=(h, w),
        offset=float(offset),
    )
