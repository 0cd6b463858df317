"""Text and clinical scores."""

from cxr_impressions.data.labeller import label_text
from cxr_impressions.data.text import normalise
from cxr_impressions.evaluation.scoring import clinical_scores, text_metrics


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


def test_text_metrics() -> None:
    refs = ["no acute disease .", "mild stable cardiomegaly .", "no acute disease ."]
    perfect = text_metrics(refs, refs)
    assert perfect["bleu4"] == 1.0 and perfect["rouge_l"] == 1.0 and perfect["distinct"] == 2
    # nltk counts a hypothesis without 4-grams as 0 of 1 matched 4-grams: short texts lose.
    assert text_metrics(["mild cardiomegaly ."], ["mild cardiomegaly ."])["bleu4"] < 1.0
    worse = text_metrics(refs, ["no acute disease .", "no acute disease .", "lungs clear ."])
    assert worse["bleu4"] < 1.0 and worse["rouge_l"] < 1.0


def test_missing_java_is_one_line_before_any_work(tmp_path, monkeypatch) -> None:
    import pytest

    from cxr_impressions.errors import InputError
    from cxr_impressions.evaluation.meteor import MeteorScorer, require_java

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without java
    with pytest.raises(InputError, match="java not found.*apt-get install"):
        require_java()
    with pytest.raises(InputError, match="java not found"):
        MeteorScorer()
