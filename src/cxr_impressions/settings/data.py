"""The `data` section: where the input lives."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the input lives. `root` is the one switch between the sample and the full data."""

    root: str = "data/sample"
    format: Literal["auto", "csv", "xml", "mimic"] = "auto"
    images: str = "images"  # the image folder under root; MIMIC-CXR: files
