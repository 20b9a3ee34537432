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
    """Multiply hue (mod 1), saturation and value of a float RGB image ``(3, H, W)`` by ``gains``.

    Equal to ``hsv_to_rgb`` of the scaled ``rgb_to_hsv`` (tested), computed without building the
    HSV planes: with ``v = max``, ``d = max - min`` and the hue ``h6 = 6 h`` in sextants,
    ``v' = min(v g_v, 1)``, ``v' s' = min(v' d g_s / v, v')`` and channel ``n`` (5, 3, 1 for
    R, G, B) is ``v' - v' s' clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + h6 g_h) mod 6``
    Processed in blocks of 64 rows so that the temporaries stay in the CPU cache (about half the
    CPU time of the plain round trip at 320 x 320).
    """
    gh, gs, gv = (float(x) for x in gains)
    if image.shape[-2] <= _BLOCK_ROWS:
        return _hsv_gain_block(image, gh, gs, gv)
    out = torch.empty_like(image)
    for y in range(0, image.shape[-2], _BLOCK_ROWS):
        out[:, y : y + _BLOCK_ROWS] = _hsv_gain_block(image[:, y : y + _BLOCK_ROWS], gh, gs, gv)
    return out


_BLOCK_ROWS = 64


def _hsv_gain_block(image: Tensor, gh: float, gs: float, gv: float) -> Tensor:
    r, g, b = image.unbind(0)
    v = torch.maximum(torch.maximum(r, g), b)
    d = v - torch.minimum(torch.minimum(r, g), b)
    # 6 * hue: (g - b) / d (red is the max), (b - r) / d + 2 (green), (r - g) / d + 4 (blue);
    # masks as 0/1 floats and floor-based "mod" (several times faster than where / remainder)
    is_r = (v == r).to(image.dtype)
    is_g = (v == g).to(image.dtype) * (1 - is_r)
    is_b = 1 - is_r - is_g
    h6 = (is_r * (g - b) + is_g * (b - r + 2 * d) + is_b * (r - g + 4 * d)) / d.clamp_min(1e-12)
    h6 = _mod6((h6 + 6.0 * (h6 < 0)) * gh)
    vn = (v * gv).clamp_(max=1.0)
    vs = torch.minimum(vn * d * gs / v.clamp_min(1e-12), vn)  # v' * s'
    n = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = _mod6(h6 + n)
    t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (vn - vs * t).clamp_(0.0, 1.0)


def _mod6(x: Tensor) -> Tensor:
    return x - torch.floor(x * (1.0 / 6.0)) * 6.0


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
