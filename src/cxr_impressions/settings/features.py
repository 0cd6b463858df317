"""The `features` section: the backbone and how it runs over the images."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .fields import at_least


@dataclasses.dataclass(frozen=True)
class FeaturesParams:
    backbone: Literal["xception", "inceptionv3", "densenet121"] = "xception"
    # finetuned (finetune's output; chosen on validation AUC, README "Results") | imagenet |
    # none | path to a Keras weights file
    weights: str = "finetuned"
    image_size: int = at_least(32, 299)
    resize: Literal["squash", "pad"] = "squash"
    grid: bool = True  # also store the spatial grid (the transformer reads it)
    batch_size: int = at_least(1, 8)
    seed: int = at_least(0, 0)
    # bfloat16: the backbone under Keras' mixed_bfloat16 policy where the CPU (AVX512_BF16 or
    # AMX) or a GPU supports it, else float32 with a one-line notice; outputs stay float32.
    precision: Literal["float32", "bfloat16"] = "float32"
