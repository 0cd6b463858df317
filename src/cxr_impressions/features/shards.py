"""Run a backbone over a list of images in resumable shards: what `extraction` and `finetune`
both need.

Each batch's outputs go to an atomically renamed `.npz` shard in a folder stamped with a
fingerprint of everything that changes them (params, weights, the image list). An interrupted
run (Ctrl-C or kill -9) continues after its last shard; a folder with another fingerprint is
discarded. Missing or unreadable images are skipped by the image loader and show up as indices
absent from every shard.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

log = logging.getLogger(__name__)

# Finished shards only: a write cut short leaves its temporary `.<name>.tmp.npz` behind, which
# must never be read as a shard.
SHARD_GLOB = "[0-9]*.npz"


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools; must run before TensorFlow executes anything."""
    import tensorflow as tf

    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


@functools.cache  # scanning every installed distribution takes ~0.3 s; asked twice a run
def package_versions() -> dict[str, str]:
    """From the installed distributions' metadata (`tensorflow` may come as `tensorflow-cpu`):
    importing TensorFlow for its version would cost a Ray driver, which runs no model, seconds."""
    from importlib import metadata

    owners = metadata.packages_distributions()
    return {module: metadata.version(owners[module][0])
            for module in ("tensorflow", "keras", "h5py", "numpy")}


def decode_ahead(dataset: object, batch_size: int) -> object:
    """Batch and decode ahead of the model on one background thread.

    Decoding is a few percent of a forward pass on CPU, so one thread keeps ahead; more decode
    threads, or tf.data's autotuner, take cores from the model's convolutions and cost more
    than they save (measured in benchmarks/features.py).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.batch(batch_size).prefetch(2).with_options(options)


@contextlib.contextmanager
def noting_interrupts() -> Iterator[threading.Event]:
    """Record Ctrl-C while still raising KeyboardInterrupt: TensorFlow's dataset iterator can
    swallow the exception and end the loop as if the images had run out, and an interrupted run
    must never go on to assemble a complete-looking file."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum: int, frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def load_progress(folder: Path, fingerprint: str) -> list[Path]:
    """Shards of an earlier run with the same fingerprint, or [] after clearing stale ones."""
    stamp = folder / "fingerprint"
    if folder.is_dir() and stamp.is_file() and stamp.read_text() == fingerprint:
        return sorted(folder.glob(SHARD_GLOB))
    if folder.exists():
        log.info("discarding partial outputs from other params or images: %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    stamp.write_text(fingerprint)
    return []


def write_shard(folder: Path, number: int, indices: np.ndarray, outputs: dict) -> None:
    target = folder / f"{number:07d}.npz"
    with atomic_path(target, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, indices=indices, **outputs)


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(SHARD_GLOB))


@dataclass
class ShardRun:
    shards: list[Path]
    seconds: float
    images_per_second: float | None  # steady state, after the first batch; None if resumed done


# A batch source: given the position to start at, yields (positions in the image list, named
# arrays with one row per image) in increasing order of position. The local one decodes with
# tf.data and runs the model here; features/ray_engine.py runs it on a Ray cluster.
BatchSource = Callable[[int], Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]]


def compute_shards(
    folder: Path,
    fingerprint: str,
    paths: Sequence[str],
    image_size: int,
    resize: str,
    batch_size: int,
    make_forward: Callable[[], Callable[[object], dict[str, np.ndarray]]],
    progress: bool = True,
    desc: str = "images",
) -> ShardRun:
    """Run `make_forward()` (built only if there is work left) over `paths` into shards in
    `folder`, resuming after the last shard of an earlier run with the same `fingerprint`.

    `forward(images)` maps a batch of [0, 255] images to named numpy arrays, one row per image.
    """

    def local_batches(start: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        from ..data.images import image_dataset

        forward = make_forward()
        dataset = decode_ahead(image_dataset(paths[start:], image_size, 3, resize, parallel=1),
                               batch_size)
        for index, images in dataset:
            yield index.numpy() + start, forward(images)

    return write_shards(folder, fingerprint, len(paths), local_batches, progress, desc)


def write_shards(folder: Path, fingerprint: str, total: int, batches: BatchSource,
                 progress: bool = True, desc: str = "images") -> ShardRun:
    """Write each batch of `batches` as a shard in `folder`, resuming after the last shard of an
    earlier run with the same `fingerprint`; `total` is the length of the image list."""
    from tqdm import tqdm

    shards = load_progress(folder, fingerprint)
    start = 0
    if shards:
        with np.load(shards[-1]) as last:
            start = int(last["indices"][-1]) + 1
        log.info("resuming after %d of %d images (%d shards)", start, total, len(shards))
    began = time.perf_counter()
    warm_at, warm_from = None, start  # steady state: after the first batch (tracing, warm-up)
    if start < total:
        number = len(shards)
        with noting_interrupts() as interrupted, tqdm(
                total=total, initial=start, unit="img", disable=not progress,
                desc=desc) as bar:
            position = start
            for indices, arrays in batches(start):
                if not len(indices):
                    continue
                write_shard(folder, number, np.asarray(indices, np.int64), arrays)
                number += 1
                bar.update(int(indices[-1]) + 1 - position)
                position = int(indices[-1]) + 1
                if warm_at is None:
                    warm_at, warm_from = time.perf_counter(), position
            if interrupted.is_set():
                raise KeyboardInterrupt
    finished = time.perf_counter()
    rate = None
    if warm_at is not None and warm_from < total and finished > warm_at:
        rate = round((total - warm_from) / (finished - warm_at), 3)
    return ShardRun(shard_files(folder), round(finished - began, 2), rate)
