"""Captioning metrics and clinical scores for generated impressions.

Tokenisation: every metric sees the normalised text of the clean stage, split on spaces, with
the sentence token `.` kept as a word (as R2Gen's evaluation does) and without the start and
end tokens. BLEU is nltk's `corpus_bleu` (one reference per study, no smoothing); METEOR,
ROUGE-L and CIDEr come from pycocoevalcap (METEOR runs Java: `meteor.py`), fed the same tokens.

ROUGE-L and CIDEr are means of per-study scores (CIDEr's document frequencies come from all the
references scored together); METEOR is corpus-level, computed from the sum of the per-study
sufficient statistics that Java returns. `bootstrap.py` resamples exactly these per-study numbers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from ..data.labeller import FINDINGS, label_text

log = logging.getLogger(__name__)

# A hypothesis with no 4-gram overlap scores 0: correct, and not worth a warning per study.
warnings.filterwarnings("ignore", message=r"(?s).*counts of .-gram overlaps")

BLEU_WEIGHTS = [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (1 / 3, 1 / 3, 1 / 3, 0), (0.25,) * 4]


# Meteor 1.5's defaults for English (`-l en`, task "default"): alpha, beta, gamma, delta, and
# the weights of its four matching modules (exact, stem, synonym, paraphrase).
METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA, METEOR_DELTA = 0.85, 0.2, 0.6, 0.75
METEOR_MODULE_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])
METEOR_STATISTICS = 23  # per study: lengths, function words, 4 modules x 4 match counts, chunks...


def summable_statistics(lines: np.ndarray) -> np.ndarray:
    """Java's per-study statistics (studies, 23), made to sum to the corpus's: Java's
    aggregation (MeteorStats.addStats) leaves out the chunk count of a study matched whole in
    one chunk, so that count is zeroed here."""
    stats = np.array(lines, dtype=np.float64).reshape(-1, METEOR_STATISTICS)
    test_matches = stats[:, 4:20:2].sum(axis=1)
    reference_matches = stats[:, 5:20:2].sum(axis=1)
    whole = ((test_matches == stats[:, 0]) & (reference_matches == stats[:, 1])
             & (stats[:, 20] == 1))
    stats[whole, 20] = 0
    return stats


def meteor_score(summed: np.ndarray) -> np.ndarray:
    """METEOR from summed sufficient statistics (..., 23), as Meteor 1.5 computes it
    (MeteorScorer.computeMetrics): weighted precision and recall, their alpha-weighted harmonic
    mean, times 1 - gamma * fragmentation ** beta. Any leading axes: one score per row."""
    s = np.asarray(summed, dtype=np.float64)
    test_length, reference_length = s[..., 0], s[..., 1]
    test_function, reference_function = s[..., 2], s[..., 3]
    stages = s[..., 4:20].reshape(*s.shape[:-1], 4, 4)  # module x (test/ref, content/function)
    chunks, test_words, reference_words = s[..., 20], s[..., 21], s[..., 22]
    delta, weights = METEOR_DELTA, METEOR_MODULE_WEIGHTS
    test_weighted = delta * (test_length - test_function) + (1 - delta) * test_function
    reference_weighted = (delta * (reference_length - reference_function)
                          + (1 - delta) * reference_function)
    test_matched = (delta * stages[..., 0] + (1 - delta) * stages[..., 2]) @ weights
    reference_matched = (delta * stages[..., 1] + (1 - delta) * stages[..., 3]) @ weights
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = test_matched / test_weighted
        recall = reference_matched / reference_weighted
        f_mean = 1.0 / ((1 - METEOR_ALPHA) / precision + METEOR_ALPHA / recall)
        whole = ((stages[..., [0, 2]].sum(axis=(-1, -2)) == test_length)
                 & (stages[..., [1, 3]].sum(axis=(-1, -2)) == reference_length) & (chunks == 1))
        fragmentation = np.where(whole, 0.0, chunks / ((test_words + reference_words) / 2))
        score = f_mean * (1 - METEOR_GAMMA * fragmentation ** METEOR_BETA)
    return np.where(np.isnan(score), 0.0, np.maximum(score, 0.0))


def rouge_l_per_study(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """pycocoevalcap's ROUGE-L of each study (an empty hypothesis is scored as "empty")."""
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    return np.array([rouge.calc_score([h or "empty"], [r])
                     for r, h in zip(references, hypotheses, strict=True)], dtype=np.float64)


def cider_per_study(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """pycocoevalcap's CIDEr-D of each study, with document frequencies from these references."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [r] for i, r in enumerate(references)}
    res = {i: [h or "empty"] for i, h in enumerate(hypotheses)}
    return np.asarray(Cider().compute_score(gts, res)[1], dtype=np.float64)


def text_metrics(references: Sequence[str], hypotheses: Sequence[str],
                 meteor_statistics: np.ndarray | None = None) -> dict[str, float]:
    """BLEU-1..4, METEOR (given `meteor.MeteorScorer.statistics` for these studies), ROUGE-L, CIDEr
    and the number of distinct hypotheses."""
    refs = [[r.split()] for r in references]
    hyps = [h.split() for h in hypotheses]
    scores = {f"bleu{n + 1}": float(corpus_bleu(refs, hyps, weights=w))
              for n, w in enumerate(BLEU_WEIGHTS)}
    if meteor_statistics is not None:
        scores["meteor"] = float(meteor_score(meteor_statistics.sum(axis=0)))
    scores["rouge_l"] = float(rouge_l_per_study(references, hypotheses).mean())
    scores["cider"] = float(cider_per_study(references, hypotheses).mean())
    scores["distinct"] = len(set(hypotheses))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def per_study_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, list]:
    """Sentence BLEU-4 (smoothed) and ROUGE-L per study, for error analysis."""
    smooth = SmoothingFunction().method1
    bleu = [float(sentence_bleu([r.split()], h.split(), smoothing_function=smooth))
            for r, h in zip(references, hypotheses, strict=True)]
    return {"bleu4": bleu, "rouge_l": rouge_l_per_study(references, hypotheses).tolist()}


def _prf(truth: np.ndarray, predicted: np.ndarray, digits: int | None = 4) -> dict[str, float]:
    tp = float((truth & predicted).sum())
    precision = tp / predicted.sum() if predicted.sum() else 0.0
    recall = tp / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scores = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    return scores if digits is None else {k: round(v, digits) for k, v in scores.items()}


def clinical_scores(reference_labels: Sequence[dict[str, bool]],
                    predicted_labels: Sequence[dict[str, bool]]) -> dict[str, object]:
    """Abnormal precision/recall/F1, and per-finding and macro F1 over findings present."""
    truth = {k: np.array([r[k] for r in reference_labels]) for k in ("abnormal", *FINDINGS)}
    pred = {k: np.array([p[k] for p in predicted_labels]) for k in ("abnormal", *FINDINGS)}
    per_finding = {f: _prf(truth[f], pred[f], None)["f1"] for f in FINDINGS if truth[f].any()}
    return {
        "abnormal": _prf(truth["abnormal"], pred["abnormal"]),
        "abnormal_predicted_share": round(float(pred["abnormal"].mean()), 4),
        "findings_macro_f1": round(float(np.mean(list(per_finding.values()))), 4)
        if per_finding else 0.0,
        "findings_f1": {f: round(v, 4) for f, v in per_finding.items()},
    }


def labeller_agreement(texts: Sequence[str], mesh_labels: Sequence[dict[str, bool]]
                       ) -> dict[str, object]:
    """How well the labeller on report text reproduces the MeSH-coded labels."""
    predicted = [label_text(t) for t in texts]
    truth = np.array([m["abnormal"] for m in mesh_labels])
    guess = np.array([p["abnormal"] for p in predicted])
    accuracy = float((truth == guess).mean())
    chance = truth.mean() * guess.mean() + (1 - truth.mean()) * (1 - guess.mean())
    kappa = (accuracy - chance) / (1 - chance) if chance < 1 else 0.0
    per_finding = {}
    for finding in FINDINGS:
        t = np.array([m[finding] for m in mesh_labels])
        if t.sum() >= 5:
            per_finding[finding] = _prf(t, np.array([p[finding] for p in predicted]))["f1"]
    return {"reports": len(texts), "abnormal_accuracy": round(accuracy, 4),
            "abnormal_kappa": round(float(kappa), 4),
            "abnormal": _prf(truth, guess),
            "findings_f1_vs_mesh": per_finding,
            "findings_macro_f1_vs_mesh": round(float(np.mean(list(per_finding.values()))), 4)
            if per_finding else 0.0}
