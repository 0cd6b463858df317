"""The learning-rate schedules that `finetune.schedule` and `train.schedule` name."""

from __future__ import annotations

from .settings.fields import Schedule


def learning_rate(rate: float, schedule: Schedule, steps: int) -> float | object:
    """The optimizer's learning rate for a run of `steps` optimizer steps: `rate` throughout, or
    with `cosine` a Keras schedule from `rate` down to 0 at the last step along half a cosine.
    A schedule is a function of the optimizer's step count, which is saved with the optimizer's
    state, so a resumed run goes on along the same curve."""
    if schedule == "constant":
        return rate
    import keras

    return keras.optimizers.schedules.CosineDecay(rate, max(steps, 1))
