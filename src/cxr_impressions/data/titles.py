"""The exam title as a decoder input (`model.exam_title`).

Each IU X-Ray report opens with its exam title ("Xray Chest PA and Lateral", "CHEST 2V
FRONTAL/LATERAL", "PA and lateral chest x-XXXX dated XXXX, ..."): the header line of the
reporting template, filled in before anything is read off the image. Templates differ by
radiologist, and so does the wording of the normal impression ("no acute cardiopulmonary
abnormality", "no active disease", "negative chest"). So the title says how the report will be
worded, never what the image shows; the image (and its predicted labels) must say that.

The vocabulary is the training split's titles, each normalised by `title_key`, that head at
least `min_count` training studies; id 0 is "no title, or one not in the vocabulary". Training
hides the title of a share of its studies (`train.exam_title_dropout`), so that the model also
writes an impression for a study with no title (`cxr predict` without `--exam-title`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

UNKNOWN = 0  # the id of a missing title or one outside the vocabulary


def title_key(title: str | None) -> str:
    """The form titles are matched in: lower case, each number as 0, runs of spaces and a
    trailing full stop dropped, so that "PA and lateral chest, 12/3" and "PA and lateral
    chest, 1/20." are one template."""
    text = re.sub(r"\d+", "0", (title or "").lower())
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip()


class TitleVocabulary:
    """Exam titles (their keys) to ids 1..n, in the order given; anything else is 0."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self._ids = {key: i + 1 for i, key in enumerate(self.keys)}

    def __len__(self) -> int:
        """The number of ids, the unknown one included."""
        return len(self.keys) + 1

    @classmethod
    def from_titles(cls, titles: Iterable[str | None], min_count: int) -> TitleVocabulary:
        """The keys of `titles` (the training split's) that occur at least `min_count` times,
        most frequent first (ties in key order, so the ids are reproducible)."""
        counts = Counter(key for key in map(title_key, titles) if key)
        kept = sorted((key for key, n in counts.items() if n >= min_count),
                      key=lambda key: (-counts[key], key))
        return cls(kept)

    def encode(self, titles: Iterable[str | None]) -> np.ndarray:
        """(N, 1) int32 ids, 0 for a missing or unknown title."""
        ids = [self._ids.get(title_key(t), UNKNOWN) for t in titles]
        return np.asarray(ids, dtype=np.int32).reshape(-1, 1)


def hide_titles(ids: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """`ids` with about `share` of the rows set to the unknown id (training's title dropout)."""
    if share <= 0:
        return ids
    return np.where(rng.random(ids.shape) < share, UNKNOWN, ids).astype(ids.dtype)
