"""Training on several devices or machines with tf.distribute (`train.strategy`).

- `default`: one device, as before.
- `mirrored`: `MirroredStrategy` over every local GPU (or, with none, every logical CPU device).
- `multi_worker`: `MultiWorkerMirroredStrategy`, the cluster described by `TF_CONFIG`.

`train.batch_size` stays the global batch: each of R replicas gets batch/R examples, so the
gradient step, and therefore `train.learning_rate`, mean the same as on one device.

Only the chief (task `chief`, or `worker` 0 when the cluster has no chief) writes the stage's
outputs, DVCLive logs and checkpoints at their real paths. Every other worker writes them under
a temporary folder: its outputs are deleted at the end, and its resume state sits in
`<tmp>/cxr-train/<task>-<index>-<hash of the chief's state path>`, so that a worker rerun after a
crash resumes from its own backup, on any machine, with no shared filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster."""

    type: str = "worker"
    index: int = 0
    workers: int = 1  # processes that train (chief + workers)
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and
                                         not self.has_chief)


def parse_tf_config(raw: str | None) -> Task:
    """Validate `TF_CONFIG` (one `InputError` line naming what is wrong) and say who we are."""
    if raw is None or not raw.strip():
        raise InputError("train.strategy: multi_worker needs the TF_CONFIG environment variable "
                         "(see the README's 'Scaling out')")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"TF_CONFIG: not valid JSON ({exc.msg} at character {exc.pos})"
                         ) from None
    if not isinstance(config, dict):
        raise InputError("TF_CONFIG: expected a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise InputError("TF_CONFIG: 'cluster' must map task types to lists of host:port")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise InputError("TF_CONFIG: 'task' must be {\"type\": ..., \"index\": ...}")
    for kind, addresses in cluster.items():
        if kind not in ("chief", "worker", "evaluator", "ps"):
            raise InputError(f"TF_CONFIG: unknown task type {kind!r} in 'cluster'")
        if kind in ("evaluator", "ps"):
            raise InputError(f"TF_CONFIG: {kind!r} tasks are not used by MultiWorkerMirrored"
                             "Strategy; list only chief and worker")
        if not isinstance(addresses, list) or not addresses:
            raise InputError(f"TF_CONFIG: cluster.{kind} must be a non-empty list of host:port")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InputError(f"TF_CONFIG: cluster.{kind}: {address!r} is not host:port")
    if len(cluster.get("chief", [])) > 1:
        raise InputError("TF_CONFIG: a cluster has at most one chief")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise InputError(f"TF_CONFIG: task type {kind!r} is not in 'cluster'")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(
            cluster[kind]):
        raise InputError(f"TF_CONFIG: task index {index!r} is out of range for "
                         f"{len(cluster[kind])} {kind} task(s)")
    return Task(type=kind, index=index,
                workers=len(cluster.get("chief", [])) + len(cluster.get("worker", [])),
                has_chief="chief" in cluster)


def current_task(strategy_name: str) -> Task:
    """The task of this process: the one and only for `default` and `mirrored`."""
    if strategy_name != "multi_worker":
        return Task()
    return parse_tf_config(os.environ.get(TF_CONFIG))


def make_strategy(strategy_name: str, collective_timeout: float = 0.0) -> object:
    """The tf.distribute strategy for `train.strategy`; build and train the model in its scope.
    `collective_timeout` (`machine.collective_timeout`): seconds before a lost peer fails a
    multi-worker step (0: wait forever)."""
    import tensorflow as tf

    if strategy_name == "default":
        return tf.distribute.get_strategy()
    if strategy_name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=collective_timeout or None)

    class MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        """Reduces nested values one leaf at a time, and scalars without an axis: Keras' fit
        reduces a batch of dict inputs in one `strategy.reduce` call, and each epoch's scalar
        logs along axis 0, both of which the multi-worker strategy rejects."""

        def reduce(self, reduce_op: object, value: object, axis: object) -> object:
            parent = super()

            def leaf(v: object) -> object:
                local = self.experimental_local_results(v)[0]
                return parent.reduce(reduce_op, v, axis if len(local.shape) else None)

            return tf.nest.map_structure(leaf, value)

    return MultiWorker(communication_options=options)


@dataclass(frozen=True)
class RunPaths:
    """Where this process writes: the real paths for the chief, temporary ones for the others.
    Only the chief logs to DVCLive (`live` is None for the others): DVCLive signals each step in
    the DVC repo's own `.dvc/tmp`, and workers sharing a host raced on that one file."""

    out: Path
    live: Path | None
    metrics: Path
    state: Path
    scratch: Path | None  # a non-chief's temporary folder for outputs, removed at the end

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def run_paths(task: Task, out: Path, live: Path, metrics: Path, state: Path) -> RunPaths:
    if task.is_chief:
        return RunPaths(out, live, metrics, state, None)
    scratch = Path(tempfile.mkdtemp(prefix=f"cxr-train-{task.type}-{task.index}-"))
    return RunPaths(scratch / "models", None, scratch / "train.json",
                    worker_state_dir(task, state), scratch)


def worker_state_dir(task: Task, state: Path) -> Path:
    """A non-chief's resume state: it must outlive a crash, so a stable name (not a fresh
    temporary folder), one per task and chief's state path."""
    key = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "cxr-train" / f"{task.type}-{task.index}-{key}"


def per_replica(loss_fn: Callable) -> Callable:
    """`loss_fn`, a mean over one replica's batch returned as a scalar, divided by the number of
    replicas. Keras divides its own losses so that the gradients summed over replicas are those
    of the global batch, but leaves a scalar as it is: without this, R replicas would step with
    R times the caption loss's gradient (and report R times the loss)."""
    import tensorflow as tf

    def loss(targets: object, predictions: object) -> object:
        value = loss_fn(targets, predictions)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return value / replicas if replicas > 1 else value

    loss.__name__ = loss_fn.__name__
    return loss
