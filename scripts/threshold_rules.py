"""Which label-threshold rule holds up on studies it was not set on? Split-half on validation.

A conditioned model's label head gives each validation study a probability per label. Many
times over, the validation studies are split at random into two halves: each rule sets the
thresholds on one half, and the label head is scored on the other, as evaluate scores a
text (findings macro-F1 over the findings with a positive there, and abnormal F1). The rules
(`decode.thresholds`):

- `f1`: each label its own best-F1 threshold on the half (0.5 where the half has none).
- `prevalence/shared`: one multiplier of the training prevalences for every label, the best
  of `decode.prevalence_multipliers` on the half (`decode.abnormal_multiplier: shared`, the
  default).
- `prevalence/own`: the findings' one multiplier, their best on the half, and the `abnormal`
  label's own, its best (`decode.abnormal_multiplier: own`).
- `0.5` for every label, for reference.

With `--captions`, each rule but `0.5` also sets the thresholds on the whole
validation split, as the selection stage does, and the decoding selection (the `decode` section of
the workspace's params.yaml) runs again under them: the captions' validation scores of the
setting chosen under each rule (minutes per rule on the full data).

The validation split only: this is how the default was chosen (README "Results"), so the
test split stays unseen.

With `--fixed M`, a fifth rule, `prevalence/M`, puts every label at M times its training
prevalence, nothing fitted (`decode.prevalence_multipliers: [M]`), and the captions judge
it against `prevalence/shared`: the workspace's chosen decoding (models/decoding.json)
decodes the validation split once under the shared thresholds of each candidate multiplier
and of M (set on the whole split, as the selection stage sets them); in each halving,
`prevalence/shared` picks its multiplier on one half by the label head's mean F1, and the
captions of that multiplier and of M are scored on the other half (BLEU-4, ROUGE-L, CIDEr,
and the labeller's abnormal F1 and findings macro-F1 on the captions). Label F1 rewards
calling a weak label often, text overlap calling it seldom: this measures that trade.

`--multipliers M [M ...]` replaces the workspace's `decode.prevalence_multipliers` as the
shared rule's candidates (and the selection's, with `--captions`), so that a workspace built
under one candidate list can judge another without editing its params.yaml: `--fixed 1.25
--multipliers 0.5 0.75 1 1.25 1.5 2 2.5 3 4` compares m = 1.25 with the nine-candidate rule
that it replaced as the default.

With several `--root` workspaces (the folds of `clean.split: kfold`, say), each is compared
as above and a last table lists, per workspace, the differences printed for it and their
mean over the workspaces.

    python scripts/threshold_rules.py [--root . [ROOT ...]] [--repeats 200] [--seed 0]
                                      [--captions] [--fixed M] [--multipliers M [M ...]]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_impressions.errors import InputError
from cxr_impressions.settings.decode import DecodeParams
from cxr_impressions.stage import run_stage

if TYPE_CHECKING:
    from cxr_impressions.captioning.bundle import Bundle

RULES = ("f1", "prevalence/own", "prevalence/shared", "0.5")


def scores_on(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray,
              names: tuple[str, ...]) -> tuple[float, float]:
    """(findings macro-F1 over the findings with a positive, abnormal F1) of the label head."""
    from cxr_impressions.captioning.selection import f1_at

    findings = [j for j, name in enumerate(names) if name != "abnormal" and labels[:, j].any()]
    macro = float(np.mean([f1_at(probabilities[:, j], labels[:, j], thresholds[j])
                           for j in findings])) if findings else 0.0
    a = names.index("abnormal")
    return macro, f1_at(probabilities[:, a], labels[:, a], thresholds[a])


def thresholds_by(rule: str, probabilities: np.ndarray, labels: np.ndarray,
                  prevalence: np.ndarray, multipliers: tuple[float, ...],
                  names: tuple[str, ...]) -> tuple[np.ndarray, float | None]:
    """The thresholds that `rule` sets on these studies, and the shared multiplier it used
    (None for `f1` and `0.5`)."""
    from cxr_impressions.captioning.selection import (
        choose_prevalence_thresholds,
        choose_thresholds,
        prevalence_thresholds,
    )

    if rule == "f1":
        return choose_thresholds(probabilities, labels, names)[0], None
    if rule.startswith("prevalence/") and rule not in ("prevalence/own", "prevalence/shared"):
        m = float(rule.partition("/")[2])
        return prevalence_thresholds(probabilities, prevalence, m), m
    if rule.startswith("prevalence/"):
        thresholds, _, choice = choose_prevalence_thresholds(
            probabilities, labels, prevalence, multipliers, names,
            abnormal_own=rule == "prevalence/own")
        return thresholds, choice["multiplier"]
    return np.full(len(names), 0.5), None


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, nargs="+", default=[Path(".")],
                     help="the pipeline's workspace(s)")
    cli.add_argument("--features", default="features/xception.h5", help="under --root")
    cli.add_argument("--repeats", type=int, default=200, help="random halvings")
    cli.add_argument("--seed", type=int, default=0)
    cli.add_argument("--captions", action="store_true",
                     help="also rerun the decoding selection under each rule (validation)")
    cli.add_argument("--fixed", type=float, metavar="M",
                     help="also the rule prevalence/M (one multiplier, not fitted), judged "
                          "on the held-out halves' captions too")
    cli.add_argument("--multipliers", type=float, nargs="+", metavar="M",
                     help="the shared rule's candidate multipliers (default: each workspace's "
                          "decode.prevalence_multipliers)")
    args = cli.parse_args()
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.fixed is not None and not args.fixed > 0:
        raise InputError(f"--fixed must be a multiplier above 0, got {args.fixed}")
    multipliers = None if args.multipliers is None else tuple(args.multipliers)
    if multipliers is not None:
        DecodeParams(prevalence_multipliers=multipliers).validate("--multipliers")
    differences = {root: compare_rules(root, args.features, args.repeats, args.seed,
                                       args.captions, args.fixed, multipliers)
                   for root in args.root}
    if len(differences) > 1:
        print_workspaces(differences)


COMPARED = (("prevalence/shared", "f1", 0, "findings macro-F1"),
            ("prevalence/own", "prevalence/shared", 1, "abnormal F1"))
# The captions' scores that --fixed compares on the held-out halves, and the two of them
# that go into the table of workspaces.
CAPTION_METRICS = ("bleu4", "rouge_l", "cider", "abnormal_f1", "findings_macro_f1")
CAPTION_COLUMNS = ("rouge_l", "abnormal_f1")


def compare_rules(root: Path, features: str, repeats: int, seed: int, captions: bool,
                  fixed: float | None = None,
                  multipliers: tuple[float, ...] | None = None) -> dict[str, float]:
    """One workspace's comparison (printed), and its mean difference for each of `COMPARED`
    (and, with `fixed`, of the captions' `CAPTION_COLUMNS`), by column header. `multipliers`
    replaces the workspace's `decode.prevalence_multipliers`."""
    from dataclasses import replace

    # TensorFlow loads here, after run_stage has quietened its logs.
    from cxr_impressions.captioning.bundle import load_bundle
    from cxr_impressions.captioning.decoding import Decoder
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.config import load_section
    from cxr_impressions.features.store import FeatureStore

    bundle = load_bundle(root / "models")
    names = tuple(bundle.model.labels)
    if "abnormal" not in names:
        raise InputError(f"{root / 'models'}: the model is conditioned on "
                         f"{list(names) or 'nothing'}; this needs model.condition: findings "
                         "or abnormal")
    decode = load_section("decode", path=root / "params.yaml")
    if multipliers is not None:
        decode = replace(decode, prevalence_multipliers=multipliers)
    multipliers = decode.prevalence_multipliers
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    clean = root / "data" / "clean"
    with FeatureStore(root / features) as store:
        val = load_split(clean, "val", store, bundle.vocab, grid_pool)
        train = load_split(clean, "train", store, bundle.vocab)
    inputs = bundle.model_inputs(val.inputs(), val.titles)
    probabilities = Decoder(bundle.model, bundle.vocab).encode(inputs)["probabilities"]
    labels = val.label_matrix(names)
    prevalence = train.label_matrix(names).mean(axis=0)

    rules = RULES if fixed is None else (*RULES, f"prevalence/{fixed:g}")
    judged = None if fixed is None else CaptionsByMultiplier(
        bundle, inputs, val.texts, probabilities, prevalence, (*multipliers, fixed))
    rng = np.random.default_rng(seed)
    results = {rule: [] for rule in rules}
    caption_differences = []
    for _ in range(repeats):
        order = rng.permutation(len(labels))
        fit, held = order[:len(order) // 2], order[len(order) // 2:]
        chosen_m = {}
        for rule in rules:
            thresholds, chosen_m[rule] = thresholds_by(rule, probabilities[fit], labels[fit],
                                                       prevalence, multipliers, names)
            results[rule].append(scores_on(probabilities[held], labels[held], thresholds,
                                           names))
        if judged is not None:
            caption_differences.append(judged.scores(fixed, held)
                                       - judged.scores(chosen_m["prevalence/shared"], held))
    print(f"{root}, validation: {len(labels)} studies, {repeats} random halvings (thresholds "
          "set on one half, scored on the other); the label head alone")
    print(f"{'rule':<18} {'findings macro-F1':>18} {'abnormal F1':>12}")
    for rule in rules:
        values = np.asarray(results[rule])
        print(f"{rule:<18} {values[:, 0].mean():>18.3f} {values[:, 1].mean():>12.3f}")
    differences = {f"{rule} - {other}, {score}": print_difference(results, rule, other,
                                                                   column, score)
                   for rule, other, column, score in COMPARED}
    if judged is not None:
        differences |= judged.report(fixed, np.asarray(caption_differences))
    if captions:
        print_caption_selection(bundle, inputs, val.texts, probabilities, labels,
                                train.label_matrix(names), decode)
    print()
    return differences


class CaptionsByMultiplier:
    """The validation captions of a workspace's chosen decoding under the shared prevalence
    thresholds of each multiplier (set on the whole split), and their scores on a subset."""

    def __init__(self, bundle: Bundle, inputs: dict[str, np.ndarray], references: list[str],
                 probabilities: np.ndarray, prevalence: np.ndarray,
                 multipliers: tuple[float, ...]) -> None:
        from cxr_impressions.captioning.selection import prevalence_thresholds
        from cxr_impressions.data.labeller import label_text

        self.setting = bundle.decode
        self.references = references
        self.reference_labels = [label_text(text) for text in references]
        self.captions: dict[float, list[str]] = {}
        self.labels: dict[float, list[dict[str, bool]]] = {}
        self.abnormal_share: dict[float, float] = {}
        abnormal = list(bundle.model.labels).index("abnormal")
        for m in dict.fromkeys(multipliers):
            thresholds = prevalence_thresholds(probabilities, prevalence, m)
            self.captions[m] = chosen_captions(bundle, thresholds, inputs, f"val, m {m:g}")
            self.labels[m] = [label_text(text) for text in self.captions[m]]
            self.abnormal_share[m] = float(np.mean(probabilities[:, abnormal]
                                                   >= thresholds[abnormal]))

    def scores(self, m: float, studies: np.ndarray) -> np.ndarray:
        """`CAPTION_METRICS` of multiplier `m`'s captions of `studies` (indices)."""
        from cxr_impressions.evaluation.scoring import clinical_scores, text_metrics

        text = text_metrics([self.references[i] for i in studies],
                            [self.captions[m][i] for i in studies])
        clinical = clinical_scores([self.reference_labels[i] for i in studies],
                                   [self.labels[m][i] for i in studies])
        scores = text | {"abnormal_f1": clinical["abnormal"]["f1"],
                         "findings_macro_f1": clinical["findings_macro_f1"]}
        return np.array([scores[name] for name in CAPTION_METRICS])

    def report(self, fixed: float, differences: np.ndarray) -> dict[str, float]:
        """Prints each multiplier's scores on the whole split and `differences` (per halving,
        `fixed`'s captions minus those of the multiplier `prevalence/shared` picked); returns
        their means on `CAPTION_COLUMNS`, by column header."""
        every = np.arange(len(self.references))
        setting = self.setting
        print(f"\nthe chosen decoding (beam {setting.beam_size}, lp {setting.length_penalty}, "
              f"{setting.labels}, {setting.normal_text}, {setting.finding_text}) under each "
              "multiplier's thresholds, the whole validation split:")
        print(f"{'m':>5} {'abnormal called':>16} " + " ".join(f"{name:>17}"
                                                          for name in CAPTION_METRICS))
        for m in self.captions:
            print(f"{m:>5g} {self.abnormal_share[m]:>16.1%} " + " ".join(
                f"{value:>17.4f}" for value in self.scores(m, every)))
        print(f"captions, prevalence/{fixed:g} - prevalence/shared (its m picked on one half by "
              "the label head), on the other half:")
        columns = {}
        for j, name in enumerate(CAPTION_METRICS):
            low, high = np.percentile(differences[:, j], [2.5, 97.5])
            mean = float(differences[:, j].mean())
            print(f"  {name}: {mean:+.4f} (middle 95% of the halvings {low:+.4f} to "
                  f"{high:+.4f}; {np.mean(differences[:, j] > 0):.0%} of them favour "
                  f"prevalence/{fixed:g})")
            if name in CAPTION_COLUMNS:
                columns[f"captions {name}, prevalence/{fixed:g} - shared"] = mean
        return columns


def chosen_captions(bundle: Bundle, thresholds: np.ndarray, inputs: dict[str, np.ndarray],
                    progress: str) -> list[str]:
    """The captions of the bundle's chosen decoding setting under `thresholds`, decoded and
    worded as evaluate decodes them."""
    decoder = bundle.decoder(thresholds)
    return decoder.texts(decoder.decode(inputs, bundle.decode, progress=progress))


def print_workspaces(differences: dict[Path, dict[str, float]]) -> None:
    """Per workspace, its mean differences (the columns, by header); then their mean over the
    workspaces and on how many the difference is above 0."""
    headers = list(next(iter(differences.values())))
    width = max(len(str(root)) for root in differences)
    print(f"{'workspace':<{width}}  " + "  ".join(headers))
    for root, values in differences.items():
        print(f"{str(root):<{width}}  " + "  ".join(
            f"{values[header]:>+{len(header)}.3f}" for header in headers))
    table = np.asarray([[values[header] for header in headers]
                        for values in differences.values()])
    print(f"{'mean':<{width}}  " + "  ".join(
        f"{table[:, j].mean():>+{len(header)}.3f}" for j, header in enumerate(headers)))
    print(f"{'above 0 on':<{width}}  " + "  ".join(
        f"{f'{int((table[:, j] > 0).sum())}/{len(table)}':>{len(header)}}"
        for j, header in enumerate(headers)))


def print_difference(results: dict[str, list[tuple[float, float]]], rule: str, other: str,
                     column: int, score: str) -> float:
    """Prints the mean over the halvings of `rule` minus `other` on one score, its middle 95%
    and the share of halvings that favour `rule`; returns that mean."""
    difference = np.asarray(results[rule])[:, column] - np.asarray(results[other])[:, column]
    low, high = np.percentile(difference, [2.5, 97.5])
    print(f"{rule} - {other}, {score}: {difference.mean():+.3f} (middle 95% of the halvings "
          f"{low:+.3f} to {high:+.3f}; {np.mean(difference > 0):.0%} of them favour {rule})")
    return float(difference.mean())


def print_caption_selection(bundle: Bundle, inputs: dict[str, np.ndarray],
                            references: list[str], probabilities: np.ndarray,
                            val_labels: np.ndarray, train_labels: np.ndarray,
                            decode: DecodeParams) -> None:
    """Under each rule's thresholds (set on the whole validation split, as the selection stage
    sets them), the decoding setting the selection chooses on validation, and its scores there."""
    from dataclasses import replace

    from cxr_impressions.captioning.selection import select_decoding, select_thresholds

    names = tuple(bundle.model.labels)
    metric = decode.select_metric
    rows = []
    for rule in (rule for rule in RULES if rule != "0.5"):
        thresholds_rule, _, abnormal = rule.partition("/")
        under = replace(decode, thresholds=thresholds_rule,
                        abnormal_multiplier=abnormal or decode.abnormal_multiplier)
        thresholds, _ = select_thresholds(probabilities, val_labels, train_labels, names, under)
        chosen, _, row = select_decoding(bundle.decoder(thresholds), inputs, references, under)
        rows.append((rule, f"beam {chosen.beam_size}, lp {chosen.length_penalty}, "
                           f"{chosen.labels}", row))
    print(f"\nthe decoding selection on validation under each rule (by {metric}):")
    print(f"{'rule':<18} {'chosen':<34} {metric:>10} {'cider':>7} {'rouge_l':>8} "
          f"{'abn F1':>7} {'find F1':>8} {'top share':>10}")
    for rule, setting, row in rows:
        print(f"{rule:<18} {setting:<34} {row[metric]:>10.4f} {row['cider']:>7.3f} "
              f"{row['rouge_l']:>8.3f} {row['abnormal_f1']:>7.3f} "
              f"{row['findings_macro_f1']:>8.3f} {row['top_share']:>10.1%}")


if __name__ == "__main__":
    run_stage(main)
