"""WIDER FACE label files (RetinaFace and official layouts) on a tiny fixture written here."""

from __future__ import annotations

import pytest
from data_testutils import write_image

from assignlab.data import DatasetError, build_dataset, load_data_config
from assignlab.data.widerface import parse_wider_labels
from conftest import require_shared

RETINA = """# 0--Parade/a.jpg
10 10 20 30
1 2 0 5
40 5 -4 10
0 0 0 0
# 0--Parade/b.jpg
0 0 0 0
# 1--Handshaking/c.jpg
5 5 10 10 7.0 8.0 0.0 9.0 8.0 0.0 8.0 9.0 0.0 7.0 10.0 0.0 9.0 10.0 0.0 0.9
70 30 20 20
"""

OFFICIAL = """0--Parade/a.jpg
3
10 10 20 30 0 0 0 0 0 0
12 14 6 6 2 0 0 1 0 0
1 2 0 5 0 0 0 0 0 0
0--Parade/b.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/c.jpg
1
5 5 10 10 0 0 0 0 0 0
"""


def _fixture(tmp_path, text, name="label.txt"):
    split = tmp_path / "train"
    split.mkdir(parents=True, exist_ok=True)
    (split / name).write_text(text)
    for k, rel in enumerate(["0--Parade/a.jpg", "0--Parade/b.jpg", "1--Handshaking/c.jpg"]):
        write_image(split / "images" / rel, 48, 80, seed=k)
    y = tmp_path / "wider.yaml"
    y.write_text(f"format: widerface\npath: .\ntrain: train/{name}\n")
    return load_data_config(y)


def test_retinaface_layout(tmp_path):
    cfg = _fixture(tmp_path, RETINA)
    ds = build_dataset(cfg, "train", 64, train=False)
    assert ds.names == ["face"] and len(ds) == 3
    a, b, c = (ds.load_annotations(i) for i in range(3))
    assert a["boxes"].tolist() == [[10, 10, 30, 40]]
    # "40 5 -4 10": negative width -> ignore region (36, 5, 40, 15); "1 2 0 5": zero width -> an
    # ignore region without area -> dropped (counted)
    assert a["ignore"].tolist() == [[36, 5, 40, 15]]
    assert ds.report.counts["degenerate_ignore"] == 1
    assert b["boxes"].shape == (0, 4) and b["ignore"].shape == (0, 4)  # "0 0 0 0" = no face
    # landmark columns ignored; the box past the 80 px edge is clipped
    assert c["boxes"].tolist() == [[5, 5, 15, 15], [70, 30, 80, 48]]
    gt = ds.coco_gt()
    assert sum(x["iscrowd"] for x in gt["annotations"]) == 1
    img, t = ds[0]
    assert t["ignore"].shape == (1, 4) and t["boxes"].shape == (1, 4)


def test_official_layout_invalid_flag(tmp_path):
    ds = build_dataset(_fixture(tmp_path, OFFICIAL, "wider_face_train_bbx_gt.txt"), "train", 64, train=False)
    a, b, c = (ds.load_annotations(i) for i in range(3))
    assert a["boxes"].tolist() == [[10, 10, 30, 40]]
    assert a["ignore"].tolist() == [[12, 14, 18, 20]]  # invalid=1 -> ignore region
    assert b["boxes"].shape == (0, 4) and c["boxes"].tolist() == [[5, 5, 15, 15]]


def test_malformed_face_line(tmp_path):
    text = RETINA.replace("70 30 20 20", "70 30 20")
    cfg = _fixture(tmp_path, text)
    ds = build_dataset(cfg, "train", 64, train=False)
    assert len(ds) == 2 and ds.report.counts["bad_label_file"] == 1
    with pytest.raises(DatasetError, match=r"label\.txt: bad label file: 1--Handshaking/c\.jpg: line 10"):
        build_dataset(cfg, "train", 64, train=False, strict=True)


def test_missing_image_skipped(tmp_path):
    cfg = _fixture(tmp_path, RETINA + "# 2--Demo/missing.jpg\n1 1 5 5\n")
    ds = build_dataset(cfg, "train", 64, train=False)
    assert len(ds) == 3 and ds.report.counts["missing_image"] == 1


def test_parse_shared_val_label_txt():
    p = require_shared("data", "widerface_eval", "ground_truth", "label.txt")
    blocks = parse_wider_labels(str(p))
    assert len(blocks) == 3226
    assert sum(len(b["faces"]) for b in blocks) == 39708
    assert not any(b["error"] for b in blocks)
    neg = [(b["file"], v) for b in blocks for _, v in b["faces"] if v[2] < 0]
    assert neg == [("39--Ice_Skating/39_Ice_Skating_iceskiing_39_583.jpg", [1026.0, 474.0, -2.0, 23.0])]
