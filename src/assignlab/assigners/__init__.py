"""Assigners, one module per method. Every class is configured in its constructor and called as
``assigner(priors, gt, **predictions) -> Assignment``.

``ASSIGNERS`` maps the command-line name (the lowercase method name) to the class.
"""

from .base import Assigner

# -- one import per method module (keep sorted by CLI name) --
from .centernet import CenterNetAssigner
from .dsl import DynamicSoftLabelAssigner
from .hambox import HAMBoxAssigner
from .noisy_anchor import NoisyAnchorAssigner
from .simota import SimOTAAssigner
from .tal import TaskAlignedAssigner
from .yolov5 import YOLOv5Assigner

ASSIGNERS: dict[str, type[Assigner]] = {
    # "name": Class,
    "centernet": CenterNetAssigner,
    "dsl": DynamicSoftLabelAssigner,
    "hambox": HAMBoxAssigner,
    "noisy": NoisyAnchorAssigner,
    "simota": SimOTAAssigner,
    "tal": TaskAlignedAssigner,
    "yolov5": YOLOv5Assigner,
}

__all__ = ["ASSIGNERS", "Assigner", "CenterNetAssigner", "DynamicSoftLabelAssigner", "HAMBoxAssigner", "NoisyAnchorAssigner", "SimOTAAssigner",
           "TaskAlignedAssigner", "YOLOv5Assigner"]
