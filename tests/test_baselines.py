"""The constant and nearest-neighbour baselines."""

import numpy as np

from cxr_impressions.evaluation.baselines import (
    constant_baseline,
    nearest_neighbour_baseline,
    study_vectors,
)


def test_constant_and_nearest_neighbour_baselines() -> None:
    assert constant_baseline(["a .", "b .", "a ."], 2) == ["a .", "a ."]
    pooled = np.array([[[1, 0], [1, 0]], [[0, 1], [0, 1]]], np.float32)
    train = study_vectors(pooled, np.array([[1, 1], [1, 0]], np.float32))
    query = study_vectors(np.array([[[0.1, 0.9], [0, 0]]], np.float32),
                          np.array([[1, 0]], np.float32))
    assert nearest_neighbour_baseline(train, ["left", "right"], query) == ["right"]
