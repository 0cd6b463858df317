"""report: the static HTML report of the test split (headline table, plots, gallery)."""

import argparse
import json
from pathlib import Path

import pandas as pd

from cxr_impressions.atomic import write_json
from cxr_impressions.config import load_section
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--clean", required=True, help="input: directory of the clean outputs")
    cli.add_argument("--scores", required=True, help="input: evaluate's metrics (JSON)")
    cli.add_argument("--train", required=True, help="input: train's summary (JSON)")
    cli.add_argument("--tables", required=True, help="input: evaluate's per-study tables")
    cli.add_argument("--attention", required=True, help="input: evaluate's attention (.npz)")
    cli.add_argument("--curves", required=True, help="input: DVCLive's plots directory")
    cli.add_argument("--out", required=True, help="output: report directory")
    cli.add_argument("--metrics", required=True, help="output: report counts (JSON)")
    args = cli.parse_args()
    params = load_section("report")

    from cxr_impressions.data.layout import view_slots
    from cxr_impressions.evaluation.tables import load_attention
    from cxr_impressions.reporting.page import build_report, load_curves

    tables = Path(args.tables)
    table = pd.read_csv(tables / "per_study.csv")
    images = pd.read_parquet(Path(args.clean) / "images.parquet")
    paths = dict(zip(images["image_id"], images["path"], strict=True))
    slots = view_slots(images[images["uid"].isin(table["uid"])])
    image_paths = {str(row.uid): (paths.get(row.frontal), paths.get(row.lateral))
                   for row in slots.itertuples()}
    counts = build_report(
        args.out, json.loads(Path(args.scores).read_text()),
        json.loads(Path(args.train).read_text()), table, load_curves(args.curves),
        pd.read_csv(tables / "by_reference_length.csv"), image_paths,
        load_attention(args.attention), top=params.top_impressions)
    write_json(args.metrics, counts)


if __name__ == "__main__":
    run_stage(main)
