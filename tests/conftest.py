"""Shared test fixtures."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
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
def finished_pipeline(tmp_path_factory, worker_id: str) -> Path:
    """The sample pipeline run ONCE per test session (small params), committed on `main`.

    Under pytest-xdist every worker asks for it: the first builds it under a lock in the
    session's shared temporary folder and the others wait for it, so that the modules that use
    it can run on different workers. The pipeline, team, artifact and comparison tests each take
    a private copy (`repos.copy_repo`) instead of running the pipeline again: never change it.
    """
    from .repos import DVC, git, sh, small_pipeline_repo

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # pytest-N/, above popen-gwN/
    finished = shared / "finished"
    with open(shared / "finished.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (finished / "done").exists():
            if finished.exists():  # a worker that failed while building it
                shutil.rmtree(finished)
            repo = small_pipeline_repo(finished / "repo")
            (finished / "repro.log").write_text(sh(DVC, "repro", cwd=repo))  # what a user sees
            git("add", "-A", cwd=repo)
            git("commit", "-qm", "pipeline run", cwd=repo)
            (finished / "done").touch()
    return finished / "repo"


# Under pytest-xdist (scripts/test.sh runs `-n auto --dist loadgroup --no-loadscope-reorder`)
# each module is one group on one worker, so that its module fixtures are made once. (pytest < 9:
# with pytest 9, xdist 3.8 ignores every group; tests/test_grouping.py checks that they hold.)
# Groups are handed out in FIRST's order, roughly longest first (from a CI run's `--durations`),
# so that the last to start are short and both workers end together. The modules that copy the
# session's one pipeline run (conftest.finished_pipeline) are groups of their own, so that they
# can run on either worker: test_pipeline.py starts first and builds it, and the next two
# (the Ray engine's tests, which don't need it, are between) find it built or nearly.
FIRST = ("test_pipeline.py", "test_ray_engine.py", "test_team.py", "test_finetune.py",
         "test_mimic.py", "test_incremental.py", "test_features.py", "test_distribute.py",
         "test_serving.py")


def xdist_group(item: pytest.Item) -> str:
    return item.path.name


def pytest_configure(config: pytest.Config) -> None:
    """Index METEOR's paraphrase table in the background, once per machine, as the session
    starts (in the controller, not in each xdist worker). The first `evaluate` would otherwise
    wait ~30 s for it, in the session's one pipeline run, on the suite's longest path. Left to
    finish if the session ends first (a short run): the next one then finds it built."""
    if hasattr(config, "workerinput"):
        return
    subprocess.Popen(
        [sys.executable, "-c", "from cxr_impressions.evaluation.paraphrase import "
         "index_location, paraphrase_index\nif not index_location().exists(): paraphrase_index()"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))

    def rank(item: pytest.Item) -> int:
        group = xdist_group(item)
        return FIRST.index(group) if group in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a group
