"""clean: normalised target text, start/end tokens, a report-level split, the vocabulary, EDA."""

import argparse
from pathlib import Path

import pandas as pd

from cxr_impressions.atomic import write_csv, write_json, write_parquet
from cxr_impressions.config import load_section
from cxr_impressions.data import eda
from cxr_impressions.data.clean import clean_reports
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--parsed", required=True, help="input: directory of the parse tables")
    cli.add_argument("--out", required=True, help="output: directory of the clean tables")
    cli.add_argument("--metrics", required=True, help="output: clean counts (JSON)")
    cli.add_argument("--eda", required=True, help="output: directory of the EDA tables (CSV)")
    args = cli.parse_args()

    params = load_section("clean")
    reports = pd.read_parquet(Path(args.parsed) / "reports.parquet")
    images = pd.read_parquet(Path(args.parsed) / "images.parquet")
    result = clean_reports(reports, images, params)

    out = Path(args.out)
    write_parquet(out / "examples.parquet", result.examples)
    write_parquet(out / "images.parquet", result.images)
    result.vocab.save(out / "vocab.json")

    top = eda.top_impressions(reports)
    counts = {**result.counts, "top20_impression_share": float(top["share"].sum().round(4))}
    write_json(args.metrics, counts)
    eda_dir = Path(args.eda)
    write_csv(eda_dir / "lengths.csv", eda.length_distribution(reports))
    write_csv(eda_dir / "images_per_report.csv", eda.images_per_report(images, reports))
    write_csv(eda_dir / "views.csv", eda.view_counts(images))
    write_csv(eda_dir / "top_impressions.csv", top)


if __name__ == "__main__":
    run_stage(main)
