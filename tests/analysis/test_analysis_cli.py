"""``assignlab inspect / show / heatmap / anchors`` on the face-mask set, the synthetic set and a
hand-counted 2-image VOC fixture (run in-process through the CLI dispatcher)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from PIL import Image

from assignlab.__main__ import main
from assignlab.analysis.cli import CLIError, letterbox_annotations, parse_anchors, parse_assigner_opts
from assignlab.data import build_dataset, load_data_config
from assignlab.models import Detector
from conftest import REPO, require_shared

FACEMASK_YAML = REPO / "configs" / "data" / "facemask.yaml"


def _facemask() -> list[str]:
    require_shared("data", "facemask")
    return ["--data", str(FACEMASK_YAML)]


# one parameter per data source: the shared face-mask set, the built-in synthetic set (no --data)
DATA = [pytest.param(_facemask, id="facemask"), pytest.param(lambda: [], id="synthetic")]


def _png(path: Path, shape: tuple[int, int], min_ink: float = 0.05) -> np.ndarray:
    """Open a written PNG, check its size and that it is not blank (``min_ink``: share of pixels
    that are not white)."""
    img = mpimg.imread(str(path))
    assert img.shape[:2] == shape, (path, img.shape)
    rgb = img[..., :3]
    assert rgb.std() > 0.05
    assert (np.abs(rgb - 1.0).max(-1) > 0.1).mean() > min_ink
    assert len(np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 50
    return img


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An untrained 1-class anchor detector checkpoint (for heatmap and prediction-aware inspect)."""
    torch.manual_seed(0)
    m = Detector(num_classes=1, width=0.25)
    p = tmp_path_factory.mktemp("w") / "w.pt"
    torch.save({"model": m.state_dict(), "model_config": m.config(), "names": ["face"], "img_size": 320}, p)
    return p


# ---------------------------------------------------------------------------------- hand-counted
def _voc_fixture(root: Path) -> Path:
    """Two images, six faces, one class; see ``test_analysis_inspect_hand_counted`` for the counts."""
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    images = {
        # 320 x 320: letterbox scale 1, pad (0, 0)
        "img1": ((320, 320), [(100, 100, 120, 118), (200, 40, 205, 45), (151, 153, 251, 251), (104, 103, 116, 115)]),
        # 320 x 640 (h x w): scale 0.5, pad (0, 80)
        "img2": ((320, 640), [(102, 100, 142, 136), (0, 200, 10, 210)]),
    }
    rng = np.random.default_rng(0)
    for iid, ((h, w), boxes) in images.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{iid}.jpg")
        objs = "".join(
            f"<object><name>face</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for b in boxes
        )
        (root / "Annotations" / f"{iid}.xml").write_text(
            f"<annotation><filename>{iid}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("img1\nimg2\n")
    y = root / "data.yaml"
    y.write_text("format: voc\npath: .\ntrain: ImageSets/Main/train.txt\nnames: [face]\n")
    return y


def test_analysis_inspect_hand_counted(tmp_path):
    """YOLOv5 (anchor_t 4, one anchor per level: (15,17)@8, (30,34)@16, (60,68)@32) counted by hand.

    A GT trains a level when max(w/a_w, a_w/w, h/a_h, a_h/h) < 4, on the centre cell plus the x and
    the y neighbour on the side of the centre's fractional part (< 0.5: left/up, > 0.5: right/down),
    a neighbour only when the centre is more than one cell from that border. Letterboxed boxes:

    ====  ======================  =====  =========  ==========================  =========
    GT    box (letterboxed px)    w x h  sqrt area  levels (ratio < 4)          positives
    ====  ======================  =====  =========  ==========================  =========
    A     100,100,120,118         20x18  19.0       0, 1, 2 (3 cells each)      9
    B     200,40,205,45           5x5    5          0 (17/5 = 3.4)              3
    C     151,153,251,251         100x98 99.0       1, 2 (100/15 = 6.7 > 4)     6
    F     104,103,116,115         12x12  12         0, 1 (60/12 = 5 > 4)        6
    D     51,130,71,148 (img2)    20x18  19.0       0, 1, 2                     9
    E     0,180,5,185 (img2)      5x5    5          0; centre x 2.5 px = 0.31   2
                                                    cells: no left neighbour
    ====  ======================  =====  =========  ==========================  =========

    F has A's centre (110, 109): its 6 cells (levels 0 and 1) are all A's too -> 6 cells claimed
    by 2 GTs, and the dense positives per level are 11 / 9 / 9 (A+B+D+E, A+C+D, A+C+D).
    """
    y = _voc_fixture(tmp_path / "voc")
    # the annotation-only path gives exactly the boxes of dataset[i] (letterbox, no image decode)
    ds = build_dataset(load_data_config(str(y)), "train", 320, train=False)
    for i in range(2):
        b, lab, ig = letterbox_annotations(ds, i)
        assert torch.equal(b, ds[i][1]["boxes"]) and torch.equal(lab, ds[i][1]["labels"])
    assert letterbox_annotations(ds, 1)[0].tolist() == [[51, 130, 71, 148], [0, 180, 5, 185]]

    out = tmp_path / "out"
    assert main(["inspect", "--data", str(y), "--assigner", "yolov5", "--out", str(out)]) == 0
    rep = json.loads((out / "inspect.json").read_text())
    s = rep["summaries"]["yolov5"]
    assert rep["images"] == s["images"] == 2 and s["gts"] == 6
    assert s["gts_by_size"] == {"<8": 2, "8-16": 1, "16-32": 2, "32-64": 0, "64-128": 1, ">=128": 0}
    assert s["positives_per_gt"] == {"<8": 2.5, "8-16": 6.0, "16-32": 9.0, "32-64": None, "64-128": 6.0,
                                     ">=128": None}
    assert s["positives_per_gt_all"] == pytest.approx(35 / 6)
    assert s["zero_positive_share_all"] == 0.0
    assert s["multi_claimed_cells"] == 6
    assert s["positives_by_level"] == [11, 9, 9]
    assert sum(s["positive_iou_hist"]) == 29
    md = (out / "inspect.md").read_text()
    assert "| cells claimed by > 1 GT | 6 |" in md and "positives_per_gt.png" in md

    # an anchor_t of 3 removes B and E's level 0 (17/5 = 3.4 > 3) and A / D's level 2 (68/18 = 3.8)
    assert main(["inspect", "--data", str(y), "--assigner", "yolov5", "--assigner-opt", "yolov5:anchor_t=3",
                 "--out", str(out)]) == 0
    s = json.loads((out / "inspect.json").read_text())["summaries"]["yolov5"]
    assert s["positives_per_gt"]["<8"] == 0.0 and s["zero_positive_share"]["<8"] == 1.0
    assert s["positives_per_gt"]["16-32"] == 6.0


def test_analysis_inspect_prediction_aware(tmp_path, weights):
    y = _voc_fixture(tmp_path / "voc")
    out = tmp_path / "out"
    # without a checkpoint the prediction-aware assigner is reported and skipped, the other runs
    assert main(["inspect", "--data", str(y), "--assigner", "yolov5", "--assigner", "simota",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "inspect.json").read_text())
    assert list(rep["summaries"]) == ["yolov5"] and "--weights" in rep["skipped"]["simota"]
    assert "simota**: skipped" in (out / "inspect.md").read_text()
    # with one, the images go through the model: same GTs, simota gives every GT >= 1 positive
    assert main(["inspect", "--data", str(y), "--assigner", "yolov5", "--assigner", "simota", "--assigner", "tal",
                 "--weights", str(weights), "--out", str(out)]) == 0
    rep = json.loads((out / "inspect.json").read_text())
    s = rep["summaries"]["simota"]
    assert s["images"] == 2 and s["gts"] == 6 and rep["skipped"] == {}
    assert s["zero_positive_share_all"] == 0.0 and s["positives_per_gt_all"] >= 1
    assert rep["summaries"]["yolov5"]["positives_by_level"] == [11, 9, 9]
    # each assigner sees the model's predictions untouched by the others (a one-class SimOTA
    # once negated pred_scores in place, leaving TAL without a single positive)
    assert main(["inspect", "--data", str(y), "--assigner", "tal", "--weights", str(weights),
                 "--out", str(tmp_path / "tal")]) == 0
    alone = json.loads((tmp_path / "tal" / "inspect.json").read_text())["summaries"]["tal"]
    assert rep["summaries"]["tal"] == alone and alone["positives_per_gt_all"] > 0


# ---------------------------------------------------------------------------------- real + synthetic
@pytest.mark.parametrize("data", DATA)
def test_analysis_inspect_data(tmp_path, data):
    out = tmp_path / "ins"
    rc = main(["inspect", *data(), "--split", "val", "--assigner", "yolov5", "--assigner", "centernet",
               "--max-images", "48", "--out", str(out), "--merge-classes", "--dpi", "50"])
    assert rc == 0
    rep = json.loads((out / "inspect.json").read_text())
    assert rep["images"] == 48 and set(rep["summaries"]) == {"yolov5", "centernet"}
    for s in rep["summaries"].values():
        assert s["images"] == 48 and s["gts"] > 48
        assert sum(s["gts_by_size"].values()) == s["gts"]
    assert rep["summaries"]["yolov5"]["gts"] == rep["summaries"]["centernet"]["gts"]
    for name in ("positives_per_gt", "zero_positive_share", "positive_iou", "positives_by_level"):
        _png(out / f"{name}.png", (200, 350), min_ink=0.02)  # 7 x 4 in at 50 dpi
    assert "| GTs |" in (out / "inspect.md").read_text()


@pytest.mark.parametrize("data", DATA)
def test_analysis_show(tmp_path, data):
    out = tmp_path / "show.png"
    assert main(["show", *data(), "--index", "3", "--assigner", "yolov5", "--out", str(out), "--dpi", "60"]) == 0
    _png(out, (288, 756))  # 3 panels of 4.2 in (12.6 x 4.8 in) at 60 dpi


@pytest.mark.parametrize("data", DATA)
def test_analysis_heatmap(tmp_path, data, weights):
    out = tmp_path / "heat.png"
    args = data()
    if args:  # a real image file
        img = sorted(require_shared("data", "facemask", "JPEGImages").glob("*.jpg"))[0]
        args = ["--image", str(img)]
    else:  # image --index of the synthetic val split
        args = ["--index", "1"]
    assert main(["heatmap", "--weights", str(weights), *args, "--img", "160", "--out", str(out), "--dpi", "60"]) == 0
    _png(out, (288, 756))


@pytest.mark.parametrize("data", DATA)
def test_analysis_anchors(tmp_path, data):
    out = tmp_path / "anc"
    assert main(["anchors", *data(), "--evolve", "--gen", "60", "--max-images", "200", "--out", str(out)]) == 0
    rep = json.loads((out / "anchors.json").read_text())
    b = rep["boxes"]
    assert b["count"] > 200 and b["images"] == 200
    assert b["w"]["p1"] <= b["w"]["p50"] <= b["w"]["p99"] and b["sqrt_area"]["p50"] > 4
    for key in ("current", "evolved"):
        r = rep[key]
        assert 0.5 < r["bpr"] <= 1 and 0 < r["aat"] <= 3 and len(r["anchors"]) == 3
        assert sum(r["best_level_share"]) == pytest.approx(1.0)
    assert rep["current"]["anchors"] == [[[15.0, 17.0]], [[30.0, 34.0]], [[60.0, 68.0]]]
    # default anchors are spaced x2 < anchor_t = 4: both adjacent pairs are reported
    assert [p["ratio"] for p in rep["current"]["adjacent_pairs"]] == [2.0, 2.0]
    assert rep["evolved"]["fitness"] > 0.5
    _png(out / "anchors.png", (560, 640))
    assert "best possible recall" in (out / "anchors.md").read_text()


def test_analysis_anchors_bpr_hand_counted(tmp_path):
    """On the VOC fixture (letterboxed sizes 20x18, 5x5, 100x98, 12x12, 20x18, 5x5) a single anchor
    (10, 10) with anchor_t 4 recalls everything but the 100x98 face (ratio 10): BPR = 5/6."""
    y = _voc_fixture(tmp_path / "voc")
    out = tmp_path / "anc"
    assert main(["anchors", "--data", str(y), "--anchors", "10,10;10,10;10,10", "--out", str(out)]) == 0
    r = json.loads((out / "anchors.json").read_text())
    assert r["boxes"]["count"] == 6 and r["current"]["bpr"] == pytest.approx(5 / 6)
    assert r["current"]["unrecalled"] == 1
    assert r["current"]["aat"] == pytest.approx(3 * 5 / 6)  # 3 identical anchors per recalled box


# ---------------------------------------------------------------------------------- parsing, errors
def test_analysis_cli_parsing():
    assert parse_anchors(["15,17", "30,34", "60,68"]) == [[(15.0, 17.0)], [(30.0, 34.0)], [(60.0, 68.0)]]
    assert parse_anchors("1,2,3,4/5,6/7,8") == [[(1.0, 2.0), (3.0, 4.0)], [(5.0, 6.0)], [(7.0, 8.0)]]
    assert parse_anchors(None) is None
    for bad in (["1,2", "3,4"], ["1,2,3", "4,5", "6,7"], ["1,x", "1,2", "1,2"], ["0,2", "1,2", "1,2"]):
        with pytest.raises(CLIError, match="--anchors"):
            parse_anchors(bad)
    opts = parse_assigner_opts(["atss:topk=9", "yolov5:anchor_t=3.5", "yolov5:dedup=best_iou"], ["yolov5", "atss"])
    assert opts == {"yolov5": {"anchor_t": 3.5, "dedup": "best_iou"}, "atss": {"topk": 9}}
    assert parse_assigner_opts(["anchor-t=3"], ["yolov5"]) == {"yolov5": {"anchor_t": 3}}
    with pytest.raises(CLIError, match="prefix"):
        parse_assigner_opts(["topk=9"], ["yolov5", "atss"])
    with pytest.raises(CLIError, match="not one of"):
        parse_assigner_opts(["fcos:x=1"], ["yolov5"])


def test_analysis_cli_errors(tmp_path, capsys):
    assert main(["inspect", "--assigner", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown assigner 'nope'" in capsys.readouterr().err
    assert main(["inspect", "--assigner", "yolov5", "--assigner-opt", "bogus=1", "--out", str(tmp_path)]) == 2
    assert "unknown option(s) ['bogus']" in capsys.readouterr().err
    assert main(["show", "--assigner", "simota", "--out", str(tmp_path / "x.png")]) == 2
    assert "needs a trained model" in capsys.readouterr().err
    assert main(["show", "--assigner", "yolov5", "--index", "999", "--out", str(tmp_path / "x.png")]) == 2
    assert "out of range" in capsys.readouterr().err
