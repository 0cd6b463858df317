"""The `embeddings` section: the GloVe file behind the word embedding matrix."""

from __future__ import annotations

import dataclasses

from .fields import at_least


@dataclasses.dataclass(frozen=True)
class EmbeddingsParams:
    glove: str = "data/glove/glove.6B.50d.iuxray-words.txt.gz"
    member: str = ""  # with a .zip: the member to read, e.g. glove.6B.300d.txt
    dim: int = at_least(0, 0)  # 0: take the file's dimension; else it must match
    seed: int = at_least(0, 0)
