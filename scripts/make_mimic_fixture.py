"""Write a small data set in the MIMIC-CXR layout from the embedded IU X-Ray sample.

MIMIC-CXR itself is credentialed (PhysioNet) and never downloaded by this project; this tree lets
the pipeline, the tests and `benchmarks/scale.py` run on its layout:

    OUT/mimic-cxr-2.0.0-metadata.csv.gz     dicom_id, subject_id, study_id, ViewPosition, ...
    OUT/mimic-cxr-2.0.0-split.csv.gz        dicom_id, study_id, subject_id, split (by patient)
    OUT/files/p1X/p1XXXXXXX/s5XXXXXXX.txt   the report, rewritten as a sectioned text
    OUT/files/p1X/p1XXXXXXX/s5XXXXXXX/<dicom_id>.jpg or .dcm   the study's real images

Each sample report (uid u) becomes study 50000000 + u of patient 10000000 + u // 2 (two studies
per patient, so a patient-level split matters). Even studies get DICOM images, odd ones JPEG; the
DICOMs rotate through 8-bit uncompressed, 12-bit RLE, MONOCHROME1 and 16-bit with a window, and
the reports through the ways MIMIC-CXR writes sections (header then text on the next line, on the
same line, lower case, an addendum). Every 10th study gets an extra image whose ViewPosition is
LAO (dropped and counted by parse). `--copies K` repeats the 100 studies K times under new ids,
hard-linking the image files (benchmarks/scale.py).

    python scripts/make_mimic_fixture.py OUT [--copies 1] [--jpeg-only]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cxr_impressions.data.images import encode_dicom  # noqa: E402
from cxr_impressions.data.layout import (  # noqa: E402
    MIMIC_METADATA,
    MIMIC_SPLIT,
    canonical_image_id,
    mimic_report_path,
    mimic_study_dir,
)

SAMPLE = REPO / "data" / "sample"
RLE = "1.2.840.10008.1.2.5"
DICOM_KINDS = ("uncompressed", "rle12", "monochrome1", "window16")


def dicom_id(image_id: str, copy: int) -> str:
    """A MIMIC-style dicom_id: five dash-separated groups of 8 hex digits."""
    digest = hashlib.sha1(f"{image_id}/{copy}".encode()).hexdigest()[:40]
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def to_dicom(grey: np.ndarray, kind: str) -> bytes:
    if kind == "rle12":
        return encode_dicom(grey.astype(np.uint16) * 16, bits=12, syntax=RLE)
    if kind == "monochrome1":
        return encode_dicom(255 - grey, bits=8, photometric="MONOCHROME1")
    if kind == "window16":
        stored = grey.astype(np.uint16) * 257  # 0..65535; the window shows all of it
        return encode_dicom(stored, bits=16, window=(32767.5, 65536.0))
    return encode_dicom(grey, bits=8)


def report_text(row: pd.Series, style: int) -> str:
    """The sample report as MIMIC-CXR would write it, in one of four styles."""
    findings, impression = row["findings"].strip(), row["impression"].strip()
    indication = row["indication"].strip() or "___"
    comparison = row["comparison"].strip() or "None."
    lines = ["                                 FINAL REPORT",
             " EXAMINATION:  CHEST (PA AND LAT)", "",
             f" INDICATION:  {indication}", "", f" COMPARISON:  {comparison}", ""]
    if style == 1:  # text on the header's line
        if findings:
            lines += [f" FINDINGS:  {findings}", ""]
        lines += [f" IMPRESSION:  {impression}", ""]
    elif style == 2:  # lower-case headers
        if findings:
            lines += [" Findings:", f" {findings}", ""]
        lines += [" Impression:", f" {impression}", ""]
    else:  # headers on their own line, the text wrapped below
        if findings:
            lines += [" FINDINGS:", "", *_wrap(findings), ""]
        lines += [" IMPRESSION:", "", *_wrap(impression), ""]
    if style == 3:  # an addendum after the report
        lines += [" " + "_" * 78, "                                 FINAL ADDENDUM",
                  " ADDENDUM:  Findings were discussed with Dr. ___ at 10:30 on ___.", ""]
    return "\n".join(lines)


def _wrap(text: str, width: int = 76) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(" " + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([" " + line] if line else [])


def split_of(subject_id: int) -> str:
    bucket = int(hashlib.sha1(str(subject_id).encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validate" if bucket == 1 else "train"


def build(out: Path, copies: int = 1, jpeg_only: bool = False) -> dict[str, int]:
    """Write the tree; return how many studies and images it holds."""
    reports = pd.read_csv(SAMPLE / "indiana_reports.csv", dtype=str, keep_default_na=False)
    projections = pd.read_csv(SAMPLE / "indiana_projections.csv", dtype=str,
                              keep_default_na=False)
    projections["image_id"] = projections["filename"].map(canonical_image_id)
    files = {canonical_image_id(p.name): p for p in (SAMPLE / "images").iterdir()}
    (out / "files").mkdir(parents=True, exist_ok=True)
    # Per sample report, once: its text, its images and their views (the copies reuse them).
    samples = []
    ordered = reports.assign(n=pd.to_numeric(reports["uid"])).sort_values("n")
    for position, report in enumerate(ordered.to_dict("records")):
        uid = int(report["uid"])
        images = projections[projections["uid"] == report["uid"]].sort_values("filename")
        entries = [(i, p.strip().lower()) for i, p in zip(images["image_id"],
                                                           images["projection"], strict=True)]
        if position % 10 == 0 and entries:
            entries.append((entries[0][0], "other"))
        samples.append((uid, report_text(pd.Series(report), style=position % 4), entries))
    made: dict[tuple[str, str], Path] = {}  # (image id, kind) -> first file written
    rows = []
    for copy in range(copies):
        for uid, text, entries in samples:
            study = 50000000 + copy * 100000 + uid
            subject = 10000000 + copy * 100000 + uid // 2
            path = mimic_report_path(out / "files", subject, study)
            study_dir = out / "files" / mimic_study_dir(subject, study)
            study_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            use_dicom = not jpeg_only and uid % 2 == 0
            kind = DICOM_KINDS[(uid // 2) % len(DICOM_KINDS)] if use_dicom else "jpeg"
            for number, (image_id, projection) in enumerate(entries):
                dcm_id = dicom_id(f"{image_id}#{number}", copy)
                target = study_dir / (dcm_id + (".dcm" if use_dicom else ".jpg"))
                source = made.get((image_id, kind))
                if source is not None:
                    os.link(source, target)  # the same pixels under a new id: a hard link
                elif use_dicom:
                    grey = np.asarray(Image.open(files[image_id]).convert("L"))
                    target.write_bytes(to_dicom(grey, kind))
                else:
                    target.write_bytes(files[image_id].read_bytes())
                made.setdefault((image_id, kind), target)
                view = {"frontal": "PA" if uid % 3 else "AP",
                        "lateral": "LATERAL" if uid % 5 else "LL"}.get(projection, "LAO")
                rows.append({"dicom_id": dcm_id, "subject_id": subject, "study_id": study,
                             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                             "ViewPosition": view, "Rows": 256, "Columns": 256,
                             "split": split_of(subject)})
    table = pd.DataFrame(rows)
    _write_gz(out / f"{MIMIC_METADATA}.gz", table.drop(columns="split"))
    _write_gz(out / f"{MIMIC_SPLIT}.gz", table[["dicom_id", "study_id", "subject_id", "split"]])
    return {"studies": int(table["study_id"].nunique()), "images": len(table)}


def _write_gz(path: Path, frame: pd.DataFrame) -> None:
    text = io.StringIO()
    frame.to_csv(text, index=False)
    # mtime=0: the same tree gives the same bytes, run after run.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(text.getvalue().encode())


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("out", type=Path, help="the folder to write (must not exist)")
    cli.add_argument("--copies", type=int, default=1, help="repeat the 100 studies K times")
    cli.add_argument("--jpeg-only", action="store_true", help="no DICOM images")
    args = cli.parse_args()
    if args.out.exists():
        sys.exit(f"error: {args.out} already exists")
    counts = build(args.out, args.copies, args.jpeg_only)
    print(f"wrote {counts['studies']} studies, {counts['images']} images to {args.out}")


if __name__ == "__main__":
    main()
