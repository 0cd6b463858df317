"""The `train` section: how the caption model is trained."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .fields import Schedule, at_least


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int = at_least(1, 12)
    batch_size: int = at_least(1, 64)
    learning_rate: float = at_least(1e-6, 1e-3, at_most=1.0)
    patience: int = at_least(1, 3)
    monitor: Literal["val_loss", "val_bleu4"] = "val_loss"
    # constant: `learning_rate` throughout; cosine: from `learning_rate` down to 0 at the last
    # step of `epochs` (an early stop ends the run before it).
    schedule: Schedule = "constant"
    # > 0: validation scores, and the model keeps, the optimizer's exponential moving average of
    # the weights (this momentum per step) while training continues from the raw ones; 0: off.
    ema_momentum: float = at_least(0.0, 0.0, at_most=0.9999)
    seed: int = at_least(0, 0)
    # default | mirrored (every local GPU) | multi_worker (TF_CONFIG); README "Scaling out".
    # A param, not a machine setting: replicas round the loss differently, so the model differs.
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    # model.exam_title: the share of training studies shown with no title, so that the model
    # also writes for a study whose title is missing or new
    exam_title_dropout: float = at_least(0.0, 0.2, at_most=1.0)
