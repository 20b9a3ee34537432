"""``assignlab predict`` / ``assignlab export`` end to end (subprocess) on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from assignlab.models import Detector
from assignlab.models.cli import list_sources

SIZE = 64
NAMES = ["cat", "dog"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "assignlab", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-class anchor detector whose every prior is confident (class 'dog') with box = its anchor."""
    torch.manual_seed(0)
    m = Detector(num_classes=2, width=0.25)
    with torch.no_grad():
        for conv in list(m.head.cls_preds) + list(m.head.box_preds) + list(m.head.obj_preds):
            conv.weight.zero_()
            conv.bias.zero_()
        for conv in m.head.cls_preds:
            conv.bias.copy_(torch.tensor([-2.0, 3.0]))
        for conv in m.head.obj_preds:
            conv.bias.fill_(3.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": m.state_dict(), "model_config": m.config(), "names": NAMES, "img_size": SIZE}, path)
    return path


def _images(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = {"a.jpg": (120, 200), "b.png": (90, 60)}  # (h, w)
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "notes.md").write_text("not an image, ignored")
    return sizes


def test_models_cli_predict_folder(tmp_path, checkpoint):
    src, out = tmp_path / "src", tmp_path / "out"
    sizes = _images(src)
    r = _run("predict", "--weights", str(checkpoint), "--source", str(src), "--out", str(out),
             "--conf", "0.1", "--max-det", "7", "--save-txt")
    assert r.returncode == 0, r.stderr
    # the corrupt file is named, skipped and counted
    assert "broken.jpg" in r.stderr and "1 unreadable file(s) skipped" in r.stderr
    assert "2 images" in r.stdout
    # drawn copies: same format and size as the inputs, boxes drawn (pixels changed)
    for name, (h, w) in sizes.items():
        with Image.open(out / name) as im:
            assert im.format == ("JPEG" if name.endswith(".jpg") else "PNG")
            assert im.size == (w, h)
            drawn = np.asarray(im.convert("RGB"), dtype=np.int16)
        orig = np.asarray(Image.open(src / name).convert("RGB"), dtype=np.int16)
        assert (np.abs(drawn - orig).max(-1) > 60).mean() > 0.01
    assert not (out / "broken.jpg").exists() and not (out / "broken.png").exists()

    meta = json.loads((out / "image_ids.json").read_text())
    ids = {im["id"]: im for im in meta["images"]}
    assert {im["stem"] for im in ids.values()} == {"a", "b"}
    assert meta["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [Path(u["file_name"]).name for u in meta["unreadable"]] == ["broken.jpg"]
    preds = json.loads((out / "predictions.json").read_text())
    assert preds and all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in preds)

    # boxes in ORIGINAL pixels: equal to the in-process inference API's, inside the image, and
    # reaching beyond the 64 px letterbox canvas for the 200 px wide image
    model = Detector.load(str(checkpoint))
    for iid, im in ids.items():
        mine = [p for p in preds if p["image_id"] == iid]
        ref = model.predict(str(src / Path(im["file_name"]).name), img_size=SIZE, conf=0.1, max_det=7)[0]
        assert len(mine) == len(ref["boxes"]) == 7
        xywh = torch.tensor([p["bbox"] for p in mine])
        ref_xywh = torch.cat([ref["boxes"][:, :2], ref["boxes"][:, 2:] - ref["boxes"][:, :2]], 1)
        assert torch.allclose(xywh, ref_xywh, atol=2e-3)
        assert [p["category_id"] for p in mine] == (ref["labels"] + 1).tolist() == [2] * 7
        assert np.allclose([p["score"] for p in mine], ref["scores"].numpy(), atol=1e-5)
        h, w = sizes[Path(im["file_name"]).name]
        assert (im["height"], im["width"]) == (h, w)
        assert (xywh[:, 0] >= 0).all() and (xywh[:, 0] + xywh[:, 2] <= w + 1e-3).all()
        assert (xywh[:, 1] >= 0).all() and (xywh[:, 1] + xywh[:, 3] <= h + 1e-3).all()
        if w == 200:
            assert float((xywh[:, 0] + xywh[:, 2]).max()) > SIZE
        # YOLO txt: cls cx cy w h conf, normalised by the original size, same detections
        rows = np.loadtxt(out / "labels" / f"{im['stem']}.txt", ndmin=2)
        assert rows.shape == (7, 6)
        exp = torch.stack([xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2, xywh[:, 2], xywh[:, 3]], 1)
        assert np.allclose(rows[:, 1:5], exp.numpy() / [w, h, w, h], atol=1e-4)
        assert (rows[:, 0] == 1).all() and np.allclose(rows[:, 5], [p["score"] for p in mine], atol=1e-4)


def test_models_cli_list_sources(tmp_path):
    _images(tmp_path / "imgs")
    lst = tmp_path / "list.txt"
    lst.write_text("# two images\nimgs/b.png\n\n" + str(tmp_path / "imgs" / "a.jpg") + "\n")
    assert list_sources(lst) == [tmp_path / "imgs" / "b.png", tmp_path / "imgs" / "a.jpg"]
    assert [p.name for p in list_sources(tmp_path / "imgs")] == ["a.jpg", "b.png", "broken.jpg"]
    assert list_sources(tmp_path / "imgs" / "a.jpg") == [tmp_path / "imgs" / "a.jpg"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_sources(tmp_path / "nope")


def test_models_cli_export_onnx(tmp_path, checkpoint):
    onnx_path = tmp_path / "sub" / "tiny.onnx"
    r = _run("export", "--weights", str(checkpoint), "--format", "onnx", "--dynamic-batch", "--with-decode",
             "--out", str(onnx_path))
    assert r.returncode == 0, r.stderr
    assert "max abs diff" in r.stdout and "OK" in r.stdout
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores"]
    x = torch.rand(3, 3, SIZE, SIZE)  # dynamic batch, checkpoint's image size
    boxes, scores = sess.run(None, {"images": x.numpy()})
    model = Detector.load(str(checkpoint))
    with torch.no_grad():
        rb, rs = model.decode(model(x), model.priors((SIZE, SIZE)))
    assert boxes.shape == tuple(rb.shape) and scores.shape == (3, rb.shape[1], 2)
    np.testing.assert_allclose(boxes, rb.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, rs.numpy(), atol=1e-5)
