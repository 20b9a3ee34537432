"""Warmup + cosine learning rate and the EMA update, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from assignlab.engine.ema import ModelEMA
from assignlab.engine.schedule import WarmupCosineSchedule


def test_warmup_cosine_hand_values():
    s = WarmupCosineSchedule(base_lr=0.1, total_steps=10, warmup_steps=2, final_ratio=0.1, cosine=True)
    assert s(0) == pytest.approx(0.05)
    assert s(1) == pytest.approx(0.1)
    assert s(2) == pytest.approx(0.1)  # first decay step: t = 0
    # step 5: t = 3/7 -> 0.01 + 0.09 * (1 + cos(3pi/7)) / 2 = 0.0650134...
    assert s(5) == pytest.approx(0.01 + 0.09 * (1 + math.cos(3 * math.pi / 7)) / 2)
    assert s(5) == pytest.approx(0.065013, abs=1e-6)
    assert s(9) == pytest.approx(0.01)
    assert s(100) == pytest.approx(0.01)  # clamped past the end
    # monotone decay after warmup
    vals = [s(k) for k in range(2, 10)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_linear_and_no_warmup():
    s = WarmupCosineSchedule(base_lr=1.0, total_steps=5, warmup_steps=0, final_ratio=0.0, cosine=False)
    assert [s(k) for k in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_for_run():
    s = WarmupCosineSchedule.for_run(0.01, epochs=3, steps_per_epoch=4, warmup_epochs=0.5)
    assert s.total_steps == 12 and s.warmup_steps == 2
    s = WarmupCosineSchedule.for_run(0.01, epochs=1, steps_per_epoch=4, warmup_epochs=5)
    assert s.warmup_steps == 4 and s(3) == pytest.approx(0.01)


def test_bad_schedule():
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineSchedule(0.1, 0)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False)
        self.bn = nn.BatchNorm1d(1)


def test_ema_hand_values():
    m = Tiny()
    with torch.no_grad():
        m.lin.weight.fill_(1.0)
    ema = ModelEMA(m, decay=0.9, tau=0)
    with torch.no_grad():
        m.lin.weight.fill_(3.0)
    m.bn.num_batches_tracked += 5
    ema.update(m)
    assert ema.module.lin.weight.item() == pytest.approx(0.9 * 1 + 0.1 * 3)  # 1.2
    assert ema.module.bn.num_batches_tracked.item() == 5  # integer buffers copied
    ema.update(m)
    assert ema.module.lin.weight.item() == pytest.approx(0.9 * 1.2 + 0.1 * 3)  # 1.38
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_ramp_and_state():
    m = Tiny()
    with torch.no_grad():
        m.lin.weight.fill_(1.0)
    ema = ModelEMA(m, decay=0.9, tau=2)
    with torch.no_grad():
        m.lin.weight.fill_(3.0)
    ema.update(m)
    d = 0.9 * (1 - math.exp(-1 / 2))  # 0.35412
    assert d == pytest.approx(0.35412, abs=1e-5)
    assert ema.module.lin.weight.item() == pytest.approx(d * 1 + (1 - d) * 3)  # 2.29177
    e2 = ModelEMA(Tiny(), decay=0.9, tau=2)
    e2.load_state_dict(ema.state_dict())
    assert e2.updates == 1 and e2.module.lin.weight.item() == pytest.approx(ema.module.lin.weight.item())
