"""Baselines scored beside every model, on the same split: the constant, the constant by exam
title, and 1-NN retrieval."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..data.titles import UNKNOWN, TitleVocabulary

# The baselines evaluate scores the model against, in the order tables show them.
BASELINES = ("constant", "title_constant", "nearest_neighbour")


def constant_baseline(train_texts: Sequence[str], n: int) -> list[str]:
    """The most frequent training text, for every one of `n` studies."""
    most_common, _ = Counter(train_texts).most_common(1)[0]
    return [most_common] * n


def title_constant_baseline(train_titles: Sequence[str], train_texts: Sequence[str],
                            titles: Sequence[str], min_count: int) -> list[str]:
    """Per study, the most frequent training text among the training studies with its exam
    title (titles of at least `min_count` training studies, as `model.exam_title` knows them;
    ties go to the text first in sort order); the constant for any other study. Blind to the
    image: what the reporting template alone predicts."""
    vocabulary = TitleVocabulary.from_titles(train_titles, min_count)
    texts_by_title: dict[int, Counter] = {}
    for title_id, text in zip(vocabulary.encode(train_titles)[:, 0], train_texts, strict=True):
        texts_by_title.setdefault(int(title_id), Counter())[text] += 1
    constant = constant_baseline(train_texts, 1)[0]
    chosen = {title_id: min(counts, key=lambda text, c=counts: (-c[text], text))
              for title_id, counts in texts_by_title.items() if title_id != UNKNOWN}
    return [chosen.get(int(title_id), constant) for title_id in vocabulary.encode(titles)[:, 0]]


def study_vectors(pooled: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Each study's pooled features averaged over its views, L2-normalised."""
    weights = views[:, :, None]
    mean = (pooled * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def nearest_neighbour_baseline(train_vectors: np.ndarray, train_texts: Sequence[str],
                               query_vectors: np.ndarray) -> list[str]:
    """The text of the most cosine-similar training study, for each query study."""
    similarity = query_vectors @ train_vectors.T
    return [train_texts[i] for i in similarity.argmax(axis=1)]
