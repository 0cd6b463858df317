"""The `finetune` section: the backbone adapted to chest X-rays, before `features`."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..errors import InputError
from .fields import Schedule, at_least


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    """The backbone adapted to chest X-rays (multi-label MeSH findings), before `features`.

    The backbone, image size and resize policy are the features section's."""

    weights: str = "imagenet"  # the starting point: imagenet | none | path to a Keras weights file
    train_from: Literal["top", "all"] = "top"  # top: layers above `cut`, on cached activations
    cut: str = ""  # the first layer above the cut ("": the backbone's default; Xception: block 12)
    labels: Literal["mesh", "text"] = "mesh"  # MeSH codes, or the labeller on the target text
    epochs: int = at_least(1, 3)
    batch_size: int = at_least(1, 32)
    learning_rate: float = at_least(1e-7, 2e-4, at_most=1.0)
    # constant: `learning_rate` throughout; cosine: from `learning_rate` down to 0 at the last
    # step, along half a cosine, so the last epochs take smaller steps.
    schedule: Schedule = "constant"
    # > 0: each epoch's validation scores, and the stage keeps, the optimizer's exponential
    # moving average of the trained weights (this momentum per step), while training goes on
    # from the raw ones; 0: off.
    ema_momentum: float = at_least(0.0, 0.0, at_most=0.9999)
    # > 0: after every step the backbone's trained weights move back toward their starting
    # values (the ImageNet weights, or `weights`) by learning_rate x this of the difference, a
    # decoupled L2-SP (AdamW's weight decay, toward the start rather than toward zero), so the
    # adapted backbone keeps what it already knew; the head is not pulled. 0: off.
    anchor_decay: float = at_least(0.0, 0.0)
    seed: int = at_least(0, 0)
    # train_from top: shift each training image's cached activations by up to this many cells
    # of the cut's grid, a random translation (zero fill) drawn per epoch; 0: none.
    activation_shift: int = at_least(0, 0, at_most=8)
    # > 0: mixup of the training examples (at the cut with train_from top, of the images with
    # all): each is mixed with a partner from its batch, x = l x + (1 - l) x' and the same for
    # the targets, l ~ Beta(this, this) per example, drawn from `seed` and the epoch; 0: off.
    mixup: float = at_least(0.0, 0.0, at_most=10.0)
    # Extra targets for the head, trained and not scored: every other MeSH heading (the term
    # before "/", e.g. calcinosis, aorta, scoliosis) on at least this many training studies; 0:
    # none. More to tell apart may teach the backbone more than the 14 targets alone.
    auxiliary_mesh: int = at_least(0, 0)
    # With labels: mesh, also train the head on the labeller's reading of the target text (the
    # same 14 targets, read from the words the captioning model learns to write), trained and
    # not scored: the backbone then learns what the impressions say as well as the MeSH codes.
    auxiliary_text: bool = False
    # Each target's positives weigh (training negatives / positives) ** this in the loss, so
    # rare findings are not drowned by the common negatives; 0: unweighted, 1: balanced.
    positive_weight_power: float = at_least(0.0, 0.0, at_most=1.0)
    # image: every training image is one example with its study's labels; study: every
    # training study is one example, its logits the mean of its views' (the pooled vectors'
    # mean through the linear head, as the probes and the captioning read a study), so a
    # finding seen in one view is not taught to the other as if it showed there.
    # `batch_size` counts images either way (study: batch_size // 2 studies of two views; a
    # study with one view reads it twice). train_from top only.
    unit: Literal["image", "study"] = "image"
    # random: the head starts at Keras' random initialisation; probe: at the frozen backbone's
    # linear probes (fitted as metrics/finetune.json's, on the training studies, L2 chosen on
    # validation), so the first steps adapt the backbone rather than correct a random head
    # (LP-FT, "linear probing then fine-tuning").
    head_init: Literal["random", "probe"] = "random"
    # bfloat16: the backbone under Keras' mixed_bfloat16 policy (cache, steps and passes) where
    # the CPU (AVX512_BF16 or AMX) or a GPU supports it, else float32 with a one-line notice.
    # Chosen on validation (README "Results"): as good, and 2.4x faster steps where supported.
    precision: Literal["float32", "bfloat16"] = "bfloat16"

    def validate(self, source: str) -> None:
        if self.unit == "study" and self.train_from != "top":
            raise InputError(f"{source}: finetune.unit: study needs finetune.train_from: top "
                             "(the cached activations); with train_from: all, use unit: image")
        if self.unit == "study" and self.batch_size < 2:
            raise InputError(f"{source}: finetune.unit: study needs finetune.batch_size >= 2 "
                             "(it counts images: two views per study)")
        if self.anchor_decay * self.learning_rate > 1.0:
            raise InputError(f"{source}: finetune.anchor_decay x finetune.learning_rate must be "
                             f"at most 1 (the share of the distance to the starting weights "
                             f"taken back per step), got {self.anchor_decay} x "
                             f"{self.learning_rate} = {self.anchor_decay * self.learning_rate:g}")
        if self.auxiliary_text and self.labels == "text":
            raise InputError(f"{source}: finetune.auxiliary_text needs finetune.labels: mesh "
                             "(with labels: text the text is already the target); set it false")
