"""Anchor-fit analysis: YOLOv5 AutoAnchor metrics (hand-computed and fixture), k-means + GA fitting,
adjacent-level anchor overlap."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from assignlab.analysis.anchors import (
    anchor_fitness,
    anchor_metrics,
    anchor_summary,
    check_adjacent_levels,
    kmean_anchors,
    label_wh,
    ratio_metric,
)
from assignlab.assigners.yolov5 import YOLOV5S_ANCHORS
from conftest import require_shared

K3 = [(10, 13), (16, 30), (33, 23)]
WH = [[20, 40], [1, 1]]


def test_ratio_metric_worked_example():
    x, best = ratio_metric(WH, K3)
    # 20 x 40 vs (10, 13): min(.5, 13/40); vs (16, 30): min(.8, .75); vs (33, 23): min(20/33, 23/40)
    assert x[0].tolist() == pytest.approx([0.325, 0.75, 0.575], abs=1e-6)
    assert x[1].tolist() == pytest.approx([1 / 13, 1 / 30, 1 / 33], abs=1e-6)
    assert best.tolist() == pytest.approx([0.75, 1 / 13], abs=1e-6)
    assert x.dtype == torch.float32


def test_bpr_aat_fitness_summary_hand_computed():
    bpr, aat = anchor_metrics(WH, K3, thr=4.0)
    assert bpr == pytest.approx(0.5) and aat == pytest.approx(1.5)
    assert anchor_fitness(WH, K3, thr=4.0) == pytest.approx(0.375)
    s = anchor_summary(WH, K3, thr=4.0)
    assert s["bpr"] == pytest.approx(0.5) and s["aat"] == pytest.approx(1.5)
    assert s["mean_best"] == pytest.approx((0.75 + 1 / 13) / 2, abs=1e-6)
    assert s["past_thr_mean"] == pytest.approx((0.325 + 0.75 + 0.575) / 3, abs=1e-6)
    # a stricter threshold drops the 0.325 pair: thr = 3 -> 1/3
    assert anchor_metrics(WH, K3, thr=3.0) == pytest.approx((0.5, 1.0))
    # nested per-level anchors are flattened
    assert anchor_metrics(WH, YOLOV5S_ANCHORS)[0] == pytest.approx(0.5)


def test_strict_threshold():
    # x exactly 1/thr is not "above threshold"
    assert anchor_metrics([[40, 10]], [(10, 10)], thr=4.0) == (0.0, 0.0)
    assert anchor_metrics([[39.5, 10]], [(10, 10)], thr=4.0) == (1.0, 1.0)


@pytest.mark.parametrize("kind", ["mixed", "small", "elongated"])
def test_autoanchor_fixture_values(kind):
    folder = require_shared("conformance", "yolo")
    z = np.load(folder / f"y5_autoanchor_{kind}.npz")
    wh = label_wh(z["labels"][:, 3:5], z["image_shapes_wh"], z["label_image"], int(z["imgsz"]))
    np.testing.assert_array_equal(wh, z["wh"])
    for s, k in enumerate(z["anchor_sets_px"]):
        assert anchor_metrics(wh, k, float(z["thr"])) == pytest.approx(tuple(z["bpr_aat"][s]), abs=1e-6)
        assert anchor_fitness(z["km_wh"], k, float(z["thr"])) == pytest.approx(float(z["km_fitness"][s]), abs=1e-6)


def _clustered(seed=0, n=300):
    rng = np.random.default_rng(seed)
    centres = np.array([[10, 20], [50, 40], [150, 300]], dtype=np.float64)
    idx = rng.integers(0, 3, n)
    return (centres[idx] * rng.uniform(0.95, 1.05, (n, 2))).astype(np.float32), centres


def test_kmean_anchors_recovers_clusters_and_is_deterministic():
    wh, centres = _clustered()
    k1 = kmean_anchors(wh, n=3, gen=150, seed=3)
    k2 = kmean_anchors(wh, n=3, gen=150, seed=3)
    assert k1.dtype == np.float32 and k1.shape == (3, 2)
    np.testing.assert_array_equal(k1, k2)
    assert (np.diff(k1.prod(1)) >= 0).all()  # sorted by area
    np.testing.assert_allclose(k1, centres, rtol=0.15)
    bpr, _ = anchor_metrics(wh, k1)
    assert bpr == 1.0
    assert anchor_fitness(wh, k1) > 0.9


def test_kmean_anchors_ga_does_not_lower_fitness():
    wh, _ = _clustered(seed=1)
    k0 = kmean_anchors(wh, n=4, gen=0, seed=0)
    k1 = kmean_anchors(wh, n=4, gen=100, seed=0)
    assert anchor_fitness(wh, k1) >= anchor_fitness(wh, k0)


def test_kmean_anchors_too_few_labels_random_init():
    with pytest.warns(UserWarning, match="random init"):
        k = kmean_anchors([[5, 5], [1, 1]], n=3, gen=5, seed=0, img_size=64)
    assert k.shape == (3, 2) and (k >= 2.0).all() and (np.diff(k.prod(1)) >= 0).all()


def test_check_adjacent_levels_yolov5s():
    with pytest.warns(UserWarning, match="adjacent levels"):
        pairs = check_adjacent_levels(YOLOV5S_ANCHORS, anchor_t=4.0)
    got = {(p.level_a, p.anchor_a, p.level_b, p.anchor_b): p.ratio for p in pairs}
    # (33, 23) vs (30, 61): max(33/30, 61/23) = 2.652; (62, 45) vs (116, 90): max(1.87, 2.0) = 2.0
    assert got[(0, 2, 1, 0)] == pytest.approx(61 / 23)
    assert got[(1, 1, 2, 0)] == pytest.approx(2.0)
    # (10, 13) vs (30, 61): 61 / 13 = 4.69 -> not within 4
    assert (0, 0, 1, 0) not in got
    assert len(pairs) == 9
    assert all(p.level_b == p.level_a + 1 for p in pairs)
    # a tighter anchor_t keeps only the close pairs
    assert len(check_adjacent_levels(YOLOV5S_ANCHORS, anchor_t=2.01, warn=False)) == 3


def test_check_adjacent_levels_separated_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_adjacent_levels([[(4, 4), (6, 5)], [(40, 40)], [(400, 300)]], anchor_t=4.0) == []
    with pytest.raises(ValueError, match="anchor_t"):
        check_adjacent_levels(YOLOV5S_ANCHORS, anchor_t=1.0)
