"""Assigners, one module per method. Every class is configured in its constructor and called as
``assigner(priors, gt, **predictions) -> Assignment``.

``ASSIGNERS`` maps the command-line name (the lowercase method name) to the class.
"""

# -- one import per method module (keep sorted by CLI name) --
from .atss import ATSSAssigner
from .base import Assigner
from .centernet import CenterNetAssigner
from .dsl import DynamicSoftLabelAssigner
from .fcos import FCOSAssigner
from .hambox import HAMBoxAssigner
from .maxiou import MaxIoUAssigner
from .noisy_anchor import NoisyAnchorAssigner
from .simota import SimOTAAssigner
from .tal import TaskAlignedAssigner
from .topk import TopKAssigner
from .yolov5 import YOLOv5Assigner

ASSIGNERS: dict[str, type[Assigner]] = {
    # "name": Class,
    "atss": ATSSAssigner,
    "centernet": CenterNetAssigner,
    "dsl": DynamicSoftLabelAssigner,
    "fcos": FCOSAssigner,
    "hambox": HAMBoxAssigner,
    "maxiou": MaxIoUAssigner,
    "noisy": NoisyAnchorAssigner,
    "simota": SimOTAAssigner,
    "tal": TaskAlignedAssigner,
    "topk": TopKAssigner,
    "yolov5": YOLOv5Assigner,
}

__all__ = ["ASSIGNERS", "Assigner", "ATSSAssigner", "FCOSAssigner", "MaxIoUAssigner", "TopKAssigner", "CenterNetAssigner", "DynamicSoftLabelAssigner", "HAMBoxAssigner", "NoisyAnchorAssigner", "SimOTAAssigner",
           "TaskAlignedAssigner", "YOLOv5Assigner"]
