"""What several sections' dataclasses share: bounded fields and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

# A learning rate over a run: constant, or cosine down to 0 at its last step (schedules.py).
Schedule = Literal["constant", "cosine"]


def at_least(low: float, default: Any, at_most: float | None = None) -> Any:
    """A dataclass field whose value must lie in [low, at_most] (the loader checks it)."""
    return dataclasses.field(default=default, metadata={"min": low, "max": at_most})
