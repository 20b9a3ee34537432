"""Losses run without host synchronisation: a training step's assignment (accelerator paths), loss
and backward under a guard that fails on any tensor read-back (see
``tests/assigners/test_assign_sync_free.py``), for every loss preset on both head types."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from assignlab.assigners.base import call_assigner
from assignlab.core import GroundTruth, devices
from assignlab.engine.config import TrainConfig
from assignlab.engine.train import build_assigner, build_loss, build_model
from assignlab.losses import LOSS_PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "assigners"))
from assign_testutils import NoHostSync  # noqa: E402

ALLOWED = ("check_gt_labels", "_match_chunk")  # see test_assign_sync_free.py
CASES = [(loss, "anchor", "yolov5") for loss in ("yolov5", "bce", "focal")] + [
    (loss, "free", assigner) for loss in sorted(set(LOSS_PRESETS) - {"yolov5"}) for assigner in ("tal", "atss")
]


@pytest.mark.parametrize("loss,head,assigner", CASES)
def test_training_step_is_sync_free(loss, head, assigner, monkeypatch):
    cfg = TrainConfig(assigner=assigner, loss=loss, head=head, reg_max=8 if head == "free" else 0, width=0.25,
                      img=64, batch=2)
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    asg, loss_fn = build_assigner(cfg), build_loss(cfg)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 24.0], [30.0, 10.0, 62.0, 50.0], [0.0, 0.0, 0.0, 0.0]],
                          [[10.0, 12.0, 18.0, 19.0], [8.0, 30.0, 40.0, 60.0], [33.0, 2.0, 45.0, 12.0]]])
    gt = GroundTruth(boxes, torch.tensor([[0, 1, 0], [1, 0, 1]]), torch.tensor([[True, True, False], [True, True, True]]))
    monkeypatch.setattr(devices, "sync_free", lambda device: True)
    with NoHostSync(allowed=ALLOWED):
        raw = model(images)
        priors = model.priors((64, 64))
        pb, ps = model.decode(raw, priors)
        res = call_assigner(asg, priors, gt, pb, ps)
        total, parts = loss_fn(raw, pb, priors, gt, res)
        total.backward()
    assert res.positive.any()
    assert torch.isfinite(total) and total > 0 and set(parts) <= {"box", "obj", "cls", "dfl"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
