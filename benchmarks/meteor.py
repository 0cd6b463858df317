"""How long METEOR takes in evaluate: Java with the paraphrase table cut to the texts' words
(`MeteorScorer()`, evaluation/paraphrase.py) against the whole table (`full_table=True`, what
pycocoevalcap starts), on the same studies, checking that the statistics are equal.

    python benchmarks/meteor.py [--studies 10,352,2000]

Studies: impressions of `--reports` (default: the full data's CSV if present, else the sample's,
repeated), each scored against the next one's (three systems' worth of texts in evaluate differ
little from this). The paraphrase index is built first, once, if this machine has none.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_impressions.data.text import normalise
from cxr_impressions.evaluation.meteor import MeteorScorer
from cxr_impressions.evaluation.paraphrase import paraphrase_index

FULL = Path("../shared/iuxray/indiana_reports.csv")
SAMPLE = Path("data/sample/indiana_reports.csv")


def timed(scorer: MeteorScorer, refs: list[str], hyps: list[str]) -> tuple[float, np.ndarray]:
    began = time.perf_counter()
    try:
        stats = scorer.statistics(refs, hyps)
    finally:
        scorer.close()
    return time.perf_counter() - began, stats


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--reports", type=Path, default=FULL if FULL.exists() else SAMPLE)
    cli.add_argument("--studies", default="10,352,2000")
    args = cli.parse_args()
    reports = pd.read_csv(args.reports)
    texts = [t for t in (normalise(str(x)) for x in reports["impression"].fillna("")) if t]

    began = time.perf_counter()
    paraphrase_index()
    print(f"paraphrase index ready in {time.perf_counter() - began:.1f} s "
          "(built once per machine, then loaded)\n")
    print("| studies | whole table (baseline) | cut table | speed-up | equal |")
    print("|---|---|---|---|---|")
    for count in (int(n) for n in args.studies.split(",")):
        refs = [texts[i % len(texts)] for i in range(count)]
        hyps = [texts[(i + 1) % len(texts)] for i in range(count)]
        whole, expected = timed(MeteorScorer(full_table=True), refs, hyps)
        cut, stats = timed(MeteorScorer(), refs, hyps)
        print(f"| {count:,} | {whole:.2f} s | {cut:.2f} s | {whole / cut:.1f}x | "
              f"{np.array_equal(stats, expected)} |")


if __name__ == "__main__":
    main()
