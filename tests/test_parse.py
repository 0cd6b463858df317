import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxr_impressions.data.layout import resolve_layout
from cxr_impressions.data.parse import parse_counts, parse_inputs, parse_xml_report, read_kaggle_csv
from cxr_impressions.errors import InputError

from .helpers import IUXRAY, SAMPLE, needs_shared, run_stage, write_params


def test_sample_csv_tables() -> None:
    result, view_rule = parse_inputs(resolve_layout(SAMPLE))
    reports, images = result.reports, result.images
    assert len(reports) == 100 and len(images) == 200
    assert images["exists"].all()
    assert set(images.columns) >= {"uid", "image_id", "view", "path", "exists"}
    assert (images.groupby("uid")["view"].agg(sorted).map(tuple) == ("frontal", "lateral")).all()
    assert view_rule["images_compared"] == 200
    assert view_rule["agreement"] >= 0.9
    counts = parse_counts(reports, images)
    assert counts["reports_with_both_views"] == 100
    assert counts["images_per_report_mean"] == 2.0


def test_real_xml_reports() -> None:
    report, image_ids = parse_xml_report(SAMPLE / "ecgen-radiology" / "2.xml")
    assert report["uid"] == 2
    assert report["findings"].startswith("Borderline cardiomegaly.")
    assert report["impression"] == "No acute pulmonary findings."
    assert report["mesh"] == "Cardiomegaly/borderline;Pulmonary Artery/enlarged"
    assert report["mesh_automatic"] == "sternotomy"
    assert report["problems"] == "Cardiomegaly;Pulmonary Artery"
    assert image_ids == ["2_IM-0652-1001", "2_IM-0652-2001"]


def test_xml_and_csv_agree_on_the_same_reports() -> None:
    xml, _ = parse_inputs(resolve_layout(SAMPLE, "xml"))
    kaggle = read_kaggle_csv(SAMPLE / "indiana_reports.csv", SAMPLE / "indiana_projections.csv")
    reports, images = kaggle.reports, kaggle.images
    csv = reports.set_index("uid").loc[[1, 2, 3]]
    xml_reports = xml.reports.set_index("uid")
    for field in ("findings", "impression", "indication", "mesh", "problems"):
        assert xml_reports[field].tolist() == csv[field].tolist(), field
    # The XML has no view field: the symmetry rule must match the CSV's labels on these studies.
    truth = images.set_index("image_id")["view"]
    predicted = xml.images.set_index("image_id")["view"]
    assert (predicted == truth.loc[predicted.index]).all()
    assert (xml.images["view_source"] == "symmetry").all()


def _xml_dir(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "openi"
    (root / "ecgen-radiology").mkdir(parents=True)
    shutil.copytree(SAMPLE / "images", root / "images")
    for name in names:
        shutil.copy(SAMPLE / "ecgen-radiology" / name, root / "ecgen-radiology" / name)
    return root


def test_malformed_xml_is_one_line_error_or_counted_skip(tmp_path: Path) -> None:
    root = _xml_dir(tmp_path, "1.xml", "2.xml")
    bad = root / "ecgen-radiology" / "3.xml"
    bad.write_text((SAMPLE / "ecgen-radiology" / "3.xml").read_text()[:500])
    with pytest.raises(InputError, match=r"3\.xml: malformed XML") as info:
        parse_inputs(resolve_layout(root))
    assert "\n" not in str(info.value)
    result, _ = parse_inputs(resolve_layout(root), skip_bad=True)
    assert sorted(result.reports["uid"]) == [1, 2]
    assert len(result.skipped_files) == 1 and "3.xml" in result.skipped_files[0]


def test_xml_without_abstract_text(tmp_path: Path) -> None:
    root = _xml_dir(tmp_path)
    (root / "ecgen-radiology" / "9.xml").write_text("<eCitation><uId id='CXR9'/></eCitation>")
    with pytest.raises(InputError, match=r"9\.xml: no AbstractText"):
        parse_inputs(resolve_layout(root))


def test_non_utf8(tmp_path: Path) -> None:
    root = _xml_dir(tmp_path, "1.xml")
    data = (SAMPLE / "ecgen-radiology" / "2.xml").read_bytes()
    data = data.replace(b"Borderline", b"Bord\xe9rline")
    (root / "ecgen-radiology" / "2.xml").write_bytes(data)
    with pytest.raises(InputError, match=r"2\.xml: not valid UTF-8 \(line \d+"):
        parse_inputs(resolve_layout(root))

    csv_root = tmp_path / "kaggle"
    shutil.copytree(SAMPLE, csv_root)
    text = (csv_root / "indiana_reports.csv").read_bytes()
    bad = text.replace(b"Normal chest", b"Norm\xe4l chest")
    (csv_root / "indiana_reports.csv").write_bytes(bad)
    with pytest.raises(InputError, match=r"indiana_reports\.csv: not valid UTF-8 \(line \d+"):
        parse_inputs(resolve_layout(csv_root))


def test_csv_missing_column(sample_copy: Path) -> None:
    path = sample_copy / "indiana_projections.csv"
    frame = pd.read_csv(path)
    frame.drop(columns=["projection"]).to_csv(path, index=False)
    message = r"indiana_projections\.csv: missing column\(s\) projection"
    with pytest.raises(InputError, match=message):
        parse_inputs(resolve_layout(sample_copy))


def test_report_with_all_images_missing_is_counted_then_dropped(sample_copy: Path) -> None:
    for image in (sample_copy / "images").glob("2_IM-*"):
        image.unlink()
    write_params(sample_copy.parent, f"data:\n  root: {sample_copy}\n")
    run_stage("parse.py", "--reports", "p/reports.parquet", "--images", "p/images.parquet",
              "--metrics", "parse.json", cwd=sample_copy.parent)
    counts = json.loads((sample_copy.parent / "parse.json").read_text())
    assert counts["reports_without_images"] == 1
    assert counts["images_missing"] == 2
    run_stage("clean.py", "--parsed", "p", "--out", "c", "--metrics", "clean.json",
              "--eda", "eda", cwd=sample_copy.parent)
    clean = json.loads((sample_copy.parent / "clean.json").read_text())
    assert clean["dropped"]["no_images"] == 1 and clean["reports_kept"] == 99
    kept = pd.read_parquet(sample_copy.parent / "c" / "examples.parquet")
    assert 2 not in set(kept["uid"])


def test_stage_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_params(tmp_path, "data:\n  root: empty\n")
    result = run_stage("parse.py", "--reports", "r.parquet", "--images", "i.parquet",
                       "--metrics", "m.json", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: empty: no reports found")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.parquet").exists()

    write_params(tmp_path, "data:\n  root: empty\n  format: json\n")
    result = run_stage("parse.py", "--reports", "r.parquet", "--images", "i.parquet",
                       "--metrics", "m.json", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "data.format must be one of" in result.stderr


@needs_shared(IUXRAY)
def test_full_data_counts_match_shared_readme() -> None:
    result, view_rule = parse_inputs(resolve_layout(IUXRAY))
    counts = parse_counts(result.reports, result.images)
    assert counts["reports"] == 3551
    assert counts["images_listed"] == 7006
    assert counts["images_found"] == 6966
    assert counts["reports_without_images"] == 25
    assert view_rule["agreement"] > 0.9


def test_a_projection_row_listed_twice_counts_once(sample_copy: Path) -> None:
    projections = sample_copy / "indiana_projections.csv"
    lines = projections.read_text().splitlines()
    projections.write_text("\n".join([*lines[:3], lines[1], *lines[3:]]) + "\n")
    result, _ = parse_inputs(resolve_layout(sample_copy), measure_view_rule=False)
    assert result.duplicates == [f"{projections}: line 4: uid 1 image 1_IM-0001-4001 listed "
                                 "again (counted once)"]
    counts = parse_counts(result.reports, result.images)
    assert counts["images_listed"] == 200 and counts["images_per_report_max"] == 2


def test_an_xml_image_listed_twice_counts_once(tmp_path: Path) -> None:
    root = _xml_dir(tmp_path, "1.xml")
    path = root / "ecgen-radiology" / "1.xml"
    text = path.read_text()
    start = text.index("<parentImage")
    end = text.index("</parentImage>", start) + len("</parentImage>")
    path.write_text(text[:end] + text[start:end] + text[end:])
    result, _ = parse_inputs(resolve_layout(root))
    assert len(result.duplicates) == 1 and "listed 2 times (counted once)" in result.duplicates[0]
    assert not result.images.duplicated(["uid", "image_id"]).any()
