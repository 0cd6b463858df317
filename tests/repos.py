"""Throwaway copies of this repo as real git + DVC repos, and a runner for their commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .helpers import REPO

DVC = str(Path(sys.executable).parent / "dvc")
GIT_USER = ("-c", "user.name=test", "-c", "user.email=test@example.org")
# Small random-weight features and a tiny model keep the pipeline tests fast; the real weights
# are tested elsewhere. Every other param keeps its committed default (GloVe from data/glove).
# The features come from finetune's adapted (random) backbone, so the
# pipeline tests run `features.weights: finetuned` end to end, `cxr predict` included.
SMALL = {"finetune": {"weights": "none", "epochs": 1, "batch_size": 16},
         "features": {"weights": "finetuned", "image_size": 71, "batch_size": 16},
         # Findings prompts; retrieval stays off (0) so that the README's `-S model.kind=merge` runs
         # (retrieval is transformer-only; tests/test_retrieval.py and test_bundle.py cover it).
         "model": {"units": 32, "layers": 1, "grid_pool": 1, "condition": "findings",
                   "retrieval_k": 0},
         "train": {"epochs": 2, "batch_size": 16},
         # Selection on validation runs, over fewer candidates than the default.
         "decode": {"beam_sizes": [1, 2], "length_penalties": [0.0, 0.7]}}


def env() -> dict:
    variables = dict(os.environ)
    variables["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{variables['PATH']}"
    return variables


def run(*args: str, cwd: Path, timeout: float = 1800, extra_env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**env(), **(extra_env or {})})


def sh(*args: str, cwd: Path, timeout: float = 1800) -> str:
    result = run(*args, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def git(*args: str, cwd: Path) -> str:
    return sh("git", *GIT_USER, *args, cwd=cwd)


def committed_params() -> str:
    """params.yaml as committed: a `dvc exp run -S ...` in the developer's workspace leaves its
    values in the working copy, and no test may depend on that."""
    return subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def copy_working_tree(target: Path) -> None:
    """The working tree as git sees it (tracked and untracked-not-ignored), with the committed
    params.yaml."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    (target / "params.yaml").write_text(committed_params(), encoding="utf-8")


def set_params(repo: Path, **sections: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_repo(finished: Path, target: Path) -> Path:
    """A private copy of a finished repo (git, DVC cache and outputs), for a test to change."""
    shutil.copytree(finished, target, symlinks=True)
    return target


def small_pipeline_repo(repo: Path) -> Path:
    """A committed copy of this repo on branch `main`, set to the small params."""
    repo.mkdir(parents=True)
    copy_working_tree(repo)
    set_params(repo, **SMALL)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "copy", cwd=repo)
    return repo
