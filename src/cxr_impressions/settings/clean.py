"""The `clean` section: the target text, its normalisation, vocabulary and splits."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..errors import InputError
from .fields import at_least


@dataclasses.dataclass(frozen=True)
class CleanParams:
    target: Literal["impression", "findings"] = "impression"
    split: Literal["random", "kfold", "r2gen", "official"] = "random"
    r2gen_annotation: str = "../shared/iuxray/r2gen_annotation.json"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = at_least(0, 42)
    folds: int = at_least(3, 10)  # split kfold: the folds (one test, the next val, the rest train)
    fold: int = at_least(0, 0)  # split kfold: the fold tested (0 .. folds-1)
    min_count: int = at_least(1, 2)
    max_len: int = at_least(0, 0)  # 0: take max_len_percentile of the training lengths
    max_len_percentile: float = at_least(1.0, 95.0, at_most=100.0)
    sentence_token: str = "."  # empty: drop sentence boundaries
    start_token: str = "startseq"
    end_token: str = "endseq"

    def validate(self, source: str) -> None:
        if any(x < 0 for x in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise InputError(
                f"{source}: clean.fractions must be three non-negative numbers summing to 1, "
                f"got {list(self.fractions)}"
            )
        if self.fold >= self.folds:
            raise InputError(f"{source}: clean.fold must be below clean.folds ({self.folds}), "
                             f"got {self.fold}")
        if not self.start_token or not self.end_token or self.start_token == self.end_token:
            raise InputError(f"{source}: clean.start_token and clean.end_token must differ")
