"""OHEM selection and normalisation modes: hand-computed values and a brute-force comparison."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assignlab.core import Assignment
from assignlab.losses import OHEM, LossBalanceMonitor, Normalizer, ohem_weights, raw_normalizer


def test_ohem_worked_example():
    loss = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.2, 0.3]])
    pos = torch.tensor([[False, True, False, False, False, False]])
    ign = torch.tensor([[True, False, False, False, False, False]])
    w = ohem_weights(loss, pos, ign, neg_pos_ratio=3)
    assert w.tolist() == [[0, 1, 1, 1, 0, 1]]


def test_ohem_batch_min_negatives_and_ties():
    loss = torch.tensor([
        [0.5, 0.5, 0.5, 0.5, 0.1],   # no positive: min_negatives = 2 -> first two of the tie
        [0.2, 0.9, 0.4, 0.8, 0.1],   # positives 1, 3; ratio 1 -> the 2 hardest of negatives 0, 2, 4
    ])
    pos = torch.tensor([[False] * 5, [False, True, False, True, False]])
    w = ohem_weights(loss, pos, None, neg_pos_ratio=1, min_negatives=2)
    # image 0: negatives all, tie at 0.5 -> lowest indices 0, 1
    # image 1: negatives 0 (0.2), 2 (0.4), 4 (0.1) -> keep 2 and 0; positives 1, 3
    assert w.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]
    # k is capped by the number of negatives
    w = ohem_weights(loss, pos, None, neg_pos_ratio=10)
    assert w[1].tolist() == [1, 1, 1, 1, 1] and w[0].sum() == 0
    # a fractional ratio floors: 2 * 0.75 = 1.5 -> 1 negative
    w = ohem_weights(loss, pos, None, neg_pos_ratio=0.75)
    assert w[1].tolist() == [0, 1, 1, 1, 0]
    with pytest.raises(ValueError):
        OHEM(neg_pos_ratio=-1)


def _brute(loss, pos, ign, ratio, min_neg):
    out = torch.zeros_like(loss)
    for b in range(loss.shape[0]):
        neg = [(-float(loss[b, n]), n) for n in range(loss.shape[1]) if not pos[b, n] and not ign[b, n]]
        k = min(max(math.floor(int(pos[b].sum()) * ratio), min_neg), len(neg))
        for _, n in sorted(neg)[:k]:
            out[b, n] = 1
        out[b][pos[b]] = 1
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(0, 10_000), st.sampled_from([0.0, 1.0, 2.5, 3.0]),
       st.integers(0, 4))
def test_ohem_matches_per_image_reference(B, N, seed, ratio, min_neg):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randint(0, 5, (B, N), generator=g).float()  # many ties on purpose
    pos = torch.rand(B, N, generator=g) < 0.25
    ign = (torch.rand(B, N, generator=g) < 0.2) & ~pos
    a = Assignment.from_gt_index(torch.where(pos, 0, -1), ignore=ign)
    w = OHEM(ratio, min_neg)(loss, a)
    assert torch.equal(w, _brute(loss, pos, ign, ratio, min_neg))


# ----------------------------------------------------------------------------- normalisers
def _assignment(quality):
    q = torch.tensor([quality])
    return Assignment.from_gt_index(torch.where(q > 0, 0, -1), quality=q)


def test_normalizer_modes_example():
    a = _assignment([0.9, 0.0, 0.5, 0.2, 0.0])
    assert raw_normalizer(a, "num_pos").item() == 3.0
    assert raw_normalizer(a, "target_sum").item() == pytest.approx(1.6)
    assert Normalizer("num_pos")(a).item() == 3.0
    assert Normalizer("target_sum")(a).item() == pytest.approx(1.6)
    assert Normalizer("none")(a).item() == 1.0
    low = _assignment([0.3, 0.0, 0.2])
    assert Normalizer("target_sum")(low).item() == 1.0  # max(0.5, 1)
    empty = _assignment([0.0, 0.0])
    assert Normalizer("num_pos")(empty).item() == 1.0
    with pytest.raises(ValueError, match="normalize"):
        Normalizer("batch")


def test_normalizer_ema_example():
    n = Normalizer("num_pos", ema_momentum=0.9)
    assert n(_assignment([1.0] * 3 + [0.0])).item() == 3.0  # starts at the first value
    assert n(_assignment([1.0] * 13)).item() == pytest.approx(0.9 * 3 + 0.1 * 13)  # 4.0
    n.training = False
    assert n(_assignment([1.0] * 100)).item() == pytest.approx(0.9 * 4 + 0.1 * 100)
    assert n.ema.item() == pytest.approx(4.0)  # not updated in eval mode
    n.reset()
    assert n.ema is None


def test_loss_balance_monitor():
    m = LossBalanceMonitor()
    m.update({"box": torch.tensor(1.0), "cls": torch.tensor(3.0)})
    r = m.report()
    assert r["total"] == 4.0 and r["ratio/box"] == 0.25 and r["ratio/cls"] == 0.75 and r["steps"] == 1
    m.update({"box": torch.tensor(3.0), "cls": torch.tensor(1.0)})
    r = m.report()
    assert r["box"] == 2.0 and r["cls"] == 2.0 and r["ratio/box"] == 0.5
    assert m.warnings() == []
    assert "box 2 (50%)" in m.format()
    e = LossBalanceMonitor(momentum=0.5)
    e.update({"box": 0.02, "cls": 10.0})
    e.update({"box": 0.0, "cls": 10.0})
    assert e.report()["box"] == pytest.approx(0.01)
    msgs = e.warnings()
    assert any("'cls'" in s for s in msgs) and any("'box'" in s for s in msgs)


def test_loss_balance_monitor_late_and_zero_parts():
    m = LossBalanceMonitor()
    m.update({"box": 2.0})
    m.update({"box": 4.0, "dfl": 1.0, "obj": 0.0})  # dfl first seen now; obj always 0
    r = m.report()
    assert r["box"] == 3.0 and r["dfl"] == 1.0 and r["obj"] == 0.0 and r["steps"] == 2
    assert r["ratio/dfl"] == 0.25
    assert not any("'obj'" in s for s in m.warnings())  # a part that is off is not a warning
