"""The detector used to compare assigners: MiniVGG backbone, FPN, anchor / anchor-free heads.

Inference and deployment: :func:`load_detector` / ``Detector.load``, ``Detector.predict``
(:mod:`.predictor`) and :func:`export_onnx` (:mod:`.export`).
"""

from .detector import DEFAULT_ANCHORS, Detector, HeadOutput, count_macs
from .export import export_onnx
from .fpn import FPN
from .heads import DetectionHead
from .mini_vgg import MiniVGG
from .predictor import load_detector, predict

__all__ = [
    "DEFAULT_ANCHORS",
    "DetectionHead",
    "Detector",
    "FPN",
    "HeadOutput",
    "MiniVGG",
    "count_macs",
    "export_onnx",
    "load_detector",
    "predict",
]
