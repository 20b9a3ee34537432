"""WIDER FACE protocol: the shared reference fixture and hand-computed pieces."""

import json

import numpy as np
import pytest

from assignlab.engine import widerface_eval as wf
from conftest import require_shared


def test_reproduces_reference_fixture():
    root = require_shared("data", "widerface_eval")
    expected = json.loads((root / "expected.json").read_text())
    aps = wf.evaluate_widerface(root / "preds_seed0", root / "ground_truth")
    for s in ("easy", "medium", "hard"):
        assert aps[s] == pytest.approx(expected[s], abs=1e-4)
    assert "num_missing_images" not in aps


def test_iou_plus_one_convention():
    # two 10x10 boxes (x2-x1+1 = 10) overlapping by 5 columns: 50 / (100 + 100 - 50)
    a = np.array([[0.0, 0.0, 9.0, 9.0]])
    b = np.array([[5.0, 0.0, 14.0, 9.0]])
    assert wf._iou_plus1(a, b)[0, 0] == pytest.approx(50 / 150)


def test_image_eval_first_match_counts_and_ignore_faces_drop_proposals():
    gt = np.array([[0, 0, 10, 10], [50, 50, 10, 10]], dtype=float)  # x y w h
    kept = np.array([True, False])  # face 1 is an ignore face in this setting
    pred = np.array([
        [0, 0, 10, 10, 0.9],    # matches face 0 -> recall 1
        [1, 0, 10, 10, 0.8],    # matches face 0 again -> stays a proposal, recall unchanged
        [50, 50, 10, 10, 0.7],  # matches ignore face -> dropped from proposals
        [200, 200, 5, 5, 0.6],  # matches nothing -> false positive
    ])
    pred_recall, proposal = wf._image_eval(pred, gt, kept, 0.5)
    assert pred_recall.tolist() == [1, 1, 1, 1]
    assert proposal.tolist() == [1, 1, -1, 1]
    pr = wf._image_pr(pred[:, 4], proposal, pred_recall)
    # threshold t = 1 - (i+1)/1000: at t=0.85 (i=149) only the first prediction counts
    assert pr[149].tolist() == [1, 1]
    # at t=0.65 (i=349): three predictions, one of them dropped -> 2 proposals
    assert pr[349].tolist() == [2, 1]
    # at t=0.999 (i=0): nothing scores that high
    assert pr[0].tolist() == [0, 0]


def test_voc_ap_hand_computed():
    # recall 0.5 at precision 1, then recall 1.0 at precision 0.5 -> 0.5*1 + 0.5*0.5
    assert wf._voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)


def test_write_and_read_back(tmp_path):
    p = wf.write_prediction_file(tmp_path, "0--Parade", "img_1", [[10, 20, 30, 60], [0, 0, 5, 5]], [0.2, 0.9])
    name, boxes = wf.read_prediction_file(p)
    assert name == "img_1"
    np.testing.assert_allclose(boxes, [[0, 0, 5, 5, 0.9], [10, 20, 20, 40, 0.2]])


def test_bad_prediction_line_names_the_file(tmp_path):
    f = tmp_path / "ev" / "x.txt"
    f.parent.mkdir()
    f.write_text("x\n1\n1 2 3\n")
    with pytest.raises(ValueError, match="x.txt: line 3"):
        wf.read_prediction_file(f)
