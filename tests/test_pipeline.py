"""The DVC pipeline end to end, in a throwaway copy of this repo (a real git + DVC repo)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import GLOVE, REPO, SHARED, needs_shared

DVC = str(Path(sys.executable).parent / "dvc")


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=1800,
                            env=_env())
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def copy_working_tree(target: Path) -> None:
    """The working tree as git sees it (tracked and untracked-not-ignored), committed anew."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())


def set_params(repo: Path, **sections: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    copy_working_tree(repo)
    # Small random-weight features keep this test fast; real weights are tested elsewhere.
    set_params(repo, features={"weights": "none", "image_size": 71, "batch_size": 16},
               embeddings={"glove": str(GLOVE)})
    sh("git", "init", "-q", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=repo)
    sh(DVC, "repro", cwd=repo)
    return repo


@needs_shared(SHARED)
def test_repro_builds_every_stage(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    for output in ("data/parsed/reports.parquet", "data/clean/vocab.json",
                   "features/xception.h5", "data/embeddings/matrix.npy"):
        assert (repo / output).is_file(), output
    parse = json.loads((repo / "metrics/parse.json").read_text())
    assert parse["reports"] == 100 and parse["images_found"] == 200
    assert "up to date" in sh(DVC, "status", cwd=repo)


@needs_shared(SHARED)
def test_dag_and_metrics_show(pipeline_repo: Path) -> None:
    dag = sh(DVC, "dag", "--dot", cwd=pipeline_repo)
    for edge in ('"parse" -> "clean"', '"parse" -> "features"', '"clean" -> "embeddings"'):
        assert edge in dag
    shown = sh(DVC, "metrics", "show", "--json", cwd=pipeline_repo)
    metrics = json.loads(shown)
    workspace = next(iter(metrics.values()))["data"]
    assert workspace["metrics/parse.json"]["data"]["reports"] == 100
    assert workspace["metrics/clean.json"]["data"]["reports"]["train"] == 80


@needs_shared(SHARED)
def test_plots_show_renders_eda(pipeline_repo: Path, tmp_path: Path) -> None:
    sh(DVC, "plots", "show", "-o", str(tmp_path / "plots"), cwd=pipeline_repo)
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Report length after normalisation", "Images per report",
                  "The 20 most frequent impressions"):
        assert title in html


@needs_shared(SHARED)
def test_only_affected_stages_rerun(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    set_params(repo, features={"threads": 1})  # a speed knob: changes nothing downstream
    assert "up to date" in sh(DVC, "status", cwd=repo)
    set_params(repo, clean={"min_count": 1})
    out = sh(DVC, "repro", cwd=repo)
    assert "Running stage 'clean'" in out and "Running stage 'embeddings'" in out
    assert "Running stage 'parse'" not in out
    assert "Running stage 'features'" not in out  # clean params never touch the features
    set_params(repo, features={"resize": "pad"})
    out = sh(DVC, "repro", cwd=repo)
    assert "Running stage 'features'" in out and "Running stage 'clean'" not in out
