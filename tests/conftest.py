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


@pytest.fixture(scope="session")
def finished_pipeline(tmp_path_factory) -> Path:
    """The sample pipeline run ONCE per test session (small params), committed on `main`.

    The pipeline, team, artifact and comparison tests each take a private copy
    (`repos.copy_repo`) instead of running the pipeline again: never change this one.
    """
    from .repos import DVC, git, sh, small_pipeline_repo

    repo = small_pipeline_repo(tmp_path_factory.mktemp("finished") / "repo")
    (repo.parent / "repro.log").write_text(sh(DVC, "repro", cwd=repo))  # what a user sees
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "pipeline run", cwd=repo)
    return repo


# Under pytest-xdist (scripts/test.sh runs `-n auto --dist loadgroup`) the tests that share an
# expensive fixture run on one worker, so that it is made once: the session's one pipeline run
# (the pipeline and team tests), and each module's own module-scoped fixtures. The groups
# spread over the workers.
SHARES_THE_PIPELINE_RUN = {"test_pipeline.py", "test_team.py", "test_incremental.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.name
        group = "sample-pipeline" if module in SHARES_THE_PIPELINE_RUN else module
        item.add_marker(pytest.mark.xdist_group(group))
    # The pipeline run's group is the longest chain: schedule it first, so that the other
    # groups fill the other workers meanwhile instead of leaving it to run alone at the end.
    items.sort(key=lambda item: item.path.name not in SHARES_THE_PIPELINE_RUN)
