"""Parse the reports (IU X-Ray's Open-i XML or Kaggle CSV pair, or MIMIC-CXR) into a report and
an image table.

Report table: one row per report, `uid, mesh, mesh_automatic, problems, caption, indication,
comparison, findings, impression, source`. MeSH terms are `;`-joined. MIMIC-CXR adds
`subject_id` and `official_split` (train/val/test, "" where the split file has no such study);
it has no MeSH terms.

Image table: one row per image the reports list, `uid, image_id, view, view_source, path, exists`.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from lxml import etree

from ..errors import InputError
from .layout import (
    MIMIC_METADATA_COLUMNS,
    MIMIC_SPLIT_COLUMNS,
    MIMIC_SPLITS,
    MIMIC_VIEWS,
    PROJECTION_COLUMNS,
    REPORT_COLUMNS,
    REPORT_TITLE_COLUMN,
    InputLayout,
    canonical_image_id,
    find_mimic_images,
    index_images,
    mimic_study_dir,
)
from .sections import report_sections

log = logging.getLogger(__name__)

TEXT_FIELDS = ("comparison", "indication", "findings", "impression")
REPORT_TABLE_COLUMNS = ("uid", "mesh", "mesh_automatic", "problems", "caption", *TEXT_FIELDS,
                        "source")
VIEWS = ("frontal", "lateral")


@dataclass
class ParseResult:
    reports: pd.DataFrame
    images: pd.DataFrame
    skipped_files: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # image rows listed again, kept once
    counts: dict[str, object] = field(default_factory=dict)  # format-specific, for parse.json


_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding=[\"']([\w.-]+)[\"']")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def check_utf8(path: Path, data: bytes) -> str:
    """Decode UTF-8, with a one-line error naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}: not valid UTF-8 (line {line}, byte {exc.start})") from None


def read_text_file(path: Path) -> str:
    return check_utf8(path, read_bytes(path))


def read_csv_checked(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A UTF-8 CSV with its required columns and numeric uids, or a one-line error."""
    text = read_text_file(path)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    bad = ~frame["uid"].str.strip().str.fullmatch(r"\d+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise InputError(f"{path}: line {row}: uid {frame['uid'].iloc[row - 2]!r} is not a number")
    frame["uid"] = frame["uid"].astype("int64")
    return frame


def read_kaggle_csv(reports_csv: Path, projections_csv: Path) -> ParseResult:
    """The Kaggle pair: `indiana_reports.csv` and `indiana_projections.csv`. A projection row
    that repeats an earlier one's uid and image is kept once, and listed in `duplicates`."""
    raw = read_csv_checked(reports_csv, REPORT_COLUMNS)
    reports = pd.DataFrame({
        "uid": raw["uid"],
        "mesh": raw["MeSH"].str.strip(),
        "mesh_automatic": "",
        "problems": raw["Problems"].str.strip(),
        "caption": raw[REPORT_TITLE_COLUMN].str.strip(),
        **{f: raw[f].str.strip() for f in TEXT_FIELDS},
        "source": reports_csv.name,
    })
    proj = read_csv_checked(projections_csv, PROJECTION_COLUMNS)
    ids = proj["filename"].map(canonical_image_id)
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0]) + 2
        raise InputError(f"{projections_csv}: line {row}: {proj['filename'].iloc[row - 2]!r} "
                         "is not an IU X-Ray image name")
    view = proj["projection"].str.strip().str.lower()
    images = pd.DataFrame({
        "uid": proj["uid"],
        "image_id": ids,
        "view": view.where(view.isin(VIEWS), "unknown"),
        "view_source": "csv",
    })
    repeated = images.duplicated(["uid", "image_id"]).to_numpy()
    duplicates = [f"{projections_csv}: line {row + 2}: uid {images['uid'].iloc[row]} image "
                  f"{images['image_id'].iloc[row]} listed again (counted once)"
                  for row in np.flatnonzero(repeated)]
    return ParseResult(reports, images[~repeated].reset_index(drop=True), duplicates=duplicates)


def parse_xml_report(path: Path) -> tuple[dict[str, object], list[str]]:
    """One Open-i XML report: its fields and the canonical ids of its images."""
    data = read_bytes(path)
    declared = _XML_ENCODING.match(data)
    if declared is None or declared[1].lower() in (b"utf-8", b"utf8"):
        check_utf8(path, data)
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise InputError(f"{path}: malformed XML ({message})") from None
    texts = root.findall(".//Abstract/AbstractText")
    if not texts:
        raise InputError(f"{path}: no AbstractText elements (not an Open-i report?)")
    fields = {f: "" for f in TEXT_FIELDS}
    for element in texts:
        label = (element.get("Label") or "").strip().lower()
        if label in fields:
            fields[label] = " ".join("".join(element.itertext()).split())
    uid_element = root.find("IUXRId")
    uid_text = uid_element.get("id") if uid_element is not None else None
    if uid_text is None or not uid_text.strip().isdigit():
        uid_text = path.stem if path.stem.isdigit() else None
    if uid_text is None:
        raise InputError(f"{path}: no numeric IUXRId and the file name is not a number")
    major = [t.text.strip() for t in root.findall("MeSH/major") if t.text and t.text.strip()]
    automatic = [t.text.strip() for t in root.findall("MeSH/automatic")
                 if t.text and t.text.strip()]
    captions, image_ids = [], []
    for image in root.findall("parentImage"):
        image_id = canonical_image_id(image.get("id", ""))
        if image_id is None:
            raise InputError(f"{path}: parentImage id {image.get('id')!r} is not an image id")
        image_ids.append(image_id)
        caption = image.findtext("caption")
        if caption:
            captions.append(caption.strip())
    report = {
        "uid": int(uid_text),
        "mesh": ";".join(major),
        "mesh_automatic": ";".join(automatic),
        "problems": ";".join(dict.fromkeys(term.split("/")[0] for term in major)),
        "caption": captions[0] if captions else "",
        **fields,
        "source": path.name,
    }
    return report, image_ids


def read_openi_xml(files: Iterable[Path], skip_bad: bool = False) -> ParseResult:
    """A directory's worth of Open-i XML reports. Bad files raise, or are skipped and listed."""
    reports, image_rows, skipped, duplicates = [], [], [], []
    for path in files:
        try:
            report, image_ids = parse_xml_report(path)
        except InputError as exc:
            if not skip_bad:
                raise
            log.warning("skipped %s", exc)
            skipped.append(str(exc))
            continue
        reports.append(report)
        unique = list(dict.fromkeys(image_ids))
        for image_id in unique:
            if image_ids.count(image_id) > 1:
                duplicates.append(f"{path}: image {image_id} listed "
                                  f"{image_ids.count(image_id)} times (counted once)")
        image_rows.extend({"uid": report["uid"], "image_id": i} for i in unique)
    frame = pd.DataFrame(reports, columns=list(REPORT_TABLE_COLUMNS))
    images = pd.DataFrame(image_rows, columns=["uid", "image_id"])
    images["view"] = "unknown"
    images["view_source"] = "none"
    return ParseResult(frame, images, skipped, duplicates)


def read_table(path: Path, required: Sequence[str], numeric: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV (or .csv.gz) with its required columns, and digits in the `numeric` ones, or a
    one-line error naming the file, the column or the line."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8",
                            usecols=lambda column: column in required)
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable CSV ({message})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    for column in numeric:
        bad = ~frame[column].str.strip().str.fullmatch(r"\d+")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{path}: line {row + 2}: {column} {frame[column].iloc[row]!r} is "
                             "not a number")
        frame[column] = frame[column].str.strip().astype("int64")
    return frame


def official_split(path: Path) -> pd.Series:
    """MIMIC-CXR's split file: study_id -> train/val/test (its `validate` is our `val`)."""
    frame = read_table(path, MIMIC_SPLIT_COLUMNS, numeric=("study_id",))
    labels = frame["split"].str.strip().str.lower()
    unknown = ~labels.isin(list(MIMIC_SPLITS))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: split {frame['split'].iloc[row]!r} is not "
                         f"one of {', '.join(MIMIC_SPLITS)}")
    per_study = pd.Series(labels.map(MIMIC_SPLITS).to_numpy(), index=frame["study_id"])
    conflicting = per_study.groupby(level=0).nunique() > 1
    if conflicting.any():
        raise InputError(f"{path}: study {int(conflicting.idxmax())} is in more than one split")
    return per_study[~per_study.index.duplicated()]


def read_mimic(layout: InputLayout, skip_bad: bool = False) -> ParseResult:
    """MIMIC-CXR: the metadata CSV lists the studies and their images; each study's report is a
    sectioned text file. Images whose ViewPosition is not PA/AP/LATERAL/LL are counted and
    dropped; a missing report file is an error, or with `skip_bad` a counted skip."""
    meta = read_table(layout.metadata_csv, MIMIC_METADATA_COLUMNS,
                      numeric=("subject_id", "study_id"))
    position = meta["ViewPosition"].str.strip().str.upper()
    meta["view"] = position.map(MIMIC_VIEWS)
    dropped_views = position[meta["view"].isna()].replace("", "(blank)").value_counts()
    studies = meta[["study_id", "subject_id"]].drop_duplicates().sort_values("study_id")
    twice = studies["study_id"].duplicated()
    if twice.any():
        study = int(studies.loc[twice, "study_id"].iloc[0])
        raise InputError(f"{layout.metadata_csv}: study {study} is listed under two subjects")
    split = official_split(layout.split_csv).to_dict() if layout.split_csv else {}
    # Plain strings and dicts below: at 60,000 studies, pathlib and per-row pandas calls cost
    # more than reading the reports (benchmarks/scale.py).
    reports_dir, image_dir = os.fspath(layout.reports_dir), os.fspath(layout.images)
    reports_name = layout.reports_dir.name
    reports, skipped = [], []
    for study_id, subject_id in zip(studies["study_id"].tolist(), studies["subject_id"].tolist(),
                                    strict=True):
        relative = mimic_study_dir(subject_id, study_id)
        path = f"{reports_dir}/{relative}.txt"
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            message = (f"{path}: report file not found (study {study_id} is in "
                       f"{layout.metadata_csv.name}; parse.skip_bad_reports: true skips it)")
            if not skip_bad:
                raise InputError(message) from None
            log.warning("skipped %s", message)
            skipped.append(message)
            continue
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror})") from None
        fields = report_sections(check_utf8(Path(path), data))
        reports.append((study_id, *(fields[f] for f in TEXT_FIELDS), fields["examination"],
                        f"{reports_name}/{relative}.txt", subject_id, split.get(study_id, "")))
    # The EXAMINATION line is the exam title ("CHEST (PA AND LAT)"), as the Kaggle CSV's
    # `image` column is IU X-Ray's.
    frame = pd.DataFrame(reports, columns=["uid", *TEXT_FIELDS, "caption", "source",
                                           "subject_id", "official_split"])
    for column in ("mesh", "mesh_automatic", "problems"):
        frame[column] = ""
    frame = frame[[*REPORT_TABLE_COLUMNS, "subject_id", "official_split"]]
    kept = meta[meta["view"].notna() & meta["study_id"].isin(frame["uid"])]
    kept = kept.assign(dicom_id=kept["dicom_id"].str.strip()).sort_values(
        ["study_id", "dicom_id"])
    study_ids, subject_ids = kept["study_id"].to_numpy(), kept["subject_id"].to_numpy()
    dicom_ids = kept["dicom_id"].tolist()
    paths: list[str] = []
    starts = np.flatnonzero(np.r_[True, study_ids[1:] != study_ids[:-1]]).tolist()
    for start, stop in zip(starts, [*starts[1:], len(dicom_ids)], strict=True):
        relative = mimic_study_dir(int(subject_ids[start]), int(study_ids[start]))
        paths.extend(find_mimic_images(f"{image_dir}/{relative}", dicom_ids[start:stop]))
    images = pd.DataFrame({"uid": study_ids, "image_id": dicom_ids,
                           "view": kept["view"].to_numpy(), "view_source": "metadata",
                           "path": paths})
    images["exists"] = images["path"] != ""
    found = images[images["exists"]]
    frontal = found.loc[found["view"] == "frontal", "uid"].unique()
    counts = {
        "views_dropped": {str(k): int(v) for k, v in dropped_views.items()},
        "images_dropped_view": int(dropped_views.sum()),
        "studies_without_frontal": int((~frame["uid"].isin(frontal)
                                        & frame["uid"].isin(found["uid"])).sum()),
        "official_split": {**{s: int((frame["official_split"] == s).sum())
                              for s in MIMIC_SPLITS.values()},
                           "not_in_split": int((frame["official_split"] == "").sum())}
        if layout.split_csv else {},
    }
    return ParseResult(frame, images, skipped, counts=counts)


def attach_image_files(images: pd.DataFrame, image_dir: Path) -> pd.DataFrame:
    """Add each image's `path` (found by id, whatever its extension) and whether it `exists`."""
    index = index_images(image_dir)
    images = images.copy()
    paths = images["image_id"].map(lambda i: str(index[i]) if i in index else "")
    images["path"] = paths
    images["exists"] = paths != ""
    return images


def symmetry_scores(paths: Sequence[str], size: int = 64) -> np.ndarray:
    """Left-right mirror correlation of each image (NaN where unreadable).

    Frontal chest films are close to mirror-symmetric; laterals are not.
    """
    from .images import image_dataset

    scores = np.full(len(paths), np.nan, dtype=np.float64)
    readable = np.flatnonzero([bool(p) for p in paths])
    if readable.size == 0:
        return scores
    dataset = image_dataset([paths[i] for i in readable], size, channels=1)
    for index, image in dataset.batch(256):
        pixels = image.numpy()[..., 0].astype(np.float64)
        pixels -= pixels.mean(axis=(1, 2), keepdims=True)
        mirrored = pixels[:, :, ::-1]
        num = (pixels * mirrored).sum(axis=(1, 2))
        den = np.sqrt((pixels**2).sum(axis=(1, 2)) * (mirrored**2).sum(axis=(1, 2))) + 1e-9
        scores[readable[index.numpy()]] = num / den
    return scores


SYMMETRY_THRESHOLD = 0.65


def views_from_symmetry(uids: Sequence[int], scores: np.ndarray) -> np.ndarray:
    """The view rule for reports with no view labels (the Open-i XML).

    In a report with two or more readable images, the most mirror-symmetric image is frontal and
    the least symmetric is lateral; any others, and single images, are frontal when their
    symmetry is at least SYMMETRY_THRESHOLD. Unreadable images are `unknown`.
    """
    views = np.where(scores >= SYMMETRY_THRESHOLD, "frontal", "lateral").astype(object)
    views[np.isnan(scores)] = "unknown"
    frame = pd.DataFrame({"uid": np.asarray(uids), "score": scores})
    for _, group in frame[~np.isnan(scores)].groupby("uid"):
        if len(group) >= 2:
            views[group["score"].idxmax()] = "frontal"
            views[group["score"].idxmin()] = "lateral"
    return views


def parse_inputs(layout: InputLayout, skip_bad: bool = False,
                 measure_view_rule: bool = True) -> tuple[ParseResult, dict[str, object]]:
    """Parse whichever format `layout` holds; return the tables and the view-rule measurement."""
    if layout.format == "csv":
        result = read_kaggle_csv(layout.reports_csv, layout.projections_csv)
    elif layout.format == "mimic":
        result = read_mimic(layout, skip_bad=skip_bad)
    else:
        result = read_openi_xml(layout.xml_files, skip_bad=skip_bad)
    for line in result.duplicates:
        log.warning("%s", line)
    if result.reports.empty:
        raise InputError(f"{layout.root}: no reports could be parsed")
    duplicated = result.reports["uid"].duplicated()
    if duplicated.any():
        uid = int(result.reports.loc[duplicated, "uid"].iloc[0])
        raise InputError(f"{layout.root}: report uid {uid} appears more than once")
    images = result.images if layout.format == "mimic" else attach_image_files(
        result.images, layout.images)
    images = images.reset_index(drop=True)
    view_rule: dict[str, object] = {}
    needs_rule = (images["view"] == "unknown") & images["exists"]
    if needs_rule.any() or (measure_view_rule and layout.format == "csv"):
        scores = symmetry_scores(images["path"].where(images["exists"], "").tolist())
        predicted = views_from_symmetry(images["uid"].to_numpy(), scores)
        images.loc[needs_rule, "view"] = predicted[needs_rule.to_numpy()]
        images.loc[needs_rule, "view_source"] = "symmetry"
        labelled = (images["view_source"] == "csv") & images["exists"]
        if labelled.any():
            agree = predicted[labelled.to_numpy()] == images.loc[labelled, "view"].to_numpy()
            view_rule = {"images_compared": int(labelled.sum()),
                         "agreement": round(float(agree.mean()), 4)}
    result.images = images
    return result, view_rule


def parse_counts(reports: pd.DataFrame, images: pd.DataFrame) -> dict[str, object]:
    """The counts the earlier notebooks reported, for `metrics/parse.json`."""
    found = images[images["exists"]]
    per_report = found.groupby("uid").size().reindex(reports["uid"], fill_value=0)
    views = found.groupby("uid")["view"].agg(set).reindex(reports["uid"])
    both = views.map(lambda v: isinstance(v, set) and set(VIEWS) <= v)
    empty = {f: int((reports[f].str.strip() == "").sum()) for f in ("findings", "impression")}
    return {
        "reports": int(len(reports)),
        "images_listed": int(len(images)),
        "images_found": int(len(found)),
        "images_missing": int((~images["exists"]).sum()),
        "reports_missing_findings": empty["findings"],
        "reports_missing_impression": empty["impression"],
        "reports_missing_both": int(((reports["findings"].str.strip() == "")
                                     & (reports["impression"].str.strip() == "")).sum()),
        "reports_without_images": int((per_report == 0).sum()),
        "images_per_report_mean": round(float(per_report.mean()), 4),
        "images_per_report_max": int(per_report.max()),
        "reports_with_both_views": int(both.sum()),
        "views": {v: int((found["view"] == v).sum()) for v in (*VIEWS, "unknown")},
    }
