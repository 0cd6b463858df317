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


def test_a_missing_input_is_one_line_naming_it(tmp_path: Path) -> None:
    """An earlier stage's output that is not there (a stage run by hand, out of order)."""
    (tmp_path / "clean").mkdir()
    (tmp_path / "params.yaml").write_text("finetune:\n  weights: none\n")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "stages" / "finetune.py"),
         "--clean", "clean", "--out", "w.h5", "--cache", "cache", "--metrics", "m.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: clean/examples.parquet: not found (an input of this stage; `dvc repro` builds it)")
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("w.h5*")) and not (tmp_path / "m.json").exists()


def test_the_stage_hint_is_only_for_stages(tmp_path: Path) -> None:
    """The same missing file from a stage and from a command that is not one (`cxr`): only the
    stage says that `dvc repro` builds it."""
    body = ("from cxr_impressions.stage import run_stage\n"
            "def main():\n    open('gone.csv')\n"
            "run_stage(main)\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "load.py").write_text(body)
    (tmp_path / "command.py").write_text(body)
    errors = {}
    for script in ("stages/load.py", "command.py"):
        result = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2
        errors[script] = result.stderr
    hint = " (an input of this stage; `dvc repro` builds it)"
    assert errors == {"stages/load.py": f"error: gone.csv: not found{hint}\n",
                      "command.py": "error: gone.csv: not found\n"}


LOADS_TENSORFLOW = """
import sys
import cxr_impressions.stage
print("before", file=sys.stderr, flush=True)
import tensorflow as tf
print("after", tf.constant(2.0).numpy(), file=sys.stderr)
"""


def test_tensorflow_loads_without_its_cxx_chatter() -> None:
    """On CPUs with AVX512_VNNI, AVX512_BF16 or AMX, TensorFlow turns oneDNN's custom operations
    on and says so while it loads, with absl's banner, whatever TF_CPP_MIN_LOG_LEVEL says; on
    others it prints nothing. Either way the load leaves stderr as the process wrote it."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CXR_VERBOSE")}
    quiet = subprocess.run([sys.executable, "-c", LOADS_TENSORFLOW], env=env, capture_output=True,
                           text=True, check=True, timeout=120)
    assert quiet.stderr == "before\nafter 2.0\n"


DROPS_LOAD_CHATTER = r"""
import os, sys
from cxr_impressions.stage import _load_chatter_dropped
with _load_chatter_dropped():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written "
                b"to STDERR\n"
                b"I0000 00:00:1796207246.480347    4920 port.cc:153] oneDNN custom operations\n"
                b"W0000 00:00:1796207246.5    4920 cpu_feature_guard.cc:227] optimized for\n"
                b"E0000 00:00:1796207246.6    4920 loader.cc:12] a real error\n"
                b"a plain line\n")
    print("from Python", file=sys.stderr)
print("after", file=sys.stderr)
"""


def test_only_the_load_chatter_is_dropped() -> None:
    """Errors and everything else written while TensorFlow loads still reach stderr, in order."""
    result = subprocess.run([sys.executable, "-c", DROPS_LOAD_CHATTER], capture_output=True,
                            text=True, check=True, timeout=60)
    assert result.stderr.splitlines() == [
        "E0000 00:00:1796207246.6    4920 loader.cc:12] a real error", "a plain line",
        "from Python", "after"]
