"""MIMIC-CXR input: the fixture tree made from the sample, parse and clean on it, bad input, and
`dvc repro` end to end on it."""

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_impressions.data.clean import clean_reports
from cxr_impressions.data.images import encode_dicom
from cxr_impressions.data.layout import MIMIC_METADATA, resolve_layout, view_slots
from cxr_impressions.data.parse import parse_inputs
from cxr_impressions.errors import InputError
from cxr_impressions.settings.clean import CleanParams

from .helpers import REPO, SAMPLE, SHARED, needs_shared, run_stage, write_params
from .repos import DVC, set_params, sh, small_pipeline_repo

FIXTURE_SCRIPT = REPO / "scripts" / "make_mimic_fixture.py"
METADATA = f"{MIMIC_METADATA}.gz"


def make_fixture(out: Path) -> Path:
    subprocess.run([sys.executable, str(FIXTURE_SCRIPT), str(out)], check=True,
                   capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("mimic") / "mimic")


@pytest.fixture
def fixture_copy(fixture_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "mimic"
    shutil.copytree(fixture_root, copy)
    return copy


def read_gz_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_gz_csv(path: Path, frame: pd.DataFrame) -> None:
    text = io.StringIO()
    frame.to_csv(text, index=False)
    path.write_bytes(gzip.compress(text.getvalue().encode()))


def test_layout_is_detected_and_the_image_folder_named(fixture_root: Path) -> None:
    layout = resolve_layout(fixture_root, "auto", "files")
    assert layout.format == "mimic" and layout.images == fixture_root / "files"
    assert layout.metadata_csv.name == METADATA and layout.split_csv is not None
    with pytest.raises(InputError, match=r"image folder not found \(MIMIC-CXR keeps them in "
                                         r"files/: set data.images: files\)"):
        resolve_layout(fixture_root, "auto")


def test_parse_reads_sections_views_and_split(fixture_root: Path) -> None:
    result, view_rule = parse_inputs(resolve_layout(fixture_root, "mimic", "files"))
    reports, images = result.reports, result.images
    assert len(reports) == 100 and view_rule == {}
    # The sections come back as the sample's own findings and impressions.
    sample = pd.read_csv(SAMPLE / "indiana_reports.csv", dtype=str, keep_default_na=False)
    sample["uid"] = sample["uid"].astype(int) + 50000000
    merged = reports.merge(sample, on="uid", suffixes=("", "_iu"))
    assert len(merged) == 100
    for field in ("findings", "impression"):
        expected = merged[f"{field}_iu"].str.split().str.join(" ")
        assert (merged[field] == expected).all(), field
    assert (merged["subject_id"] == 10000000 + (merged["uid"] - 50000000) // 2).all()
    assert (reports["caption"] == "CHEST (PA AND LAT)").all()  # EXAMINATION: the exam title
    # Ten LAO images are dropped and counted; every other image is found, DICOM or JPEG.
    assert result.counts["views_dropped"] == {"LAO": 10}
    assert len(images) == 200 and images["exists"].all()
    assert set(images["view"]) == {"frontal", "lateral"}
    assert set(images["view_source"]) == {"metadata"}
    dicom = images["path"].str.endswith(".dcm")
    assert (dicom == (images["uid"] % 2 == 0)).all()  # the fixture: even studies are DICOM
    assert 0 < dicom.sum() < len(images) and images["path"].str.endswith((".dcm", ".jpg")).all()
    assert set(reports["official_split"]) == {"train", "val", "test"}
    assert result.counts["studies_without_frontal"] == 0


def test_clean_official_split_and_patient_level_random_split(fixture_root: Path) -> None:
    result, _ = parse_inputs(resolve_layout(fixture_root, "mimic", "files"))
    split = read_gz_csv(fixture_root / "mimic-cxr-2.0.0-split.csv.gz")
    truth = split.drop_duplicates("study_id").set_index(split.drop_duplicates("study_id")
                                                        ["study_id"].astype(int))["split"]
    official = clean_reports(result.reports, result.images, CleanParams(split="official"))
    kept = official.examples.set_index("uid")["split"]
    assert (kept == truth.reindex(kept.index).replace("validate", "val")).all()
    assert official.counts["split_kind"] == "official"
    random = clean_reports(result.reports, result.images, CleanParams()).examples
    # Two studies per patient, and no patient in two splits.
    assert random.groupby("subject_id")["split"].nunique().max() == 1
    assert random.groupby("subject_id").size().max() == 2
    folds = [clean_reports(result.reports, result.images,
                           CleanParams(split="kfold", folds=3, fold=fold)).examples
             for fold in range(3)]
    for fold in folds:
        assert fold.groupby("subject_id")["split"].nunique().max() == 1
    tested = [set(f.loc[f["split"] == "test", "uid"]) for f in folds]
    assert set().union(*tested) == set(random["uid"]) and sum(map(len, tested)) == len(random)


def test_official_split_needs_mimic_input() -> None:
    result, _ = parse_inputs(resolve_layout(SAMPLE), measure_view_rule=False)
    with pytest.raises(InputError, match="clean.split: official needs MIMIC-CXR input"):
        clean_reports(result.reports, result.images, CleanParams(split="official"))


def test_metadata_missing_a_column_is_one_line(fixture_copy: Path, tmp_path: Path) -> None:
    path = fixture_copy / METADATA
    write_gz_csv(path, read_gz_csv(path).drop(columns=["ViewPosition"]))
    write_params(tmp_path, f"data:\n  root: {fixture_copy}\n  images: files\n")
    result = run_stage("parse.py", "--reports", "r.parquet", "--images", "i.parquet",
                       "--metrics", "m.json", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: missing column(s) ViewPosition")


def test_missing_report_file_is_an_error_or_a_counted_skip(fixture_copy: Path) -> None:
    report = next((fixture_copy / "files").glob("p*/p*/s50000002.txt"))
    report.unlink()
    layout = resolve_layout(fixture_copy, "auto", "files")
    with pytest.raises(InputError, match=r"s50000002\.txt: report file not found \(study "
                                         r"50000002 .*parse.skip_bad_reports: true skips it\)"):
        parse_inputs(layout)
    result, _ = parse_inputs(layout, skip_bad=True)
    assert len(result.reports) == 99 and len(result.skipped_files) == 1
    assert 50000002 not in set(result.images["uid"])


def test_study_without_frontal_view_is_counted_and_its_lateral_stands_in(
        fixture_copy: Path) -> None:
    path = fixture_copy / METADATA
    meta = read_gz_csv(path)
    no_frontal, only_other_id = sorted(meta["study_id"].unique())[1:3]
    study = meta["study_id"] == no_frontal
    meta = meta[~(study & meta["ViewPosition"].isin(["PA", "AP"]))]
    write_gz_csv(path, meta)
    result, _ = parse_inputs(resolve_layout(fixture_copy, "auto", "files"))
    assert result.counts["studies_without_frontal"] == 1
    slots = view_slots(result.images).set_index("uid")
    lateral = result.images.loc[result.images["uid"] == int(no_frontal), "image_id"].tolist()
    assert len(lateral) == 1 and slots.loc[int(no_frontal), "frontal"] == lateral[0]
    # A study whose only images have other views has no image left: clean drops and counts it.
    only_other = meta.loc[meta["study_id"] == only_other_id].assign(ViewPosition="LAO")
    write_gz_csv(path, pd.concat([meta[meta["study_id"] != only_other_id], only_other]))
    result, _ = parse_inputs(resolve_layout(fixture_copy, "auto", "files"))
    cleaned = clean_reports(result.reports, result.images, CleanParams())
    assert cleaned.counts["dropped"]["no_images"] == 1
    assert int(only_other_id) not in set(cleaned.examples["uid"])


@pytest.fixture(scope="module")
def mimic_pipeline(tmp_path_factory) -> Path:
    """One `dvc repro` on the fixture (small params), one of its DICOMs without pixel data."""
    repo = small_pipeline_repo(tmp_path_factory.mktemp("mimic-pipeline") / "repo")
    root = make_fixture(repo / "data" / "mimic")
    empty = sorted((root / "files").glob("p*/p*/s*/*.dcm"))[0]
    empty.unlink()  # it may be a hard link shared with another study: write a new file
    empty.write_bytes(encode_dicom(np.zeros((8, 8), np.uint8), with_pixels=False))
    set_params(repo, data={"root": "data/mimic", "images": "files"},
               clean={"split": "official"})
    sh(DVC, "repro", cwd=repo, timeout=3000)
    return repo


@needs_shared(SHARED)
@pytest.mark.timeout(2400)  # one whole pipeline run, on a shared 2-core machine
def test_dvc_repro_runs_end_to_end_on_the_mimic_layout(mimic_pipeline: Path) -> None:
    repo = mimic_pipeline
    parse = json.loads((repo / "metrics/parse.json").read_text())
    assert parse["format"] == "mimic" and parse["reports"] == 100
    assert parse["images_found"] == 200 and parse["views_dropped"] == {"LAO": 10}
    features = json.loads((repo / "metrics/features.json").read_text())
    assert features["images"] == 199 and features["skipped"] == 1  # the DICOM without pixels
    clean = json.loads((repo / "metrics/clean.json").read_text())
    assert clean["split_kind"] == "official"
    assert clean["reports"] == {k: v for k, v in parse["official_split"].items()
                                if k != "not_in_split"}
    report = json.loads((repo / "metrics/report.json").read_text())
    assert report["thumbnails"] > 0
    assert (repo / "reports/test/index.html").is_file()
    assert "up to date" in sh(DVC, "status", cwd=repo)


@needs_shared(SHARED)
@pytest.mark.timeout(2400)
def test_predict_reads_dicom_and_names_a_dicom_without_pixels(mimic_pipeline: Path) -> None:
    files = mimic_pipeline / "data" / "mimic" / "files"
    empty = sorted(files.glob("p*/p*/s*/*.dcm"))[0]
    study = next(d for d in sorted(files.glob("p*/p*/s*")) if d.is_dir()
                 and len(list(d.glob("*.dcm"))) == 2 and empty.parent != d)
    out = sh(sys.executable, "-m", "cxr_impressions.cli", "predict",
             *map(str, sorted(study.glob("*.dcm"))), "--model", "models", cwd=mimic_pipeline)
    assert out.strip().splitlines()[-1].strip()
    result = subprocess.run([sys.executable, "-m", "cxr_impressions.cli", "predict", str(empty),
                             "--model", "models"], cwd=mimic_pipeline, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {empty}: DICOM file has no pixel data")
