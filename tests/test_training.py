"""Training inputs and the validation-chosen label threshold."""


import numpy as np
import pytest

from cxr_impressions.captioning.studies import Studies
from cxr_impressions.captioning.training import choose_threshold, make_dataset, training_pairs

from .tiny_models import tiny


def test_prefix_training_pairs_hide_the_future() -> None:
    model, vocab = tiny("bilstm_attention")
    tokens = np.array([[2, 4, 5, 3, 0, 0], [2, 6, 3, 0, 0, 0]], np.int32)
    studies = Studies(np.array([1, 2]), np.array([["a", "b"], ["c", ""]]),
                      np.zeros((2, 2, 8), np.float32), np.ones((2, 2), np.float32), tokens,
                      ["no effusion", "."], np.array([0.0, 1.0], np.float32))
    index, prefix = training_pairs(studies, True)
    assert index.tolist() == [0, 0, 0, 1, 1] and prefix.tolist() == [1, 2, 3, 1, 2]
    inputs, targets = next(iter(make_dataset(studies, model, 8, False, 0)))
    np.testing.assert_array_equal(inputs["tokens"].numpy()[:3],
                                  [[2, 0, 0, 0, 0], [2, 4, 0, 0, 0], [2, 4, 5, 0, 0]])
    assert targets["logits"].numpy().tolist() == [4, 5, 3, 6, 3]
    # The reference's label is both the decoder's condition and the abnormal head's target.
    assert inputs["condition"].numpy()[:, 0].tolist() == [0, 0, 0, 1, 1]
    assert targets["abnormal"].numpy()[:, 0].tolist() == [0, 0, 0, 1, 1]


def test_threshold_is_the_best_f1_on_the_given_split() -> None:
    probabilities = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 1])
    threshold, f1 = choose_threshold(probabilities, labels)
    assert threshold == 0.35 and f1 == pytest.approx(2 * 3 / (4 + 3))
