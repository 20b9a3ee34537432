"""Property tests run on EVERY registered assigner (``assignlab.assigners.ASSIGNERS``).

The registry is read when the tests are collected, so assigners added later are covered without
editing this file. Per name, ``CONFIGS`` may give constructor kwargs (several variants allowed) and
the kind of priors (``"anchor"`` or ``"point"``); a name without an entry is built with its
defaults and gets point priors, or anchor priors when it says (by a ``ValueError`` mentioning
anchors) that it needs them. Prediction-aware assigners (instance attribute
``requires_predictions``) get ``pred_boxes`` / ``pred_scores``.

Invariants checked on every call: ``Assignment.validate(gt)`` (shapes, dtypes, positive/ignore
exclusive, gt_index on valid GTs, finite non-negative quality/weights, quality <= 1), no NaN in
float extras, sparse matches point at valid GTs. Scenarios: no GT, a single GT, identical GTs,
GTs larger than the image, sub-pixel GTs, all-zero scores, zero-area predicted boxes, and padded
GT rows (with garbage coordinates) that must change nothing.

A ``ValueError`` is accepted only when ``DOCUMENTED_ERRORS`` lists a substring of its message for
that assigner (none so far); anything else raised fails the test.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assignlab.assigners import ASSIGNERS
from assignlab.core import Assignment, GroundTruth, make_priors

IMAGE = (64, 96)  # (H, W)
NUM_CLASSES = 3
ANCHORS = [[(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]]
PRIORS = {"point": make_priors(IMAGE), "anchor": make_priors(IMAGE, anchors=ANCHORS)}

# name -> {"priors": "anchor" | "point", "variants": [kwargs, ...]}
CONFIGS: dict[str, dict] = {
    "centernet": {"priors": "point", "variants": [{"num_classes": NUM_CLASSES}]},
    "hambox": {"priors": "anchor", "variants": [{}, {"ignore_pred_negatives": True}]},
    "noisy": {"priors": "anchor", "variants": [{}, {"gamma": 3.0, "n": 5}]},
    "yolov5": {"priors": "anchor", "variants": [{}, {"ignore_iou": 0.5, "dedup": "best_pred_iou"}]},
}
# name -> message substrings of ValueErrors that the assigner documents for edge-case inputs
DOCUMENTED_ERRORS: dict[str, tuple[str, ...]] = {}

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cases() -> list:
    out = []
    for name in sorted(ASSIGNERS):
        variants = CONFIGS.get(name, {}).get("variants", [{}])
        for i, kw in enumerate(variants):
            out.append(pytest.param(name, kw, id=name if i == 0 else f"{name}-{i}"))
    return out


CASES = _cases()


@functools.cache
def _priors_kind(name: str, kw_items: tuple) -> str:
    cfg = CONFIGS.get(name, {})
    if "priors" in cfg:
        return cfg["priors"]
    inst = ASSIGNERS[name](**dict(kw_items))
    gt = GroundTruth.from_lists([torch.tensor([[10.0, 10.0, 40.0, 50.0]])])
    try:
        _call(inst, PRIORS["point"], gt, *_predictions(PRIORS["point"], 1, seed=0))
    except ValueError as e:
        if "anchor" in str(e).lower():
            return "anchor"
        raise
    return "point"


def _setup(name: str, kw: dict):
    priors = PRIORS[_priors_kind(name, tuple(sorted(kw.items())))]
    return ASSIGNERS[name](**kw), priors


def _predictions(priors, B: int, seed: int, zero_scores: bool = False, zero_area: bool = False):
    gen = torch.Generator().manual_seed(seed)
    N = priors.num_priors
    base = priors.boxes()[None].expand(B, N, 4)
    pb = base + torch.randn(B, N, 4, generator=gen) * 4
    pb = torch.cat([torch.minimum(pb[..., :2], pb[..., 2:]), torch.maximum(pb[..., :2], pb[..., 2:])], dim=-1)
    if zero_area:
        centre = (pb[..., :2] + pb[..., 2:]) / 2
        pb = torch.cat([centre, centre], dim=-1)  # x1 == x2, y1 == y2
        pb[:, ::2] = 0.0  # and some all-zero boxes
    ps = torch.zeros(B, N, NUM_CLASSES) if zero_scores else torch.rand(B, N, NUM_CLASSES, generator=gen)
    return pb, ps


def _call(inst, priors, gt, pb, ps) -> Assignment:
    if getattr(inst, "requires_predictions", False):
        return inst(priors, gt, pred_boxes=pb, pred_scores=ps)
    return inst(priors, gt)


def _run(name, inst, priors, gt, pb, ps) -> Assignment | None:
    """Call; None when a documented ValueError was raised (see DOCUMENTED_ERRORS)."""
    try:
        return _call(inst, priors, gt, pb, ps)
    except ValueError as e:
        if any(s in str(e) for s in DOCUMENTED_ERRORS.get(name, ())):
            return None
        raise


def _check(res: Assignment, gt: GroundTruth, N: int) -> None:
    assert res.shape == (gt.batch_size, N)
    res.validate(gt)
    for k, v in res.extras.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            assert not torch.isnan(v).any(), f"extras[{k!r}] has NaN"
    m = res.matches
    if m is not None and len(m):
        assert gt.max_boxes > 0
        assert gt.mask[m.batch, m.gt].all(), "a sparse match points at a padded / invalid GT"
        assert torch.isfinite(m.weight.float()).all() and (m.weight >= 0).all()
        assert ((m.prior >= 0) & (m.prior < N)).all()


# ---------------------------------------------------------------- strategies
coord_x = st.floats(0, IMAGE[1] - 2, allow_nan=False, width=32)
coord_y = st.floats(0, IMAGE[0] - 2, allow_nan=False, width=32)


@st.composite
def boxes_in_image(draw, min_side: float = 2.0, max_side: float = 60.0, max_n: int = 5):
    n = draw(st.integers(1, max_n))
    out = []
    for _ in range(n):
        x, y = draw(coord_x), draw(coord_y)
        w = draw(st.floats(min_side, max_side))
        h = draw(st.floats(min_side, max_side))
        out.append([x, y, x + w, y + h])
    return torch.tensor(out, dtype=torch.float32)


def _gt(per_image: list[torch.Tensor], seed: int = 0, pad_to: int | None = None) -> GroundTruth:
    gen = torch.Generator().manual_seed(seed)
    labels = [torch.randint(0, NUM_CLASSES, (len(b),), generator=gen) for b in per_image]
    return GroundTruth.from_lists(per_image, labels=labels, pad_to=pad_to)


# ---------------------------------------------------------------- properties
def test_registry_nonempty_and_configs_known():
    assert {"hambox", "noisy", "centernet"} <= set(ASSIGNERS)
    for name in ASSIGNERS:
        assert isinstance(name, str) and name == name.lower()


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(B=st.integers(1, 3), G=st.integers(0, 4), seed=st.integers(0, 1000))
def test_zero_gts(name, kw, B, G, seed):
    inst, priors = _setup(name, kw)
    N = priors.num_priors
    pb, ps = _predictions(priors, B, seed)
    # G == 0 columns, or G padded rows that are all invalid
    gt = GroundTruth.empty(B) if G == 0 else GroundTruth(
        boxes=torch.rand(B, G, 4) * 30 + torch.tensor([0.0, 0.0, 31.0, 31.0]),
        labels=torch.zeros(B, G, dtype=torch.long),
        mask=torch.zeros(B, G, dtype=torch.bool),
    )
    res = _call(inst, priors, gt, pb, ps)
    _check(res, gt, N)
    assert not res.positive.any()
    assert (res.gt_index == -1).all()
    assert torch.isfinite(res.cls_weight).all()


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(box=boxes_in_image(max_n=1), B=st.integers(1, 2), seed=st.integers(0, 1000))
def test_single_gt(name, kw, box, B, seed):
    inst, priors = _setup(name, kw)
    gt = _gt([box] * B, seed)
    res = _call(inst, priors, gt, *_predictions(priors, B, seed))
    _check(res, gt, priors.num_priors)
    assert set(res.gt_index.unique().tolist()) <= {-1, 0}


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(box=boxes_in_image(max_n=1), k=st.integers(2, 5), seed=st.integers(0, 1000))
def test_identical_gts(name, kw, box, k, seed):
    inst, priors = _setup(name, kw)
    gt = _gt([box.repeat(k, 1)], seed)
    res = _run(name, inst, priors, gt, *_predictions(priors, 1, seed))
    if res is not None:
        _check(res, gt, priors.num_priors)


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(
    grow=st.lists(st.floats(1, 200, width=32), min_size=4, max_size=4),
    extra=boxes_in_image(max_n=2),
    seed=st.integers(0, 1000),
)
def test_gts_larger_than_image(name, kw, grow, extra, seed):
    inst, priors = _setup(name, kw)
    H, W = IMAGE
    big = torch.tensor([[-grow[0], -grow[1], W + grow[2], H + grow[3]]])
    gt = _gt([torch.cat([big, extra])], seed)
    res = _run(name, inst, priors, gt, *_predictions(priors, 1, seed))
    if res is not None:
        _check(res, gt, priors.num_priors)


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(boxes=boxes_in_image(min_side=0.01, max_side=0.99, max_n=4), seed=st.integers(0, 1000))
def test_tiny_gts(name, kw, boxes, seed):
    inst, priors = _setup(name, kw)
    gt = _gt([boxes], seed)
    res = _run(name, inst, priors, gt, *_predictions(priors, 1, seed))
    if res is not None:
        _check(res, gt, priors.num_priors)


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(boxes=boxes_in_image(), seed=st.integers(0, 1000))
def test_all_zero_scores(name, kw, boxes, seed):
    inst, priors = _setup(name, kw)
    gt = _gt([boxes, boxes[:1]], seed)
    res = _run(name, inst, priors, gt, *_predictions(priors, 2, seed, zero_scores=True))
    if res is not None:
        _check(res, gt, priors.num_priors)


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(boxes=boxes_in_image(), seed=st.integers(0, 1000), zero_scores=st.booleans())
def test_zero_area_predicted_boxes(name, kw, boxes, seed, zero_scores):
    inst, priors = _setup(name, kw)
    gt = _gt([boxes, boxes[:2]], seed)
    res = _run(name, inst, priors, gt, *_predictions(priors, 2, seed, zero_scores=zero_scores, zero_area=True))
    if res is not None:
        _check(res, gt, priors.num_priors)


def _match_rows(res: Assignment) -> list[tuple]:
    m = res.matches
    if m is None:
        return []
    rows = zip(m.batch.tolist(), m.prior.tolist(), m.gt.tolist(), m.weight.tolist(), m.center.tolist())
    return sorted(rows)


@pytest.mark.parametrize("name,kw", CASES)
@SETTINGS
@given(
    b0=boxes_in_image(),
    b1=st.one_of(st.just(torch.zeros(0, 4)), boxes_in_image()),
    junk=boxes_in_image(),
    seed=st.integers(0, 1000),
)
def test_padded_rows_change_nothing(name, kw, b0, b1, junk, seed):
    inst, priors = _setup(name, kw)
    gt = _gt([b0, b1], seed)
    G, P = gt.max_boxes, junk.shape[0]
    # append P padded rows holding plausible-looking boxes and labels, all masked out
    padded = GroundTruth(
        boxes=torch.cat([gt.boxes, junk[None].expand(2, P, 4)], dim=1),
        labels=torch.cat([gt.labels, torch.arange(P)[None].expand(2, P) % NUM_CLASSES], dim=1),
        mask=torch.cat([gt.mask, torch.zeros(2, P, dtype=torch.bool)], dim=1),
    )
    pb, ps = _predictions(priors, 2, seed)
    a = _run(name, inst, priors, gt, pb, ps)
    b = _run(name, inst, priors, padded, pb, ps)
    if a is None or b is None:
        assert a is None and b is None
        return
    _check(b, padded, priors.num_priors)
    assert torch.equal(a.gt_index, b.gt_index)
    assert torch.equal(a.positive, b.positive) and torch.equal(a.ignore, b.ignore)
    for f in ("quality", "box_weight", "cls_weight"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-5, atol=1e-6, msg=f)
    for k, v in a.extras.items():
        w = b.extras.get(k)
        if isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor) and v.shape == w.shape:
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, equal_nan=True, msg=f"extras[{k!r}]")
    assert _match_rows(a) == _match_rows(b)
    assert G + P == padded.max_boxes
