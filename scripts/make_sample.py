"""Rebuild data/sample/ from ../shared/iuxray: 100 seeded reports with both views, plus the
three real Open-i XML reports (uids 1-3) and their images.

    python scripts/make_sample.py [--source ../shared/iuxray] [--n 100] [--seed 7]
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_impressions.data.layout import (
    PROJECTIONS_CSV,
    REPORTS_CSV,
    canonical_image_id,
    index_images,
)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--source", default="../shared/iuxray")
    cli.add_argument("--out", default="data/sample")
    cli.add_argument("--n", type=int, default=100)
    cli.add_argument("--seed", type=int, default=7)
    args = cli.parse_args()
    source, out = Path(args.source), Path(args.out)

    reports = pd.read_csv(source / REPORTS_CSV, dtype=str, keep_default_na=False)
    projections = pd.read_csv(source / PROJECTIONS_CSV, dtype=str, keep_default_na=False)
    found = index_images(source / "images")
    projections["image_id"] = projections["filename"].map(canonical_image_id)
    projections = projections[projections["image_id"].isin(found)]
    views = projections.groupby("uid")["projection"].agg(sorted)
    both = views[views.map(lambda v: v == ["Frontal", "Lateral"])].index
    has_impression = set(reports.loc[reports["impression"].str.strip() != "", "uid"])
    xml_uids = ["1", "2", "3"]
    pool = sorted((set(both) & has_impression) - set(xml_uids), key=int)
    rng = np.random.default_rng(args.seed)
    chosen = set(rng.choice(pool, size=args.n - len(xml_uids), replace=False)) | set(xml_uids)

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
    reports[reports["uid"].isin(chosen)].to_csv(out / REPORTS_CSV, index=False)
    rows = projections[projections["uid"].isin(chosen)]
    rows[["uid", "filename", "projection"]].to_csv(out / PROJECTIONS_CSV, index=False)
    for image_id in rows["image_id"]:
        shutil.copyfile(found[image_id], out / "images" / found[image_id].name)
    for uid in xml_uids:
        shutil.copyfile(source / "ecgen-radiology" / f"{uid}.xml",
                        out / "ecgen-radiology" / f"{uid}.xml")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(chosen)} reports, {len(rows)} images, {size / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
