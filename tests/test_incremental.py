"""Incremental features through DVC: `persist: true` keeps the previous HDF5 file, in your own
workspace and in a teammate's who pulled it from the team remote, so adding images computes only
those, and the result equals a from-scratch run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .helpers import SAMPLE
from .repos import DVC, git, sh, small_pipeline_repo
from .test_features import assert_same_content

pytestmark = pytest.mark.timeout(1200)

ADDED = 6  # images taken out, then added back


def added_images() -> list[Path]:
    return sorted((SAMPLE / "images").iterdir())[10:10 + ADDED]


def features_json(repo: Path) -> dict:
    return json.loads((repo / "metrics" / "features.json").read_text())


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> dict[str, Path]:
    """Clone A runs features without ADDED images, commits and pushes to a local-folder remote."""
    root = tmp_path_factory.mktemp("incremental")
    a = small_pipeline_repo(root / "a")
    remote = root / "remote"
    sh(DVC, "remote", "add", "--local", "-d", "folder", str(remote), cwd=a)
    git("rm", "-q", *[f"data/sample/images/{f.name}" for f in added_images()], cwd=a)
    sh(DVC, "repro", "features", cwd=a)
    stats = features_json(a)
    assert stats["reused"] == 0 and stats["computed"] == stats["images"] > 100
    git("add", "-A", cwd=a)
    git("commit", "-qm", "features", cwd=a)
    sh(DVC, "push", "features", cwd=a)
    return {"a": a, "remote": remote, "root": root}


def test_own_workspace_adds_images_incrementally(team: dict[str, Path]) -> None:
    a = team["a"]
    before = features_json(a)["images"]
    for image in added_images():
        shutil.copy2(image, a / "data" / "sample" / "images" / image.name)
    out = sh(DVC, "repro", "features", cwd=a)
    assert "Running stage 'features'" in out
    stats = features_json(a)
    assert stats["computed"] == ADDED and stats["reused"] == before
    assert stats["images"] == before + ADDED

    # From scratch (the previous file removed), the content is the same.
    incremental = team["root"] / "incremental.h5"
    shutil.copy2(a / "features" / "xception.h5", incremental)
    (a / "features" / "xception.h5").unlink()
    sh(DVC, "repro", "-f", "features", cwd=a)
    assert features_json(a)["reused"] == 0
    assert_same_content(incremental, a / "features" / "xception.h5")


def test_teammate_pulls_then_adds_images(team: dict[str, Path]) -> None:
    a = team["a"]
    b = team["root"] / "b"
    sh("git", "clone", "-q", str(a), str(b), cwd=team["root"])
    sh(DVC, "remote", "add", "--local", "-d", "folder", str(team["remote"]), cwd=b)
    for image in added_images():
        shutil.copy2(image, b / "data" / "sample" / "images" / image.name)
    # `--pull` fetches what the stages need from the remote, the persisted features included.
    sh(DVC, "pull", "features", cwd=b)
    out = sh(DVC, "repro", "--pull", "features", cwd=b)
    assert "Running stage 'features'" in out
    stats = features_json(b)
    assert stats["computed"] == ADDED and stats["reused"] == stats["images"] - ADDED
