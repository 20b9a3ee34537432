"""Test helpers for the prediction-aware assigners (SimOTA, DSL, TAL): random padded problems and
straightforward per-image reference implementations ("oracles") that loop over images and GTs the
way the published code does -- slow, obvious, and independent of the batched implementation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor
from torchvision.ops import box_iou

from assignlab.core import GroundTruth, Priors, make_priors

#: small two-level priors of the property tests
PRI48 = make_priors((48, 48), strides=(8, 16))


def points_priors(points, strides, nlp=None) -> Priors:
    p = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
    nlp = nlp or [len(p)]
    return Priors.from_tensors(p, nlp, strides)


def gt_one(boxes, labels) -> GroundTruth:
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(1, -1, 4)
    lab = torch.as_tensor(labels, dtype=torch.long).reshape(1, -1)
    return GroundTruth(b, lab, torch.ones(lab.shape, dtype=torch.bool))


def draw_problem(draw, gt_side_scales: list[float]) -> tuple[GroundTruth, Tensor, torch.Generator, int]:
    """Hypothesis draw (call inside an ``st.composite``) of a random padded problem on
    :data:`PRI48`: ``(gt, pred_boxes, generator, C)`` with B in 1..2, G in 0..4, C in 1..3; GT
    sides ``rand * 30 * (one of gt_side_scales)`` (0: zero-area GTs, masked out), ~20 % of the GT
    rows masked out; predicted boxes centred on the priors, all zero-area half of the time. The
    returned generator continues the stream, for the caller's scores."""
    B, G, C = draw(st.integers(1, 2)), draw(st.integers(0, 4)), draw(st.integers(1, 3))
    N = PRI48.num_priors
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    xy = torch.rand(B, G, 2, generator=g) * 44
    wh = torch.rand(B, G, 2, generator=g) * 30 * draw(st.sampled_from(gt_side_scales))
    boxes = torch.cat([xy, xy + wh], -1)
    mask = (torch.rand(B, G, generator=g) < 0.8) & (wh > 0).all(-1)
    labels = torch.randint(0, C, (B, G), generator=g)
    c = PRI48.points[None].expand(B, N, 2)
    pw = torch.rand(B, N, 2, generator=g) * 20 * draw(st.sampled_from([0.0, 1.0]))  # 0: zero-area predictions
    pred = torch.cat([c - pw / 2, c + pw / 2], -1)
    return GroundTruth(boxes, labels, mask), pred, g, C


def random_problem(seed: int, B: int = 3, G: int = 6, C: int = 4, size: int = 96, pad_rows: int = 2):
    """A padded batch on make_priors((size, size)): per image 0..G real GTs (some masked-out rows
    in between), predicted boxes near the priors, half of them jittered copies of a GT, and scores
    boosted for the GT class near a GT."""
    g = torch.Generator().manual_seed(seed)
    pri = make_priors((size, size))
    N = pri.num_priors
    counts = torch.randint(0, G + 1, (B,), generator=g)
    counts[0] = G
    Gp = G + pad_rows
    boxes = torch.zeros(B, Gp, 4)
    labels = torch.randint(0, C, (B, Gp), generator=g)
    mask = torch.zeros(B, Gp, dtype=torch.bool)
    for b in range(B):
        n = int(counts[b])
        xy = torch.rand(n, 2, generator=g) * (size - 8)
        wh = torch.rand(n, 2, generator=g) * (size / 2) + 3
        bx = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        rows = torch.randperm(Gp, generator=g)[:n].sort().values
        boxes[b, rows] = bx
        mask[b, rows] = True
    gt = GroundTruth(boxes, labels, mask)
    centres = pri.points[None].expand(B, N, 2)
    half = (torch.rand(B, N, 2, generator=g) * 3 + 0.5) * pri.strides[None, :, None]
    pred = torch.cat([centres - half, centres + half], -1)
    # half of the priors predict a jittered copy of a random real GT of their image
    for b in range(B):
        real = mask[b].nonzero()[:, 0]
        if len(real) == 0:
            continue
        pick = real[torch.randint(0, len(real), (N,), generator=g)]
        jit = boxes[b, pick] + torch.randn(N, 4, generator=g) * 2
        jit = torch.stack([jit[:, 0], jit[:, 1], torch.maximum(jit[:, 2], jit[:, 0] + 1),
                           torch.maximum(jit[:, 3], jit[:, 1] + 1)], 1)
        use = torch.rand(N, generator=g) < 0.5
        pred[b, use] = jit[use]
    scores = torch.rand(B, N, C, generator=g) * 0.3 + 0.01
    for b in range(B):
        for j in mask[b].nonzero()[:, 0].tolist():
            x1, y1, x2, y2 = boxes[b, j].tolist()
            near = ((pri.points[:, 0] > x1) & (pri.points[:, 0] < x2) & (pri.points[:, 1] > y1) & (pri.points[:, 1] < y2))
            boost = torch.rand(N, generator=g) * 0.6 + 0.3
            scores[b, near, labels[b, j]] = torch.maximum(scores[b, near, labels[b, j]], boost[near])
    return pri, gt, pred, scores


def image_view(gt: GroundTruth, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real GT rows of image b: (rows, boxes, labels)."""
    rows = gt.mask[b].nonzero()[:, 0]
    return rows, gt.boxes[b, rows], gt.labels[b, rows]


def _dynamic_k(cost, ious, q):
    """mmdet's dynamic_k_matching on (V, G) matrices; returns (V,) matched GT (-1 none)."""
    V, G = cost.shape
    match = torch.zeros(V, G, dtype=torch.bool)
    top = torch.topk(ious, min(q, V), dim=0).values
    ks = torch.clamp(top.sum(0).int(), min=1)
    for j in range(G):
        match[torch.topk(cost[:, j], int(ks[j]), largest=False).indices, j] = True
    multi = match.sum(1) > 1
    if multi.any():
        arg = cost[multi].argmin(1)
        match[multi] = False
        match[multi.nonzero()[:, 0], arg] = True
    out = torch.full((V,), -1, dtype=torch.long)
    hit = match.any(1)
    out[hit] = match[hit].float().argmax(1)
    return out


def oracle_simota(priors, gt, pred, scores, center_radius=2.5, q=10, iou_weight=3.0, cls_weight=1.0,
                  yolox=False, penalty=None) -> torch.Tensor:
    """(B, N) gt_index of SimOTA, image by image (mmdet or YOLOX rules; ``penalty`` None: the
    flavour's)."""
    B, N = pred.shape[:2]
    out = torch.full((B, N), -1, dtype=torch.long)
    x, y, st = priors.points[:, 0:1], priors.points[:, 1:2], priors.strides[:, None]
    for b in range(B):
        rows, bx, lab = image_view(gt, b)
        if len(rows) == 0:
            continue
        in_box = (x > bx[:, 0]) & (y > bx[:, 1]) & (bx[:, 2] > x) & (bx[:, 3] > y)
        cx, cy = (bx[:, 0] + bx[:, 2]) / 2, (bx[:, 1] + bx[:, 3]) / 2
        r = center_radius * st
        in_ctr = (x > cx - r) & (y > cy - r) & (cx + r > x) & (cy + r > y)
        valid = in_ctr.any(1) if yolox else (in_box.any(1) | in_ctr.any(1))
        if not valid.any():
            continue
        central = in_ctr[valid] if yolox else (in_box & in_ctr)[valid]
        ious = box_iou(pred[b, valid], bx)
        V, G = ious.shape
        onehot = F.one_hot(lab, scores.shape[-1]).float()[None].expand(V, G, -1)
        cls = F.binary_cross_entropy(scores[b, valid][:, None].expand(V, G, -1), onehot, reduction="none").sum(-1)
        eps, pen = (1e-8, 1e6) if yolox else (1e-7, 1e5)
        pen = pen if penalty is None else penalty
        cost = cls * cls_weight + (-torch.log(ious + eps)) * iou_weight + (~central) * pen
        m = _dynamic_k(cost, ious, q)
        vi = valid.nonzero()[:, 0]
        out[b, vi] = torch.where(m >= 0, rows[m.clamp(min=0)], -1)
    return out


def oracle_dsl(priors, gt, pred, logits, soft_center_radius=3.0, q=13, iou_weight=3.0) -> torch.Tensor:
    """(B, N) gt_index of the dynamic soft-label assigner, image by image (scores are logits)."""
    B, N = pred.shape[:2]
    out = torch.full((B, N), -1, dtype=torch.long)
    x, y = priors.points[:, 0:1], priors.points[:, 1:2]
    for b in range(B):
        rows, bx, lab = image_view(gt, b)
        if len(rows) == 0:
            continue
        valid = ((x > bx[:, 0]) & (y > bx[:, 1]) & (bx[:, 2] > x) & (bx[:, 3] > y)).any(1)
        if not valid.any():
            continue
        centre = (bx[:, :2] + bx[:, 2:]) / 2
        dist = (priors.points[valid][:, None] - centre[None]).pow(2).sum(-1).sqrt() / priors.strides[valid][:, None]
        ious = box_iou(pred[b, valid], bx)
        V, G = ious.shape
        soft = F.one_hot(lab, logits.shape[-1]).float()[None] * ious[..., None]
        s = logits[b, valid][:, None].expand(V, G, -1)
        cls = (F.binary_cross_entropy_with_logits(s, soft, reduction="none") * (soft - s.sigmoid()).abs().pow(2)).sum(-1)
        cost = cls + (-torch.log(ious + 1e-7)) * iou_weight + torch.pow(10, dist - soft_center_radius)
        m = _dynamic_k(cost, ious, q)
        vi = valid.nonzero()[:, 0]
        out[b, vi] = torch.where(m >= 0, rows[m.clamp(min=0)], -1)
    return out


def oracle_tal_mmdet(priors, gt, pred, scores, topk=13, alpha=1.0, beta=6.0):
    """(gt_index, metrics) (B, N) of mmdet's TaskAlignedAssigner, image by image."""
    B, N = pred.shape[:2]
    gi = torch.full((B, N), -1, dtype=torch.long)
    met = torch.zeros(B, N)
    cx, cy = priors.points[:, 0], priors.points[:, 1]
    for b in range(B):
        rows, bx, lab = image_view(gt, b)
        G = len(rows)
        if G == 0:
            continue
        ov = box_iou(pred[b], bx)  # (N, G)
        t = scores[b][:, lab] ** alpha * ov**beta
        k = min(topk, N)
        best = torch.full((N,), -math.inf)
        for j in range(G):
            tv, idx = t[:, j].topk(k)
            for v, n in zip(tv.tolist(), idx.tolist()):
                d = min(cx[n] - bx[j, 0], cy[n] - bx[j, 1], bx[j, 2] - cx[n], bx[j, 3] - cy[n])
                if v > 0 and d > 0.01 and ov[n, j] > best[n]:
                    best[n] = ov[n, j]
                    gi[b, n] = rows[j]
                    met[b, n] = t[n, j]
    return gi, met


def ciou(b1, b2, eps=1e-7):
    """ultralytics bbox_iou(CIoU=True) of aligned (..., 4) boxes."""
    w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1] + eps
    w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1] + eps
    inter = (torch.minimum(b1[..., 2], b2[..., 2]) - torch.maximum(b1[..., 0], b2[..., 0])).clamp(0) * (
        torch.minimum(b1[..., 3], b2[..., 3]) - torch.maximum(b1[..., 1], b2[..., 1])).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.maximum(b1[..., 2], b2[..., 2]) - torch.minimum(b1[..., 0], b2[..., 0])
    ch = torch.maximum(b1[..., 3], b2[..., 3]) - torch.minimum(b1[..., 1], b2[..., 1])
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2[..., 0] + b2[..., 2] - b1[..., 0] - b1[..., 2]) ** 2 + (b2[..., 1] + b2[..., 3] - b1[..., 1] - b1[..., 3]) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    a = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * a)


def oracle_tal_ultralytics(priors, gt, pred, scores, topk=10, alpha=0.5, beta=6.0, side=16.0, eps=1e-9):
    """(gt_index, quality) (B, N) of ultralytics' TaskAlignedAssigner, image by image."""
    B, N = pred.shape[:2]
    gi = torch.full((B, N), -1, dtype=torch.long)
    q = torch.zeros(B, N)
    px, py = priors.points[:, 0], priors.points[:, 1]
    for b in range(B):
        rows, bx, lab = image_view(gt, b)
        G = len(rows)
        if G == 0:
            continue
        c = (bx[:, :2] + bx[:, 2:]) / 2
        wh = bx[:, 2:] - bx[:, :2]
        wh = torch.where(wh < side, torch.full_like(wh, side), wh)
        fb = torch.cat([c - wh / 2, c + wh / 2], 1)
        inside = torch.stack([px[None] - fb[:, 0:1], py[None] - fb[:, 1:2], fb[:, 2:3] - px[None], fb[:, 3:4] - py[None]]).amin(0) > 1e-9
        u = torch.where(inside, ciou(bx[:, None], pred[b][None]).clamp(0), 0.0)  # (G, N)
        s = torch.where(inside, scores[b][:, lab].T, 0.0)
        t = s.pow(alpha) * u.pow(beta)
        pos = torch.zeros(G, N, dtype=torch.bool)
        for j in range(G):
            ranked = torch.where(inside[j], t[j], -1.0)
            idx = ranked.topk(min(topk, N)).indices
            pos[j, idx] = inside[j, idx]
        cnt = pos.sum(0)
        best = u.argmax(0)
        for n in range(N):
            if cnt[n] > 1:
                pos[:, n] = False
                pos[best[n], n] = True
        tm = (t * pos).amax(1, keepdim=True)
        um = (u * pos).amax(1, keepdim=True)
        norm = (t * pos * um / (tm + eps)).amax(0)
        hit = pos.any(0)
        gi[b, hit] = rows[pos.float().argmax(0)[hit]]
        q[b] = torch.where(hit, norm, 0.0)
    return gi, q
