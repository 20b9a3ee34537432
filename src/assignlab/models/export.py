"""ONNX export of a :class:`~assignlab.models.Detector`.

``export_onnx(model, "det.onnx", img_size=320)`` writes a graph with one input ``images``
``(B, 3, H, W)`` float32 in ``[0, 1]`` (letterboxed, as :mod:`assignlab.models.predictor` prepares
it) and, by default, the raw flattened head outputs in :class:`~assignlab.models.HeadOutput` order::

    anchor head:  cls (B, N, C), box (B, N, 4), obj (B, N)
    free head:    cls (B, N, C), box (B, N, 4 or 4 (reg_max + 1))

With ``with_decode=True`` the decoding is baked in (priors of ``img_size`` as constants) and the
outputs are ``boxes (B, N, 4)`` xyxy letterboxed px and ``scores (B, N, C)`` probabilities; NMS is
left to the runtime's caller (e.g. :func:`assignlab.models.detector.postprocess_boxes`), which keeps
the graph free of data-dependent shapes. The spatial size is fixed (``N`` depends on it); the batch
is fixed too unless ``dynamic_batch=True``.

The legacy TorchScript exporter (``dynamo=False``) is used: the torch.export-based one needs the
extra ``onnxscript`` package. Opset 17 by default. :func:`head_output_from_onnx` wraps the raw
outputs of an ONNX runtime back into a ``HeadOutput`` so ``Detector.decode`` / ``postprocess`` work
on them unchanged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .detector import Detector, HeadOutput, decode_output

__all__ = ["export_onnx", "head_output_from_onnx", "onnx_output_names"]


class _ExportWrapper(nn.Module):
    """Returns plain tensors (ONNX outputs cannot be dataclasses)."""

    def __init__(self, model: Detector, img_size: tuple[int, int], with_decode: bool) -> None:
        super().__init__()
        self.model = model
        self.with_decode = with_decode
        self.priors = model.priors(img_size) if with_decode else None

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        if self.with_decode:
            assert self.priors is not None
            return decode_output(out, self.priors)
        if out.obj is None:
            return out.cls, out.box
        return out.cls, out.box, out.obj


def onnx_output_names(model: Detector, with_decode: bool = False) -> list[str]:
    """Output names of :func:`export_onnx` for ``model``."""
    if with_decode:
        return ["boxes", "scores"]
    return ["cls", "box", "obj"] if model.kind == "anchor" else ["cls", "box"]


def export_onnx(
    model: Detector,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] = 320,
    dynamic_batch: bool = False,
    with_decode: bool = False,
    opset: int = 17,
    batch: int = 1,
) -> str:
    """Export ``model`` (eval mode, CPU float32 copy of the graph) to ONNX at ``path``; returns the path.

    Args:
        img_size: input ``H = W`` (int) or ``(H, W)``.
        dynamic_batch: make the batch dimension symbolic (``"batch"``).
        with_decode: include :meth:`Detector.decode` (outputs ``boxes``, ``scores``).
        opset: ONNX opset (>= 17).
        batch: batch size of the example input used for tracing.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    h, w = int(img_size[0]), int(img_size[1])
    path = os.fspath(path)
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    try:
        wrapper = _ExportWrapper(model, (h, w), with_decode).eval()
        x = torch.zeros(batch, 3, h, w, dtype=p.dtype, device=p.device)
        names = onnx_output_names(model, with_decode)
        dyn = {k: {0: "batch"} for k in ["images", *names]} if dynamic_batch else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (x,),
                path,
                input_names=["images"],
                output_names=names,
                dynamic_axes=dyn,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    import onnx

    onnx.checker.check_model(onnx.load(path))
    return path


def head_output_from_onnx(outputs: Sequence[Any], model_or_kind: Detector | str, reg_max: int = 0) -> HeadOutput:
    """Wrap raw ONNX outputs ``[cls, box(, obj)]`` (numpy or tensors) as a :class:`HeadOutput`."""
    if isinstance(model_or_kind, Detector):
        kind, reg_max = model_or_kind.kind, model_or_kind.reg_max
    else:
        kind = model_or_kind
    ts = [torch.from_numpy(np.asarray(o)) if not isinstance(o, Tensor) else o for o in outputs]
    expected = 3 if kind == "anchor" else 2
    if len(ts) != expected:
        raise ValueError(f"{kind} head: expected {expected} raw outputs, got {len(ts)}")
    return HeadOutput(cls=ts[0], box=ts[1], obj=ts[2] if kind == "anchor" else None, kind=kind, reg_max=reg_max)
