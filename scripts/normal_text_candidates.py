"""Does a set of `decode.normal_texts` candidates hold up against another on validation studies
it was not chosen on? The full validation split, then split-half.

The workspace's trained model decodes the validation split once under every candidate of both
sets (the selection stage's candidates, `decoding_candidates`, under the label thresholds and
normal templates of its models/decoding.json). Then:

- **Full validation**, as the selection stage chooses: each set's choice (`choose`, with the
  workspace's `decode` section: metric, ties, guards), its validation scores, and the paired 95%
  interval of the second set's choice minus the first's (1,000 resamples of the studies).
- **Split-half**: many times over, the validation studies are split at random into two halves;
  each set chooses on one half and is scored on the other. A larger candidate set always scores
  at least as well where it chooses, so only the held-out half tells whether it gains.

The validation split only: this is how `template_read` was weighed (docs/results.md), so the test
split stays unseen.

    python scripts/normal_text_candidates.py [--root .] [--against decoder,template]
        [--with decoder,template,template_read] [--repeats 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_impressions.errors import InputError
from cxr_impressions.stage import run_stage

if TYPE_CHECKING:
    from cxr_impressions.evaluation.bootstrap import StudyStatistics
    from cxr_impressions.settings.decode import DecodeParams

METRICS = ("bleu4", "rouge_l", "cider", "abnormal_f1", "findings_macro_f1")
SETTING = ("method", "beam_size", "length_penalty", "labels", "beam_choice", "normal_text")


def subset(stats: StudyStatistics, index: np.ndarray) -> StudyStatistics:
    """`stats` of the studies at `index` only."""
    return dataclasses.replace(stats, **{
        f.name: None if getattr(stats, f.name) is None else getattr(stats, f.name)[index]
        for f in dataclasses.fields(stats)})


def rows_on(rows: Sequence[dict], statistics: Sequence[StudyStatistics],
            captions: Sequence[Sequence[str]], index: np.ndarray) -> list[dict]:
    """Each candidate's settings with its scores and top share on the studies at `index`."""
    from cxr_impressions.evaluation.bootstrap import metric_values

    out = []
    for row, stats, texts in zip(rows, statistics, captions, strict=True):
        values = metric_values(subset(stats, index), np.ones((1, len(index))))
        shown = [texts[i] for i in index]
        out.append({**{key: row[key] for key in SETTING},
                    **{name: float(value[0]) for name, value in values.items()},
                    "top_share": Counter(shown).most_common(1)[0][1] / len(shown)})
    return out


def chosen_in(candidates: list[int], rows: list[dict], statistics: Sequence[StudyStatistics],
              params: DecodeParams) -> int:
    """The index (into `rows`) that the selection chooses among `candidates`."""
    from cxr_impressions.captioning.selection import choose

    picked = choose([dict(rows[i]) for i in candidates], [statistics[i] for i in candidates],
                    params)
    return candidates[picked]


def describe(row: dict) -> str:
    search = "greedy" if row["beam_size"] == 1 else (
        f"beam {row['beam_size']}, lp {row['length_penalty']}")
    return f"{search}, {row['labels']}, {row['normal_text']}"


def parse_texts(value: str) -> tuple[str, ...]:
    from cxr_impressions.settings.decoding import DecodingSettings

    texts = tuple(t.strip() for t in value.split(",") if t.strip())
    unknown = [t for t in texts if t not in DecodingSettings.NORMAL_TEXTS]
    if not texts or unknown:
        allowed = " | ".join(DecodingSettings.NORMAL_TEXTS)
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected a comma-separated list of {allowed}")
    return texts


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, default=Path("."), help="the pipeline's workspace")
    cli.add_argument("--features", default="features/xception.h5", help="under --root")
    cli.add_argument("--against", type=parse_texts, default=("decoder", "template"),
                     help="the first set of normal_texts candidates")
    cli.add_argument("--with", dest="other", type=parse_texts,
                     default=("decoder", "template", "template_read"),
                     help="the second set of normal_texts candidates")
    cli.add_argument("--repeats", type=int, default=20, help="random halvings")
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args()
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    # TensorFlow loads here, after run_stage has quietened its logs.
    from cxr_impressions.captioning.bundle import load_bundle
    from cxr_impressions.captioning.selection import decoding_candidates
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.config import load_section
    from cxr_impressions.evaluation.bootstrap import paired_differences
    from cxr_impressions.features.store import FeatureStore

    bundle = load_bundle(args.root / "models")
    if not bundle.model.conditioned or not bundle.normal_templates:
        raise InputError(f"{args.root / 'models'}: the model has no labels or no normal "
                         "templates (a conditioned model, after the selection stage)")
    decode = load_section("decode", path=args.root / "params.yaml")
    params = dataclasses.replace(decode, select_ties="varied",
                                 normal_texts=tuple(dict.fromkeys((*args.against, *args.other))))
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    with FeatureStore(args.root / args.features) as store:
        val = load_split(args.root / "data" / "clean", "val", store, bundle.vocab, grid_pool)
    inputs = bundle.model_inputs(val.inputs(), val.titles)
    rows, statistics, captions = decoding_candidates(bundle.decoder(), inputs, val.texts,
                                                     params)
    sets = {name: [i for i, row in enumerate(rows) if row["normal_text"] in texts]
            for name, texts in (("against", args.against), ("with", args.other))}
    rule = dataclasses.replace(params, select_ties=decode.select_ties)
    n = len(val.texts)
    everyone = np.arange(n)
    full = rows_on(rows, statistics, captions, everyone)
    picks = {name: chosen_in(candidates, full, statistics, rule)
             for name, candidates in sets.items()}
    print(f"validation: {n} studies; {len(rows)} candidates; chosen by {rule.select_metric}, "
          f"ties {rule.select_ties}, guards {list(rule.select_guards)}")
    print(f"{'set':<8} {'normal_texts':<36} {'chosen':<38} "
          + " ".join(f"{m[:9]:>9}" for m in (*METRICS, "top")))
    for name, texts in (("against", args.against), ("with", args.other)):
        row = full[picks[name]]
        print(f"{name:<8} {','.join(texts):<36} {describe(row):<38} "
              + " ".join(f"{row[m]:>9.4f}" for m in METRICS) + f" {row['top_share']:>9.1%}")
    differences = paired_differences(statistics[picks["against"]], [statistics[picks["with"]]],
                                     METRICS, 1000, args.seed)
    print("with - against (paired, 95%): " + "; ".join(
        f"{m} {full[picks['with']][m] - full[picks['against']][m]:+.4f} "
        f"[{differences[m][0][0]:+.4f}, {differences[m][0][1]:+.4f}]" for m in METRICS))

    rng = np.random.default_rng(args.seed)
    held_scores: dict[str, list[list[float]]] = {name: [] for name in sets}
    chose_other = 0
    for _ in range(args.repeats):
        order = rng.permutation(n)
        fit, held = np.sort(order[: n // 2]), np.sort(order[n // 2:])
        on_fit = rows_on(rows, statistics, captions, fit)
        fit_stats = [subset(s, fit) for s in statistics]
        on_held = rows_on(rows, statistics, captions, held)
        for name, candidates in sets.items():
            pick = chosen_in(candidates, on_fit, fit_stats, rule)
            held_scores[name].append([on_held[pick][m] for m in (*METRICS, "top_share")])
            if name == "with" and rows[pick]["normal_text"] not in args.against:
                chose_other += 1
    print(f"\nsplit-half: {args.repeats} random halvings (chosen on one half, scored on the "
          f"other); 'with' chose a normal text outside 'against' in {chose_other} of them")
    print(f"{'set':<8} " + " ".join(f"{m[:9]:>9}" for m in (*METRICS, "top")))
    means = {name: np.mean(values, axis=0) for name, values in held_scores.items()}
    for name, mean in means.items():
        print(f"{name:<8} " + " ".join(f"{v:>9.4f}" for v in mean[:-1]) + f" {mean[-1]:>9.1%}")
    difference = np.asarray(held_scores["with"]) - np.asarray(held_scores["against"])
    print("with - against, held-out half: " + "; ".join(
        f"{m} {difference[:, j].mean():+.4f} (higher in {np.mean(difference[:, j] > 0):.0%}, "
        f"lower in {np.mean(difference[:, j] < 0):.0%})" for j, m in enumerate(METRICS)))


if __name__ == "__main__":
    run_stage(main)
