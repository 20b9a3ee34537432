"""On accelerators every assigner runs without host synchronisation (the brief: no host syncs in
hot paths). The CPU takes sparse paths whose sizes depend on the data; forcing the accelerator
choice (:func:`assignlab.core.devices.sync_free`) on the CPU runs the dense, fixed-size paths under
a guard that fails on any tensor read-back, and their results must equal the CPU paths'.

Documented read-backs that remain (allowed by name): the GT label range check
(``check_gt_labels``, a clear error for bad labels), CenterNet's class count when neither
``num_classes`` nor scores are given (``_num_classes``), and YOLOv5's match list, whose length
depends on the data as in YOLOv5's ``build_targets`` (``_match_chunk``)."""

from __future__ import annotations

import pytest
import torch
from assign_testutils import NoHostSync

from assignlab.assigners import ASSIGNERS, TaskAlignedAssigner
from assignlab.bench.assign import make_inputs
from assignlab.core import GroundTruth, devices

ALLOWED = ("check_gt_labels", "_num_classes", "_match_chunk", "_window_radius")

CONFIGS = [
    ("maxiou", {}), ("maxiou", {"ignore_iof_thr": 0.5}), ("maxiou", {"gt_max_assign_all": False}),
    ("maxiou", {"pos_iou_thr": 0.35, "neg_iou_thr": 0.35, "match_low_quality": False}),
    ("topk", {}), ("atss", {}), ("atss", {"ignore_iof_thr": 0.5}), ("fcos", {}), ("fcos", {"center_sampling": False}),
    ("yolov5", {}), ("yolov5", {"distance_weighting": True, "adaptive_radius": True, "dedup": "unique",
                                "recover_unmatched": True, "ignore_iou": 0.6}),
    ("hambox", {}), ("hambox", {"ignore_pred_negatives": True}), ("noisy", {}),
    ("simota", {}), ("dsl", {}), ("tal", {}), ("tal-ultralytics", {}),
    ("centernet", {}), ("centernet", {"num_classes": 1}),
]


def problem(name: str, seed: int):
    """A crowded 2-image batch (24 GTs of 4-320 px on 160 px: many overlaps and clipped boxes),
    with an ignore region in the first image and predictions for every assigner."""
    priors, gt, preds = make_inputs(name, 2, 24, size=160, seed=seed)
    ignore = torch.tensor([[[10.0, 10.0, 60.0, 50.0]], [[0.0, 0.0, 0.0, 0.0]]])
    gt = GroundTruth(gt.boxes, gt.labels, gt.mask, ignore=ignore, ignore_mask=torch.tensor([[True], [False]]))
    return priors, gt, preds


def make(name: str, opts: dict):
    if name == "tal-ultralytics":
        return TaskAlignedAssigner.ultralytics(**opts)
    return ASSIGNERS[name](**opts)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_accelerator_paths_are_sync_free_and_equal(name, opts, monkeypatch):
    for seed in range(2):
        priors, gt, preds = problem(name.split("-")[0], seed)
        expected = make(name, opts)(priors, gt, **preds)
        with monkeypatch.context() as m:
            m.setattr(devices, "sync_free", lambda device: True)
            with NoHostSync(allowed=ALLOWED):
                got = make(name, opts)(priors, gt, **preds)
        assert expected.positive.any()
        for field in ("gt_index", "positive", "ignore", "quality", "box_weight", "cls_weight"):
            a, b = getattr(got, field), getattr(expected, field)
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} {opts} seed {seed}: {field}")


def test_guard_fails_on_a_read_back_and_honours_the_allowed_list():
    x = torch.tensor([0.0, 1.0])
    for read in (lambda: x.nonzero(), lambda: bool(x.any()), lambda: x.sum().item(), lambda: x.tolist(),
                 lambda: int(x[1]), lambda: float(x[0]), lambda: torch.nonzero(x)):
        with NoHostSync(), pytest.raises(AssertionError, match="host synchronisation"):
            read()

    def check_gt_labels():  # an allowed name, anywhere up the stack
        return (lambda: x.nonzero().tolist())()

    with NoHostSync(allowed=("check_gt_labels",)):
        assert check_gt_labels() == [[1]]
    assert x.nonzero().tolist() == [[1]]  # restored
