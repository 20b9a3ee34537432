"""Inference API: load a trained detector from a checkpoint and detect on ordinary images.

::

    from assignlab.models import Detector
    model = Detector.load("runs/exp/best.pt")          # or load_detector(path)
    res = model.predict("photo.jpg", conf=0.25)        # list with one dict per image
    res[0]["boxes"]   # (K, 4) xyxy in ORIGINAL image pixels
    res[0]["scores"], res[0]["labels"], res[0]["names"]

Inputs: a path, a ``PIL.Image``, a numpy ``(H, W, 3)`` uint8 array (RGB; ``(H, W)`` gray and
``(H, W, 4)`` RGBA accepted), a ``(3, H, W)`` or ``(B, 3, H, W)`` tensor (uint8 0..255, or float in
``[0, 1]``), or a list of any of these. Every image is letterboxed to ``img_size x img_size`` with the
data pipeline's :class:`assignlab.data.transforms.Letterbox` (the same resize and gray padding as
at training/validation time), the batch goes through the model and
:meth:`Detector.postprocess`, and boxes are mapped back with the exact inverse of the letterbox::

    original = (letterboxed - pad) / scale,  clipped to the image

Worked example: a 200 x 100 (h x w) image at ``img_size=64`` has ``scale = min(64/200, 64/100) =
0.32`` and ``pad = (16, 0)``; a letterboxed box ``(28.5, 19.5, 43.5, 36.5)`` maps back to
``(39.0625, 60.9375, 85.9375, 114.0625)``.

Checkpoints are read with ``torch.load(weights_only=True)`` (no code execution) and must hold
``"model"`` (state dict) and ``"model_config"`` (:meth:`Detector.config`); optional ``"ema"``
(state dict, or the trainer's ``{"module": state_dict, "updates": ...}``; used by default when
present), ``"names"``, and ``"img_size"`` (or the trainer's ``"config": {"img": ...}``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .detector import Detector

__all__ = ["DEFAULT_IMG_SIZE", "load_detector", "predict", "to_image_tensor"]

DEFAULT_IMG_SIZE = 640


def load_detector(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", use_ema: bool = True
) -> Detector:
    """Rebuild a :class:`Detector` from a checkpoint and load its weights; returned in eval mode.

    Sets ``model.names`` and ``model.img_size`` from the checkpoint when present.
    Raises ``ValueError`` naming the file when a required key is missing.
    """
    ck = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(ck, Mapping):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ck).__name__}")
    mc = ck.get("model_config")
    if not isinstance(mc, Mapping):
        raise ValueError(f"{path}: checkpoint has no 'model_config' (Detector constructor kwargs)")
    model = Detector(**dict(mc))
    sd = ck.get("ema") if use_ema and ck.get("ema") is not None else ck.get("model")
    if isinstance(sd, Mapping) and "module" in sd and "updates" in sd:  # trainer's EMA wrapper
        sd = sd["module"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: checkpoint has no 'model' state dict")
    model.load_state_dict(sd)
    names = ck.get("names")
    if names:
        if len(names) != model.num_classes:
            raise ValueError(f"{path}: {len(names)} class names for a {model.num_classes}-class model")
        model.names = [str(n) for n in names]
    img = ck.get("img_size")
    if img is None and isinstance(ck.get("config"), Mapping):
        img = ck["config"].get("img")
    if img:
        model.img_size = int(img)
    return model.to(map_location).eval()


def to_image_tensor(image: Any) -> Tensor:
    """One image as a ``(3, H, W)`` tensor (uint8 stays uint8, float stays float in ``[0, 1]``)."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:  # like the datasets: stored pixel grid, alpha dropped
            image = np.array(im.convert("RGB"))
    elif _is_pil(image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"numpy images must be (H, W, 3) RGB (or (H, W) / (H, W, 4)), got {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr[:, :, :3])).permute(2, 0, 1).contiguous()
    elif isinstance(image, Tensor):
        t = image
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"image tensors must be (3, H, W), got {tuple(t.shape)}")
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise TypeError(f"image tensors must be uint8 or float, got {t.dtype}")
    return t


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _as_list(images: Any) -> list[Tensor]:
    if isinstance(images, Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, (list, tuple)):
        out: list[Tensor] = []
        for im in images:
            out.extend(_as_list(im))
        return out
    return [to_image_tensor(images)]


def letterbox(image: Tensor, size: int) -> tuple[Tensor, float, tuple[float, float]]:
    """``(3, h, w)`` uint8/float -> ``(3, size, size)`` float in ``[0, 1]``, ``scale``, ``(pad_x, pad_y)``.

    Uses the data pipeline's deterministic (centred, no jitter) letterbox so inference sees the
    same pixels as validation. ``original = (letterboxed - pad) / scale``.
    """
    from torchvision import tv_tensors

    from ..data.transforms import Letterbox

    lb = Letterbox(size)
    p = lb.params_for((int(image.shape[-2]), int(image.shape[-1])))
    out = lb.transform(tv_tensors.Image(image), {"lb": p}).as_subclass(Tensor)
    out = out.float().div_(255.0) if out.dtype == torch.uint8 else out.float()
    return out, float(p.scale), (float(p.pad[0]), float(p.pad[1]))


@torch.no_grad()
def predict(
    model: Detector,
    images: Any,
    img_size: int | None = None,
    conf: float = 0.25,
    iou: float = 0.5,
    max_det: int = 300,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Detect objects; one dict per input image, boxes in that image's original pixels.

    Returns per image ``{"boxes": (K, 4) float xyxy, "scores": (K,), "labels": (K,) long,
    "names": [K class names]}`` (CPU tensors, sorted by decreasing score). ``img_size`` defaults to
    the checkpoint's training size, else 640.
    """
    size = int(img_size or getattr(model, "img_size", None) or DEFAULT_IMG_SIZE)
    ims = _as_list(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for start in range(0, len(ims), batch_size):
            chunk = ims[start : start + batch_size]
            lbs = [letterbox(im, size) for im in chunk]
            batch = torch.stack([x for x, _, _ in lbs]).to(device)
            out = model(batch)
            dets = model.postprocess(out, model.priors((size, size)), conf=conf, iou=iou, max_det=max_det)
            for im, (_, scale, (px, py)), d in zip(chunk, lbs, dets):
                h, w = int(im.shape[-2]), int(im.shape[-1])
                b = d["boxes"].float().cpu()
                pad = torch.tensor([px, py, px, py])
                b = (b - pad) / scale
                b[:, 0::2] = b[:, 0::2].clamp(0, w)
                b[:, 1::2] = b[:, 1::2].clamp(0, h)
                labels = d["labels"].cpu()
                names: Sequence[str] = model.names
                results.append({
                    "boxes": b,
                    "scores": d["scores"].cpu(),
                    "labels": labels,
                    "names": [names[i] for i in labels.tolist()],
                })
    finally:
        model.train(was_training)
    return results
