"""The detector used to compare assigners: MiniVGG backbone, FPN, anchor / anchor-free heads."""

from .detector import DEFAULT_ANCHORS, Detector, HeadOutput, count_macs
from .fpn import FPN
from .heads import DetectionHead
from .mini_vgg import MiniVGG

__all__ = ["DEFAULT_ANCHORS", "DetectionHead", "Detector", "FPN", "HeadOutput", "MiniVGG", "count_macs"]
