"""Do other decoding candidates (`decode.normal_texts`, `finding_texts`, `length_penalties`,
`beam_sizes`, `label_modes`, `template_rules`), or another tie rule, hold up on validation
studies they were not chosen on? The full validation split, then split-half.

Each choice to weigh is a candidate grid and a tie rule (`decode.select_ties`, optionally
with `:` and a guard reference, `decode.select_guard_reference`), written
`KEY=VALUES[;KEY=VALUES...][@TIES[:REFERENCE]]`, KEY one of normal_text, finding_text,
length_penalty, beam_size, labels, template_rule and VALUES comma-separated, e.g.
`normal_text=template_read;length_penalty=0,0.7,1,1.5,2@varied`, or `@varied:leader` (the
workspace's grid, guards against the tied leader); a part without `KEY=` lists normal texts
(`decoder,template`); a key not given keeps the workspace's candidates, and without `@` (or
`:`) the workspace's rule (reference). The first choice is the baseline.
The workspace's trained model decodes the validation split once under every candidate of every
choice (the selection stage's candidates, `decoding_candidates`, under the label thresholds,
normal impressions and finding phrases of its models/decoding.json, and the normal templates
each template rule takes from the training split, as the selection stage does). Then:

- **Full validation**, as the selection stage chooses: each choice's pick (`choose`, with the
  workspace's `decode` section otherwise: metric, guards), its validation scores, and the paired
  95% interval of each pick minus the baseline's (1,000 resamples of the studies); also the
  baseline's pick decoded alike but worded by each other normal or finding text or template
  rule.
- **Split-half**: many times over, the validation studies are split at random into two halves;
  each choice picks on one half and is scored on the other. A larger candidate set always scores
  at least as well where it chooses, so only the held-out half tells whether it gains.

The validation split only: this is how `template_read` and the length penalties were weighed
(docs/results.md), so the test split stays unseen.

    python scripts/decoding_candidates.py [--root .] [--repeats 20] [--seed 0]
        [--compare decoder,template template_read "length_penalty=0,0.7,1,1.5,2" ...]
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
SETTING = ("method", "beam_size", "length_penalty", "labels", "beam_choice", "normal_text",
           "finding_text", "template_rule")
# How a decoded caption is worded, not searched.
WORDING = ("normal_text", "finding_text", "template_rule")


# A choice's keys: the candidate row's field, the `decode` list it narrows, and its values' type.
GRID = {"normal_text": ("normal_texts", str), "finding_text": ("finding_texts", str),
        "length_penalty": ("length_penalties", float),
        "beam_size": ("beam_sizes", int), "labels": ("label_modes", str),
        "template_rule": ("template_rules", str)}


@dataclasses.dataclass(frozen=True)
class Choice:
    text: str  # as written
    grid: tuple[tuple[str, tuple], ...]  # (key, its candidate values); keys not given: the params'
    ties: str | None  # select_ties; None: the workspace's
    reference: str | None  # select_guard_reference; None: the workspace's

    def __str__(self) -> str:
        return self.text

    def values(self, key: str, params: DecodeParams) -> tuple:
        """The candidates of `key` under this choice: its own, or the params' list."""
        return dict(self.grid).get(key, getattr(params, GRID[key][0]))

    def allows(self, row: dict, params: DecodeParams) -> bool:
        """Whether the candidate `row` is in this choice's grid (`params`: the workspace's)."""
        # Greedy has one candidate whatever the penalties (they re-rank beams only).
        keys = [k for k in GRID if not (k == "length_penalty" and row["beam_size"] == 1)]
        return all(row[k] in self.values(k, params) for k in keys)


def parse_choice(value: str) -> Choice:
    from cxr_impressions.settings.decode import GUARD_REFERENCES, TEMPLATE_RULES
    from cxr_impressions.settings.decoding import DecodingSettings

    grid_part, _, rule = value.partition("@")
    ties, _, reference = rule.partition(":")
    grid: dict[str, tuple] = {}
    parts = grid_part.split(";") if grid_part.strip() else []  # `@TIES` alone: no grid
    for part in (p.strip() for p in parts):
        key, _, listed = part.rpartition("=")
        key = key.strip() or "normal_text"
        if key not in GRID or key in grid:
            raise argparse.ArgumentTypeError(
                f"{value!r}: expected KEY=VALUES parts, KEY one of {', '.join(GRID)}, each once")
        kind = GRID[key][1]
        try:
            grid[key] = tuple(kind(v.strip()) for v in listed.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r}: {key} takes {kind.__name__} values, got {listed!r}") from None
        allowed = {"normal_text": DecodingSettings.NORMAL_TEXTS,
                   "finding_text": DecodingSettings.FINDING_TEXTS,
                   "labels": DecodingSettings.LABEL_MODES,
                   "template_rule": TEMPLATE_RULES}.get(key)
        if not grid[key] or (allowed and any(v not in allowed for v in grid[key])):
            raise argparse.ArgumentTypeError(
                f"{value!r}: expected {key} values"
                + (f" ({' | '.join(allowed)})" if allowed else "")
                + ", comma-separated, then optionally @ and a tie rule")
    if ties and ties not in ("best", "varied"):
        raise argparse.ArgumentTypeError(f"{value!r}: the tie rule must be best or varied, "
                                         f"got {ties!r}")
    if reference and reference not in GUARD_REFERENCES:
        raise argparse.ArgumentTypeError(
            f"{value!r}: the guard reference must be {', '.join(GUARD_REFERENCES[:-1])} or "
            f"{GUARD_REFERENCES[-1]}, got {reference!r}")
    return Choice(value, tuple(grid.items()), ties or None, reference or None)


def subset(stats: StudyStatistics, index: np.ndarray) -> StudyStatistics:
    """`stats` of the studies at `index` only."""
    return dataclasses.replace(stats, **{
        f.name: None if getattr(stats, f.name) is None else getattr(stats, f.name)[index]
        for f in dataclasses.fields(stats)})


def rows_on(rows: Sequence[dict], statistics: Sequence[StudyStatistics],
            captions: Sequence[Sequence[str]], index: np.ndarray) -> list[dict]:
    """Each candidate's settings with its scores and top share on the studies at `index`;
    `statistics` are of those studies only (`subset`), `captions` of every study."""
    from cxr_impressions.evaluation.bootstrap import metric_values

    out = []
    for row, stats, texts in zip(rows, statistics, captions, strict=True):
        values = metric_values(stats, np.ones((1, len(index))))
        shown = [texts[i] for i in index]
        out.append({**{key: row[key] for key in SETTING},
                    **{name: float(value[0]) for name, value in values.items()},
                    "top_share": Counter(shown).most_common(1)[0][1] / len(shown)})
    return out


def pick(choice: Choice, rows: list[dict], statistics: Sequence[StudyStatistics],
         params: DecodeParams) -> int:
    """The index (into `rows`) that the selection chooses under `choice` (`params`: the
    workspace's `decode` section)."""
    from cxr_impressions.captioning.selection import choose

    candidates = [i for i, row in enumerate(rows) if choice.allows(row, params)]
    rule = dataclasses.replace(
        params, select_ties=choice.ties or params.select_ties,
        select_guard_reference=choice.reference or params.select_guard_reference)
    picked = choose([dict(rows[i]) for i in candidates], [statistics[i] for i in candidates],
                    rule)
    return candidates[picked]


def describe(row: dict) -> str:
    search = "greedy" if row["beam_size"] == 1 else (
        f"beam {row['beam_size']}, lp {row['length_penalty']}")
    found = "" if row["finding_text"] == "decoder" else f", {row['finding_text']}"
    rule = "" if row["template_rule"] == "commonest" else f", {row['template_rule']} template"
    return f"{search}, {row['labels']}, {row['normal_text']}{found}{rule}"


def table_row(label: str, chosen: str, values: dict, width: int) -> str:
    return (f"{label:<{width}} {chosen:<56} " + " ".join(f"{values[m]:>9.4f}" for m in METRICS)
            + f" {values['top_share']:>9.1%}")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, default=Path("."), help="the pipeline's workspace")
    cli.add_argument("--features", default="features/xception.h5", help="under --root")
    cli.add_argument("--compare", type=parse_choice, nargs="+", required=True,
                     help="choices KEY=VALUES[;KEY=VALUES...][@TIES[:REFERENCE]] to weigh, "
                          "the baseline first")
    cli.add_argument("--repeats", type=int, default=20, help="random halvings")
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args()
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    choices: list[Choice] = list(dict.fromkeys(args.compare))
    if len(choices) < 2:
        raise InputError("--compare needs at least two different choices, the baseline first")
    # TensorFlow loads here, after run_stage has quietened its logs.
    from cxr_impressions.captioning.bundle import load_bundle
    from cxr_impressions.captioning.selection import (
        decoding_candidates,
        rule_decoders,
        rule_templates,
    )
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.config import load_section
    from cxr_impressions.evaluation.bootstrap import paired_differences
    from cxr_impressions.features.store import FeatureStore

    bundle = load_bundle(args.root / "models")
    if not bundle.model.conditioned or not bundle.normal_templates:
        raise InputError(f"{args.root / 'models'}: the model has no labels or no normal "
                         "templates (a conditioned model, after the selection stage)")
    decode = load_section("decode", path=args.root / "params.yaml")
    # Every candidate of every choice is decoded; `varied` here only so that every
    # candidate's statistics are kept.
    params = dataclasses.replace(decode, select_ties="varied", **{
        field: tuple(dict.fromkeys(v for choice in choices for v in choice.values(key, decode)))
        for key, (field, _) in GRID.items()})
    params.validate("--compare")  # the params' own ranges: beam sizes >= 1, penalties in [0, 3]
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    with FeatureStore(args.root / args.features) as store:
        val = load_split(args.root / "data" / "clean", "val", store, bundle.vocab, grid_pool)
        train = load_split(args.root / "data" / "clean", "train", store, bundle.vocab)
    inputs = bundle.model_inputs(val.inputs(), val.titles)
    # Each template rule's templates from the training split, as the selection stage takes
    # them; the bundle keeps only the chosen rule's.
    worders = rule_decoders(bundle, bundle.thresholds,
                            rule_templates(bundle, train, params.template_rules),
                            bundle.normal_impressions, bundle.finding_phrases)
    rows, statistics, captions = decoding_candidates(next(iter(worders.values())), inputs,
                                                     val.texts, params, worders)
    n = len(val.texts)
    full = rows_on(rows, statistics, captions, np.arange(n))
    picks = [pick(choice, full, statistics, decode) for choice in choices]
    print(f"validation: {n} studies; {len(rows)} candidates; chosen by {decode.select_metric}, "
          f"ties {decode.select_ties} unless given, guards {list(decode.select_guards)} "
          f"against the {decode.select_guard_reference} unless given")
    width = max(44, *(len(str(choice)) for choice in choices))
    print(f"{'choice (grid@ties)':<{width}} {'chosen':<56} "
          + " ".join(f"{m[:9]:>9}" for m in (*METRICS, "top")))
    for choice, index in zip(choices, picks, strict=True):
        print(table_row(str(choice), describe(full[index]), full[index], width))
    baseline = full[picks[0]]
    for row in full:
        if (any(row[key] != baseline[key] for key in WORDING)
                and all(row[key] == baseline[key] for key in SETTING if key not in WORDING)):
            print(table_row("(the baseline's pick, worded otherwise)", describe(row), row,
                            width))
    differences = paired_differences(statistics[picks[0]], [statistics[i] for i in picks[1:]],
                                     METRICS, 1000, args.seed)
    for k, (choice, index) in enumerate(zip(choices[1:], picks[1:], strict=True)):
        print(f"{choice} - baseline (paired, 95%): " + "; ".join(
            f"{m} {full[index][m] - baseline[m]:+.4f} [{differences[m][k][0]:+.4f}, "
            f"{differences[m][k][1]:+.4f}]" for m in METRICS))

    rng = np.random.default_rng(args.seed)
    held: list[list[list[float]]] = [[] for _ in choices]
    for _ in range(args.repeats):
        order = rng.permutation(n)
        fit, out = np.sort(order[: n // 2]), np.sort(order[n // 2:])
        fit_statistics = [subset(s, fit) for s in statistics]
        on_fit = rows_on(rows, fit_statistics, captions, fit)
        on_out = rows_on(rows, [subset(s, out) for s in statistics], captions, out)
        for k, choice in enumerate(choices):
            index = pick(choice, on_fit, fit_statistics, decode)
            held[k].append([on_out[index][m] for m in (*METRICS, "top_share")])
    print(f"\nsplit-half: {args.repeats} random halvings (chosen on one half, scored on the "
          "other); means over the halvings")
    print(f"{'choice (grid@ties)':<{width}} " + " ".join(f"{m[:9]:>9}"
                                                            for m in (*METRICS, "top")))
    for choice, values in zip(choices, held, strict=True):
        mean = np.mean(values, axis=0)
        print(f"{str(choice):<{width}} " + " ".join(f"{v:>9.4f}" for v in mean[:-1])
              + f" {mean[-1]:>9.1%}")
    for choice, values in zip(choices[1:], held[1:], strict=True):
        difference = np.asarray(values) - np.asarray(held[0])
        print(f"{choice} - baseline, held-out half: " + "; ".join(
            f"{m} {difference[:, j].mean():+.4f} (higher in {np.mean(difference[:, j] > 0):.0%}"
            f", lower in {np.mean(difference[:, j] < 0):.0%})" for j, m in enumerate(METRICS)))


if __name__ == "__main__":
    run_stage(main)
