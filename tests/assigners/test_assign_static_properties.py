"""Hypothesis properties of the static assigners (maxiou, topk, atss, fcos), each on grid point
priors, grid anchor priors and the same points without grid (dense path):

* permuting the GTs permutes ``gt_index`` (a prior may change GT only on an exact tie, which is
  checked to be one);
* padded / degenerate GTs are never assigned and change nothing;
* no GT -> everything negative (ignore regions not applied);
* every positive points at a valid GT (``Assignment.validate``);
* translating priors and GTs together by integer multiples of the largest stride changes nothing.

Boxes have integer coordinates so that every IoU / distance is computed exactly in float32 and
the translated problem is bit-for-bit the same problem.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assignlab.assigners import ATSSAssigner, FCOSAssigner, MaxIoUAssigner, TopKAssigner
from assignlab.core import GroundTruth, Priors, make_priors
from assignlab.core.boxes import batched_box_iou

IMAGE = (64, 96)
ANCHORS = [[(12, 16), (24, 12)], [(32, 32), (48, 24)], [(64, 64), (96, 48)]]
_grid_points = make_priors(IMAGE)
PRIORS = {
    "points": _grid_points,
    "anchors": make_priors(IMAGE, anchors=ANCHORS),
    "dense": Priors.from_tensors(_grid_points.points, _grid_points.num_level_priors, _grid_points.level_strides),
}
ASSIGNERS = {
    "maxiou": lambda: MaxIoUAssigner(),
    "maxiou_rpn_ignore": lambda: MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3, ignore_iof_thr=0.5),
    "topk": lambda: TopKAssigner(k=5),
    "atss": lambda: ATSSAssigner(topk=5, ignore_iof_thr=0.5),
    "fcos": lambda: FCOSAssigner(),
}
CASES = [pytest.param(a, p, id=f"{a}-{p}") for a in ASSIGNERS for p in PRIORS]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def int_boxes(draw, min_n: int = 1, max_n: int = 6):
    n = draw(st.integers(min_n, max_n))
    out = []
    for _ in range(n):
        x = draw(st.integers(0, IMAGE[1] - 3))
        y = draw(st.integers(0, IMAGE[0] - 3))
        w = draw(st.integers(2, 64))
        h = draw(st.integers(2, 48))
        out.append([x, y, x + w, y + h])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def gt_of(per_image, ignore=None) -> GroundTruth:
    labels = [torch.arange(len(b)) % 3 for b in per_image]
    return GroundTruth.from_lists(per_image, labels, ignore=ignore)


def tie_ok(name: str, priors: Priors, gt: GroundTruth, b: int, n: int, a: int, c: int) -> bool:
    """Whether prior ``n`` of image ``b`` may legitimately go to GT ``a`` in one order and ``c`` in
    the other."""
    if name == "fcos":
        area = (gt.boxes[b, :, 2] - gt.boxes[b, :, 0]) * (gt.boxes[b, :, 3] - gt.boxes[b, :, 1])
        return bool(area[a] == area[c])
    iou = batched_box_iou(gt.boxes[b], priors.boxes())  # (G, N)
    if iou[a, n] == iou[c, n]:
        return True
    if name.startswith("maxiou"):  # both GTs claim n in the low-quality step: the last one wins
        gmax = iou.amax(dim=1)
        return bool(iou[a, n] == gmax[a] and iou[c, n] == gmax[c])
    return False


@pytest.mark.parametrize("name,pk", CASES)
@SETTINGS
@given(b0=int_boxes(), b1=int_boxes(min_n=0), data=st.data())
def test_gt_permutation(name, pk, b0, b1, data):
    priors, assigner = PRIORS[pk], ASSIGNERS[name]()
    gt = gt_of([b0, b1])
    G = gt.max_boxes
    perm = torch.tensor(data.draw(st.permutations(range(G))), dtype=torch.long)
    gtp = GroundTruth(gt.boxes[:, perm], gt.labels[:, perm], gt.mask[:, perm])
    r, rp = assigner(priors, gt), assigner(priors, gtp)
    r.validate(gt)
    rp.validate(gtp)
    assert torch.equal(r.positive, rp.positive) and torch.equal(r.ignore, rp.ignore)
    mapped = torch.where(rp.positive, perm[rp.gt_index.clamp(min=0)], -1)  # back to original rows
    for b, n in (mapped != r.gt_index).nonzero().tolist():
        assert tie_ok(name, priors, gt, b, n, int(r.gt_index[b, n]), int(mapped[b, n])), (b, n)


@pytest.mark.parametrize("name,pk", CASES)
@SETTINGS
@given(b0=int_boxes(), b1=int_boxes(min_n=0), junk=int_boxes())
def test_padded_and_degenerate_gts_never_assigned(name, pk, b0, b1, junk):
    priors, assigner = PRIORS[pk], ASSIGNERS[name]()
    gt = gt_of([b0, b1])
    P = len(junk)
    # padded rows (mask False) holding real-looking boxes, then one zero-width GT left unmasked
    flat = junk.clone()
    flat[:, 2] = flat[:, 0]
    boxes = torch.cat([gt.boxes, junk[None].expand(2, P, 4), flat[:1][None].expand(2, 1, 4)], dim=1)
    mask = torch.cat([gt.mask, torch.zeros(2, P, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool)], dim=1)
    padded = GroundTruth(boxes, torch.zeros_like(mask, dtype=torch.long), mask)
    a, p = assigner(priors, gt), assigner(priors, padded)
    p.validate(padded)
    assert not (p.gt_index >= gt.max_boxes).any()
    assert torch.equal(a.gt_index, p.gt_index)
    assert torch.equal(a.positive, p.positive) and torch.equal(a.ignore, p.ignore)
    for k, v in a.extras.items():
        assert torch.equal(v, p.extras[k]), k


@pytest.mark.parametrize("name,pk", CASES)
@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 3), G=st.integers(0, 3), ign=int_boxes())
def test_zero_gts_all_negative(name, pk, B, G, ign):
    priors, assigner = PRIORS[pk], ASSIGNERS[name]()
    gt = GroundTruth(
        boxes=torch.tensor([0.0, 0, 40, 40]).expand(B, G, 4).clone(),
        labels=torch.zeros(B, G, dtype=torch.long),
        mask=torch.zeros(B, G, dtype=torch.bool),
        ignore=ign[None].expand(B, len(ign), 4).clone(),
        ignore_mask=torch.ones(B, len(ign), dtype=torch.bool),
    )
    res = assigner(priors, gt)
    res.validate(gt)
    assert res.negative.all() and (res.gt_index == -1).all()
    for v in res.extras.values():
        assert (v == 0).all()


@pytest.mark.parametrize("name,pk", CASES)
@SETTINGS
@given(b0=int_boxes(), b1=int_boxes(min_n=0), ign=int_boxes(max_n=2), mx=st.integers(0, 3), my=st.integers(0, 3))
def test_translation_by_largest_stride(name, pk, b0, b1, ign, mx, my):
    priors, assigner = PRIORS[pk], ASSIGNERS[name]()
    s = max(priors.level_strides)
    shift = torch.tensor([mx * s, my * s, mx * s, my * s])
    gt = gt_of([b0, b1], ignore=[ign, ign[:1]])
    gtt = gt_of([b0 + shift, b1 + shift], ignore=[ign + shift, ign[:1] + shift])
    pt = dataclasses.replace(
        priors,
        points=priors.points + shift[:2],
        anchors=None if priors.anchors is None else priors.anchors + shift,
    )
    r, rt = assigner(priors, gt), assigner(pt, gtt)
    r.validate(gt)
    assert torch.equal(r.gt_index, rt.gt_index)
    assert torch.equal(r.positive, rt.positive) and torch.equal(r.ignore, rt.ignore)
    for k, v in r.extras.items():
        assert torch.equal(v, rt.extras[k]), k


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
def test_level_without_priors_is_skipped(name):
    # explicit priors with an empty middle level (e.g. a feature map cropped away)
    pts = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 20.0]])
    priors = Priors.from_tensors(pts, [2, 0, 1], [8, 16, 32])
    gt = gt_of([torch.tensor([[0.0, 0, 16, 10]])])
    res = ASSIGNERS[name]()(priors, gt)
    res.validate(gt)
    assert res.shape == (1, 3)
