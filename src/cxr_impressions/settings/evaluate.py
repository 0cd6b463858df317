"""The `evaluate` section: the test split's worst cases and bootstrap intervals."""

from __future__ import annotations

import dataclasses

from .fields import at_least


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    worst: int = at_least(1, 20)
    bootstrap: int = at_least(1, 1000)  # resamples of the test studies for the 95% intervals
    seed: int = at_least(0, 0)  # seeds the bootstrap resamples
