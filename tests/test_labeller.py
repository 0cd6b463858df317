"""The rule-based labeller: findings, negation and MeSH codes."""

import pytest

from cxr_impressions.data.labeller import label_text, mesh_labels
from cxr_impressions.data.text import normalise


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
        # one negation over a list of nine words (normalised text has no commas)
        ("The lungs are normally inflated without evidence of focal airspace disease, pleural "
         "effusion, or pneumothorax.", "pneumothorax", False),
        ("No focal consolidation, suspicious pulmonary opacity, pneumothorax, or definite "
         "pleural effusion.", "pleural_effusion", False),
        # pseudo-negations: the finding is reported, unchanged
        ("No interval change in the bilateral opacities.", "opacity", True),
        ("No significant change in right pneumothorax.", "pneumothorax", True),
        ("Without comparison, a calcified granuloma in the right upper lobe.", "granuloma", True),
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

