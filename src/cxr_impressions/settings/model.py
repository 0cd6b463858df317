"""The `model` section: the caption model's architecture and conditioning."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..errors import InputError
from .fields import at_least


@dataclasses.dataclass(frozen=True)
class ModelParams:
    kind: Literal["merge", "bilstm_attention", "transformer"] = "transformer"
    units: int = at_least(8, 256)
    fuse: Literal["concat", "sum"] = "concat"  # bilstm_attention: how the two views combine
    freeze_embeddings: bool = False
    dropout: float = at_least(0.0, 0.3, at_most=0.9)
    heads: int = at_least(1, 4)  # transformer
    layers: int = at_least(1, 2)  # transformer decoder layers
    # transformer: average-pool the grid by this factor (10x10 by 3: 3x3 bins of 4x4 cells)
    grid_pool: int = at_least(1, 3)
    # Decode conditioned on predicted labels: abnormal (one), findings (13 findings + abnormal)
    condition: Literal["findings", "abnormal", "none"] = "findings"
    # transformer: attend to the impressions of this many most similar training studies (0: off)
    retrieval_k: int = at_least(0, 0)
    # Also condition on the report's exam title, the template's header line (data/titles.py);
    # titles of fewer training studies than exam_title_min_count count as unknown
    exam_title: bool = True  # chosen on validation (README "Results")
    exam_title_min_count: int = at_least(1, 5)
    # Train this many models (train seeds `member_seeds`) and decode with their average: the
    # mean of their label probabilities and of each next word's probability (models.ensemble)
    ensemble: int = at_least(1, 1)

    def validate(self, source: str) -> None:
        if self.retrieval_k and self.kind != "transformer":
            raise InputError(f"{source}: model.retrieval_k needs model.kind: transformer (the "
                             f"memory is cross-attended), got {self.kind}; set it to 0")

    def member_seeds(self, seed: int) -> list[int]:
        """The train seed of each ensemble member under `train.seed: seed`: seed x ensemble + i,
        so that the ensembles of two train seeds share no member (ensemble 1: `seed` itself)."""
        return [seed * self.ensemble + i for i in range(self.ensemble)]

    @property
    def needs_grid(self) -> bool:
        """Whether the model reads the spatial grid of regions (else the pooled vectors)."""
        return self.kind == "transformer"
