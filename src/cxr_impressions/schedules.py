"""What `finetune` and `train` share about their optimizers: the learning-rate schedules that
`finetune.schedule` and `train.schedule` name, and the swap to and from the moving average of
the weights that `finetune.ema_momentum` and `train.ema_momentum` keep."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def load_moving_average(variables: Sequence[object], optimizer: object) -> list[np.ndarray]:
    """Put the moving average that the optimizer (Keras, `use_ema=True`) keeps of `variables`
    into them, and return their raw values, for `restore_raw` once the average has been scored
    or saved: training goes on from the raw weights, and a resume from the optimizer's state
    finds the average where it left it."""
    raw = [np.array(v.numpy()) for v in variables]
    optimizer.finalize_variable_values(variables)
    return raw


def restore_raw(variables: Sequence[object], raw: Sequence[np.ndarray]) -> None:
    """Undo `load_moving_average`."""
    for variable, value in zip(variables, raw, strict=True):
        variable.assign(value)
