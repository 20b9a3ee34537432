"""Feature pyramid network: top-down fusion of C3 / C4 / C5 into P3 / P4 / P5 of equal width.

Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, Sec. 3 / Fig. 3: each
backbone level gets a 1x1 lateral convolution to ``out_channels``; walking from the coarsest level
down, the coarser merged map is upsampled x2 (nearest) and *added* to (``fuse="add"``, the paper)
or *concatenated* with then reduced by a 1x1 conv (``fuse="concat"``, as in YOLOv5's PAN) the
lateral; a 3x3 convolution then smooths each merged map (reducing upsampling aliasing)::

    C5 -> lat5 --------------------------------> smooth -> P5   (stride 32)
                \\ up x2
    C4 -> lat4 -(+)-> M4 ----------------------> smooth -> P4   (stride 16)
                       \\ up x2
    C3 -> lat3 -------(+)-> M3 ----------------> smooth -> P3   (stride 8)

Shapes for a 224x224 input (MiniVGG ``width=1``), ``out_channels=40``::

    C3 (B, 48, 28, 28)  C4 (B, 96, 14, 14)  C5 (B, 192, 7, 7)
    P3 (B, 40, 28, 28)  P4 (B, 40, 14, 14)  P5 (B, 40, 7, 7)

Odd sizes are handled: the upsampled map is resized to the lateral's exact size
(``interpolate(size=...)``), so e.g. a 100x100 input (C3 13x13, C4 7x7, C5 4x4) works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mini_vgg import ConvBNReLU

__all__ = ["FPN"]


class FPN(nn.Module):
    """Top-down FPN with nearest upsampling, add or concat fusion and 3x3 smoothing.

    Args:
        in_channels: channels of ``[C3, C4, C5]`` (finest first).
        out_channels: channels of every output level.
        fuse: ``"add"`` or ``"concat"``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, fuse: str = "add") -> None:
        super().__init__()
        if fuse not in ("add", "concat"):
            raise ValueError(f"fuse must be 'add' or 'concat', got {fuse!r}")
        if len(in_channels) < 1:
            raise ValueError("in_channels must not be empty")
        self.fuse = fuse
        self.out_channels = int(out_channels)
        self.lateral = nn.ModuleList(ConvBNReLU(c, out_channels, 1) for c in in_channels)
        # concat fusion: [lateral, upsampled] (2*out) -> out with a 1x1 conv, for every non-top level
        self.reduce = nn.ModuleList(
            ConvBNReLU(2 * out_channels, out_channels, 1) for _ in range(len(in_channels) - 1)
        ) if fuse == "concat" else nn.ModuleList()
        self.smooth = nn.ModuleList(ConvBNReLU(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps, got {len(feats)}")
        lats = [lat(f) for lat, f in zip(self.lateral, feats)]
        merged = [lats[-1]]
        for i in range(len(lats) - 2, -1, -1):  # top-down: coarse -> fine
            up = F.interpolate(merged[0], size=lats[i].shape[-2:], mode="nearest")
            if self.fuse == "add":
                m = lats[i] + up
            else:
                m = self.reduce[i](torch.cat([lats[i], up], dim=1))
            merged.insert(0, m)
        return [sm(m) for sm, m in zip(self.smooth, merged)]
