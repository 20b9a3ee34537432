"""Test helpers shared by the static assigner tests (ATSS, top-k, FCOS, max-IoU)."""

from __future__ import annotations

import torch
from torch import Tensor


def random_boxes(
    counts: list[int], size: tuple[int, int], seed: int, div: float = 2, min_side: float = 2, integer: bool = False
) -> list[Tensor]:
    """Per image ``counts[b]`` random xyxy boxes inside an ``(H, W)`` image: top-left corner in
    ``[0, W - 4) x [0, H - 4)``, sides ``rand * (W / div, H / div) + min_side``, clipped to the
    image; rounded to whole pixels with ``integer``. Deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    H, W = size
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([W - 4.0, H - 4.0])
        wh = torch.rand(n, 2, generator=gen) * torch.tensor([W / div, H / div]) + min_side
        b = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(W), float(H)]))], 1)
        out.append(b.round() if integer else b)
    return out
