"""Baselines scored beside every model, on the same split: constant and 1-NN retrieval."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def constant_baseline(train_texts: Sequence[str], n: int) -> list[str]:
    """The most frequent training text, for every one of `n` studies."""
    most_common, _ = Counter(train_texts).most_common(1)[0]
    return [most_common] * n


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
