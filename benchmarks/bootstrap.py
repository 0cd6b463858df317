"""How long the evaluate stage's bootstrap takes: 1,000 resamples of ~600 studies, three systems,
every text and clinical metric, against the baseline of rescoring each resample with the
scorers themselves (nltk `corpus_bleu`, pycocoevalcap ROUGE-L and CIDEr, `clinical_scores`, the
labels computed once, which favours the baseline). The baseline runs `--baseline-resamples`
resamples and is scaled to `--resamples`; METEOR is left out of both (Java: its per-study
statistics are collected once either way, and its bootstrap is one more matrix product).

    python benchmarks/bootstrap.py [--studies 600] [--resamples 1000] [--baseline-resamples 10]

Studies: impressions of `--reports` (default: the full data's CSV if present, else the sample's,
repeated), with a 'model' right 40% of the time, the constant baseline and a shuffled one.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_impressions.data.labeller import label_text
from cxr_impressions.data.text import normalise
from cxr_impressions.evaluation.bootstrap import resample_counts, significance, study_statistics
from cxr_impressions.evaluation.scoring import clinical_scores, text_metrics

FULL = Path("../shared/iuxray/indiana_reports.csv")
SAMPLE = Path("data/sample/indiana_reports.csv")


def studies(path: Path, count: int) -> tuple[list[str], dict[str, list[str]]]:
    reports = pd.read_csv(path)
    texts = [t for t in (normalise(str(x)) for x in reports["impression"].fillna("")) if t]
    references = [texts[i % len(texts)] for i in range(count)]
    rng = np.random.default_rng(0)
    model = [r if rng.random() < 0.4 else references[rng.integers(count)] for r in references]
    constant = [Counter(references).most_common(1)[0][0]] * count
    return references, {"model": model, "constant": constant,
                        "shuffled": [references[i] for i in rng.permutation(count)]}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--reports", type=Path, default=FULL if FULL.exists() else SAMPLE)
    cli.add_argument("--studies", type=int, default=600)
    cli.add_argument("--resamples", type=int, default=1000)
    cli.add_argument("--baseline-resamples", type=int, default=10)
    args = cli.parse_args()

    references, systems = studies(args.reports, args.studies)
    labels = {t: label_text(t) for t in {*references, *(h for s in systems.values() for h in s)}}
    reference_labels = [labels[r] for r in references]

    began = time.perf_counter()
    statistics = {name: study_statistics(references, hyps, None, reference_labels,
                                         [labels[h] for h in hyps])
                  for name, hyps in systems.items()}
    collect = time.perf_counter() - began
    began = time.perf_counter()
    significance(statistics, args.resamples, seed=0)
    fast = time.perf_counter() - began

    counts = resample_counts(args.studies, args.baseline_resamples, seed=0).astype(int)
    began = time.perf_counter()
    for row in counts:
        drawn = np.repeat(np.arange(args.studies), row)
        refs = [references[i] for i in drawn]
        for hyps in systems.values():
            text_metrics(refs, [hyps[i] for i in drawn])
            clinical_scores([reference_labels[i] for i in drawn],
                            [labels[hyps[i]] for i in drawn])
    naive = (time.perf_counter() - began) * args.resamples / args.baseline_resamples

    table = pd.DataFrame([
        {"variant": "per-study statistics, once (3 systems)", "seconds": collect},
        {"variant": f"bootstrap: {args.resamples} resamples, sums of statistics",
         "seconds": fast},
        {"variant": f"baseline: rescore each resample (x{args.resamples} from "
                    f"{args.baseline_resamples})", "seconds": naive}])
    print(f"{args.studies} studies from {args.reports}, 3 systems, every metric but METEOR")
    print(table.round(2).to_string(index=False))
    print(f"\nbaseline / bootstrap = {naive / fast:.0f}x; "
          f"with the one-off statistics: {naive / (fast + collect):.0f}x")


if __name__ == "__main__":
    main()
