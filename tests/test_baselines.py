"""The constant, closest-constant and nearest-neighbour baselines."""

import numpy as np
from nltk.translate.bleu_score import corpus_bleu

from cxr_impressions.captioning.retrieval import study_vectors
from cxr_impressions.evaluation.baselines import (
    closest_constant_baseline,
    closest_text,
    constant_baseline,
    nearest_neighbour_baseline,
)


def test_constant_and_nearest_neighbour_baselines() -> None:
    assert constant_baseline(["a .", "b .", "a ."], 2) == ["a .", "a ."]
    pooled = np.array([[[1, 0], [1, 0]], [[0, 1], [0, 1]]], np.float32)
    train = study_vectors(pooled, np.array([[1, 1], [1, 0]], np.float32))
    query = study_vectors(np.array([[[0.1, 0.9], [0, 0]]], np.float32),
                          np.array([[1, 0]], np.float32))
    assert nearest_neighbour_baseline(train, ["left", "right"], query) == ["right"]


def test_the_closest_constant_is_the_frequent_text_with_the_best_bleu4_on_training() -> None:
    normal = "heart size normal . lungs are clear . no effusion ."
    longer = f"{normal} no pneumothorax ."
    train = (["no acute disease ."] * 5 + [normal] * 3 + [longer] * 4
             + [f"{longer} spine ok ."])  # written once: never a candidate
    assert constant_baseline(train, 1) == ["no acute disease ."]
    # nltk's corpus BLEU-4 of each text said for every training study, the oracle.
    nltk_bleu4 = {text: corpus_bleu([[r.split()] for r in train], [text.split()] * len(train))
                  for text in ("no acute disease .", normal, longer)}
    assert max(nltk_bleu4, key=nltk_bleu4.get) == normal  # neither the commonest nor the longest
    assert closest_constant_baseline(train, 2) == [normal, normal]
    # Written fewer than three times: no candidate, so the constant stands in.
    assert closest_text(["a b c d ."], {"a b c d .": 2}) is None
    assert closest_constant_baseline(["a b c d .", "a b c d .", "e f ."], 1) == ["a b c d ."]


def test_closest_text_breaks_ties_by_frequency_then_sort_order() -> None:
    references = ["x y z w .", "p q r s ."]
    assert closest_text(references, {"x y z w .": 3, "p q r s .": 4}) == "p q r s ."
    assert closest_text(references, {"x y z w .": 3, "p q r s .": 3}) == "p q r s ."
    assert closest_text(references, {"x y z w .": 3, "p q r s .": 3}, min_count=4) is None
