"""Assigners, one module per method. Every class is configured in its constructor and called as
``assigner(priors, gt, **predictions) -> Assignment``.

``ASSIGNERS`` maps the command-line name (the lowercase method name) to the class.
"""

from .base import Assigner

# -- one import per method module (keep sorted by CLI name) --
from .centernet import CenterNetAssigner
from .hambox import HAMBoxAssigner
from .noisy_anchor import NoisyAnchorAssigner
from .yolov5 import YOLOv5Assigner

ASSIGNERS: dict[str, type[Assigner]] = {
    # "name": Class,
    "centernet": CenterNetAssigner,
    "hambox": HAMBoxAssigner,
    "noisy": NoisyAnchorAssigner,
    "yolov5": YOLOv5Assigner,
}

__all__ = ["ASSIGNERS", "Assigner", "CenterNetAssigner", "HAMBoxAssigner", "NoisyAnchorAssigner", "YOLOv5Assigner"]
