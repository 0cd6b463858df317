"""The features stage's Ray engine (`machine.features_engine: ray`): a Ray Data pipeline decodes,
an actor pool runs the CNN.

The driver (the stage process) hands the images to compute to Ray Data, which reads and decodes
them in tasks with the project's one image loader (`data/images.py`); `map_batches` feeds batches
of `features.batch_size` to a pool of `machine.ray_actors` actors, each holding one backbone
(with `machine.ray_gpus_per_actor` GPUs and `machine.ray_cpus_per_actor` CPUs). The results
come back to the driver in input order (`preserve_order`), and each batch is written as a shard
by `shards.write_shards`, exactly as the local engine's are: the assembly into the HDF5 file, the
resume after a killed run and the reuse of unchanged images are the same code.

Every node reads the images and the weights file at the paths the driver sends, so on a real
cluster `data.root` and the weights live on a shared filesystem (or at the same path on each
node).
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..settings.features import FeaturesParams
from ..settings.machine import MachineParams
from .shards import ShardRun, write_shards

log = logging.getLogger(__name__)

# Decoding is a few percent of a forward pass: a fraction of a CPU per decode task leaves the
# CPUs to the actors.
DECODE_CPUS = 0.25
# Seconds to wait, on the way out, for Ray Data's threads to finish the block each is on.
ITERATION_THREADS_TIMEOUT = 30.0


def check_address(address: str, timeout: float) -> None:
    """Fail fast, in one line, when nothing listens at a `host:port` Ray address: Ray itself
    retries for minutes before giving up."""
    if address in ("", "auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"machine.ray_address must be host:port, auto or empty, got {address!r}")
    hint = "start one with `ray start --head` or set machine.features_engine: local"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"machine.ray_address {address}: no Ray cluster answers there "
                         f"({reason} within {timeout:g} s); {hint}") from None
    # Something listens; `ray.init` would wait for minutes on a port that is not a Ray head's.
    reason = _gcs_silence(f"{host}:{port}", timeout)
    if reason:
        raise InputError(f"machine.ray_address {address}: no Ray cluster answers there "
                         f"({reason}); {hint}")


def _gcs_silence(target: str, timeout: float) -> str:
    """Why the server at `target` is not a Ray head's GCS, or "" when it answers as one: one
    GCS call (GetClusterId, Ray's first on connecting) with a deadline of `timeout`."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"a server listens, but no Ray GCS reply within {timeout:g} s"
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return "a gRPC server listens, but not Ray's GCS"
            # Anything else (e.g. a cluster that wants a token) is Ray answering: ray.init says.
    return ""


def preflight(machine: MachineParams) -> None:
    """What can fail before any work: Ray missing, or nothing answering at the address. The
    stage calls this first, so such a run stops in seconds, in one line."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError("machine.features_engine: ray needs Ray: "
                         "pip install 'cxr-impressions[ray]'") from None
    check_address(machine.ray_address, machine.ray_connect_timeout)


def connect(machine: MachineParams) -> object:
    """`ray.init` on `machine.ray_address`, as one clear line on failure."""
    preflight(machine)
    import ray

    options: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if machine.ray_address:
        options["address"] = machine.ray_address
    else:
        options["include_dashboard"] = False
    try:
        ray.init(**options)
    except (ConnectionError, TimeoutError) as exc:
        raise InputError(f"machine.ray_address {machine.ray_address or '(local)'}: cannot "
                         f"connect to Ray ({str(exc).splitlines()[0]})") from None
    return ray


def _decode(batch: dict[str, np.ndarray], size: int, resize: str) -> dict[str, np.ndarray]:
    """Ray Data task: read and decode one batch of images. Unreadable ones are left out (the
    assembly counts them as skipped, as with the local engine)."""
    from ..data.images import load_image

    kept, images = [], []
    for index, path in zip(batch["index"], batch["path"], strict=True):
        try:
            images.append(load_image(str(path), size, 3, resize).numpy())
            kept.append(index)
        except InputError as exc:
            log.warning("%s", exc)
    if not images:
        return {"index": np.zeros(0, np.int64), "image": np.zeros((0, size, size, 3), np.float32)}
    return {"index": np.asarray(kept, np.int64), "image": np.stack(images)}


class BackboneActor:
    """One backbone per actor, built once; called on batches of decoded images."""

    def __init__(self, params: dict, weights_path: str | None, precision: str,
                 threads: int) -> None:
        import ray
        import tensorflow as tf

        from .backbones import build_backbone, stored_arrays

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.params = FeaturesParams(**params)
        model = build_backbone(self.params.backbone, weights_path, self.params.image_size,
                               seed=self.params.seed, grid=self.params.grid,
                               precision=precision)
        forward = tf.function(lambda x: model(x, training=False), autograph=False)
        self.run = lambda images: stored_arrays(forward(images), self.params.grid)
        context = ray.get_runtime_context()
        self.node, self.actor = context.get_node_id(), context.get_actor_id()
        size = self.params.image_size
        self.empty = {k: v[:0] for k, v in
                      self.run(np.zeros((1, size, size, 3), np.float32)).items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["index"])
        outputs = self.run(batch["image"]) if rows else self.empty
        return {"index": batch["index"], **outputs,
                "node": np.array([self.node] * rows, dtype=object),
                "actor": np.array([self.actor] * rows, dtype=object)}


def _not_an_actor_start_timeout(record: logging.LogRecord) -> bool:
    """A log filter: False while the exception being handled is Ray's GetTimeoutError."""
    import ray.exceptions

    return not isinstance(sys.exc_info()[1], ray.exceptions.GetTimeoutError)


def wait_for_room(machine: MachineParams) -> None:
    """Wait until the cluster has room for the whole actor pool at once, or fail in one line
    after `machine.ray_actor_start_timeout`. Ray Data alone would start whichever actors fit and
    wait for the rest forever; and a killed run's actors hold their CPUs until Ray notices the
    driver is gone, so a rerun at once would start with fewer actors than it asks."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {k: v for k, v in (("CPU", machine.ray_cpus_per_actor),
                                ("GPU", machine.ray_gpus_per_actor)) if v > 0}
    if not bundle:
        return
    group = placement_group([bundle] * machine.ray_actors)
    try:
        if not group.wait(timeout_seconds=machine.ray_actor_start_timeout):
            raise InputError(
                f"machine.ray_actors: the Ray cluster at {machine.ray_address or '(local)'} has "
                f"no room for {machine.ray_actors} actor(s) of "
                f"{machine.ray_cpus_per_actor:g} CPU(s) and {machine.ray_gpus_per_actor:g} "
                f"GPU(s) within machine.ray_actor_start_timeout "
                f"({machine.ray_actor_start_timeout:g} s); ask for fewer or smaller actors, "
                "or add nodes")
    finally:
        remove_placement_group(group)


def join_iteration_threads(before: set[threading.Thread], timeout: float) -> None:
    """Wait for the threads Ray Data started to iterate (those not in `before`) to end.

    An iteration stopped early (Ctrl-C) leaves its worker threads finishing their current block;
    one that touches Ray after `ray.shutdown` makes Ray end the process with status 1 instead of
    the interrupt's 130. Ray Data's block prefetcher is left out: it sleeps on a condition until
    garbage-collected and touches Ray only when handed blocks."""
    deadline = time.monotonic() + timeout
    started = [thread for thread in set(threading.enumerate()) - before
               if thread.name != "Prefetcher" and thread is not threading.current_thread()]
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = sorted(thread.name for thread in started if thread.is_alive())
    if running:
        log.warning("Ray Data threads still running after %g s: %s", timeout,
                    ", ".join(running))


def ray_shards(folder: Path, fingerprint: str, paths: Sequence[str], params: FeaturesParams,
               machine: MachineParams, weights_path: str | None, precision: str,
               progress: bool = True, desc: str = "images") -> ShardRun:
    """`shards.compute_shards` on the Ray cluster at `machine.ray_address`: the same shards in
    `folder`, the same resume."""
    nodes: set[str] = set()
    actors: set[str] = set()  # those that computed a batch: fewer than asked if some never started

    def ray_batches(start: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        ray = connect(machine)
        threads_before = set(threading.enumerate())
        try:
            import ray.data

            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            # In input order, so that a killed run resumes after its last shard.
            context.execution_options.preserve_order = True
            # Dispatch only once every actor has loaded its backbone: otherwise the first one
            # ready (on a loaded machine, a minute before the others) may take every batch.
            context.wait_for_min_actors_s = max(1, math.ceil(machine.ray_actor_start_timeout))
            items = [{"index": i, "path": str(paths[i])} for i in range(start, len(paths))]
            dataset = ray.data.from_items(items).map_batches(
                _decode, fn_kwargs={"size": params.image_size, "resize": params.resize},
                batch_size=params.batch_size, batch_format="numpy", num_cpus=DECODE_CPUS)
            dataset = dataset.map_batches(
                BackboneActor, fn_constructor_kwargs={
                    "params": asdict(params), "weights_path": weights_path,
                    "precision": precision,
                    "threads": max(1, int(machine.ray_cpus_per_actor))},
                batch_size=params.batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=machine.ray_actors),
                num_cpus=machine.ray_cpus_per_actor, num_gpus=machine.ray_gpus_per_actor)
            wait_for_room(machine)
            # Ray Data logs its actor-start timeout as an internal error, with a traceback:
            # the one line below says what happened.
            ray_data_errors = logging.getLogger("ray.data.exceptions")
            ray_data_errors.addFilter(_not_an_actor_start_timeout)
            try:
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    nodes.update(batch["node"].tolist())
                    actors.update(batch["actor"].tolist())
                    yield (np.asarray(batch["index"], np.int64),
                           {k: batch[k] for k in ("pooled", "grid") if k in batch})
            except ray.exceptions.GetTimeoutError as exc:
                raise InputError(
                    f"machine.ray_actor_start_timeout: the {machine.ray_actors} actor(s) did not "
                    f"all load the backbone within {machine.ray_actor_start_timeout:g} s on the "
                    f"Ray cluster at {machine.ray_address or '(local)'}") from exc
            finally:
                ray_data_errors.removeFilter(_not_an_actor_start_timeout)
        finally:
            join_iteration_threads(threads_before, ITERATION_THREADS_TIMEOUT)
            ray.shutdown()

    run = write_shards(folder, fingerprint, len(paths), ray_batches, progress, desc)
    if nodes:
        log.info("features computed by %d of %d actors on %d Ray nodes", len(actors),
                 machine.ray_actors, len(nodes))
    return run
