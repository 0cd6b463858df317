"""What the selection stage chooses on the validation split for a trained model: a conditioned
model's label thresholds (`decode.thresholds`), then, decoding under them, the decoding
settings (`decode.select`). Nothing here trains: a decode experiment reruns this on the saved
bundle, in minutes, instead of retraining.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from ..data.labeller import label_text
from ..data.titles import UNKNOWN
from ..errors import InputError
from ..evaluation.bootstrap import StudyStatistics, paired_differences, study_statistics
from ..evaluation.scoring import clinical_scores, text_metrics
from ..settings.decode import DecodeParams
from ..settings.decoding import DecodingSettings
from .bundle import Bundle, worded_decoder
from .decoding import Decoder, has_consistency_rule, minimum_bayes_risk, rerank
from .studies import Studies
from .template_rules import templates_by_rule
from .templates import (
    finding_phrases,
    normal_impressions,
)

log = logging.getLogger(__name__)

# A candidate row's settings but its template rule: rows equal on these are the same captions
# worded by different template rules (`select_guard_reference: twin`).
TWIN_SETTINGS = ("method", "beam_size", "length_penalty", "labels", "beam_choice",
                 "normal_text", "finding_text")


@dataclass(frozen=True)
class Selection:
    decode: DecodingSettings  # the settings to decode with
    label_thresholds: dict[str, float]  # by label; empty for a model without labels
    normal_templates: dict[str, str]  # title key to text (templates.py); empty without labels
    normal_impressions: list[str]  # the normal training impressions; empty without labels
    finding_phrases: dict[str, str]  # finding to phrase (templates.py); empty without findings
    record: dict  # every threshold and candidate weighed (metrics/selection.json)
    # The chosen candidate's validation score (`val_<select_metric>`) and the labels' mean
    # validation F1 (`val_label_f1`): the short DVC metric (metrics/select.json), as
    # `dvc metrics show` prints one column per number.
    summary: dict


def select_on_validation(bundle: Bundle, val: Studies, train: Studies, decode: DecodeParams
                         ) -> Selection:
    """The label thresholds first (`decode.thresholds`, for a conditioned model), then the
    decoding settings (`select_decoding` with `decode.select`, else `decode` as given), decoding
    under those thresholds: all chosen on `val`, the validation split (never the test split).
    `train`, the training split, gives the labels' prevalence and the record's counts."""
    model = bundle.model
    inputs = bundle.model_inputs(val.inputs(), val.titles)
    thresholds = np.zeros(0)
    label_thresholds: dict[str, float] = {}
    summary: dict[str, object] = {}
    record: dict[str, object] = {"selected_on": "val", "train_studies": len(train),
                                 "val_studies": len(val),
                                 "val_abnormal_share": round(float(val.abnormal.mean()), 4)}
    if bundle.titles is not None:
        record["exam_titles"] = {
            "known": len(bundle.titles) - 1,
            **{f"{name}_share_known": round(float(np.mean(
                bundle.titles.encode(split.titles) != UNKNOWN)), 4)
               for name, split in (("train", train), ("val", val))}}
    rules = decode.template_rules if decode.select else (decode.template_rule,)
    by_rule: dict[str, dict[str, str]] = {}  # template rule to its templates
    impressions: list[str] = []
    phrases: dict[str, str] = {}
    if model.conditioned:
        probabilities = Decoder(model, bundle.vocab).encode(inputs)["probabilities"]
        thresholds, chosen = select_thresholds(
            probabilities, val.label_matrix(model.labels), train.label_matrix(model.labels),
            model.labels, decode)
        label_thresholds = dict(zip(model.labels, thresholds.tolist(), strict=True))
        record["label_thresholds"] = chosen
        summary["val_label_f1"] = mean_val_f1(chosen["labels"])
        normal = ~train.label_matrix(model.labels).any(axis=1)
        by_rule = rule_templates(bundle, train, rules)
        impressions = normal_impressions(train.texts, normal, bundle.vocab)
        record["normal_impressions"] = len(impressions)
        phrases = {finding: phrase for finding, phrase in
                   finding_phrases(train.texts, bundle.vocab).items() if finding in model.labels}
        record["finding_phrases"] = phrases
    elif decode.normal_text != "decoder" and not decode.select:
        raise InputError(f"decode.normal_text: {decode.normal_text} needs a model with labels "
                         "to predict a study normal (model.condition: abnormal | findings)")
    if decode.finding_text != "decoder" and not decode.select and not phrases:
        raise InputError(f"decode.finding_text: {decode.finding_text} needs a model conditioned "
                         "on findings (model.condition: findings)")
    worders = rule_decoders(bundle, thresholds, by_rule or {rules[0]: {}}, impressions, phrases)
    decoder = next(iter(worders.values()))  # the first rule's searches; the others only word
    chosen_decoding = decode.decoding()  # as given in params.yaml, unless selected below
    rule = decode.template_rule
    if decode.select:
        chosen_decoding, candidates, best = select_decoding(decoder, inputs, val.texts, decode,
                                                            worders)
        rule = best["template_rule"]
        summary[f"val_{decode.select_metric}"] = best[decode.select_metric]
        record["decoding"] = {"metric": decode.select_metric,
                              "max_top_share": decode.max_top_share,
                              "ties": decode.select_ties,
                              "guards": list(decode.select_guards),
                              "guard_reference": decode.select_guard_reference,
                              "chosen": chosen_decoding.settings(), "candidates": candidates}
    else:
        record["decoding"] = {"chosen": chosen_decoding.settings()}
    record["decoding"]["template_rule"] = rule  # not a setting: its templates are kept
    templates = by_rule.get(rule, {})
    if model.conditioned:
        record["normal_templates"] = templates
        if len(by_rule) > 1:
            record["normal_templates_by_rule"] = by_rule
    return Selection(chosen_decoding, label_thresholds, templates, impressions, phrases, record,
                     summary)


def rule_templates(bundle: Bundle, train: Studies, rules: Sequence[str]
                   ) -> dict[str, dict[str, str]]:
    """By template rule (`decode.template_rules`), the normal templates (title key to text)
    that the training split `train` gives a conditioned model."""
    normal = ~train.label_matrix(bundle.model.labels).any(axis=1)
    return {rule: templates_by_rule(rule, train.titles, train.texts, normal, bundle.titles,
                                    bundle.vocab) for rule in rules}


def rule_decoders(bundle: Bundle, thresholds: np.ndarray, by_rule: dict[str, dict[str, str]],
                  impressions: Sequence[str], phrases: dict[str, str]) -> dict[str, Decoder]:
    """By template rule, a decoder of the bundle's model under `thresholds` that words its
    captions with that rule's templates (`by_rule`), the normal `impressions` and the finding
    `phrases`: what `select_decoding` words each candidate with. They share the model's traced
    functions."""
    return {rule: worded_decoder(bundle.model, bundle.vocab, bundle.titles, thresholds,
                                 templates, impressions, phrases)
            for rule, templates in by_rule.items()}


def mean_val_f1(chosen: dict[str, dict]) -> float | None:
    """The mean validation F1 of the labels with a validation positive (the others have no
    F1 there)."""
    f1s = [row["val_f1"] for row in chosen.values() if row["val_f1"] is not None]
    return round(float(np.mean(f1s)), 4) if f1s else None


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The probability threshold with the best F1 for one label (on validation), and that F1.
    Ties go to the highest threshold, the most conservative one."""
    labels = labels.astype(bool)
    best_f1, best_t = -1.0, 0.5
    for t in np.unique(probabilities)[::-1]:
        guess = probabilities >= t
        true_positive = float((guess & labels).sum())
        f1 = 2 * true_positive / max(guess.sum() + labels.sum(), 1)
        if f1 > best_f1:
            best_f1, best_t = f1, float(t)
    return best_t, best_f1


# A label with no positive on validation has no F1 to maximise: it keeps this threshold, the
# one its binary cross-entropy is calibrated for, rather than one fitted to no evidence.
FALLBACK_THRESHOLD = 0.5


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray, names: tuple[str, ...]
                      ) -> tuple[np.ndarray, dict[str, dict]]:
    """Per label (columns of the (N, L) arrays): the threshold with the best validation F1,
    or FALLBACK_THRESHOLD where validation has no positive. Also a summary per label."""
    thresholds = np.full(len(names), FALLBACK_THRESHOLD)
    summary: dict[str, dict] = {}
    for j, name in enumerate(names):
        positives = int(labels[:, j].sum())
        if positives:
            thresholds[j], f1 = choose_threshold(probabilities[:, j], labels[:, j])
        else:
            f1 = None
        summary[name] = {"threshold": round(float(thresholds[j]), 4),
                         "val_f1": None if f1 is None else round(f1, 4),
                         "val_positives": positives, "fallback": not positives}
    return thresholds, summary


def f1_at(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of `probabilities >= threshold` against 0/1 `labels` (one label)."""
    guess, truth = probabilities >= threshold, labels.astype(bool)
    return 2 * float((guess & truth).sum()) / max(float(guess.sum() + truth.sum()), 1.0)


def prevalence_thresholds(probabilities: np.ndarray, prevalence: np.ndarray, multiplier: float
                          ) -> np.ndarray:
    """Per label, the threshold at which `multiplier` times its training prevalence of the
    given studies is predicted positive: a quantile of their probabilities. A label never
    positive in training gets 1.0, which a sigmoid does not reach in practice."""
    thresholds = np.ones(probabilities.shape[1])
    for j, share in enumerate(np.minimum(multiplier * prevalence, 1.0)):
        if share > 0:
            thresholds[j] = float(np.quantile(probabilities[:, j], 1.0 - share))
    return thresholds


def best_multiplier(probabilities: np.ndarray, labels: np.ndarray, prevalence: np.ndarray,
                    multipliers: Sequence[float], columns: Sequence[int]
                    ) -> tuple[float, dict[str, float]]:
    """The candidate multiplier with the best mean F1 over the labels `columns` with a positive
    among the given studies (ties: the earlier), and every candidate's mean F1."""
    scored = [j for j in columns if labels[:, j].any()]
    candidates: dict[str, float] = {}
    best_m, best_score = multipliers[0], -1.0
    for m in multipliers:
        thresholds = prevalence_thresholds(probabilities, prevalence, m)
        score = float(np.mean([f1_at(probabilities[:, j], labels[:, j], thresholds[j])
                               for j in scored])) if scored else 0.0
        candidates[str(m)] = round(score, 4)
        if score > best_score:
            best_m, best_score = m, score
    return best_m, candidates


def choose_prevalence_thresholds(probabilities: np.ndarray, labels: np.ndarray,
                                 prevalence: np.ndarray, multipliers: Sequence[float],
                                 names: tuple[str, ...], abnormal_own: bool = False
                                 ) -> tuple[np.ndarray, dict[str, dict], dict[str, object]]:
    """`decode.thresholds: prevalence`: one multiplier m for every label, the candidate with
    the best mean validation F1 over the labels with a validation positive (ties: the earlier);
    each label then predicted positive for m times its training prevalence of the validation
    studies. One number fitted instead of one threshold per label, so a label with a handful
    of validation positives (or none) is not fitted to them (README "train").
    With `abnormal_own` (`decode.abnormal_multiplier: own`) and findings beside `abnormal`,
    the `abnormal` label, which splits the captions into normal and abnormal, gets its own
    multiplier, its best validation F1, and m is the findings' alone: in a mean over 14
    labels it weighs 1/14, so the rare findings' best m sets it (docs/results.md, "The
    abnormal label's own multiplier").
    Returns the thresholds, a summary per label as `choose_thresholds`', and the candidates'
    mean F1 with the multiplier(s) chosen."""
    own = names.index("abnormal") if abnormal_own and has_consistency_rule(names) else None
    shared = [j for j in range(len(names)) if j != own]
    best_m, candidates = best_multiplier(probabilities, labels, prevalence, multipliers, shared)
    thresholds = prevalence_thresholds(probabilities, prevalence, best_m)
    choice: dict[str, object] = {"multiplier": best_m, "candidates_mean_val_f1": candidates}
    if own is not None:
        abnormal_m, abnormal_candidates = best_multiplier(
            probabilities, labels, prevalence, multipliers, [own])
        thresholds[own] = prevalence_thresholds(probabilities, prevalence, abnormal_m)[own]
        choice |= {"abnormal_multiplier": abnormal_m,
                   "abnormal_candidates_val_f1": abnormal_candidates}
    summary: dict[str, dict] = {}
    for j, name in enumerate(names):
        positives = int(labels[:, j].sum())
        f1 = f1_at(probabilities[:, j], labels[:, j], thresholds[j]) if positives else None
        summary[name] = {"threshold": round(float(thresholds[j]), 4),
                         "val_f1": None if f1 is None else round(f1, 4),
                         "val_positives": positives,
                         "train_prevalence": round(float(prevalence[j]), 4),
                         "val_predicted_share": round(float(np.mean(
                             probabilities[:, j] >= thresholds[j])), 4)}
    return thresholds, summary, choice


def select_thresholds(probabilities: np.ndarray, val_labels: np.ndarray,
                      train_labels: np.ndarray, names: tuple[str, ...], decode: DecodeParams
                      ) -> tuple[np.ndarray, dict[str, object]]:
    """The label thresholds by `decode.thresholds`, from the validation split's probabilities
    and labels (and, for `prevalence`, the training split's labels), and what metrics/
    selection.json records of the choice: the rule, a row per label, and for `prevalence`
    the multiplier(s) chosen with every candidate's mean validation F1."""
    if decode.thresholds == "f1":
        thresholds, per_label = choose_thresholds(probabilities, val_labels, names)
        return thresholds, {"rule": "f1", "labels": per_label}
    prevalence = train_labels.mean(axis=0) if len(train_labels) else np.zeros(len(names))
    thresholds, per_label, choice = choose_prevalence_thresholds(
        probabilities, val_labels, prevalence, decode.prevalence_multipliers, names,
        abnormal_own=decode.abnormal_multiplier == "own")
    return thresholds, {"rule": "prevalence", **choice, "labels": per_label}


def decoding_candidates(decoder: Decoder, inputs: dict[str, np.ndarray],
                        references: Sequence[str], params: DecodeParams,
                        worders: Mapping[str, Decoder] | None = None
                        ) -> tuple[list[dict], list[StudyStatistics], list[list[str]]]:
    """Every candidate of `select_decoding` decoded on the given studies: a row per candidate
    with its settings and scores, its per-study statistics (for `select_ties: varied`) and its
    captions, in the same order. `worders`: by template rule, the decoder that words the
    captions with that rule's templates (None: `decoder`, under `params.template_rule`)."""
    given = params.decoding()  # each candidate replaces some of these
    worders = dict(worders) if worders else {params.template_rule: decoder}
    first_rule = next(iter(worders))
    reference_labels = [label_text(r) for r in references]
    modes = (params.label_modes if has_consistency_rule(decoder.model.labels)
             else ("independent",))
    # Without labels no study is predicted normal, and without templates (the selection stage
    # gives a conditioned model's decoder its own) none can be worded otherwise.
    normal_texts = (params.normal_texts if decoder.model.conditioned
                    and decoder.templates is not None else ("decoder",))
    finding_texts = (params.finding_texts if decoder.finding_phrases else ("decoder",))
    rows: list[dict] = []
    statistics = []  # per candidate, for the paired bootstrap of `select_ties: varied`
    captions: list[list[str]] = []
    searches = [(mode, beam_size) for mode in modes for beam_size in params.beam_sizes]
    # Each search decodes every validation study: minutes apiece on the full data.
    bar = tqdm(searches, desc="select decoding on val", unit="search", file=sys.stderr)
    for mode, beam_size in bar:
        bar.set_postfix_str(f"beam {beam_size}, labels {mode}")
        if beam_size == 1:
            greedy = replace(given, method="greedy", beam_size=1, labels=mode,
                             beam_choice="score")
            candidates = [(greedy, decoder.decode(inputs, greedy))]
        else:
            # Every candidate of this beam size chooses among these finished hypotheses.
            searched = decoder.decode(inputs, replace(given, method="beam", beam_size=beam_size,
                                                      labels=mode, beam_choice="score"))
            candidates = []
            if "score" in params.beam_choices:
                candidates += [(replace(given, method="beam", beam_size=beam_size,
                                        length_penalty=alpha, labels=mode, beam_choice="score"),
                                rerank(searched, alpha))
                               for alpha in params.length_penalties]
            if "mbr" in params.beam_choices:
                candidates.append((replace(given, method="beam", beam_size=beam_size,
                                           labels=mode, beam_choice="mbr"),
                                   minimum_bayes_risk(searched)))
        # Each candidate once per template rule, finding text and normal text: none searches
        # again. A template rule only where a template words something.
        worded = [(replace(chosen, finding_text=found, normal_text=text), rule,
                   worder.worded(decoded, inputs, text, found))
                  for rule, worder in worders.items() for found in finding_texts
                  for text in normal_texts
                  if rule == first_rule or text != "decoder" or found == "phrased"
                  for chosen, decoded in candidates]
        for chosen, rule, decoded in worded:
            texts = decoder.texts(decoded)
            labels = [label_text(t) for t in texts]
            clinical = clinical_scores(reference_labels, labels)
            captions.append(texts)
            if params.select_ties == "varied":
                statistics.append(study_statistics(references, texts,
                                                   reference_labels=reference_labels,
                                                   predicted_labels=labels))
            rows.append({"method": chosen.method, "beam_size": chosen.beam_size,
                         "length_penalty": chosen.length_penalty, "labels": mode,
                         "beam_choice": chosen.beam_choice, "normal_text": chosen.normal_text,
                         "finding_text": chosen.finding_text,
                         "template_rule": rule,
                         **text_metrics(references, texts),
                         "abnormal_f1": clinical["abnormal"]["f1"],
                         "findings_macro_f1": clinical["findings_macro_f1"],
                         "top_share": round(Counter(texts).most_common(1)[0][1]
                                            / len(texts), 4)})
    return rows, statistics, captions


def select_decoding(decoder: Decoder, inputs: dict[str, np.ndarray],
                    references: Sequence[str], params: DecodeParams,
                    worders: Mapping[str, Decoder] | None = None
                    ) -> tuple[DecodingSettings, list[dict], dict]:
    """The decoding settings (and, in the chosen row, `template_rule`), among
    `params.beam_sizes` x (`params.length_penalties`, and
    `mbr` where `params.beam_choices` holds it) x `params.label_modes`, whose captions of the
    given studies (the validation split: never the test split) score best on
    `params.select_metric` (a text metric, or the labeller's abnormal F1 or findings macro-F1
    on the captions against that on the references), among
    those whose most frequent caption is at most `params.max_top_share` of the studies (if
    none is, those with the lowest such share); ties go to the earlier candidate (the
    smaller beam). With `params.select_ties: varied`, the candidates whose metric the
    studies cannot tell from the best's (`paired_differences`), nor fall significantly
    below the best's on any of `params.select_guards`, count as tied with it, and the one
    among them with the lowest top share wins. Also a row per candidate with its scores
    (and, under `varied`, its paired intervals against the best), and the chosen row. Each
    beam size is searched once per label mode; its length penalties only re-rank the
    finished hypotheses, and its `mbr` candidate chooses among the same ones by minimum Bayes
    risk. Beam 1 is greedy decoding, for which the length penalty changes nothing. Label modes
    apply to models conditioned on findings and abnormal (elsewhere `consistent` changes
    nothing, and only `independent` is tried). Each of those candidates comes once per
    `params.normal_texts`, for a conditioned model whose decoder has normal templates
    (`template`: the same captions, those of the studies predicted normal worded as their
    title's normal template; `template_written`, also those whose caption is a normal
    training impression; `template_read`, also those whose caption the labeller reads as
    normal; `Decoder.worded`), and once per `params.finding_texts`, for a model whose
    decoder has finding phrases (`appended`: each finding the labels turn on that the
    caption does not name, its phrase appended); and, where a normal template words them,
    once per template rule of `worders` (by rule, the decoder wording with its templates:
    `params.template_rules`)."""
    given = params.decoding()
    rows, statistics, _ = decoding_candidates(decoder, inputs, references, params, worders)
    row = rows[choose(rows, statistics, params)]
    if row["top_share"] > params.max_top_share:
        log.warning("decode.max_top_share %s: no decoding candidate keeps its commonest "
                    "caption under it on validation; chose the lowest share, %s",
                    params.max_top_share, row["top_share"])
    return replace(given, method=row["method"], beam_size=row["beam_size"],
                   length_penalty=row["length_penalty"], labels=row["labels"],
                   beam_choice=row["beam_choice"], normal_text=row["normal_text"],
                   finding_text=row["finding_text"]), rows, row


def choose(rows: list[dict], statistics: Sequence[StudyStatistics],
           params: DecodeParams) -> int:
    """The index of the chosen candidate row (see `select_decoding`). Under `select_ties:
    varied`, each row gets `vs_best_low`/`vs_best_high`: the paired 95% interval of its metric
    minus the best's, from `statistics` (per candidate, on the same studies); and for each of
    `params.select_guards`, `vs_best_<guard>_low`/`_high`, the same for that metric. A row is
    tied with the best when none of those intervals lies wholly below 0. With
    `select_guard_reference: leader`, the guards' intervals are against the tied row highest
    on each guard instead (`vs_leader_<guard>_low`/`_high`, guards in turn, on the rows still
    tied), so that the best too is untied where it falls below that leader; with `twin`, as
    `best`, and then against the tied row highest on each guard among those that differ from
    it only in `template_rule` (`vs_twin_<guard>_low`/`_high`): the same captions worded by
    another template rule."""
    def eligible(row: dict) -> float:
        """1 under `max_top_share`; else the less one caption dominates, the better."""
        share = row["top_share"]
        return 1.0 if share <= params.max_top_share else -share

    metric = params.select_metric
    best = max(range(len(rows)), key=lambda i: (eligible(rows[i]), rows[i][metric], -i))
    if params.select_ties == "best":
        return best
    guards = [g for g in dict.fromkeys(params.select_guards) if g != metric]
    reference = params.select_guard_reference
    against_best = (metric, *guards) if reference != "leader" else (metric,)
    tied = [i for i in untie(rows, statistics, range(len(rows)), best, against_best, "vs_best",
                             params)
            if eligible(rows[i]) == eligible(rows[best])]
    if reference != "best":
        groups = [tied] if reference == "leader" else twin_groups(rows, tied)
        tied = []
        for group in groups:
            for guard in guards if len(group) > 1 else ():
                leader = max(group, key=lambda i: (rows[i][guard], -i))
                group = untie(rows, statistics, group, leader, (guard,), f"vs_{reference}",
                              params)
            tied += group
    return min(tied, key=lambda i: (rows[i]["top_share"], -rows[i][metric], i))


def twin_groups(rows: list[dict], indices: Sequence[int]) -> list[list[int]]:
    """`indices` grouped into twins: rows equal on every one of TWIN_SETTINGS, the same
    captions worded by different template rules (a row without those settings is alone)."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        key = (tuple(rows[i][k] for k in TWIN_SETTINGS)
               if all(k in rows[i] for k in TWIN_SETTINGS) else (i,))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def untie(rows: list[dict], statistics: Sequence[StudyStatistics], tied: Sequence[int],
          reference: int, metrics: Sequence[str], prefix: str, params: DecodeParams
          ) -> list[int]:
    """Those of `tied` that are not significantly below `reference` (always kept) on any of
    `metrics`: each row of `tied` gets `<prefix>_<metric>_low`/`_high` (`<prefix>_low`/`_high`
    for `params.select_metric`), its paired 95% interval minus `reference`'s."""
    differences = paired_differences(statistics[reference], [statistics[i] for i in tied],
                                     metrics, params.select_resamples, params.select_seed)
    below = [False] * len(tied)
    for name, bounds in differences.items():
        key = prefix if name == params.select_metric else f"{prefix}_{name}"
        for j, (low, high) in enumerate(bounds):
            rows[tied[j]][f"{key}_low"], rows[tied[j]][f"{key}_high"] = (round(low, 4),
                                                                         round(high, 4))
            below[j] = below[j] or high < 0
    return [i for j, i in enumerate(tied) if i == reference or not below[j]]
