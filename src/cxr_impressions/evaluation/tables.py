"""The evaluate stage's logic: the model and the baselines scored the same way on one split."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_csv
from ..data.labeller import label_text, mesh_labels
from ..data.text import normalise
from .baselines import BASELINES
from .bootstrap import significance, study_statistics
from .scoring import (
    clinical_scores,
    labeller_agreement,
    per_study_scores,
    text_metrics,
)

# Per study, METEOR's sufficient statistics of (references, hypotheses): evaluate passes its
# `meteor.MeteorScorer().statistics` (Java); None leaves METEOR out.
MeteorStatistics = Callable[[Sequence[str], Sequence[str]], np.ndarray]

LENGTH_BINS = (0, 3, 5, 8, 12, 20, 1000)


def evaluate_systems(references: Sequence[str], systems: dict[str, Sequence[str]],
                     normal: np.ndarray, meteor: MeteorStatistics | None, resamples: int,
                     seed: int) -> dict[str, object]:
    """Every system on every metric, overall (with its 95% bootstrap interval) and split by
    normal vs abnormal reference; then `model_vs_<baseline>`: the paired bootstrap difference.
    The first system is the one compared with the others."""
    results: dict[str, dict] = {}
    statistics = {}
    refs = list(references)
    reference_labels = [label_text(r) for r in refs]
    for name, hypotheses in systems.items():
        hyps = list(hypotheses)
        meteor_statistics = None if meteor is None else meteor(refs, hyps)
        predicted_labels = [label_text(h) for h in hyps]
        statistics[name] = study_statistics(refs, hyps, meteor_statistics, reference_labels,
                                            predicted_labels)
        overall = {**text_metrics(refs, hyps, meteor_statistics),
                   "clinical": clinical_scores(reference_labels, predicted_labels)}
        by_reference = {}
        for group, mask in (("normal", normal), ("abnormal", ~normal)):
            if mask.any():
                chosen = np.flatnonzero(mask)
                by_reference[group] = text_metrics([refs[i] for i in chosen],
                                                   [hyps[i] for i in chosen])
        results[name] = {**overall, "by_reference": by_reference}
    compared = significance(statistics, resamples, seed, reference=next(iter(systems)))
    for name, entry in compared.items():
        results.setdefault(name, {}).update(entry)
    return results


def per_study_table(uids: Sequence[int], references: Sequence[str],
                    systems: dict[str, Sequence[str]], normal: np.ndarray,
                    model_probability: Sequence[float | None] | None = None) -> pd.DataFrame:
    """One row per study: the reference, each system's text, its per-study scores and labels,
    and (`model_probability`) the model's predicted P(abnormal)."""
    table = pd.DataFrame({"uid": uids, "reference": references,
                          "reference_words": [len(r.replace(" .", "").split())
                                              for r in references],
                          "mesh_normal": normal})
    reference_abnormal = [label_text(r)["abnormal"] for r in references]
    table["reference_abnormal"] = reference_abnormal
    for name, hypotheses in systems.items():
        scores = per_study_scores(references, hypotheses)
        table[name] = list(hypotheses)
        table[f"{name}_bleu4"] = np.round(scores["bleu4"], 4)
        table[f"{name}_rouge_l"] = np.round(scores["rouge_l"], 4)
        table[f"{name}_abnormal"] = [label_text(h)["abnormal"] for h in hypotheses]
        if name == "model" and model_probability is not None:
            table["model_abnormal_probability"] = [None if p is None else round(p, 4)
                                                   for p in model_probability]
    return table


def write_tables(directory: str | os.PathLike[str], table: pd.DataFrame,
                 systems: Sequence[str], worst: int) -> None:
    """The per-study table, the `worst` studies of the model, and the two plots' tables."""
    directory = Path(directory)
    write_csv(directory / "per_study.csv", table)
    write_csv(directory / "worst.csv",
              table.sort_values(["model_bleu4", "model_rouge_l"]).head(worst))
    write_csv(directory / "by_reference_length.csv", by_reference_length(table, list(systems)))
    write_csv(directory / "confusion.csv", confusion_table(table, "model"))


def by_reference_length(table: pd.DataFrame, systems: Sequence[str]) -> pd.DataFrame:
    """Mean per-study ROUGE-L of each system (a column each) by reference length bucket."""
    bucket = pd.cut(table["reference_words"], LENGTH_BINS, right=False,
                    labels=[f"{a}-{b - 1}" if b < 1000 else f"{a}+"
                            for a, b in zip(LENGTH_BINS, LENGTH_BINS[1:], strict=False)])
    rows = []
    for label, group in table.groupby(bucket, observed=True):
        row = {"reference_words": str(label), "studies": len(group)}
        for name in systems:
            row[name] = round(float(group[f"{name}_rouge_l"].mean()), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_table(table: pd.DataFrame, system: str) -> pd.DataFrame:
    """(actual, predicted) normal/abnormal per study, for DVC's confusion template."""
    name = {True: "abnormal", False: "normal"}
    return pd.DataFrame({"actual": table["reference_abnormal"].map(name),
                         "predicted": table[f"{system}_abnormal"].map(name)})


# What `dvc metrics show`, `dvc metrics diff` and `dvc exp show` compare (metrics/scores.json):
# the model's headline scores and the baselines' three main ones. Everything else evaluate
# measures stays in metrics/evaluate.json (`cxr scores` prints it as a table).
MODEL_HEADLINE = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "distinct")
BASELINE_HEADLINE = ("bleu4", "rouge_l", "cider")


def headline_scores(scores: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The few scores worth a column in DVC's tables, from evaluate's full scores."""
    model = scores["model"]
    clinical = model.get("clinical", {})
    headline = {"model": {
        **{metric: model[metric] for metric in MODEL_HEADLINE},
        "abnormal_f1": clinical.get("abnormal", {}).get("f1"),
        "findings_macro_f1": clinical.get("findings_macro_f1")}}
    for system in BASELINES:
        if system in scores:  # evaluate files from before a baseline was added lack it
            headline[system] = {metric: scores[system][metric] for metric in BASELINE_HEADLINE}
    return headline


def validate_labeller(examples: pd.DataFrame) -> dict[str, object]:
    """The labeller on each report's findings + impression against its MeSH codes."""
    texts = [normalise(f"{f} {i}") for f, i in zip(examples["findings"].fillna(""),
                                                   examples["impression"].fillna(""),
                                                   strict=True)]
    return labeller_agreement(texts, [mesh_labels(m) for m in examples["mesh"].fillna("")])


def save_attention(path: str | os.PathLike[str], uids: Sequence, maps: Sequence[np.ndarray]
                   ) -> None:
    """Per study, where each generated word looked, 0-padded: `uids`, `lengths` (rows per
    study) and `maps` (studies, rows, regions) float16. No maps: empty arrays."""
    lengths = np.array([len(m) for m in maps], dtype=np.int32)
    rows = int(lengths.max()) if len(maps) else 0
    regions = maps[0].shape[1] if len(maps) else 0
    padded = np.zeros((len(maps), rows, regions), dtype=np.float16)
    for i, m in enumerate(maps):
        padded[i, : len(m)] = m
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, uids=np.asarray([str(u) for u in uids]) if len(maps)
                            else np.zeros(0, dtype=str), lengths=lengths, maps=padded)


def load_attention(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """{uid: (rows, regions) float32} as `save_attention` wrote them."""
    with np.load(path) as data:
        return {str(uid): data["maps"][i, :n].astype(np.float32)
                for i, (uid, n) in enumerate(zip(data["uids"], data["lengths"], strict=True))}
