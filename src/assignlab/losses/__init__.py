"""Detection losses. Each is a small pure function over tensors plus a thin module / config class,
and they consume the :class:`~assignlab.core.Assignment` directly, so any assigner combines with
any loss.

==================  ==============================================================================
module              contents
==================  ==============================================================================
``reduce``          :func:`weight_reduce` (none / mean / sum / avg_factor, mmdetection semantics)
``targets``         dense ``(B, N, C)`` class targets from an assignment
``bce``             BCE with logits (``"bce"``)
``focal``           sigmoid focal loss (``"focal"``; Lin et al., ICCV 2017)
``gfl``             Quality / Distribution Focal Loss, DFL integral (``"qfl"``; Li et al., NeurIPS 2020)
``varifocal``       Varifocal loss (``"vfl"``; Zhang et al., CVPR 2021)
``iou``             IoU / GIoU / DIoU / CIoU losses (finite CIoU)
``objectness``      IoU-target objectness with per-level balance (YOLOv5)
``ohem``            dense online hard example mining
``normalize``       normalisers (num_pos / target_sum / EMA) and the loss-balance monitor
``detection``       :class:`DetectionLoss` (box + obj + cls + dfl over any assignment)
``yolov5``          YOLOv5 ``ComputeLoss`` over many-to-many match rows
``ultralytics``     YOLOv8 ``v8DetectionLoss`` preset
==================  ==============================================================================

``LOSSES`` maps the CLI names of the classification losses to their classes.
"""

from .bce import BCEWithLogitsLoss, bce_with_logits
from .detection import DEFAULT_WEIGHTS, LOSS_PRESETS, LOSSES, DetectionLoss, HeadOutputLike, build_cls_loss
from .focal import FocalLoss, sigmoid_focal_loss
from .gfl import (
    DistributionFocalLoss,
    QualityFocalLoss,
    dfl_integral,
    distances_to_dfl_target,
    distribution_focal_loss,
    qfl_dense_target,
    quality_focal_loss,
)
from .iou import (
    BOX_LOSSES,
    MMDET_CIOU,
    ULTRALYTICS_CIOU,
    CIoULoss,
    DIoULoss,
    GIoULoss,
    IoULoss,
    aligned_iou,
    box_iou_loss,
    complete_iou,
)
from .normalize import NORMALIZE_MODES, LossBalanceMonitor, Normalizer, raw_normalizer
from .objectness import (
    YOLOV5_BALANCE,
    ObjectnessLoss,
    iou_objectness_target,
    level_balanced_bce,
    level_balanced_mean,
    scatter_objectness_target,
)
from .ohem import OHEM, ohem_weights
from .reduce import ElementwiseLoss, weight_reduce
from .targets import class_one_hot, classification_targets
from .ultralytics import ULTRALYTICS_WEIGHTS, V8DetectionLoss, v8_detection_loss
from .varifocal import VarifocalLoss, varifocal_loss
from .yolov5 import YOLOv5Loss

__all__ = [
    "BCEWithLogitsLoss",
    "BOX_LOSSES",
    "CIoULoss",
    "DEFAULT_WEIGHTS",
    "DIoULoss",
    "DetectionLoss",
    "DistributionFocalLoss",
    "ElementwiseLoss",
    "FocalLoss",
    "GIoULoss",
    "HeadOutputLike",
    "IoULoss",
    "LOSSES",
    "LOSS_PRESETS",
    "LossBalanceMonitor",
    "MMDET_CIOU",
    "NORMALIZE_MODES",
    "Normalizer",
    "OHEM",
    "ObjectnessLoss",
    "QualityFocalLoss",
    "ULTRALYTICS_CIOU",
    "ULTRALYTICS_WEIGHTS",
    "V8DetectionLoss",
    "VarifocalLoss",
    "YOLOV5_BALANCE",
    "YOLOv5Loss",
    "aligned_iou",
    "bce_with_logits",
    "box_iou_loss",
    "build_cls_loss",
    "class_one_hot",
    "classification_targets",
    "complete_iou",
    "dfl_integral",
    "distances_to_dfl_target",
    "distribution_focal_loss",
    "iou_objectness_target",
    "level_balanced_bce",
    "level_balanced_mean",
    "ohem_weights",
    "qfl_dense_target",
    "quality_focal_loss",
    "raw_normalizer",
    "scatter_objectness_target",
    "sigmoid_focal_loss",
    "v8_detection_loss",
    "varifocal_loss",
    "weight_reduce",
]
