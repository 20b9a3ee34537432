"""HSV colour jitter (the YOLOv5 / Ultralytics ``hsv_h``, ``hsv_s``, ``hsv_v`` augmentation).

Each training sample draws three gains ``r = 1 + U(-1, 1) * (h, s, v)`` and multiplies the hue
(cyclically), the saturation and the value of every pixel by them, clamping saturation and value
to ``[0, 1]``. This is the Ultralytics ``RandomHSV`` rule (their LUTs on OpenCV's 0..180 hue scale
multiply the hue too, ``hue * r_h mod 180``, which is the same as ``hue * r_h mod 1`` here), applied
in float32 to the ``(3, H, W)`` RGB image in ``[0, 1]`` instead of uint8 lookup tables. The
YOLOv8 defaults are ``hsv = (0.015, 0.7, 0.4)``: saturation and value scaled by ``0.3..1.7`` and
``0.6..1.4``, hue by ``0.985..1.015``.

Worked example: a pure green pixel ``(0, 1, 0)`` has ``h = 1/3, s = 1, v = 1``. Gains
``(1.5, 1, 0.5)`` give ``h = 0.5, s = 1, v = 0.5``: cyan at half brightness, ``(0, 0.5, 0.5)``.
Gains ``(1, 0, 1)`` remove the colour: ``(1, 1, 1)``.

Gains of zero (``hsv=None`` or ``(0, 0, 0)``) leave the image untouched and draw nothing from the
generator, so runs without colour jitter are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["rgb_to_hsv", "hsv_to_rgb", "hsv_gain", "random_hsv", "hsv_enabled"]


def rgb_to_hsv(image: Tensor) -> Tensor:
    """``(3, ...)`` RGB in ``[0, 1]`` -> ``(3, ...)`` HSV, every channel in ``[0, 1]`` (hue in turns)."""
    r, g, b = image.unbind(0)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`: ``f(n) = v - v * s * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + 6 h) mod 6`` for ``n = 5, 3, 1`` (red, green, blue)."""
    h, s, v = hsv.unbind(0)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out)


def hsv_gain(image: Tensor, gains: Sequence[float] | Tensor) -> Tensor:
    """Multiply hue (mod 1), saturation and value of a float RGB image ``(3, H, W)`` by ``gains``."""
    gh, gs, gv = (float(x) for x in gains)
    hsv = rgb_to_hsv(image)
    h = torch.remainder(hsv[0] * gh, 1.0)
    s = (hsv[1] * gs).clamp_(0.0, 1.0)
    v = (hsv[2] * gv).clamp_(0.0, 1.0)
    return hsv_to_rgb(torch.stack([h, s, v])).clamp_(0.0, 1.0)


def hsv_enabled(hsv: Sequence[float] | None) -> bool:
    """True when at least one of the ``(h, s, v)`` jitter amplitudes is non-zero."""
    return hsv is not None and any(float(x) != 0.0 for x in hsv)


def random_hsv(image: Tensor, hsv: Sequence[float] | None, generator: torch.Generator | None = None) -> Tensor:
    """Colour jitter with amplitudes ``hsv = (h, s, v)``: gains ``1 + U(-1, 1) * amplitude``,
    drawn from ``generator`` (three draws; none and the image returned as is when disabled)."""
    if not hsv_enabled(hsv):
        return image
    amp = torch.tensor([float(x) for x in hsv], dtype=torch.float64)
    u = torch.rand(3, generator=generator, dtype=torch.float64) * 2 - 1
    return hsv_gain(image, (1 + u * amp).tolist())
