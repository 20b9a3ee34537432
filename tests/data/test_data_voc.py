"""Pascal VOC reader on the shared facemask set (counts from its README) and small fixtures."""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections import Counter

import pytest
import torch
from data_testutils import make_voc

from assignlab.data import build_dataset, data_config_from_dict, load_data_config
from conftest import require_shared

FACEMASK_NAMES = ["with_mask", "without_mask", "mask_weared_incorrect"]


@pytest.fixture(scope="module")
def facemask_cfg():
    root = require_shared("data", "facemask")
    return data_config_from_dict(
        {
            "format": "voc",
            "path": str(root),
            "train": "ImageSets/Main/train.txt",
            "val": "ImageSets/Main/val.txt",
            "names": FACEMASK_NAMES,
        },
        source="facemask-test",
    )


@pytest.mark.parametrize(
    "split,n_img,n_box,per_class,sizes,clipped",
    [
        ("train", 593, 2950, [2304, 554, 92], [868, 1186, 896], 9),
        ("val", 129, 610, [500, 93, 17], [188, 219, 203], 1),
    ],
)
def test_facemask_counts(facemask_cfg, split, n_img, n_box, per_class, sizes, clipped):
    t0 = time.perf_counter()
    ds = build_dataset(facemask_cfg, split, 320, train=False)
    anns = [ds.load_annotations(i) for i in range(len(ds))]
    elapsed = time.perf_counter() - t0
    assert len(ds) == n_img
    assert ds.names == FACEMASK_NAMES
    assert sum(len(a["boxes"]) for a in anns) == n_box
    labels = Counter(int(x) for a in anns for x in a["labels"])
    assert [labels[c] for c in range(3)] == per_class
    # every image has a face; no ignore regions (no difficult flags)
    assert all(len(a["boxes"]) > 0 for a in anns) and all(len(a["ignore"]) == 0 for a in anns)
    # the README's size buckets use the raw boxes; clipping xmax 401 -> 400 may move a clipped box
    # down one bucket (train maksssksksss93: 16.1 px -> 15.5 px)
    s = torch.cat(
        [((a["boxes"][:, 2] - a["boxes"][:, 0]) * (a["boxes"][:, 3] - a["boxes"][:, 1])).sqrt() for a in anns]
    )
    got = [int((s < 16).sum()), int(((s >= 16) & (s < 32)).sum()), int((s >= 32).sum())]
    assert sum(got) == sum(sizes) and max(abs(g - e) for g, e in zip(got, sizes)) <= clipped
    assert got == {"train": [869, 1185, 896], "val": [188, 219, 203]}[split]
    # boxes past the border (xmax = 401 on 400 px images) are clipped and counted, none dropped
    assert ds.report.counts["clipped_box"] == clipped
    assert ds.report.counts["degenerate_box"] == 0 and ds.report.num_skipped == 0
    for a in anns:
        h, w = a["orig_size"]
        assert (a["boxes"][:, 2] <= w).all() and (a["boxes"][:, 3] <= h).all()
    assert elapsed < 20  # building + scanning all annotations needs no image decode


def test_facemask_known_files(facemask_cfg):
    ds = build_dataset(facemask_cfg, "train", 320, train=False)
    by_name = {a["path"].rsplit("/", 1)[-1]: i for i, a in enumerate(ds.load_annotations(i) for i in range(len(ds)))}
    # stray text inside <object> is ignored: 3 objects
    a0 = ds.load_annotations(by_name["maksssksksss0.jpg"])
    assert a0["boxes"].tolist()[0] == [79.0, 105.0, 109.0, 142.0]
    assert a0["labels"].tolist() == [1, 0, 1] and a0["orig_size"] == (366, 512)
    # maksssksksss64: 1 px wide boxes are kept (positive area)
    a64 = ds.load_annotations(by_name["maksssksksss64.jpg"])
    w = a64["boxes"][:, 2] - a64["boxes"][:, 0]
    assert (w == 1).sum() == 3
    assert [207.0, 38.0, 208.0, 40.0] in a64["boxes"].tolist()
    # maksssksksss5: xmax 401 clipped to the 400 px width
    a5 = ds.load_annotations(by_name["maksssksksss5.jpg"])
    assert a5["orig_size"][1] == 400 and a5["boxes"][:, 2].max() == 400


def test_facemask_merge_and_getitem(facemask_cfg):
    ds = build_dataset(facemask_cfg, "val", 256, train=True, merge_classes=True, seed=3)
    assert ds.names == ["face"]
    img, t = ds[5]
    assert img.shape == (3, 256, 256) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert set(t["labels"].tolist()) <= {0}
    assert ds.load_annotations(5)["labels"].unique().tolist() == [0]
    # same seed and epoch -> same augmentation; new epoch -> (almost surely) different
    again = build_dataset(facemask_cfg, "val", 256, train=True, merge_classes=True, seed=3)
    img2, t2 = again[5]
    assert torch.equal(img, img2) and torch.equal(t["boxes"], t2["boxes"])
    again.set_epoch(1)
    metas = [again[5][1]["meta"] for _ in range(1)]
    assert (metas[0].scale, metas[0].pad) != (t["meta"].scale, t["meta"].pad)


def test_facemask_folder_autodetect_and_coco_gt(facemask_cfg):
    pycocotools = pytest.importorskip("pycocotools")
    del pycocotools
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cfg = load_data_config(require_shared("data", "facemask"))  # folder: voc recognised, names scanned
    assert cfg.format == "voc" and cfg.train and cfg.val
    ds = build_dataset(cfg, "val", 320, train=False)
    assert ds.names == sorted(FACEMASK_NAMES)
    gt = ds.coco_gt()
    assert len(gt["images"]) == 129 and len(gt["annotations"]) == 610
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]
    a = gt["annotations"][0]
    assert a["iscrowd"] == 0 and math.isclose(a["area"], a["bbox"][2] * a["bbox"][3])
    # the GT scored against itself gives AP = 1
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        dets = coco.loadRes(
            [
                {"image_id": x["image_id"], "category_id": x["category_id"], "bbox": x["bbox"], "score": 1.0}
                for x in gt["annotations"]
            ]
        )
        E = COCOeval(coco, dets, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert E.stats[0] == pytest.approx(1.0)


def test_voc_difficult_becomes_ignore_and_unknown_class(tmp_path):
    y = make_voc(
        tmp_path / "a", {"x": {"objects": [("cat", [1, 2, 10, 12]), ("dog", [5, 5, 20, 20])], "difficult": (1,)}}
    )
    ds = build_dataset(load_data_config(y), "train", 64, train=False)
    a = ds.load_annotations(0)
    assert a["boxes"].tolist() == [[1, 2, 10, 12]] and a["ignore"].tolist() == [[5, 5, 20, 20]]
    assert a["ignore_labels"].tolist() == [1]
    gt = ds.coco_gt()
    assert [x["iscrowd"] for x in gt["annotations"]] == [0, 1]
    img, t = ds[0]
    assert t["ignore"].shape == (1, 4)
