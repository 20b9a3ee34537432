"""Learning-rate schedule: linear warmup, then cosine (or linear) decay, by optimizer step.

The rate is a pure function of the global step, so a resumed run only needs the step counter to
continue on exactly the same curve. With ``W`` warmup steps, ``T`` total steps, peak rate ``lr``
and end rate ``lr_end = lr * final_ratio``, the rate used for step ``k`` (0-based) is::

    k <  W:  lr * (k + 1) / W                                   # linear warmup, reaches lr at k = W-1
    k >= W:  t = (k - W) / max(1, T - 1 - W)                    # 0 at the first decay step, 1 at the last
             cosine: lr_end + (lr - lr_end) * (1 + cos(pi * t)) / 2
             linear: lr + (lr_end - lr) * t

Worked example, ``lr = 0.1``, ``final_ratio = 0.1`` (lr_end = 0.01), ``W = 2``, ``T = 10``::

    step   0      1     2     5                                  9
    lr     0.05   0.1   0.1   0.01 + 0.09 * (1 + cos(3/7 pi))/2  0.01
                              = 0.06501...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["WarmupCosineSchedule"]


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """``schedule(step) -> lr`` (see the module docstring).

    Attributes:
        base_lr: peak rate (reached at the end of warmup).
        total_steps: optimizer steps of the whole run.
        warmup_steps: linear warmup steps (0 = none; capped at ``total_steps``).
        final_ratio: end rate as a fraction of ``base_lr``.
        cosine: cosine decay if True, linear otherwise.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    final_ratio: float = 0.01
    cosine: bool = True

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final_ratio <= 1.0:
            raise ValueError(f"final_ratio must be in [0, 1], got {self.final_ratio}")

    @staticmethod
    def for_run(base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                final_ratio: float = 0.01, cosine: bool = True) -> WarmupCosineSchedule:
        """The schedule of a run of ``epochs`` x ``steps_per_epoch`` steps."""
        total = max(1, int(epochs) * int(steps_per_epoch))
        warm = min(total, int(round(float(warmup_epochs) * steps_per_epoch)))
        return WarmupCosineSchedule(base_lr, total, warm, final_ratio, cosine)

    def __call__(self, step: int) -> float:
        W, T = min(self.warmup_steps, self.total_steps), self.total_steps
        k = min(max(int(step), 0), T - 1)
        if k < W:
            return self.base_lr * (k + 1) / W
        end = self.base_lr * self.final_ratio
        t = (k - W) / max(1, T - 1 - W)
        if self.cosine:
            return end + (self.base_lr - end) * (1.0 + math.cos(math.pi * t)) / 2.0
        return self.base_lr + (end - self.base_lr) * t
