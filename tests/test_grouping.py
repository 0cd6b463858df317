"""The suite's xdist grouping (tests/conftest.py) takes effect: every test of a module runs on
one worker, and the groups are handed out in FIRST's order. (With pytest 9 and pytest-xdist 3.8
the groups were silently ignored: pyproject.toml pins pytest < 9.)"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from .helpers import REPO

RECORD = """import json, os, pathlib
def _record(name):
    with open(pathlib.Path(__file__).parent / "ran.jsonl", "a") as f:
        f.write(json.dumps({"test": name, "worker": os.environ["PYTEST_XDIST_WORKER"]}) + "\\n")
"""


def test_each_module_runs_on_one_worker_in_firsts_order(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    modules = ("test_a", "test_b", "test_incremental", "test_team", "test_pipeline", "test_c")
    for module in modules:
        tests = "".join(f"def test_{i}():\n    _record('{module}')\n" for i in range(4))
        (tmp_path / f"{module}.py").write_text(RECORD + tests)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "--no-loadscope-reorder", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    workers = defaultdict(set)
    for line in (tmp_path / "ran.jsonl").read_text().splitlines():
        entry = json.loads(line)
        workers[entry["test"]].add(entry["worker"])
    assert set(workers) == set(modules)
    assert all(len(ran_on) == 1 for ran_on in workers.values()), dict(workers)
    # The groups are handed out in FIRST's order, then the rest in alphabetical order.
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
         str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300).stdout
    order = [line.split("::")[0].removesuffix(".py") for line in collected.splitlines()
             if "::" in line]
    assert list(dict.fromkeys(order)) == [
        "test_pipeline", "test_team", "test_incremental", "test_a", "test_b", "test_c"], order
    assert {w for ran_on in workers.values() for w in ran_on} == {"gw0", "gw1"}
