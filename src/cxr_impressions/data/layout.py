"""The one place that knows the data layout: file names, image ids and where inputs live.

Image ids are canonical Kaggle-style stems, `<uid>_IM-<n>-<n>[-<n>...]` (e.g. `1_IM-0001-3001`),
whichever naming the file on disk uses:

- Open-i PNGs: `CXR1_1_IM-0001-3001.png`, and the shorter `CXR1000_IM-0003-2001.png`;
- Open-i XML `parentImage` ids: `CXR1_1_IM-0001-3001`;
- Kaggle: `1_IM-0001-3001.dcm.png`, and the resized `1_IM-0001-3001.dcm.jpg`.

MIMIC-CXR is laid out by patient and study, and its ids are its own: a report is its study
(`uid` = `study_id`), an image its `dicom_id`:

- `mimic-cxr-2.0.0-metadata.csv(.gz)`: `dicom_id, subject_id, study_id, ViewPosition, ...`;
- `mimic-cxr-2.0.0-split.csv(.gz)`: `dicom_id, study_id, subject_id, split` (the official split);
- reports: `files/p<first 2 digits of subject>/p<subject_id>/s<study_id>.txt`;
- images: `<images folder>/p../p<subject_id>/s<study_id>/<dicom_id>.dcm` (MIMIC-CXR) or `.jpg`
  (MIMIC-CXR-JPG); the images folder is `files/` when both releases are unpacked in one root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import InputError

IMAGE_EXTENSIONS = (".png", ".dcm", ".jpg", ".jpeg")  # for an id with several files, earliest wins
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
XML_DIRS = ("ecgen-radiology", ".")
REPORT_COLUMNS = ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
                  "impression")
PROJECTION_COLUMNS = ("uid", "filename", "projection")
REPORT_TITLE_COLUMN = "image"  # the reports CSV's exam title ("Xray Chest PA and Lateral")

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
MIMIC_REPORTS = "files"
MIMIC_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_IMAGE_EXTENSIONS = (".dcm", ".jpg")  # where both exist, the DICOM (lossless) wins
# ViewPosition -> view; every other position (AP AXIAL, LAO, blank, ...) is counted and dropped.
MIMIC_VIEWS = {"PA": "frontal", "AP": "frontal", "LATERAL": "lateral", "LL": "lateral"}
MIMIC_SPLITS = {"train": "train", "validate": "val", "test": "test"}

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

    Where one id has several files (a .png and a .jpg), the PNG wins, then DICOM: the lossless
    ones.
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
            if previous is None or _rank(path) < _rank(previous):
                found[image_id] = path
    return found


def _rank(path: Path) -> int:
    suffix = path.suffix.lower()
    return IMAGE_EXTENSIONS.index(suffix) if suffix in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class InputLayout:
    """Resolved input files for one data root."""

    format: str  # "csv", "xml" or "mimic"
    root: Path
    images: Path
    reports_csv: Path | None = None
    projections_csv: Path | None = None
    xml_files: tuple[Path, ...] = ()
    metadata_csv: Path | None = None  # mimic
    split_csv: Path | None = None  # mimic, optional: only `clean.split: official` needs it
    reports_dir: Path | None = None  # mimic: files/


def _find_mimic(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def resolve_layout(root: str | os.PathLike[str], fmt: str = "auto",
                   images: str = "images") -> InputLayout:
    """Find the reports in `root` (the Kaggle CSV pair, Open-i XML files, or the MIMIC-CXR
    metadata and report tree) and its image folder, `root/images` (`data.images`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data directory not found")
    image_dir = root / images
    has_csv = (root / REPORTS_CSV).exists() or (root / PROJECTIONS_CSV).exists()
    metadata = _find_mimic(root, MIMIC_METADATA)
    auto_xml = fmt == "auto" and not has_csv and metadata is None
    xml_files = _find_xml(root) if fmt == "xml" or auto_xml else ()
    if fmt == "auto":
        fmt = "mimic" if metadata else "csv" if has_csv else "xml" if xml_files else ""
    if fmt == "mimic":
        if metadata is None:
            raise InputError(f"{root / MIMIC_METADATA}: file not found (nor .gz): the MIMIC-CXR "
                             "layout needs its metadata CSV")
        if not image_dir.is_dir():
            hint = f" (MIMIC-CXR keeps them in {MIMIC_REPORTS}/: set data.images: " \
                   f"{MIMIC_REPORTS})" if images != MIMIC_REPORTS else ""
            raise InputError(f"{image_dir}: image folder not found{hint}")
        if not (root / MIMIC_REPORTS).is_dir():
            raise InputError(f"{root / MIMIC_REPORTS}: report folder not found (MIMIC-CXR "
                             "reports are files/pXX/p<subject>/s<study>.txt)")
        return InputLayout("mimic", root, image_dir, metadata_csv=metadata,
                           split_csv=_find_mimic(root, MIMIC_SPLIT),
                           reports_dir=root / MIMIC_REPORTS)
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
        f"Open-i XML reports in ecgen-radiology/, or MIMIC-CXR's {MIMIC_METADATA}(.gz)"
    )


def mimic_study_dir(subject_id: int, study_id: int) -> str:
    """`p10/p10000032/s50414267`, relative to files/ (or the image folder)."""
    subject = str(subject_id)
    return f"p{subject[:2]}/p{subject}/s{study_id}"


def mimic_report_path(reports_dir: Path, subject_id: int, study_id: int) -> Path:
    return reports_dir / f"{mimic_study_dir(subject_id, study_id)}.txt"


def find_mimic_images(study_dir: str, dicom_ids: list[str]) -> list[str]:
    """The file of each image of one study ("" where none), DICOM before JPEG; one directory
    listing per study, not one lookup per image and extension."""
    try:
        names = set(os.listdir(study_dir))
    except (FileNotFoundError, NotADirectoryError):
        return [""] * len(dicom_ids)
    paths = []
    for dicom_id in dicom_ids:
        name = next((dicom_id + e for e in MIMIC_IMAGE_EXTENSIONS if dicom_id + e in names), "")
        paths.append(f"{study_dir}/{name}" if name else "")
    return paths


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
