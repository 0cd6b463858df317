"""Shared test fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import SAMPLE


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A writable copy of the embedded sample."""
    target = tmp_path / "sample"
    shutil.copytree(SAMPLE, target)
    return target
