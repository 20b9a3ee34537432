"""Training and evaluation: config, the training loop (resume, DDP), checkpoints, COCO evaluation.

The engine only wires the other parts (data, model, assigner, loss); see :mod:`.train`.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, load_train_config, save_train_config
from .ema import ModelEMA
from .evaluate import coco_eval, evaluate, evaluate_checkpoint
from .schedule import WarmupCosineSchedule
from .train import train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ModelEMA",
    "TrainConfig",
    "WarmupCosineSchedule",
    "coco_eval",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_train_config",
    "save_checkpoint",
    "save_train_config",
    "train",
]
