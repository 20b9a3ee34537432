"""MiniVGG: a small plain-convolution backbone returning C3 / C4 / C5 (strides 8 / 16 / 32).

The design follows VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition", ICLR 2015) -- stacks of 3x3 convolutions only -- with BatchNorm (Ioffe &
Szegedy, ICML 2015) after every convolution and stride-2 3x3 convolutions instead of max-pooling
(optionally max-pooling, ``downsample="maxpool"``). There are deliberately **no depthwise
convolutions**: on NPUs / DSPs a dense 3x3 convolution usually runs at a far higher utilisation than
a depthwise one, so for the same latency a plain net of more multiply-accumulates is faster.

Layout (``width=1.0``; every channel count is multiplied by ``width`` and rounded to a multiple of 8)::

    stage   stride  ops                               channels  output
    stem      2     conv3x3 s2                        16
    stage1    4     down                              24
    stage2    8     down + 1 x conv3x3                48        C3
    stage3   16     down + 1 x conv3x3                96        C4
    stage4   32     down + 2 x conv3x3                192       C5

where ``down`` is a stride-2 conv3x3 (or maxpool 2x2 + conv3x3 when ``downsample="maxpool"``).

Example shapes for a 224x224 input::

    x   (B, 3, 224, 224)
    C3  (B, 48, 28, 28)    C4 (B, 96, 14, 14)    C5 (B, 192, 7, 7)

At 224x224 this backbone costs 105.7 M multiply-accumulates (``width=1.0``); the extra depth sits
at stride 32 where it is cheap (a 7x7 map) and widens the receptive field for large faces.

The cost of the backbone is measured, together with the FPN and heads, in
:mod:`assignlab.models.detector`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConvBNReLU", "MiniVGG", "init_weights", "scale_channels"]


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``).

    >>> scale_channels(64, 0.5), scale_channels(64, 0.3), scale_channels(16, 0.25)
    (32, 16, 8)
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(divisor, int(round(channels * width / divisor)) * divisor)


class ConvBNReLU(nn.Sequential):
    """``Conv2d(k x k, no bias) -> BatchNorm2d -> ReLU``, 'same' padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class MiniVGG(nn.Module):
    """Plain 3x3-conv backbone; ``forward`` returns ``[C3, C4, C5]`` at strides 8, 16, 32.

    Args:
        width: channel multiplier applied to ``channels``.
        channels: base channels of stem, stage1 .. stage4 (5 values).
        depths: number of extra stride-1 conv3x3 after the downsampling conv, per stage1 .. stage4.
        downsample: ``"conv"`` (stride-2 conv3x3) or ``"maxpool"`` (2x2 maxpool then conv3x3).
    """

    strides = (8, 16, 32)

    def __init__(
        self,
        width: float = 1.0,
        channels: Sequence[int] = (16, 24, 48, 96, 192),
        depths: Sequence[int] = (0, 1, 1, 2),
        downsample: str = "conv",
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels must have 5 entries (stem + 4 stages), got {len(channels)}")
        if len(depths) != 4 or any(d < 0 for d in depths):
            raise ValueError(f"depths must be 4 non-negative ints, got {tuple(depths)}")
        if downsample not in ("conv", "maxpool"):
            raise ValueError(f"downsample must be 'conv' or 'maxpool', got {downsample!r}")
        ch = [scale_channels(c, width) for c in channels]
        self.stem = ConvBNReLU(3, ch[0], 3, stride=2)
        stages = []
        for i in range(4):
            if downsample == "conv":
                layers: list[nn.Module] = [ConvBNReLU(ch[i], ch[i + 1], 3, stride=2)]
            else:
                layers = [nn.MaxPool2d(2, 2, ceil_mode=True), ConvBNReLU(ch[i], ch[i + 1], 3)]
            layers += [ConvBNReLU(ch[i + 1], ch[i + 1], 3) for _ in range(depths[i])]
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.out_channels: tuple[int, int, int] = (ch[2], ch[3], ch[4])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stage1(self.stem(x))
        c3 = self.stage2(x)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return [c3, c4, c5]


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, BatchNorm weight 1 / bias 0.

    Applied by :class:`~assignlab.models.Detector` to the backbone and neck; the heads then
    override the bias of their prediction layers (see :mod:`assignlab.models.heads`).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
