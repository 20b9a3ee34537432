"""ONNX export: onnxruntime outputs match PyTorch (random and real image) and give the same detections."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from assignlab.models import Detector
from assignlab.models.detector import postprocess_boxes
from assignlab.models.export import export_onnx, head_output_from_onnx, onnx_output_names
from assignlab.models.predictor import letterbox, to_image_tensor
from conftest import require_shared

SIZE = 96


def _model(**kw) -> Detector:
    """A small detector with spread-out predictions and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    m = Detector(num_classes=3, width=0.25, **kw)
    with torch.no_grad():
        for conv in list(m.head.cls_preds) + list(m.head.box_preds) + list(m.head.obj_preds or []):
            conv.weight.normal_(0, 0.3)
            conv.bias.zero_()
        m.train()
        m(torch.rand(4, 3, SIZE, SIZE))
    return m.eval()


def _real_image() -> torch.Tensor:
    root = require_shared("data", "facemask", "JPEGImages")
    path = sorted(root.glob("*.jpg"))[1]
    return letterbox(to_image_tensor(str(path)), SIZE)[0][None]


def _session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kw", [{"head": "anchor"}, {"head": "free", "reg_max": 8}, {"head": "free"}])
def test_models_onnx_raw_parity_and_detections(tmp_path, kw):
    model = _model(**kw)
    path = export_onnx(model, tmp_path / "m.onnx", img_size=SIZE)
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == onnx_output_names(model)
    pri = model.priors((SIZE, SIZE))
    for x in (torch.rand(1, 3, SIZE, SIZE), _real_image()):
        got = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        refs = [ref.cls, ref.box] + ([ref.obj] if ref.obj is not None else [])
        assert len(got) == len(refs)
        for g, r in zip(got, refs):
            assert g.shape == tuple(r.shape)
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0)
        # same detections after decode + NMS
        det_t = model.postprocess(ref, pri, conf=0.05, iou=0.5)[0]
        det_o = model.postprocess(head_output_from_onnx(got, model), pri, conf=0.05, iou=0.5)[0]
        assert len(det_t["boxes"]) > 0
        assert len(det_t["boxes"]) == len(det_o["boxes"])
        assert torch.equal(det_t["labels"], det_o["labels"])
        assert torch.allclose(det_t["boxes"], det_o["boxes"], atol=1e-3)
        assert torch.allclose(det_t["scores"], det_o["scores"], atol=1e-5)


def test_models_onnx_with_decode_dynamic_batch(tmp_path):
    model = _model(head="anchor")
    path = export_onnx(model, tmp_path / "d.onnx", img_size=SIZE, dynamic_batch=True, with_decode=True)
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores"]
    x = torch.cat([torch.rand(2, 3, SIZE, SIZE), _real_image()])
    boxes, scores = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        rb, rs = model.decode(model(x), model.priors((SIZE, SIZE)))
    assert boxes.shape == (3, rb.shape[1], 4)
    np.testing.assert_allclose(boxes, rb.numpy(), atol=1e-3, rtol=1e-5)  # pixels
    np.testing.assert_allclose(scores, rs.numpy(), atol=1e-5, rtol=0)
    dt = postprocess_boxes(rb, rs, (SIZE, SIZE), conf=0.05, iou=0.5)
    do = postprocess_boxes(torch.from_numpy(boxes), torch.from_numpy(scores), (SIZE, SIZE), conf=0.05, iou=0.5)
    for a, b in zip(dt, do):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
    assert model.training is False


def test_models_onnx_export_validates_opset(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(Detector(1, width=0.25), tmp_path / "x.onnx", opset=13)
