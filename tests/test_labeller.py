import numpy as np
import pytest

from cxr_impressions.baselines import (
    constant_baseline,
    nearest_neighbour_baseline,
    study_vectors,
)
from cxr_impressions.labeller import label_text, mesh_labels
from cxr_impressions.scoring import clinical_scores, text_metrics
from cxr_impressions.text import normalise


@pytest.mark.parametrize(
    ("text", "finding", "expected"),
    [
        ("No pleural effusion or pneumothorax.", "pleural_effusion", False),
        ("Small left pleural effusion.", "pleural_effusion", True),
        ("No pneumothorax but small bilateral effusions.", "pleural_effusion", True),
        ("No pneumothorax but small bilateral effusions.", "pneumothorax", False),
        ("Mild cardiomegaly. No edema.", "cardiomegaly", True),
        ("Heart size is normal.", "cardiomegaly", False),
        ("The heart is mildly enlarged.", "cardiomegaly", True),
        ("Calcified granuloma in the right upper lobe.", "granuloma", True),
        ("Opacity may represent atelectasis.", "atelectasis", True),
        ("Resolved left basilar opacity.", "opacity", False),
        ("No focal consolidation, effusion, or pneumothorax.", "consolidation", False),
    ],
)
def test_findings_with_negation(text: str, finding: str, expected: bool) -> None:
    assert label_text(normalise(text))[finding] is expected


def test_normal_impressions_are_not_abnormal() -> None:
    for text in ("No acute cardiopulmonary abnormality.", "Normal chest x-XXXX.",
                 "No active disease.", "Heart size normal. Lungs are clear."):
        assert not label_text(normalise(text))["abnormal"], text


def test_mesh_labels() -> None:
    labels = mesh_labels("Cardiomegaly/borderline;Pulmonary Artery/enlarged")
    assert labels["abnormal"] and labels["cardiomegaly"] and not labels["pleural_effusion"]
    assert not mesh_labels("normal")["abnormal"]
    assert mesh_labels("Calcified Granuloma/lung/upper lobe/right")["granuloma"]
    assert mesh_labels("Spine/degenerative/mild")["degenerative_spine"]


def test_clinical_scores() -> None:
    refs = [label_text(normalise(t)) for t in ("Cardiomegaly.", "No acute disease.",
                                               "Small effusion.", "No acute disease.")]
    hyps = [label_text(normalise(t)) for t in ("Mild cardiomegaly.", "No acute disease.",
                                               "No acute disease.", "Small effusion.")]
    scores = clinical_scores(refs, hyps)
    assert scores["abnormal"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert scores["findings_f1"]["cardiomegaly"] == 1.0
    assert scores["findings_f1"]["pleural_effusion"] == 0.0
    assert scores["findings_macro_f1"] == 0.5


def test_text_metrics_and_baselines() -> None:
    refs = ["no acute disease .", "mild stable cardiomegaly .", "no acute disease ."]
    perfect = text_metrics(refs, refs)
    assert perfect["bleu4"] == 1.0 and perfect["rouge_l"] == 1.0 and perfect["distinct"] == 2
    # nltk counts a hypothesis without 4-grams as 0 of 1 matched 4-grams: short texts lose.
    assert text_metrics(["mild cardiomegaly ."], ["mild cardiomegaly ."])["bleu4"] < 1.0
    worse = text_metrics(refs, ["no acute disease .", "no acute disease .", "lungs clear ."])
    assert worse["bleu4"] < 1.0 and worse["rouge_l"] < 1.0
    assert constant_baseline(["a .", "b .", "a ."], 2) == ["a .", "a ."]
    pooled = np.array([[[1, 0], [1, 0]], [[0, 1], [0, 1]]], np.float32)
    train = study_vectors(pooled, np.array([[1, 1], [1, 0]], np.float32))
    query = study_vectors(np.array([[[0.1, 0.9], [0, 0]]], np.float32),
                          np.array([[1, 0]], np.float32))
    assert nearest_neighbour_baseline(train, ["left", "right"], query) == ["right"]
