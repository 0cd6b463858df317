"""The stage runner: quiet logs by default, verbose on request, timings, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import logging, os, warnings
import cxr_impressions.stage
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), logging.getLogger("tensorflow").level)
"""


def _probe(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CXR_VERBOSE")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra},
                          capture_output=True, text=True, check=True, timeout=60).stdout.split()


def test_logs_are_quiet_by_default_and_verbose_on_request() -> None:
    assert _probe() == ["3", "40"]  # C++ logs off, TensorFlow's Python logger at ERROR
    assert _probe(CXR_VERBOSE="1") == ["None", "0"]


def test_a_stage_writes_its_timings_outside_the_metrics(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "demo.py").write_text(
        "from cxr_impressions.stage import note_timing, run_stage\n"
        "def main():\n    note_timing('items_per_second', 12.3456)\n"
        "run_stage(main)\n")
    (stages / "bad.py").write_text(
        "from cxr_impressions.errors import InputError\n"
        "from cxr_impressions.stage import run_stage\n"
        "def main():\n    raise InputError('x.csv: no column uid')\n"
        "run_stage(main)\n")
    subprocess.run([sys.executable, "stages/demo.py"], cwd=tmp_path, check=True, timeout=60)
    timings = json.loads((tmp_path / "timings" / "demo.json").read_text())
    assert timings["items_per_second"] == 12.346 and timings["seconds"] >= 0
    bad = subprocess.run([sys.executable, "stages/bad.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr == "error: x.csv: no column uid\n"
    assert not (tmp_path / "timings" / "bad.json").exists()  # only finished stages
