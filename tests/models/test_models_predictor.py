"""Inference API: checkpoint loading, input types, exact letterbox inversion."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from assignlab.models import Detector, HeadOutput
from assignlab.models.predictor import letterbox, load_detector, to_image_tensor
from conftest import require_shared


class _OneBox(Detector):
    """A detector whose only confident prediction is prior ``idx`` with ``t = 0`` (= its anchor)."""

    idx = 0

    def forward(self, images):
        self.seen = images.clone()
        b, _, h, w = images.shape
        n = self.priors((h, w)).num_priors
        cls = torch.full((b, n, self.num_classes), -20.0)
        obj = torch.full((b, n), -20.0)
        cls[:, self.idx, 1] = 10.0
        obj[:, self.idx] = 10.0
        return HeadOutput(cls=cls, box=torch.zeros(b, n, 4), obj=obj, kind="anchor", reg_max=0)


@pytest.mark.parametrize(
    "hw,size,idx,expected",
    [
        # 200 x 100 (h x w) at 64: scale 0.32, pad (16, 0); prior 28 = level 0 row 3 col 4 -> point (36, 28),
        # anchor (15, 17) -> letterboxed (28.5, 19.5, 43.5, 36.5) -> ((x - 16) / 0.32, y / 0.32)
        ((200, 100), 64, 3 * 8 + 4, (39.0625, 60.9375, 85.9375, 114.0625)),
        # 100 x 300 at 96: scale 0.32, pad (0, 32); prior 12*6+5 = level 0 row 6 col 5 -> point (44, 52)
        # -> letterboxed (36.5, 43.5, 51.5, 60.5) -> (x / 0.32, (y - 32) / 0.32)
        ((100, 300), 96, 6 * 12 + 5, (114.0625, 35.9375, 160.9375, 89.0625)),
    ],
)
def test_models_predict_inverts_letterbox_exactly(hw, size, idx, expected):
    model = _OneBox(num_classes=2)
    model.idx = idx
    model.names = ["a", "b"]
    h, w = hw
    img = np.full((h, w, 3), 200, dtype=np.uint8)
    res = model.predict(img, img_size=size, conf=0.5)
    assert len(res) == 1
    r = res[0]
    assert torch.allclose(r["boxes"], torch.tensor([expected]), atol=1e-4)
    assert r["labels"].tolist() == [1] and r["names"] == ["b"]
    assert r["scores"][0] > 0.99
    # the model saw a size x size letterboxed float image: gray padding, the image in the middle
    seen = model.seen
    assert seen.shape == (1, 3, size, size) and seen.dtype == torch.float32
    gray, fg = 114 / 255, 200 / 255
    if w < h:
        assert torch.allclose(seen[0, :, :, :16], torch.full_like(seen[0, :, :, :16], gray))
        assert torch.allclose(seen[0, :, :, 16:48], torch.full_like(seen[0, :, :, 16:48], fg), atol=1e-6)
    else:
        assert torch.allclose(seen[0, :, :32], torch.full_like(seen[0, :, :32], gray))
        assert torch.allclose(seen[0, :, 32:64], torch.full_like(seen[0, :, 32:64], fg), atol=1e-6)


def test_models_letterbox_params_and_float_input():
    img = torch.rand(3, 200, 100)
    out, scale, pad = letterbox(img, 64)
    assert out.shape == (3, 64, 64) and scale == pytest.approx(0.32) and pad == (16.0, 0.0)
    out8, _, _ = letterbox((img * 255).round().to(torch.uint8), 64)
    assert out8.dtype == torch.float32 and 0 <= out8.min() and out8.max() <= 1


def test_models_predict_input_types_agree():
    torch.manual_seed(0)
    model = Detector(num_classes=2, width=0.25).eval()
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    ref = model.predict(arr, img_size=64, conf=1e-6)[0]
    assert len(ref["boxes"]) > 0
    variants = [
        Image.fromarray(arr),
        torch.from_numpy(arr).permute(2, 0, 1).contiguous(),
        np.concatenate([arr, np.full((90, 130, 1), 255, np.uint8)], axis=2),  # RGBA
    ]
    for v in variants:
        r = model.predict(v, img_size=64, conf=1e-6)[0]
        assert torch.allclose(r["scores"], ref["scores"], atol=1e-5)
        assert torch.allclose(r["boxes"], ref["boxes"], atol=1e-3)
    # float input: resized in float instead of uint8, so only approximately the same pixels
    rf = model.predict(torch.from_numpy(arr).permute(2, 0, 1).float() / 255, img_size=64, conf=1e-6)[0]
    assert len(rf["scores"]) == len(ref["scores"])
    assert torch.allclose(rf["scores"].sort().values, ref["scores"].sort().values, atol=1e-3)
    batch = model.predict([arr, torch.from_numpy(arr).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)], img_size=64,
                          conf=1e-6)
    assert len(batch) == 3
    for r in batch:
        assert torch.allclose(r["scores"][:20], ref["scores"][:20], atol=1e-5)
    assert ref["boxes"][:, 0::2].max() <= 130 and ref["boxes"][:, 1::2].max() <= 90
    assert ref["boxes"].min() >= 0
    with pytest.raises(ValueError):
        to_image_tensor(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError):
        to_image_tensor(3.0)


def test_models_predict_real_image_original_coords():
    root = require_shared("data", "facemask", "JPEGImages")
    path = sorted(root.glob("*.jpg"))[0]
    with Image.open(path) as im:
        w, h = im.size
    assert w != h
    torch.manual_seed(0)
    model = Detector(num_classes=3, width=0.25)
    model.names = ["with_mask", "without_mask", "mask_weared_incorrect"]
    res = model.predict(str(path), img_size=96, conf=1e-6, max_det=50)
    assert model.training  # mode restored
    r = res[0]
    assert 0 < len(r["boxes"]) <= 50
    assert r["boxes"][:, 0::2].max() <= w and r["boxes"][:, 1::2].max() <= h and r["boxes"].min() >= 0
    # boxes span the original (not 96 px) image
    assert r["boxes"][:, 2].max() > 96 * 1.5
    assert set(r["names"]) <= set(model.names)
    assert torch.all(r["scores"][:-1] >= r["scores"][1:])


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_models_load_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Detector(num_classes=2, head="free", reg_max=4, width=0.25)
    model(torch.rand(2, 3, 64, 64))  # non-trivial BN running stats
    model.eval()
    ck = {"model": model.state_dict(), "model_config": model.config(), "names": ["cat", "dog"], "img_size": 96}
    p = _save(tmp_path / "a.pt", ck)
    loaded = Detector.load(p)
    assert not loaded.training
    assert loaded.names == ["cat", "dog"] and loaded.img_size == 96
    assert loaded.config() == model.config()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.cls, b.cls) and torch.equal(a.box, b.box)
    # trainer layout: EMA wrapper preferred, image size from config["img"]
    ema = Detector(**model.config()).eval()
    ck2 = {"model": model.state_dict(), "ema": {"module": ema.state_dict(), "updates": 5},
           "model_config": model.config(), "names": ["cat", "dog"], "config": {"img": 128}}
    p2 = _save(tmp_path / "b.pt", ck2)
    m2 = load_detector(p2)
    assert m2.img_size == 128
    with torch.no_grad():
        assert torch.equal(m2(x).cls, ema(x).cls)
        assert torch.equal(load_detector(p2, use_ema=False)(x).cls, a.cls)


def test_models_load_checkpoint_errors(tmp_path):
    model = Detector(num_classes=1, width=0.25)
    with pytest.raises(ValueError, match="model_config"):
        load_detector(_save(tmp_path / "c.pt", {"model": model.state_dict()}))
    with pytest.raises(ValueError, match="names"):
        load_detector(_save(tmp_path / "d.pt", {"model": model.state_dict(), "model_config": model.config(),
                                                "names": ["a", "b"]}))
    # arbitrary pickled objects are refused (weights_only=True), never executed
    with pytest.raises(pickle.UnpicklingError):
        load_detector(_save(tmp_path / "e.pt", {"model_config": model.config(), "x": _OneBox}))
