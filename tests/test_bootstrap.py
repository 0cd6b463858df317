"""Bootstrap intervals and paired differences over studies (evaluation/bootstrap.py)."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from nltk.translate.bleu_score import corpus_bleu

from cxr_impressions.data.labeller import label_text
from cxr_impressions.data.text import normalise
from cxr_impressions.evaluation.bootstrap import (
    CLINICAL_METRICS,
    TEXT_METRICS,
    StudyStatistics,
    bleu_scores,
    bleu_statistics,
    metric_values,
    resample_counts,
    significance,
    study_statistics,
)
from cxr_impressions.evaluation.scoring import (
    BLEU_WEIGHTS,
    clinical_scores,
    text_metrics,
)
from cxr_impressions.evaluation.tables import evaluate_systems

from .helpers import SAMPLE

BOOTSTRAP_METRICS = [m for m in (*TEXT_METRICS, *CLINICAL_METRICS) if m != "meteor"]


@pytest.fixture(scope="module")
def pool() -> dict:
    """The sample's impressions as references; a 'model' that is right 40% of the time and
    otherwise says another study's impression; labels computed once (the labeller is slow)."""
    reports = pd.read_csv(SAMPLE / "indiana_reports.csv")
    references = [t for t in (normalise(str(x)) for x in reports["impression"].fillna("")) if t]
    rng = np.random.default_rng(1)
    model = [r if rng.random() < 0.4 else references[rng.integers(len(references))]
             for r in references]
    constant = [Counter(references).most_common(1)[0][0]] * len(references)
    labels = {t: label_text(t) for t in {*references, *model}}
    return {"references": references, "model": model, "constant": constant, "labels": labels}


def _statistics(pool: dict, hypotheses: list[str], index: np.ndarray | None = None):
    index = np.arange(len(pool["references"])) if index is None else index
    refs = [pool["references"][i] for i in index]
    hyps = [hypotheses[i] for i in index]
    return study_statistics(refs, hyps, None, [pool["labels"][r] for r in refs],
                            [pool["labels"].get(h) or label_text(h) for h in hyps])


def test_bleu_fast_path_equals_nltk_corpus_bleu(pool: dict) -> None:
    refs = pool["references"]
    # Short hypotheses (fewer than 4 tokens), an empty one and repeated words on purpose.
    hyps = [*pool["model"][:-3], "no", "", "no no no no acute acute ."]
    stats = bleu_statistics(refs, hyps)
    expected = [corpus_bleu([[r.split()] for r in refs], [h.split() for h in hyps], weights=w)
                for w in BLEU_WEIGHTS]
    np.testing.assert_allclose(bleu_scores(stats.sum(axis=0)), expected, rtol=1e-12, atol=0)
    # A resample (studies repeated or left out) is nltk on the repeated studies.
    counts = resample_counts(len(refs), 3, seed=5)
    for row in counts:
        drawn = np.repeat(np.arange(len(refs)), row.astype(int))
        expected = [corpus_bleu([[refs[i].split()] for i in drawn],
                                [hyps[i].split() for i in drawn], weights=w)
                    for w in BLEU_WEIGHTS]
        np.testing.assert_allclose(bleu_scores(row @ stats), expected, rtol=1e-12, atol=0)
    # No unigram match at all: 0, as nltk.
    assert bleu_scores(bleu_statistics(["a b ."], ["c d e"]).sum(axis=0)).tolist() == [0.0] * 4


def test_full_split_values_are_the_reported_scores(pool: dict) -> None:
    refs, hyps = pool["references"], pool["model"]
    stats = _statistics(pool, hyps)
    full = {k: float(v[0]) for k, v in metric_values(stats, np.ones(len(refs))).items()}
    reported = text_metrics(refs, hyps)
    clinical = clinical_scores([label_text(r) for r in refs], [label_text(h) for h in hyps])
    for metric in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"):
        assert round(full[metric], 4) == reported[metric], metric
    for part in ("precision", "recall", "f1"):
        assert round(full[f"abnormal_{part}"], 4) == clinical["abnormal"][part]
    assert round(full["findings_macro_f1"], 4) == clinical["findings_macro_f1"]


def test_intervals_contain_the_point_estimate(pool: dict) -> None:
    refs = pool["references"]
    normal = np.array([i % 2 == 0 for i in range(len(refs))])
    systems = {"model": pool["model"], "constant": pool["constant"],
               "nearest_neighbour": list(reversed(pool["model"]))}
    scores = evaluate_systems(refs, systems, normal, None, resamples=300, seed=0)
    for system in systems:
        entry = scores[system]
        values = {**entry, **{f"abnormal_{k}": v for k, v in entry["clinical"]["abnormal"].items()},
                  "findings_macro_f1": entry["clinical"]["findings_macro_f1"]}
        for metric in BOOTSTRAP_METRICS:
            low, high = entry["ci95"][f"{metric}_low"], entry["ci95"][f"{metric}_high"]
            assert low <= values[metric] <= high, (system, metric, low, values[metric], high)
        assert scores["model"]["ci95"]["bleu4_low"] < scores["model"]["ci95"]["bleu4_high"]
    for baseline in ("constant", "nearest_neighbour"):
        paired = scores[f"model_vs_{baseline}"]
        assert list(paired) == BOOTSTRAP_METRICS
        for metric, entry in paired.items():
            assert entry["low"] <= entry["diff"] <= entry["high"], (baseline, metric, entry)
            if metric in TEXT_METRICS:  # the difference of the two reported (rounded) scores
                reported = scores["model"][metric] - scores[baseline][metric]
                assert abs(entry["diff"] - reported) <= 2e-4, (baseline, metric)
    # The 40%-right model beats the constant on abnormal F1 (the constant says "normal").
    assert scores["model_vs_constant"]["abnormal_f1"]["low"] > 0


def test_intervals_shrink_as_the_number_of_studies_grows(pool: dict) -> None:
    # The same studies, then each of them 9 times: the same metrics on the full split, and
    # intervals about a third as wide (1 / sqrt(9)).
    size = len(pool["references"])
    widths = {}
    for copies in (1, 9):
        index = np.tile(np.arange(size), copies)
        result = significance({"model": _statistics(pool, pool["model"], index),
                               "constant": _statistics(pool, pool["constant"], index)},
                              resamples=400, seed=0)
        bounds = result["model"]["ci95"]
        widths[copies] = {m: bounds[f"{m}_high"] - bounds[f"{m}_low"]
                          for m in BOOTSTRAP_METRICS}
        widths[copies]["paired_bleu4"] = (result["model_vs_constant"]["bleu4"]["high"]
                                          - result["model_vs_constant"]["bleu4"]["low"])
    for metric, wide in widths[1].items():
        assert 0.2 * wide < widths[9][metric] < 0.5 * wide, (metric, wide, widths[9][metric])


def test_a_system_against_itself_differs_by_exactly_zero(pool: dict) -> None:
    stats = _statistics(pool, pool["model"])
    result = significance({"model": stats, "same": stats}, resamples=200, seed=3)
    assert result["model"] == result["same"]
    assert result["model_vs_same"] and all(
        entry == {"diff": 0.0, "low": 0.0, "high": 0.0}
        for entry in result["model_vs_same"].values())


def test_seeded_bootstrap_is_reproducible(pool: dict) -> None:
    systems = {"model": _statistics(pool, pool["model"]),
               "constant": _statistics(pool, pool["constant"])}
    first = significance(systems, resamples=200, seed=7)
    assert first == significance(systems, resamples=200, seed=7)
    assert first != significance(systems, resamples=200, seed=8)
    counts = resample_counts(50, 20, seed=7)
    assert counts.shape == (20, 50) and (counts.sum(axis=1) == 50).all()


def test_different_numbers_of_studies_are_refused(pool: dict) -> None:
    with pytest.raises(ValueError, match="different numbers of studies"):
        significance({"model": _statistics(pool, pool["model"], np.arange(10)),
                      "constant": _statistics(pool, pool["constant"], np.arange(12))}, 10, 0)
    with pytest.raises(ValueError, match="no studies"):
        empty = StudyStatistics(bleu=np.zeros((0, 10)), rouge_l=np.zeros(0), cider=np.zeros(0),
                                labels=np.zeros((0, 3, 14)))
        significance({"model": empty}, 10, 0)


def test_weighted_auc_matches_the_auc_of_the_drawn_studies() -> None:
    from cxr_impressions.evaluation.bootstrap import auc_values, resample_counts
    from cxr_impressions.features.finetune import auc

    rng = np.random.default_rng(4)
    labels = rng.random(40) < 0.4
    scores = np.round(rng.normal(size=40), 1)  # ties, which count half
    counts = resample_counts(40, 5, seed=1)
    values = auc_values(labels, scores, counts)
    for row, value in zip(counts.astype(int), values, strict=True):
        drawn = np.repeat(np.arange(40), row)  # the resample, study by study
        assert value == pytest.approx(auc(labels[drawn], scores[drawn]))
    assert auc_values(labels, scores, np.ones(40))[0] == pytest.approx(auc(labels, scores))
    assert np.isnan(auc_values(np.zeros(40, bool), scores, np.ones(40))[0])
