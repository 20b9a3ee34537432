"""Anchor fit analysis: YOLOv5 AutoAnchor metrics, k-means + genetic anchor fitting, and a check
for anchors of adjacent levels that overlap under the ``anchor_t`` matching rule.

Reference: G. Jocher et al., *YOLOv5* (Ultralytics, 2020), ``utils/autoanchor.py``
(``check_anchors``, ``kmean_anchors``); the k-means dimension clusters go back to YOLOv2
(J. Redmon, A. Farhadi, CVPR 2017).

The ratio metric of a label of size ``wh`` and an anchor ``k`` (both pixels) is the worse of the
two side ratios, folded into ``(0, 1]``::

    x = min(min(w / kw, kw / w), min(h / kh, kh / h))

A label is trainable by an anchor under YOLOv5's ``anchor_t = thr`` iff ``x > 1 / thr``.
Worked example, ``thr = 4``, label 20 x 40 px, anchors (10, 13) (16, 30) (33, 23)::

    x = min(0.5, 0.325) = 0.325,  min(0.8, 0.75) = 0.75,  min(0.606, 0.575) = 0.575
    best = 0.75 > 0.25 -> recalled;  anchors above threshold = 3

* ``bpr`` (best possible recall) = fraction of labels whose best ``x`` exceeds ``1 / thr``.
* ``aat`` (anchors above threshold) = mean over labels of the number of anchors with ``x > 1/thr``.
* k-means fitness = ``mean(best * (best > 1 / thr))``.

Everything is computed in float32 torch, in the reference's order of operations, so the values
match YOLOv5 to float32 rounding of the final mean.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AdjacentAnchorPair",
    "anchor_fitness",
    "anchor_metrics",
    "anchor_summary",
    "check_adjacent_levels",
    "kmean_anchors",
    "label_wh",
    "ratio_metric",
]


def _f32(x) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(torch.float32).reshape(-1, 2)
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1, 2)


def label_wh(wh_norm, image_shapes_wh, label_image, img_size: int = 640) -> np.ndarray:
    """Label sizes in pixels after YOLOv5's letterbox resize (long side = ``img_size``), without the
    random scale jitter of ``check_anchors``: ``float32(wh_norm * img_size * shape / max(shape))``
    computed in float64, as ``check_anchors`` / ``kmean_anchors`` do.

    Args:
        wh_norm: ``(n, 2)`` normalized label ``w, h`` (YOLO label columns 3:5).
        image_shapes_wh: ``(n_img, 2)`` original image sizes ``[w, h]``.
        label_image: ``(n,)`` image index of each label.
        img_size: training image size.
    """
    shapes = np.asarray(image_shapes_wh, dtype=np.float64)
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    wh = np.asarray(wh_norm, dtype=np.float32).astype(np.float64) * shapes[np.asarray(label_image, dtype=np.int64)]
    return wh.astype(np.float32)


def ratio_metric(wh, anchors) -> tuple[Tensor, Tensor]:
    """``x`` ``(n, k)`` (ratio metric of every label / anchor pair) and ``best`` ``(n,)``."""
    wh, k = _f32(wh), _f32(anchors)
    r = wh[:, None] / k[None]
    x = torch.min(r, 1 / r).min(2)[0]
    return x, x.max(1)[0] if x.shape[1] else torch.zeros(x.shape[0])


def anchor_metrics(wh, anchors, thr: float = 4.0) -> tuple[float, float]:
    """``(bpr, aat)`` of label sizes ``wh`` ``(n, 2)`` px for ``anchors`` ``(k, 2)`` px (or
    per-level nested lists), as YOLOv5 ``check_anchors`` computes them (``bpr < 0.98`` triggers
    its re-fit)."""
    x, best = ratio_metric(wh, anchors)
    aat = (x > 1 / thr).float().sum(1).mean()
    bpr = (best > 1 / thr).float().mean()
    return float(bpr), float(aat)


def anchor_fitness(wh, anchors, thr: float = 4.0) -> float:
    """``kmean_anchors``' fitness: ``mean(best * (best > 1 / thr))`` (higher is better)."""
    _, best = ratio_metric(wh, anchors)
    return float((best * (best > 1 / thr).float()).mean())


def anchor_summary(wh, anchors, thr: float = 4.0) -> dict[str, float]:
    """``kmean_anchors``' printed statistics: ``bpr``, ``aat`` (= mean(x > 1/thr) * k),
    ``mean_x``, ``mean_best`` and ``past_thr_mean`` (mean x over pairs above the threshold)."""
    x, best = ratio_metric(wh, anchors)
    t = 1 / thr
    above = x > t
    return {
        "bpr": float((best > t).float().mean()),
        "aat": float(above.float().mean() * x.shape[1]),
        "mean_x": float(x.mean()),
        "mean_best": float(best.mean()),
        "past_thr_mean": float(x[above].mean()) if bool(above.any()) else 0.0,
    }


def kmean_anchors(
    wh,
    n: int = 9,
    img_size: int = 640,
    thr: float = 4.0,
    gen: int = 1000,
    seed: int = 0,
    min_size: float = 2.0,
) -> np.ndarray:
    """Fit ``n`` anchors to label sizes ``wh`` ``(m, 2)`` px: k-means on whitened sizes
    (``scipy.cluster.vq.kmeans``, 30 iterations), then ``gen`` generations of a mutation-only
    genetic search on :func:`anchor_fitness` (mutation probability 0.9, sigma 0.1, factors
    clipped to [0.3, 3], anchors >= 2 px), as YOLOv5 ``kmean_anchors``.

    Labels with both sides below ``min_size`` px are dropped first. When there are fewer distinct
    labels than anchors, k-means is replaced by a random init (as YOLOv5). Deterministic for a
    given ``seed``.

    Returns:
        ``(n, 2)`` float32 anchors (w, h) px sorted by area, smallest first.
    """
    from scipy.cluster.vq import kmeans

    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    wh0 = np.asarray(wh.detach().cpu().numpy() if isinstance(wh, Tensor) else wh, dtype=np.float32).reshape(-1, 2)
    whf = wh0[(wh0 >= min_size).any(1)]
    k = None
    if len(whf) >= n:
        s = whf.std(0)
        s = np.where(s > 0, s, 1.0)
        k_w, _ = kmeans((whf / s).astype(np.float64), n, iter=30, rng=rng)
        if len(k_w) == n:
            k = k_w * s
    if k is None:
        warnings.warn("kmean_anchors: too few distinct labels for k-means, using a random init", stacklevel=2)
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    whf_t = torch.from_numpy(whf)
    f = anchor_fitness(whf_t, k, thr)
    mp, sigma = 0.9, 0.1
    for _ in range(gen):
        v = np.ones(k.shape)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(k.shape) < mp) * rng.random() * rng.standard_normal(k.shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = anchor_fitness(whf_t, kg, thr)
        if fg > f:
            f, k = fg, kg
    k = k[np.argsort(k.prod(1), kind="stable")]
    return k.astype(np.float32)


@dataclass(frozen=True)
class AdjacentAnchorPair:
    """Two anchors of adjacent levels that are closer than ``anchor_t``.

    ``ratio = max over w, h of max(a / b, b / a)``; when ``ratio < anchor_t`` a GT shaped exactly
    like either anchor also matches the other, so typical GTs of that shape train on both levels.
    """

    level_a: int
    anchor_a: int
    level_b: int
    anchor_b: int
    ratio: float


def check_adjacent_levels(
    anchors_per_level: Sequence[Sequence[Sequence[float]]], anchor_t: float = 4.0, warn: bool = True
) -> list[AdjacentAnchorPair]:
    """Pairs of anchors on adjacent levels whose shape ratio is below ``anchor_t``.

    Under YOLOv5 matching (``max(r, 1/r) < anchor_t`` per side) a GT trains every anchor it fits,
    on every level. If anchor ``a`` (level ``l``) and ``b`` (level ``l + 1``) satisfy
    ``max(a/b, b/a) < anchor_t`` on both sides, a GT shaped like ``a`` also trains ``b``'s level
    (and vice versa). Note the weaker condition: *some* GT shape matches both iff the ratio is
    below ``anchor_t ** 2`` per side, which with ``anchor_t = 4`` holds for nearly all anchor sets.

    Example, yolov5s anchors, ``anchor_t = 4``: P3 (33, 23) vs P4 (30, 61) has ratio
    ``max(33/30, 61/23) = 2.65 < 4`` -> reported.

    Args:
        anchors_per_level: per level a list of ``(w, h)`` in pixels.
        anchor_t: the matching threshold.
        warn: emit one :class:`UserWarning` summarising the pairs when any is found.

    Returns:
        The pairs, ordered by level, then anchor of the lower level, then anchor of the upper one.
    """
    if anchor_t <= 1:
        raise ValueError(f"anchor_t must be > 1, got {anchor_t}")
    out: list[AdjacentAnchorPair] = []
    levels = [np.asarray(la, dtype=np.float64).reshape(-1, 2) for la in anchors_per_level]
    for li in range(len(levels) - 1):
        a, b = levels[li], levels[li + 1]
        if not len(a) or not len(b):
            continue
        r = a[:, None, :] / b[None, :, :]
        ratio = np.maximum(r, 1 / r).max(-1)  # (na, nb)
        for i, j in zip(*np.nonzero(ratio < anchor_t)):
            out.append(AdjacentAnchorPair(li, int(i), li + 1, int(j), float(ratio[i, j])))
    if out and warn:
        desc = ", ".join(f"L{p.level_a}a{p.anchor_a}~L{p.level_b}a{p.anchor_b} ({p.ratio:.2f})" for p in out[:6])
        more = f" and {len(out) - 6} more" if len(out) > 6 else ""
        warnings.warn(
            f"{len(out)} anchor pair(s) on adjacent levels are within anchor_t={anchor_t}: {desc}{more}; "
            "GTs of those shapes train on both levels",
            stacklevel=2,
        )
    return out
