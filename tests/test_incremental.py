"""Incremental features through DVC: `persist: true` keeps the previous HDF5 file, in your own
workspace and in a teammate's who pulled it from the team remote, so `dvc repro` after adding
images puts only those through the backbone. (That the file then equals a from-scratch run is
tested in-process, tests/test_features.py.)

Starts from a copy of the session's one pipeline run (conftest.finished_pipeline) with
`features.weights: none`: with `finetuned` weights, new images retrain the backbone, and every
feature then changes, rightly. With any other weights the features stage never reads finetune's
output, so the workspace freezes that stage (`frozen: true` in dvc.yaml, as the README advises), or
every change of the images would retrain a backbone nobody reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest

from .helpers import SAMPLE
from .repos import DVC, copy_repo, git, set_params, sh

# The first test may run the session's one pipeline run (tests/conftest.py), which on a loaded
# CPU can pass the default timeout (as in tests/test_pipeline.py).
pytestmark = pytest.mark.timeout(2400)

ADDED = 6  # images taken out, then added back


def added_images() -> list[Path]:
    return sorted((SAMPLE / "images").iterdir())[10:10 + ADDED]


def features_json(repo: Path) -> dict:
    return json.loads((repo / "metrics" / "features.json").read_text())


def add_images(repo: Path) -> None:
    for image in added_images():
        shutil.copy2(image, repo / "data" / "sample" / "images" / image.name)


def freeze_finetune(repo: Path) -> None:
    """`frozen: true` on the finetune stage (`dvc freeze` can't write a templated dvc.yaml)."""
    dvc_yaml = repo / "dvc.yaml"
    text = dvc_yaml.read_text()
    assert text.count("\n  finetune:\n") == 1
    dvc_yaml.write_text(text.replace("\n  finetune:\n", "\n  finetune:\n    frozen: true\n"))


def assert_ids_follow_parse(repo: Path) -> None:
    """The file lists parse's images in the stage's input order, the added ones included."""
    images = pd.read_parquet(repo / "data" / "parsed" / "images.parquet")
    images = images[images["exists"]].sort_values(["uid", "image_id"])
    with h5py.File(repo / "features" / "xception.h5", "r") as h5:
        assert h5["ids"].asstr()[...].tolist() == images["image_id"].tolist()


@pytest.fixture(scope="module")
def team(finished_pipeline: Path, tmp_path_factory) -> dict[str, Path]:
    """Clone A: features without the ADDED images, committed and pushed to a folder remote."""
    root = tmp_path_factory.mktemp("incremental")
    a = copy_repo(finished_pipeline, root / "a")
    remote = root / "remote"
    sh(DVC, "remote", "add", "--local", "-d", "folder", str(remote), cwd=a)
    set_params(a, features={"weights": "none"})
    freeze_finetune(a)  # committed in dvc.yaml: the teammate's clone has it
    git("rm", "-q", *[f"data/sample/images/{f.name}" for f in added_images()], cwd=a)
    out = sh(DVC, "repro", "features", cwd=a)
    assert "Running stage 'finetune'" not in out and "Running stage 'features'" in out
    stats = features_json(a)
    assert stats["reused"] == 0 and stats["computed"] == stats["images"] > 100
    git("add", "-A", cwd=a)
    git("commit", "-qm", "features", cwd=a)
    sh(DVC, "push", cwd=a)
    return {"a": a, "remote": remote, "root": root}


def test_own_workspace_adds_images_incrementally(team: dict[str, Path]) -> None:
    a = team["a"]
    before = features_json(a)["images"]
    add_images(a)
    out = sh(DVC, "repro", "features", cwd=a)
    assert "Running stage 'features'" in out and "Running stage 'finetune'" not in out
    stats = features_json(a)
    assert stats["computed"] == ADDED and stats["reused"] == before
    assert stats["images"] == before + ADDED
    assert_ids_follow_parse(a)


def test_teammate_pulls_then_adds_images(team: dict[str, Path]) -> None:
    b = team["root"] / "b"
    sh("git", "clone", "-q", str(team["a"]), str(b), cwd=team["root"])
    sh(DVC, "remote", "add", "--local", "-d", "folder", str(team["remote"]), cwd=b)
    sh(DVC, "pull", cwd=b)  # the committed outputs, the features file among them
    add_images(b)
    out = sh(DVC, "repro", "features", cwd=b)
    assert "Running stage 'features'" in out and "Running stage 'finetune'" not in out
    stats = features_json(b)
    assert stats["computed"] == ADDED and stats["reused"] == stats["images"] - ADDED
    assert_ids_follow_parse(b)
