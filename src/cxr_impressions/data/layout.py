"""The one place that knows the data layout: file names, image ids and where inputs live.

Image ids are canonical Kaggle-style stems, `<uid>_IM-<n>-<n>[-<n>...]` (e.g. `1_IM-0001-3001`),
whichever naming the file on disk uses:

- Open-i PNGs: `CXR1_1_IM-0001-3001.png`, and the shorter `CXR1000_IM-0003-2001.png`;
- Open-i XML `parentImage` ids: `CXR1_1_IM-0001-3001`;
- Kaggle: `1_IM-0001-3001.dcm.png`, and the resized `1_IM-0001-3001.dcm.jpg`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
XML_DIRS = ("ecgen-radiology", ".")
REPORT_COLUMNS = ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
                  "impression")
PROJECTION_COLUMNS = ("uid", "filename", "projection")

_IMAGE_ID = re.compile(
    r"^(?:CXR)?(?P<uid>\d+)(?:_(?P=uid))?_(?P<im>IM(?:-\d+)+)(?:\.dcm)?(?:\.(?:png|jpe?g))?$",
    re.IGNORECASE,
)


def canonical_image_id(name: str) -> str | None:
    """The canonical id for an image file name or Open-i id, or None if it is not one."""
    match = _IMAGE_ID.match(Path(name).name)
    if match is None:
        return None
    return f"{int(match['uid'])}_{match['im'].upper()}"


def uid_of_image(image_id: str) -> int:
    return int(image_id.split("_", 1)[0])


def index_images(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Map canonical image id to its file, for every image below `directory`.

    Where one id has several files (a .png and a .jpg), the PNG wins: it is the lossless one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: image directory not found")
    found: dict[str, Path] = {}
    for root, _dirs, files in os.walk(directory):
        for name in sorted(files):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            image_id = canonical_image_id(name)
            if image_id is None:
                continue
            path = Path(root) / name
            previous = found.get(image_id)
            is_png = path.suffix.lower() == ".png"
            if previous is None or (is_png and previous.suffix.lower() != ".png"):
                found[image_id] = path
    return found


@dataclass(frozen=True)
class InputLayout:
    """Resolved input files for one data root."""

    format: str  # "csv" or "xml"
    root: Path
    images: Path
    reports_csv: Path | None = None
    projections_csv: Path | None = None
    xml_files: tuple[Path, ...] = ()


def resolve_layout(root: str | os.PathLike[str], fmt: str = "auto") -> InputLayout:
    """Find the reports in `root` (the Kaggle CSV pair, or Open-i XML files) and its `images/`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data directory not found")
    image_dir = root / "images"
    has_csv = (root / REPORTS_CSV).exists() or (root / PROJECTIONS_CSV).exists()
    xml_files = _find_xml(root)
    if fmt == "auto":
        fmt = "csv" if has_csv else "xml" if xml_files else ""
    if fmt == "csv":
        for name in (REPORTS_CSV, PROJECTIONS_CSV):
            if not (root / name).exists():
                raise InputError(f"{root / name}: file not found (the CSV format needs both "
                                 f"{REPORTS_CSV} and {PROJECTIONS_CSV})")
        return InputLayout("csv", root, image_dir, root / REPORTS_CSV, root / PROJECTIONS_CSV)
    if fmt == "xml":
        if not xml_files:
            raise InputError(f"{root}: no XML reports found (looked for ecgen-radiology/*.xml "
                             "and *.xml)")
        return InputLayout("xml", root, image_dir, xml_files=xml_files)
    raise InputError(
        f"{root}: no reports found: expected {REPORTS_CSV} + {PROJECTIONS_CSV}, "
        "or Open-i XML reports in ecgen-radiology/"
    )


def _find_xml(root: Path) -> tuple[Path, ...]:
    for sub in XML_DIRS:
        files = sorted((root / sub).glob("*.xml"), key=_natural_key)
        if files:
            return tuple(files)
    return ()


def _natural_key(path: Path) -> tuple[int, str]:
    stem = path.stem
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def view_slots(images: pd.DataFrame) -> pd.DataFrame:
    """Per report uid: the frontal and lateral image ids ("" where missing). Slot 0 is the first
    frontal image (with none, the first other image stands in), slot 1 the first lateral."""
    rows = []
    for uid, group in images.sort_values("image_id").groupby("uid", sort=True):
        frontal = group.loc[group["view"] == "frontal", "image_id"].tolist()
        lateral = group.loc[group["view"] == "lateral", "image_id"].tolist()
        others = [i for i in group["image_id"] if i not in frontal[:1] + lateral[:1]]
        first = frontal[0] if frontal else (others.pop(0) if others else lateral.pop(0))
        second = lateral[0] if lateral else ""
        rows.append({"uid": uid, "frontal": first, "lateral": second})
    return pd.DataFrame(rows, columns=["uid", "frontal", "lateral"])
