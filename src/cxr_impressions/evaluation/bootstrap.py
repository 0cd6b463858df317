"""Significance: a seeded bootstrap over studies for every text and clinical metric.

Each metric here is a function of per-study statistics summed over the studies: BLEU of the
clipped n-gram matches, n-gram totals and lengths (corpus-level, as nltk's `corpus_bleu`), METEOR
of Java's sufficient statistics (corpus-level), ROUGE-L and CIDEr of per-study scores (means),
and the clinical scores of per-label true positive, predicted and reference counts. A resample
of the studies is then a vector of how often each study was drawn, and all the resamples of a
system are one matrix product, `counts (resamples, studies) @ statistics (studies, k)`: 1,000
resamples of 600 studies take well under a second (benchmarks/bootstrap.py).

Intervals are 95% percentile intervals. The comparison of the model with a baseline is paired:
both are scored on the same resampled studies, and the interval is that of the difference.
Distinct impressions get no interval: a resample repeats studies, so it holds fewer distinct
texts than the test split and the bootstrap distribution would not be centred on the count.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from nltk.util import ngrams

from ..data.labeller import FINDINGS, label_text
from .scoring import BLEU_WEIGHTS, cider_per_study, meteor_score, rouge_l_per_study

LEVEL = 0.95
TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
CLINICAL_METRICS = ("abnormal_precision", "abnormal_recall", "abnormal_f1", "findings_macro_f1")
LABELS = ("abnormal", *FINDINGS)  # also the columns of the finetune head and probes
# nltk's smoothing-free BLEU replaces a precision with no match by the smallest float.
_TINY = np.finfo(np.float64).tiny


@dataclasses.dataclass(frozen=True)
class StudyStatistics:
    """One system's per-study statistics (a row per study)."""

    bleu: np.ndarray  # (studies, 10): clipped matches for n = 1..4, n-gram totals, lengths
    rouge_l: np.ndarray  # (studies,)
    cider: np.ndarray  # (studies,)
    labels: np.ndarray  # (studies, 3, labels): true positive, predicted, reference, per label
    meteor: np.ndarray | None = None  # (studies, 23) METEOR sufficient statistics

    def __len__(self) -> int:
        return len(self.rouge_l)


def bleu_statistics(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Per study: clipped n-gram matches (n = 1..4), n-gram totals, hypothesis and reference
    length, counted as nltk's `modified_precision` does (a total is at least 1)."""
    rows = np.zeros((len(hypotheses), 10), dtype=np.float64)
    for i, (reference, hypothesis) in enumerate(zip(references, hypotheses, strict=True)):
        ref, hyp = reference.split(), hypothesis.split()
        for n in range(1, 5):
            counts = Counter(ngrams(hyp, n)) if len(hyp) >= n else Counter()
            ref_counts = Counter(ngrams(ref, n)) if len(ref) >= n else Counter()
            rows[i, n - 1] = sum(min(c, ref_counts[g]) for g, c in counts.items())
            rows[i, 3 + n] = max(1, sum(counts.values()))
        rows[i, 8], rows[i, 9] = len(hyp), len(ref)
    return rows


def bleu_scores(summed: np.ndarray) -> np.ndarray:
    """BLEU-1..4 (..., 4) from summed `bleu_statistics` (..., 10), as nltk's `corpus_bleu`."""
    s = np.asarray(summed, dtype=np.float64)
    matches, totals = s[..., 0:4], s[..., 4:8]
    hyp_length, ref_length = s[..., 8], s[..., 9]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_precision = np.log(np.where(matches > 0, matches / totals, _TINY))
        penalty = np.where(hyp_length > ref_length, 1.0,
                           np.where(hyp_length == 0, 0.0,
                                    np.exp(1 - ref_length / np.maximum(hyp_length, 1))))
    scores = penalty[..., None] * np.exp(log_precision @ np.array(BLEU_WEIGHTS).T)
    return np.where(matches[..., :1] > 0, scores, 0.0)


def label_statistics(reference_labels: Sequence[Mapping[str, bool]],
                     predicted_labels: Sequence[Mapping[str, bool]]) -> np.ndarray:
    """Per study and label (abnormal, then each finding): [true positive, predicted, reference],
    from the labeller's reading (`label_text`) of the reference and of the generated text."""
    truth = np.array([[r[k] for k in LABELS] for r in reference_labels], dtype=bool)
    predicted = np.array([[p[k] for k in LABELS] for p in predicted_labels], dtype=bool)
    truth = truth.reshape(len(reference_labels), len(LABELS))
    predicted = predicted.reshape(len(predicted_labels), len(LABELS))
    return np.stack([truth & predicted, predicted, truth], axis=1).astype(np.float64)


def study_statistics(references: Sequence[str], hypotheses: Sequence[str],
                     meteor_statistics: np.ndarray | None = None,
                     reference_labels: Sequence[Mapping[str, bool]] | None = None,
                     predicted_labels: Sequence[Mapping[str, bool]] | None = None
                     ) -> StudyStatistics:
    """Everything the bootstrap resamples, for one system on one split. Labels the texts unless
    their `label_text` labels are given (the labeller is the slow part)."""
    if reference_labels is None:
        reference_labels = [label_text(r) for r in references]
    if predicted_labels is None:
        predicted_labels = [label_text(h) for h in hypotheses]
    return StudyStatistics(bleu=bleu_statistics(references, hypotheses),
                           rouge_l=rouge_l_per_study(references, hypotheses),
                           cider=cider_per_study(references, hypotheses),
                           labels=label_statistics(reference_labels, predicted_labels),
                           meteor=meteor_statistics)


def resample_counts(studies: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, studies): how often each study is drawn in each resample (with replacement,
    `studies` draws each)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, studies, size=(resamples, studies))
    rows = np.arange(resamples)[:, None] * studies
    return np.bincount((drawn + rows).ravel(), minlength=resamples * studies).reshape(
        resamples, studies).astype(np.float64)


def auc_values(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count half) of `scores` for the 0/1 `labels` under each row of `counts`
    (weights per study, as `resample_counts`; all ones: the plain AUC). NaN where a row weighs
    no positive or no negative. One sort serves every row."""
    counts = np.atleast_2d(counts)
    order = np.argsort(scores, kind="stable")
    positive = np.asarray(labels, bool)[order]
    weights = counts[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(np.asarray(scores)[order]) != 0])
    pos = np.add.reduceat(weights * positive, starts, axis=1)  # per group of tied scores
    neg = np.add.reduceat(weights * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def metric_values(stats: StudyStatistics, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of `counts` (weights per study; all ones: the full split)."""
    counts = np.atleast_2d(counts)
    studies = counts.sum(axis=1)
    values = dict(zip(TEXT_METRICS[:4], np.moveaxis(bleu_scores(counts @ stats.bleu), -1, 0),
                      strict=True))
    if stats.meteor is not None:
        values["meteor"] = meteor_score(counts @ stats.meteor)
    values["rouge_l"] = counts @ stats.rouge_l / studies
    values["cider"] = counts @ stats.cider / studies
    labels = (counts @ stats.labels.reshape(len(stats), -1)).reshape(-1, *stats.labels.shape[1:])
    true_positive, predicted, truth = labels[:, 0], labels[:, 1], labels[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        # 2PR / (P + R) = 2 TP / (predicted + reference), and 0 without a true positive.
        f1 = np.where(true_positive > 0, 2 * true_positive / (predicted + truth), 0.0)
        values["abnormal_precision"] = np.where(
            predicted[:, 0] > 0, true_positive[:, 0] / predicted[:, 0], 0.0)
        values["abnormal_recall"] = np.where(
            truth[:, 0] > 0, true_positive[:, 0] / truth[:, 0], 0.0)
    values["abnormal_f1"] = f1[:, 0]
    # Macro-F1 over the findings present in the (resampled) references, as clinical_scores.
    present = truth[:, 1:] > 0
    values["findings_macro_f1"] = np.where(
        present.any(axis=1),
        (f1[:, 1:] * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1), 0.0)
    return values


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap samples (NaNs, undefined resamples, left out)."""
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def significance(systems: Mapping[str, StudyStatistics], resamples: int, seed: int,
                 reference: str = "model") -> dict[str, dict]:
    """`{system: {"ci95": {metric_low, metric_high}}}` for every system, and
    `{f"{reference}_vs_{other}": {metric: {diff, low, high}}}` for every other system: the
    paired difference (reference minus other) on the full split and its 95% interval."""
    sizes = {len(s) for s in systems.values()}
    if len(sizes) != 1:
        raise ValueError(f"systems scored on different numbers of studies: {sorted(sizes)}")
    if 0 in sizes:
        raise ValueError("no studies to resample")
    counts = resample_counts(sizes.pop(), resamples, seed)
    full = np.ones((1, counts.shape[1]))
    samples = {name: metric_values(s, counts) for name, s in systems.items()}
    points = {name: {k: v[0] for k, v in metric_values(s, full).items()}
              for name, s in systems.items()}
    result: dict[str, dict] = {}
    for name, values in samples.items():
        bounds = {}
        for metric, sample in values.items():
            bounds[f"{metric}_low"], bounds[f"{metric}_high"] = (
                round(b, 4) for b in interval(sample))
        result[name] = {"ci95": bounds}
    for other in (n for n in systems if n != reference):
        paired = {}
        for metric in samples[reference].keys() & samples[other].keys():
            low, high = interval(samples[reference][metric] - samples[other][metric])
            paired[metric] = {
                "diff": round(float(points[reference][metric] - points[other][metric]), 4),
                "low": round(low, 4), "high": round(high, 4)}
        result[f"{reference}_vs_{other}"] = {m: paired[m] for m in (*TEXT_METRICS,
                                                                    *CLINICAL_METRICS)
                                             if m in paired}
    return result


def paired_differences(reference: StudyStatistics, others: Sequence[StudyStatistics],
                       metrics: Sequence[str], resamples: int, seed: int
                       ) -> dict[str, list[tuple[float, float]]]:
    """For each of `metrics` and each of `others`, the 95% interval of its metric minus that of
    `reference`, all on the same resampled studies (paired): an interval that reaches 0 is a
    difference the studies cannot tell from none."""
    counts = resample_counts(len(reference), resamples, seed)
    base = metric_values(reference, counts)
    values = [metric_values(other, counts) for other in others]
    return {metric: [interval(v[metric] - base[metric]) for v in values] for metric in metrics}


def finetune_intervals(labels: np.ndarray, scores: Mapping[str, np.ndarray],
                       enough: Sequence[str], seed: int, resamples: int = 1000
                       ) -> dict[str, list | None]:
    """The finetune stage's 95% bootstrap intervals over the test studies (seeded, the same
    resamples for every system): each system's abnormal AUC and mean AUC over the `enough`
    findings, and the `adapted` probe's paired gains over the `frozen` one. `labels` and each
    of `scores` are (studies, LABELS); a score column with a NaN has no AUC."""
    counts = resample_counts(len(labels), resamples, seed)
    columns = [LABELS.index(t) for t in enough]

    def per_target(values: np.ndarray) -> np.ndarray:  # (resamples, targets)
        return np.stack([np.full(resamples, np.nan) if np.isnan(values[:, j]).any()
                         else auc_values(labels[:, j], values[:, j], counts)
                         for j in range(len(LABELS))], axis=1)

    def bounds(samples: np.ndarray) -> list | None:
        if np.isnan(samples).all():
            return None
        return [round(b, 4) for b in interval(samples)]

    def findings_mean(samples: np.ndarray) -> np.ndarray:
        if not columns:
            return np.full(resamples, np.nan)
        with warnings.catch_warnings():  # a resample without a finding's positives
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(samples[:, columns], axis=1)

    samples = {name: per_target(values) for name, values in scores.items()}
    out: dict[str, list | None] = {}
    for name, values in samples.items():
        out[f"{name}_abnormal_auc"] = bounds(values[:, 0])
        out[f"{name}_findings_mean_auc"] = bounds(findings_mean(values))
    gain = samples["adapted"] - samples["frozen"]
    out["gain_abnormal_auc"] = bounds(gain[:, 0])
    out["gain_findings_mean_auc"] = bounds(findings_mean(gain))
    return out
