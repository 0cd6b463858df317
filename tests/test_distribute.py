"""tf.distribute training on this CPU: mirrored over two logical CPU devices, multi-worker with
two processes on loopback ports (the chief alone writes outputs), a worker killed mid-run and
resumed, and a malformed TF_CONFIG as one line. Each run is a subprocess (tests/distributed_train
.py): a strategy, and logical devices, are fixed for the life of a process.

Tolerance: the loss per epoch matches one device with the same global batch within 1% relative.
It is not exact because each replica averages the masked loss over its own tokens and the
gradients are averaged over replicas, while one device averages over all the batch's tokens
(measured: 0.3% apart after 3 epochs with 2 replicas)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxr_impressions.captioning.distribute import Task, parse_tf_config, worker_state_dir
from cxr_impressions.captioning.training import backed_up_epochs
from cxr_impressions.errors import InputError

from .helpers import run_stage, write_params
from .repos import env
from .seaweed import free_ports

pytestmark = pytest.mark.timeout(1500)

SCRIPT = str(Path(__file__).with_name("distributed_train.py"))
EPOCHS = 2  # the multi-worker job is killed in the second, so the resume runs the last
RTOL = 0.01


def launch(out: Path, *args: str, tf_config: dict | None = None) -> subprocess.Popen:
    """Run the script in `out`, made a DVC root as a stage's folder would be: DVCLive writes its
    per-step signal file there (and not in this checkout's `.dvc`)."""
    (out / ".dvc").mkdir(exist_ok=True)
    variables = env()
    if tf_config is not None:
        variables["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, SCRIPT, "--out", str(out), "--epochs", str(EPOCHS),
                             *args], cwd=out, env=variables, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def step_signal_writer(out: Path) -> int | None:
    """The pid in DVCLive's per-step signal file, None while there is none (or half-written)."""
    try:
        return json.loads((out / ".dvc" / "tmp" / "exps" / "run" / "DVCLIVE_STEP_COMPLETED")
                          .read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def losses(out: Path) -> list[tuple[int, float]]:
    rows = (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().split("\n")
    return [(int(s), float(v)) for s, v in (r.split("\t") for r in rows[1:] if r)]


@pytest.fixture(scope="module")
def single_device(tmp_path_factory) -> list[tuple[int, float]]:
    out = tmp_path_factory.mktemp("single")
    finish(launch(out))
    return losses(out)


def assert_same_curve(curve: list[tuple[int, float]], reference: list[tuple[int, float]]) -> None:
    assert [s for s, _ in curve] == list(range(EPOCHS))  # every epoch once: none lost or doubled
    np.testing.assert_allclose([v for _, v in curve], [v for _, v in reference], rtol=RTOL)


def test_mirrored_over_two_logical_cpus(single_device, tmp_path: Path) -> None:
    finish(launch(tmp_path, "--strategy", "mirrored", "--logical-cpus", "2"))
    assert json.loads((tmp_path / "train.json").read_text())["replicas"] == 2
    assert_same_curve(losses(tmp_path), single_device)


def test_multi_worker_killed_then_resumed(single_device, tmp_path: Path) -> None:
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}

    def start() -> list[subprocess.Popen]:
        return [launch(tmp_path, "--strategy", "multi_worker",
                       tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}})
                for i in range(2)]

    # Kill worker 1 once both workers have backed up epoch 1, while epoch 2 runs; the chief
    # then waits on its collective ops, so it is killed too, as a crashed job would be.
    workers = start()
    chief_state = tmp_path / "models" / ".train-state"
    backups = [chief_state / "backup", worker_state_dir(Task(index=1), chief_state) / "backup"]
    deadline = time.monotonic() + 900
    signal_writers = set()
    try:
        while not all(backed_up_epochs(b) >= 1 for b in backups):
            assert all(w.poll() is None for w in workers), workers[0].stdout.read()[-3000:]
            assert time.monotonic() < deadline
            signal_writers.add(step_signal_writer(tmp_path))
            time.sleep(0.05)
        signal_writers.add(step_signal_writer(tmp_path))
        workers[1].send_signal(signal.SIGKILL)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate(timeout=60)
    assert 1 <= backed_up_epochs(backups[0]) < EPOCHS
    assert not (tmp_path / "train.json").exists()
    # Only the chief logs to DVCLive: two writers of its one signal file raced to delete it.
    assert signal_writers - {None} == {workers[0].pid}
    # DVCLive's folder as DVC leaves it before rerunning the stage: its declared outputs deleted.
    shutil.rmtree(tmp_path / "live")

    outputs = [finish(w) for w in start()]
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["resumed"] and summary["chief"] and summary["replicas"] == 2
    assert summary["epochs_run"] == EPOCHS
    assert "Epoch 1/" not in outputs[0] and f"Epoch {EPOCHS}/" in outputs[0]
    assert_same_curve(losses(tmp_path), single_device)
    # Only the chief wrote: one DVCLive folder, one metrics file, the worker's state removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dvc", "live", "models", "train.json"]
    assert not worker_state_dir(Task(index=1), chief_state).exists()


@pytest.mark.parametrize(("raw", "message"), [
    ('{"cluster": {"worker": ["127.0.0.1:1"]', "TF_CONFIG: not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG: task index 3 is out of range for 1 worker task(s)"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG: cluster.worker: 'localhost' is not host:port"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     "TF_CONFIG: task type 'chief' is not in 'cluster'"),
    ("", "train.strategy: multi_worker needs the TF_CONFIG environment variable"),
])
def test_malformed_tf_config_is_one_line(raw: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_tf_config(raw)


def test_chief_is_the_chief_or_worker_zero() -> None:
    both = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    chief = parse_tf_config(json.dumps({"cluster": both, "task": {"type": "chief", "index": 0}}))
    worker0 = parse_tf_config(json.dumps({"cluster": both, "task": {"type": "worker",
                                                                    "index": 0}}))
    assert chief.is_chief and not worker0.is_chief and chief.workers == 3
    alone = parse_tf_config(json.dumps({"cluster": {"worker": ["b:1", "c:1"]},
                                        "task": {"type": "worker", "index": 0}}))
    assert alone.is_chief


def test_train_stage_with_malformed_tf_config_fails_in_one_line(tmp_path: Path) -> None:
    write_params(tmp_path, "train:\n  strategy: multi_worker\n")
    os.environ["TF_CONFIG"] = "{not json"
    try:
        result = run_stage("train.py", "--clean", "c", "--features", "f.h5", "--embeddings",
                           "e.npy", "--out", "m", "--live", "l", "--metrics", "t.json",
                           cwd=tmp_path, check=False)
    finally:
        del os.environ["TF_CONFIG"]
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: TF_CONFIG: not valid JSON (Expecting property name enclosed in double quotes "
        "at character 1)"]
