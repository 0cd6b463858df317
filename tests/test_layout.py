from pathlib import Path

import pytest

from cxr_impressions.data.layout import canonical_image_id, index_images, resolve_layout
from cxr_impressions.errors import InputError

from .helpers import SAMPLE


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CXR1_1_IM-0001-3001", "1_IM-0001-3001"),
        ("CXR1_1_IM-0001-3001.png", "1_IM-0001-3001"),
        ("CXR1000_IM-0003-2001.png", "1000_IM-0003-2001"),
        ("1_IM-0001-3001.dcm.png", "1_IM-0001-3001"),
        ("1_IM-0001-3001.dcm.jpg", "1_IM-0001-3001"),
        ("21_IM-0729-1001-0001.dcm.png", "21_IM-0729-1001-0001"),
        ("/some/dir/CXR2_IM-0652-1001.PNG", "2_IM-0652-1001"),
        ("notes.png", None),
        ("CXR1_2_IM-0001-3001.png", None),
    ],
)
def test_canonical_image_id(name: str, expected: str | None) -> None:
    assert canonical_image_id(name) == expected


def test_index_images_finds_any_naming_and_prefers_png(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for name in ("1_IM-0001-3001.dcm.jpg", "a/1_IM-0001-3001.dcm.png", "CXR2_IM-0652-1001.png",
                 "readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    index = index_images(tmp_path)
    assert set(index) == {"1_IM-0001-3001", "2_IM-0652-1001"}
    assert index["1_IM-0001-3001"].suffix == ".png"


def test_resolve_layout_detects_csv_and_xml(tmp_path: Path) -> None:
    assert resolve_layout(SAMPLE).format == "csv"
    xml = resolve_layout(SAMPLE, "xml")
    assert [p.name for p in xml.xml_files] == ["1.xml", "2.xml", "3.xml"]


def test_empty_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no reports found"):
        resolve_layout(tmp_path)
    with pytest.raises(InputError, match="data directory not found"):
        resolve_layout(tmp_path / "missing")
    with pytest.raises(InputError, match="no XML reports"):
        resolve_layout(tmp_path, "xml")
