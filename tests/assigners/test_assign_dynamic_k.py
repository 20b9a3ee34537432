"""The sparse dynamic-k selection of SimOTA / DSL (``assigners/_dynamic_k.py``) against a dense
reference written here: every (GT, prior) pair evaluated, each GT's row sorted.

Covered: ``lex_smallest`` (ties, padding, float32 and float64), the overlap join against brute
force (degenerate, inverted, huge and non-finite boxes), ``select_dynamic_k`` on synthetic costs
with many exact ties (windows, all three tiers, weak bounds, padded GTs, images without
candidates, GTs without a candidate of their own, tiny ``max_pairs``), and SimOTA / DSL end to
end against the dense rule applied to their own cost functions."""

from __future__ import annotations

import math

import pytest
import torch
from assign_testutils import NoHostSync
from dynamic_testutils import draw_problem, random_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import assignlab.assigners._dynamic_k as dk
import assignlab.assigners.dsl as dsl_module
import assignlab.assigners.simota as simota_module
from assignlab.assigners import DynamicSoftLabelAssigner, SimOTAAssigner, TaskAlignedAssigner
from assignlab.core import GroundTruth, Priors, devices, gt_chunks, make_priors

PRI = make_priors((48, 48), strides=(8, 16))  # 36 + 9 priors


# -- the dense reference ------------------------------------------------------------------------
def dense_dynamic_k(cost: torch.Tensor, ious: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor,
                    q: int) -> torch.Tensor:
    """(B, N) gt_index of the dynamic-k rule from dense (B, G, N) costs and IoUs, GT by GT:
    ``k = max(1, int(sum))`` of the q largest candidate IoUs (summed largest first, in the costs'
    dtype); each valid GT takes its k cheapest candidates in (cost, prior index) order; a prior
    taken by several GTs goes to the lowest cost over all valid GTs, then the lower GT index."""
    B, G, N = cost.shape
    out = torch.full((B, N), -1, dtype=torch.long)
    for b in range(B):
        cand = candidates[b].nonzero()[:, 0]
        if len(cand) == 0:
            continue
        chosen = torch.zeros(G, N, dtype=torch.bool)
        for g in range(G):
            if not valid[b, g]:
                continue
            s = torch.zeros((), dtype=ious.dtype)
            for v in torch.sort(ious[b, g, cand], descending=True).values[:q]:
                s = s + v
            k = max(1, int(s.to(torch.int32)))
            # cand is ascending, so a stable sort keeps the lower prior first among equal costs
            chosen[g, cand[torch.sort(cost[b, g, cand], stable=True).indices[:k]]] = True
        cnt = chosen.sum(0)
        for n in range(N):
            if cnt[n] == 1:
                out[b, n] = int(chosen[:, n].nonzero()[0, 0])
            elif cnt[n] > 1:
                col = torch.where(valid[b], cost[b, :, n], torch.full((G,), math.inf, dtype=cost.dtype))
                out[b, n] = int(torch.sort(col, stable=True).indices[0])
    return out


def dense_of(pc: dk.PairCosts) -> tuple[torch.Tensor, torch.Tensor]:
    """(cost, iou) (B, G, N) of every pair, from the PairCosts' own functions."""
    B, G = pc.gt_valid.shape
    N = pc.candidates.shape[1]
    p = pc.pred_boxes
    ok = torch.isfinite(p).all(-1) & (p[..., 2] > p[..., 0]) & (p[..., 3] > p[..., 1])
    iou = dk.pair_iou(tuple(pc.gt_boxes[..., i][..., None] for i in range(4)),
                      tuple(p[..., i][:, None, :] for i in range(4)))
    iou = torch.where(ok[:, None, :], iou, 0.0)
    rows = (torch.arange(B)[:, None] * G + torch.arange(G))[..., None].expand(B, G, N)
    n = torch.arange(N).expand(B, G, N)
    return pc.cost(rows, n, iou, False), iou


# -- lex_smallest -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lex_smallest_orders_ties_by_prior(dtype):
    cost = torch.tensor([[2.0, 1.0, 1.0, 5.0], [-0.0, 0.0, -1.5, math.inf]], dtype=dtype)
    n = torch.tensor([[7, 9, 3, 0], [4, 2, 8, 1]])
    c, m = dk.lex_smallest(cost, n, 3)
    assert m.tolist() == [[3, 9, 7], [8, 2, 4]]  # -0.0 == +0.0: the lower prior first
    assert c.tolist() == [[1.0, 1.0, 2.0], [-1.5, 0.0, 0.0]]
    # padding (NO_PRIOR) is last, after real +inf entries; short rows are padded
    c, m = dk.lex_smallest(torch.tensor([[math.inf, 3.0]], dtype=dtype), torch.tensor([[5, dk.NO_PRIOR]]), 4)
    assert m.tolist() == [[5, dk.NO_PRIOR, dk.NO_PRIOR, dk.NO_PRIOR]]
    assert c[0, 0] == math.inf and c[0, 1:].isinf().all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 40), st.integers(1, 12), st.sampled_from([torch.float32, torch.float64]))
def test_lex_smallest_matches_a_full_sort(seed, w, q, dtype):
    g = torch.Generator().manual_seed(seed)
    R = 5
    cost = (torch.randint(-3, 4, (R, w), generator=g).to(dtype) * 0.5)  # many ties, both signs
    cost[torch.rand(R, w, generator=g) < 0.1] = math.inf
    n = torch.stack([torch.randperm(500, generator=g)[:w] for _ in range(R)])
    n[torch.rand(R, w, generator=g) < 0.2] = dk.NO_PRIOR
    c, m = dk.lex_smallest(cost, n, q)
    for r in range(R):
        real = [(float(cost[r, j]), int(n[r, j])) for j in range(w) if n[r, j] != dk.NO_PRIOR]
        want = sorted(real)[:q]
        got = [(float(c[r, j]), int(m[r, j])) for j in range(q) if m[r, j] != dk.NO_PRIOR]
        assert got == want


# -- the overlap join ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([0.2, 1.0, 5.0]))
def test_overlap_index_finds_every_positive_iou(seed, scale):
    g = torch.Generator().manual_seed(seed)
    B, G, N = 2, 7, 60
    xy = torch.rand(B, N, 2, generator=g) * 200 - 50
    wh = torch.rand(B, N, 2, generator=g) * 60 * scale
    wh[torch.rand(B, N, generator=g) < 0.1] = 0.0  # zero-area
    pred = torch.cat([xy, xy + wh], -1)
    pred[0, :3] = pred[0, :3, [2, 3, 0, 1]]  # inverted
    pred[1, 5] = torch.tensor([-1e6, -1e6, 1e6, 1e6])  # huge
    pred[1, 6, 0] = math.nan
    gxy = torch.rand(B, G, 2, generator=g) * 120
    gwh = torch.rand(B, G, 2, generator=g) * 80 * scale
    gtb = torch.cat([gxy, gxy + gwh], -1)
    valid = torch.rand(B, G, generator=g) < 0.8
    usable = torch.rand(B, N, generator=g) < 0.9
    ix = dk.OverlapIndex(pred, usable, gtb, valid, 8.0)
    img = torch.arange(B).repeat_interleave(G)
    spans = ix.spans(gtb.reshape(-1, 4), img, valid.reshape(-1))
    rows, prior, iou = ix.pairs(gtb.reshape(-1, 4), *spans)
    assert torch.all(rows[1:] >= rows[:-1])
    for budget in (1, 7):  # rows tested in small groups: the same pairs in the same order
        again = ix.pairs(gtb.reshape(-1, 4), *spans, budget)
        assert all(torch.equal(a, b) for a, b in zip(again, (rows, prior, iou)))
    got = {(int(r), int(p)): float(v) for r, p, v in zip(rows, prior, iou)}
    v = dk.pair_iou(tuple(gtb[..., i][..., None] for i in range(4)), tuple(pred[..., i][:, None, :] for i in range(4)))
    hit = (v > 0) & valid[..., None] & (usable & torch.isfinite(pred).all(-1))[:, None, :]
    want = {(int(b) * G + int(j), int(b) * N + int(n)): float(v[b, j, n]) for b, j, n in hit.nonzero()}
    assert got == want


# -- select_dynamic_k on synthetic costs ----------------------------------------------------------
def synthetic(seed: int, B: int = 3, G: int = 6, bounds: str = "exact", window: bool = True, near=False):
    """A PairCosts on PRI with quantised boxes and costs (many exact ties):
    cost = T[b, label, n] + 2 * (1 - IoU) + 10 * [prior outside the GT box]. The window (if any) is
    the GT box, so the pairs outside it pay the "penalty". ``bounds``: "exact" (the true lower
    bounds), "tier2" (tier 1 never certifies) or "dense" (only tier 3 and the all-GT conflict
    resolution certify)."""
    g = torch.Generator().manual_seed(seed)
    N = PRI.num_priors
    xy = (torch.rand(B, G, 2, generator=g) * 40).round()
    wh = (torch.rand(B, G, 2, generator=g) * 24).round() + 2
    boxes = torch.cat([xy, xy + wh], -1)
    valid = torch.rand(B, G, generator=g) < 0.8
    labels = torch.randint(0, 2, (B, G), generator=g)
    cand = torch.rand(B, N, generator=g) < 0.7
    cand[-1] = False  # an image without candidates
    valid &= cand.any(1, keepdim=True)
    c = PRI.points[None].expand(B, N, 2)
    half = (torch.rand(B, N, 2, generator=g) * 24).round() / 2 + 2
    pred = torch.cat([(c - half).round(), (c + half).round()], -1)
    copy = torch.rand(B, N, generator=g) < 0.4  # rounded jittered copies of a GT of the image: k > 1
    jit = boxes.gather(1, torch.randint(0, G, (B, N, 1), generator=g).expand(B, N, 4))
    jit = jit + torch.randint(-2, 3, (B, N, 4), generator=g)
    pred = torch.where(copy[..., None], torch.cat([jit[..., :2], torch.maximum(jit[..., 2:], jit[..., :2] + 1)], -1), pred)
    T = (torch.randint(0, 6, (B, 2, N), generator=g) * 0.25).masked_fill(~cand[:, None], math.inf)
    return make_pc(boxes, labels, valid, cand, pred, T, bounds, window, near)


def make_pc(boxes, labels, valid, cand, pred, T, bounds="exact", window=True, near=False) -> dk.PairCosts:
    """The PairCosts of :func:`synthetic` for explicit tensors (``T`` ``(B, C, N)``, inf off the
    candidates)."""
    B, G = labels.shape
    C, N = T.shape[1:]
    lab = labels.reshape(-1)
    bx = boxes.reshape(-1, 4)
    px, py = PRI.points[:, 0], PRI.points[:, 1]

    def inside(rows, n):
        e = bx[rows]
        return (px[n] > e[..., 0]) & (py[n] > e[..., 1]) & (e[..., 2] > px[n]) & (e[..., 3] > py[n])

    def cost(rows, n, iou, in_window):
        base = T.reshape(-1)[(torch.div(rows, G, rounding_mode="floor") * C + lab[rows]) * N + n] + 2 * (1 - iou)
        return base if in_window else torch.where(inside(rows, n), base, base + 10)

    if near == "centre":  # some overlapping pairs outside the box
        def near(rows, n):
            e = bx[rows]
            return ((px[n] - (e[..., 0] + e[..., 2]) / 2).abs() < 10) & ~inside(rows, n)

    minT = T.amin(2).gather(1, labels)
    if window:  # tier 1 leaves out pairs outside the box (any IoU), tier 2 those with IoU 0
        bound, bound0 = minT + 10, minT + 12
    else:  # tier 1 (all overlapping pairs) leaves out the pairs with IoU 0
        bound = bound0 = minT + 2
    if bounds != "exact":
        bound = torch.full_like(minT, -math.inf)
    if bounds == "dense":
        bound0 = torch.full_like(minT, -math.inf)
    edges = [(boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3])] * 2
    return dk.PairCosts(gt_boxes=boxes, gt_valid=valid, pred_boxes=pred, candidates=cand, cost=cost,
                        bound=bound, bound_zero_iou=bound0,
                        window=(lambda sl: dk.grid_window(PRI, [tuple(x[:, sl] for x in e) for e in edges], valid[:, sl]))
                        if window else None, near=near)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["window", "window+near", "tier2", "dense", "overlaps", "overlaps+dense"])
def test_select_matches_dense_reference(seed, mode):
    kw = {"window": dict(), "window+near": dict(near="centre"), "tier2": dict(bounds="tier2"),
          "dense": dict(bounds="dense"), "overlaps": dict(window=False, near=True),
          "overlaps+dense": dict(window=False, near=True, bounds="dense")}[mode]
    pc = synthetic(seed, **kw)
    B, G = pc.gt_valid.shape
    N = PRI.num_priors
    cost, iou = dense_of(pc)
    ref = dense_dynamic_k(cost, iou, pc.gt_valid, pc.candidates, 4)
    for max_pairs in (10**6, 1):
        got = dk.select_dynamic_k(pc, 4, gt_chunks(B, G, N, max_pairs), max_pairs)
        assert torch.equal(got, ref), (mode, max_pairs)


@pytest.mark.parametrize("seed", range(3))
def test_dense_chunks_match_dense_reference(seed, monkeypatch):
    # chunks whose boxes mostly overlap are evaluated densely: force it for every chunk
    monkeypatch.setattr(dk, "DENSE_SHARE", 0.0)
    for kw in (dict(), dict(window=False, near=True)):
        pc = synthetic(seed, **kw)
        B, G = pc.gt_valid.shape
        cost, iou = dense_of(pc)
        ref = dense_dynamic_k(cost, iou, pc.gt_valid, pc.candidates, 4)
        for max_pairs in (10**6, 1):
            assert torch.equal(dk.select_dynamic_k(pc, 4, gt_chunks(B, G, PRI.num_priors, max_pairs), max_pairs), ref)


def test_synthetic_problems_have_ties_and_conflicts():
    # the reference test above is only meaningful if its inputs exercise ties, k > 1 and priors
    # chosen by several GTs
    pos = conflicts = big_k = 0
    for seed in range(5):
        pc = synthetic(seed)
        cost, iou = dense_of(pc)
        finite = cost[torch.isfinite(cost)]
        assert finite.unique().numel() < finite.numel() / 2
        pos += int((dense_dynamic_k(cost, iou, pc.gt_valid, pc.candidates, 4) >= 0).sum())
        top = iou.masked_fill(~pc.candidates[:, None], 0).topk(4, dim=-1).values.sum(-1)
        big_k += int(((top >= 2) & pc.gt_valid).sum())
        # GTs of one image whose cheapest candidate is the same prior
        first = cost.masked_fill(~pc.gt_valid[..., None], math.inf).argmin(-1)
        for b in range(first.shape[0]):
            v = first[b][pc.gt_valid[b]]
            conflicts += len(v) - len(v.unique())
    assert pos > 30 and big_k > 5 and conflicts > 3


def test_conflict_goes_to_a_gt_that_did_not_evaluate_the_prior():
    # GTs 0 and 1 contain no prior and overlap no prediction: each takes its cheapest candidate
    # over all priors (tier 3), both prior 0 (cost 1 + 2 + 10). GT 2 (class 1) certifies its choice
    # inside its box (tier 1) and never evaluates prior 0, where it is the cheapest GT (0 + 2 + 10):
    # prior 0 goes to GT 2, found by evaluating every GT at the prior.
    N = PRI.num_priors
    boxes = torch.tensor([[[45.5, 45.5, 46.5, 46.5], [44.5, 1.0, 45.5, 2.0], [8.0, 8.0, 30.0, 30.0]]])
    labels = torch.tensor([[0, 0, 1]])
    T = torch.full((1, 2, N), 5.0)
    T[0, 0, 0], T[0, 1, :], T[0, 1, 0] = 1.0, 3.0, 0.0
    pred = torch.cat([PRI.points - 1, PRI.points + 1], -1)[None]
    pc = make_pc(boxes, labels, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, N, dtype=torch.bool), pred, T)
    got = dk.select_dynamic_k(pc, 4, [slice(0, 3)], 10**6)
    cost, iou = dense_of(pc)
    assert torch.equal(got, dense_dynamic_k(cost, iou, pc.gt_valid, pc.candidates, 4))
    assert got[0, 0] == 2 and (got[0] == 2).sum() == 2  # prior 0 and GT 2's own choice
    assert not (got[0] == 0).any() and not (got[0] == 1).any()


# -- SimOTA and DSL end to end: the sparse selection vs the dense rule on their own costs ---------
def spy_on(module, monkeypatch) -> dict:
    seen = {}
    real = dk.select_dynamic_k

    def spy(pc, q, chunks, max_pairs):
        seen.update(pc=pc, q=q)
        return real(pc, q, chunks, max_pairs)

    monkeypatch.setattr(module, "select_dynamic_k", spy)
    return seen


def check_against_dense(assigner, module, monkeypatch, pri, gt, pred, scores):
    seen = spy_on(module, monkeypatch)
    res = assigner(pri, gt, pred_boxes=pred, pred_scores=scores)
    res.validate(gt)
    if "pc" not in seen:  # no GT or no prior
        assert not res.positive.any()
        return res
    pc = seen["pc"]
    cost, iou = dense_of(pc)
    cost = cost.masked_fill(~pc.candidates[:, None, :], math.inf)
    ref = dense_dynamic_k(cost, iou, pc.gt_valid, pc.candidates, seen["q"])
    assert torch.equal(res.gt_index, ref)
    return res


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("make", [SimOTAAssigner, SimOTAAssigner.yolox, DynamicSoftLabelAssigner])
def test_assigners_match_dense_rule(seed, make, monkeypatch):
    pri, gt, pred, scores = random_problem(seed, B=2, G=6)
    if make is DynamicSoftLabelAssigner:
        scores = torch.logit(scores)
    module = dsl_module if make is DynamicSoftLabelAssigner else simota_module
    res = check_against_dense(make(), module, monkeypatch, pri, gt, pred, scores)
    assert res.positive.sum() > 10


@st.composite
def tie_problems(draw):
    """Random problems on PRI48-like priors with coarse (tie-prone) boxes and scores."""
    gt, pred, g, C = draw_problem(draw, gt_side_scales=[0.0, 0.3, 1.0])
    B, N = pred.shape[:2]
    pred = (pred / 4).round() * 4
    levels = draw(st.sampled_from([4, 2, 1]))  # how many distinct score values
    scores = torch.randint(1, levels + 1, (B, N, C), generator=g).float() / (levels + 1)
    return gt, pred, scores


@settings(max_examples=50, deadline=None)
@given(tie_problems(), st.sampled_from(["mmdet", "yolox", "dsl"]), st.sampled_from([2**25, 1]), st.booleans())
def test_property_assigners_match_dense_rule(problem, kind, max_pairs, sync_free):
    # the CPU's sparse selection and the accelerators' sync-free one (forced here) alike
    gt, pred, scores = problem
    pri = make_priors((48, 48), strides=(8, 16))
    if kind == "dsl":
        a, module, scores = DynamicSoftLabelAssigner(max_pairs=max_pairs), dsl_module, torch.logit(scores)
    else:
        a = SimOTAAssigner(max_pairs=max_pairs) if kind == "mmdet" else SimOTAAssigner.yolox(max_pairs=max_pairs)
        module = simota_module
    with pytest.MonkeyPatch.context() as mp:
        if sync_free:
            mp.setattr(devices, "sync_free", lambda device: True)
        check_against_dense(a, module, mp, pri, gt, pred, scores)


def test_non_grid_priors_and_anchors_per_location():
    # the central window on levels without a grid layout (dense test) and with 2 anchors per cell
    pri, gt, pred, scores = random_problem(4, B=2, G=5)
    flat = Priors.from_tensors(pri.points, pri.num_level_priors, pri.level_strides)
    a = SimOTAAssigner()(pri, gt, pred_boxes=pred, pred_scores=scores)
    b = SimOTAAssigner()(flat, gt, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(a.gt_index, b.gt_index)
    anchors = make_priors((64, 64), strides=(8, 16), anchors=[[(8, 8), (16, 16)], [(24, 24), (48, 48)]])
    N = anchors.num_priors
    g = torch.Generator().manual_seed(1)
    gt2 = GroundTruth(torch.tensor([[[4.0, 4.0, 30.0, 26.0], [30.0, 20.0, 60.0, 60.0]]]), torch.tensor([[0, 0]]),
                      torch.tensor([[True, True]]))
    pred2 = torch.cat([anchors.points - 6, anchors.points + 6], -1)[None] + torch.rand(1, N, 4, generator=g)
    sc = torch.rand(1, N, 1, generator=g)
    flat2 = Priors.from_tensors(anchors.points, anchors.num_level_priors, anchors.level_strides)
    r1 = SimOTAAssigner()(anchors, gt2, pred_boxes=pred2, pred_scores=sc)
    r2 = SimOTAAssigner()(flat2, gt2, pred_boxes=pred2, pred_scores=sc)
    assert torch.equal(r1.gt_index, r2.gt_index) and r1.positive.any()


def test_many_gts_chunked_and_linear_memory():
    # 40 GTs per image on a 128 px grid: identical under any chunking, and no (B, G, N) buffer kept
    g = torch.Generator().manual_seed(3)
    pri = make_priors((128, 128))
    B, G, N = 2, 40, pri.num_priors
    xy = torch.rand(B, G, 2, generator=g) * 110
    boxes = torch.cat([xy, xy + torch.rand(B, G, 2, generator=g) * 30 + 2], -1)
    gt = GroundTruth(boxes, torch.randint(0, 3, (B, G), generator=g), torch.rand(B, G, generator=g) < 0.9)
    c = pri.points[None].expand(B, N, 2)
    pred = torch.cat([c - 6, c + 6], -1) + torch.randn(B, N, 4, generator=g)
    scores = torch.rand(B, N, 3, generator=g)
    for make in (SimOTAAssigner, DynamicSoftLabelAssigner):
        full = make()(pri, gt, pred_boxes=pred, pred_scores=scores)
        for mp in (1, B * N * 7):
            assert torch.equal(make(max_pairs=mp)(pri, gt, pred_boxes=pred, pred_scores=scores).gt_index, full.gt_index)


@pytest.mark.parametrize("make", [SimOTAAssigner, DynamicSoftLabelAssigner])
def test_padded_rows_may_hold_non_finite_boxes(make):
    pri, gt, pred, scores = random_problem(6, B=2, G=4)
    boxes = gt.boxes.clone()
    pad = ~gt.mask
    assert pad.any()
    junk = torch.tensor([math.nan, -math.inf, math.inf, 1e30])
    boxes[pad] = junk
    junked = GroundTruth(boxes, gt.labels, gt.mask)
    a = make()(pri, gt, pred_boxes=pred, pred_scores=scores)
    b = make()(pri, junked, pred_boxes=pred, pred_scores=scores)
    assert torch.equal(a.gt_index, b.gt_index) and torch.equal(a.quality, b.quality)


@pytest.mark.parametrize("make", [SimOTAAssigner, DynamicSoftLabelAssigner])
def test_non_finite_predictions_count_as_iou_zero(make, monkeypatch):
    pri, gt, pred, scores = random_problem(7, B=2, G=5)
    pred = pred.clone()
    pred[0, ::7, 0] = math.nan
    pred[1, ::5, 2] = math.inf
    if make is DynamicSoftLabelAssigner:
        scores = torch.logit(scores)
    module = dsl_module if make is DynamicSoftLabelAssigner else simota_module
    res = check_against_dense(make(), module, monkeypatch, pri, gt, pred, scores)
    assert res.positive.any()


@pytest.mark.parametrize("make", [SimOTAAssigner, DynamicSoftLabelAssigner])
def test_huge_predictions_take_the_dense_path(make, monkeypatch):
    # every predicted box covers the image: every pair overlaps, the chunk is evaluated densely
    pri, gt, pred, scores = random_problem(8, B=2, G=5)
    boxes = gt.boxes.clone()
    boxes[:, 0] = torch.tensor([0.0, 0.0, 96.0, 96.0])  # every prior a candidate (DSL: inside a box)
    gt = GroundTruth(boxes, gt.labels, gt.mask | (torch.arange(gt.max_boxes) == 0))
    c = pri.points[None].expand(2, -1, 2)
    pred = torch.cat([c - 200, c + 200 + torch.rand(c.shape, generator=torch.Generator().manual_seed(0))], -1)
    if make is DynamicSoftLabelAssigner:
        scores = torch.logit(scores)
    module = dsl_module if make is DynamicSoftLabelAssigner else simota_module
    calls = []
    real = dk._Selection._all_priors
    monkeypatch.setattr(dk._Selection, "_all_priors", lambda self, rows, top=None: (calls.append(top is not None),
                                                                                      real(self, rows, top))[1])
    check_against_dense(make(), module, monkeypatch, pri, gt, pred, scores)
    assert calls and calls[0]


@pytest.mark.parametrize("make", [SimOTAAssigner, SimOTAAssigner.yolox, DynamicSoftLabelAssigner])
def test_cost_of_all_priors_equals_the_pair_cost(make, monkeypatch):
    pri, gt, pred, scores = random_problem(9, B=2, G=5, C=3)
    module = dsl_module if make is DynamicSoftLabelAssigner else simota_module
    seen = spy_on(module, monkeypatch)
    make()(pri, gt, pred_boxes=pred, pred_scores=scores)
    pc = seen["pc"]
    rows = pc.gt_valid.reshape(-1).nonzero().squeeze(1)
    N = pri.num_priors
    iou = torch.rand(rows.numel(), N)
    iou[:, ::3] = 0
    a = pc.cost_all(rows, iou)
    b = pc.cost(rows[:, None], torch.arange(N), iou, False)
    ok = pc.candidates.reshape(-1, N)[torch.div(rows, gt.max_boxes, rounding_mode="floor")]
    assert torch.equal(a[ok], b[ok])


# -- the accelerator path: every pair evaluated, no host synchronisation ---------------------------
def test_no_host_sync_guard_catches_a_read_back():
    # the guard itself must be able to fail
    x = torch.tensor([0.0, 1.0])
    for read in (lambda: x.nonzero(), lambda: bool(x.any()), lambda: x.sum().item(), lambda: x.tolist(),
                 lambda: int(x[1]), lambda: torch.nonzero(x)):
        with NoHostSync(), pytest.raises(AssertionError, match="host synchronisation"):
            read()
    assert x.nonzero().tolist() == [[1]]  # restored


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["window", "window+near", "tier2", "dense", "overlaps"])
def test_sync_free_path_matches_dense_reference_without_host_sync(seed, mode, monkeypatch):
    kw = {"window": dict(), "window+near": dict(near="centre"), "tier2": dict(bounds="tier2"),
          "dense": dict(bounds="dense"), "overlaps": dict(window=False, near=True)}[mode]
    pc = synthetic(seed, **kw)
    B, G = pc.gt_valid.shape
    N = PRI.num_priors
    cost, iou = dense_of(pc)
    ref = dense_dynamic_k(cost, iou, pc.gt_valid, pc.candidates, 4)
    monkeypatch.setattr(devices, "sync_free", lambda device: True)
    for max_pairs in (10**6, 1):
        chunks = gt_chunks(B, G, N, max_pairs)
        with NoHostSync():
            got = dk.select_dynamic_k(pc, 4, chunks, max_pairs)
        assert torch.equal(got, ref), (mode, max_pairs)


def test_sync_free_is_chosen_by_device():
    assert not devices.sync_free(torch.device("cpu"))
    assert devices.sync_free(torch.device("cuda", 0)) and devices.sync_free(torch.device("mps"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [SimOTAAssigner, SimOTAAssigner.yolox, DynamicSoftLabelAssigner])
def test_assigners_sync_free_equal_sparse(make, dtype, monkeypatch):
    # SimOTA / DSL end to end (float64: the non-keyed running minimum): the accelerator path gives
    # the CPU path's result, with padded rows holding junk and some non-finite predictions
    for seed in range(3):
        pri, gt, pred, scores = random_problem(10 + seed, B=3, G=6)
        boxes = gt.boxes.clone()
        boxes[~gt.mask] = torch.tensor([math.nan, -math.inf, math.inf, 1e30])
        gt = GroundTruth(boxes.to(dtype), gt.labels, gt.mask)
        pred = pred.clone().to(dtype)
        pred[0, ::9, 1] = math.nan
        scores = scores.to(dtype)
        if make is DynamicSoftLabelAssigner:
            scores = torch.logit(scores)
        for mp in (2**25, 64):
            sparse = make(max_pairs=mp)(pri, gt, pred_boxes=pred, pred_scores=scores)
            with pytest.MonkeyPatch.context() as m:
                m.setattr(devices, "sync_free", lambda device: True)
                dense = make(max_pairs=mp)(pri, gt, pred_boxes=pred, pred_scores=scores)
            assert sparse.positive.sum() > 5
            assert torch.equal(dense.gt_index, sparse.gt_index), (seed, mp)
            torch.testing.assert_close(dense.quality, sparse.quality, rtol=0, atol=0)


@pytest.mark.parametrize("make", [SimOTAAssigner, DynamicSoftLabelAssigner, TaskAlignedAssigner,
                                  TaskAlignedAssigner.ultralytics])
def test_non_finite_predicted_boxes_are_empty_boxes(make):
    # a diverging model: NaN / inf coordinates behave exactly as the empty box [0, 0, 0, 0] (IoU 0),
    # so no target or weight is NaN (before: NaN soft targets for SimOTA and YOLOv8's TAL)
    pri, gt, pred, scores = random_problem(10, B=3, G=6)
    bad = pred.clone()
    bad[:, ::3, 1] = math.nan
    bad[:, 1::5, 2] = math.inf
    bad[:, 2::7, 0] = -math.inf
    empty = torch.where(torch.isfinite(bad).all(-1, keepdim=True), bad, 0.0)
    a = make()(pri, gt, pred_boxes=bad, pred_scores=scores)
    b = make()(pri, gt, pred_boxes=empty, pred_scores=scores)
    assert a.positive.sum() > 5
    for name in ("gt_index", "quality", "box_weight", "cls_weight"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for t in (a.quality, a.box_weight, *[v for v in a.extras.values() if v.is_floating_point()]):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("make", [SimOTAAssigner, SimOTAAssigner.yolox, DynamicSoftLabelAssigner,
                                  TaskAlignedAssigner, TaskAlignedAssigner.ultralytics])
def test_whole_call_is_sync_free_on_accelerators(make, monkeypatch):
    # the only read-back left on an accelerator is the GT label range check (a clear error for bad
    # labels, one scalar per call); everything else runs without host synchronisation
    pri, gt, pred, scores = random_problem(11, B=3, G=6)
    if make is DynamicSoftLabelAssigner:
        scores = torch.logit(scores)
    expected = make()(pri, gt, pred_boxes=pred, pred_scores=scores)
    monkeypatch.setattr(devices, "sync_free", lambda device: True)
    with NoHostSync(allowed=("check_gt_labels",)):
        got = make()(pri, gt, pred_boxes=pred, pred_scores=scores)
    assert expected.positive.sum() > 5
    assert torch.equal(got.gt_index, expected.gt_index) and torch.equal(got.quality, expected.quality)
