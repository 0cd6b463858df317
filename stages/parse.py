"""parse: Open-i XML, Kaggle CSV or MIMIC-CXR reports -> report and image tables, and counts."""

import argparse

from cxr_impressions.atomic import write_json, write_parquet
from cxr_impressions.config import load_section
from cxr_impressions.data.layout import resolve_layout
from cxr_impressions.data.parse import parse_counts, parse_inputs
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--reports", required=True, help="output: report table (Parquet)")
    cli.add_argument("--images", required=True, help="output: image table (Parquet)")
    cli.add_argument("--metrics", required=True, help="output: parse counts (JSON)")
    args = cli.parse_args()

    data = load_section("data")
    params = load_section("parse")
    layout = resolve_layout(data.root, data.format, data.images)
    result, view_rule = parse_inputs(layout, params.skip_bad_reports, params.measure_view_rule)
    counts = {"format": layout.format, **parse_counts(result.reports, result.images),
              "skipped_files": len(result.skipped_files),
              "duplicate_image_rows": len(result.duplicates), **result.counts}
    if view_rule:
        counts["view_rule"] = view_rule
    write_parquet(args.reports, result.reports)
    write_parquet(args.images, result.images)
    write_json(args.metrics, counts)


if __name__ == "__main__":
    run_stage(main)
