"""Extract CNN features for every image into one HDF5 file per backbone, resumably.

Layout of `features/<backbone>.h5`:

- `ids` (N,) image ids, in input order; `pooled` (N, D) float32, the global-average-pooled vector;
- `grid` (N, H, W, D) float16, the spatial feature map (only with `features.grid: true`);
- attributes: backbone, weights, weights_sha256, input_size, resize, grid, batch_size,
  precision (the one the backbone ran at), n_images, n_skipped, skipped_ids, versions.

Resume: each batch's features go to an atomically renamed shard in `.<name>.partial/` beside the
output. DVC deletes a stage's declared outputs before it reruns the stage, but not this folder,
so an interrupted run (Ctrl-C or kill -9) continues after its last shard. The HDF5 file is written
to a temporary name and renamed into place only when complete; then the shards are removed.
The shards carry a fingerprint of the params and the image list, and are discarded if it changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_path
from ..config import FeaturesParams
from ..errors import InputError

log = logging.getLogger(__name__)


def configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools; must run before TensorFlow executes anything."""
    import tensorflow as tf

    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def package_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__}


@dataclass(frozen=True)
class ExtractionSettings:
    backbone: str
    weights: str
    weights_sha256: str
    input_size: int
    resize: str
    grid: bool
    batch_size: int
    precision: str  # what the backbone ran at here (bfloat16 falls back to float32 without HW)

    def fingerprint(self, ids: Sequence[str], paths: Sequence[str]) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for image_id, path in zip(ids, paths, strict=True):
            digest.update(f"{image_id}\t{path}\n".encode())
        return digest.hexdigest()


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
def _noting_interrupts() -> Iterator[threading.Event]:
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


def partial_dir(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.partial"


def _load_progress(folder: Path, fingerprint: str) -> list[Path]:
    """Shards of an earlier run with the same fingerprint, or [] after clearing stale ones."""
    stamp = folder / "fingerprint"
    if folder.is_dir() and stamp.is_file() and stamp.read_text() == fingerprint:
        return sorted(folder.glob("*.npz"))
    if folder.exists():
        log.info("discarding partial features from other params or images: %s", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    stamp.write_text(fingerprint)
    return []


def _write_shard(folder: Path, number: int, indices: np.ndarray, outputs: dict) -> None:
    target = folder / f"{number:07d}.npz"
    with atomic_path(target, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, indices=indices, **outputs)


def extract_features(
    ids: Sequence[str],
    paths: Sequence[str],
    out_path: str | os.PathLike[str],
    params: FeaturesParams,
    weights_path: str | None,
    progress: bool = True,
) -> dict[str, object]:
    """Compute features for `paths` into `out_path`; return counts for the stage's metrics."""
    import tensorflow as tf
    from tqdm import tqdm

    from ..data.images import image_dataset
    from .backbones import build_backbone, resolve_precision, sha256_of

    out_path = Path(out_path)
    settings = ExtractionSettings(
        backbone=params.backbone, weights=params.weights,
        weights_sha256=sha256_of(weights_path) if weights_path else "",
        input_size=params.image_size, resize=params.resize, grid=params.grid,
        batch_size=params.batch_size, precision=resolve_precision(params.precision))
    folder = partial_dir(out_path)
    shards = _load_progress(folder, settings.fingerprint(ids, paths))
    start = 0
    if shards:
        with np.load(shards[-1]) as last:
            start = int(last["indices"][-1]) + 1
        log.info("resuming after %d of %d images (%d shards)", start, len(paths), len(shards))

    began = time.perf_counter()
    warm_at, warm_from = None, start  # steady state: after the first batch (tracing, warm-up)
    if start < len(paths):
        model = build_backbone(params.backbone, weights_path, params.image_size,
                               seed=params.seed, grid=params.grid, precision=settings.precision)
        forward = tf.function(lambda x: model(x, training=False), autograph=False)
        dataset = decode_ahead(image_dataset(paths[start:], params.image_size, 3, params.resize,
                                             parallel=1), params.batch_size)
        number = len(shards)
        with _noting_interrupts() as interrupted, tqdm(
                total=len(paths), initial=start, unit="img", disable=not progress,
                desc=f"features {params.backbone}") as bar:
            position = start
            for index, images in dataset:
                if warm_at is None and position > start:
                    warm_at, warm_from = time.perf_counter(), position
                outputs = forward(images)
                indices = index.numpy() + start
                arrays = {"pooled": outputs["pooled"].numpy().astype(np.float32)}
                if params.grid:
                    arrays["grid"] = outputs["grid"].numpy().astype(np.float16)
                _write_shard(folder, number, indices, arrays)
                number += 1
                bar.update(int(indices[-1]) + 1 - position)
                position = int(indices[-1]) + 1
            if interrupted.is_set():
                raise KeyboardInterrupt
    if paths and not any(folder.glob("*.npz")):
        shutil.rmtree(folder)
        raise InputError(f"none of the {len(paths)} images could be read (first: {paths[0]}); "
                         "paths are relative to the repo root")
    stats = _assemble(folder, out_path, ids, settings)
    shutil.rmtree(folder)
    finished = time.perf_counter()
    stats["seconds"] = round(finished - began, 2)
    if warm_at is not None:
        stats["images_per_second"] = round((len(paths) - warm_from) / (finished - warm_at), 3)
    return stats


def _assemble(folder: Path, out_path: Path, ids: Sequence[str],
              settings: ExtractionSettings) -> dict[str, object]:
    """Stream the shards into the final HDF5 file, written to a temporary name first."""
    shards = sorted(folder.glob("*.npz"))
    rows, dim, grid_shape = 0, None, None
    for shard in shards:
        with np.load(shard) as data:
            rows += len(data["indices"])
            dim = data["pooled"].shape[1]
            if settings.grid:
                grid_shape = data["grid"].shape[1:]
    written = np.zeros(len(ids), dtype=bool)
    with atomic_path(out_path, suffix=".h5") as tmp, h5py.File(tmp, "w") as h5:
        id_set = h5.create_dataset("ids", (rows,), dtype=h5py.string_dtype("utf-8"))
        pooled = h5.create_dataset("pooled", (rows, dim or 0), dtype="float32")
        grid = None
        if settings.grid and rows:
            grid = h5.create_dataset("grid", (rows, *grid_shape), dtype="float16",
                                     chunks=(1, *grid_shape))
        row = 0
        for shard in shards:
            with np.load(shard) as data:
                indices = data["indices"]
                n = len(indices)
                id_set[row:row + n] = [ids[i] for i in indices]
                pooled[row:row + n] = data["pooled"]
                if grid is not None:
                    grid[row:row + n] = data["grid"]
                written[indices] = True
                row += n
        skipped = [ids[i] for i in np.flatnonzero(~written)]
        for image_id in skipped:
            log.warning("skipped image %s: missing, unreadable or not a PNG/JPEG", image_id)
        h5.attrs.update({**asdict(settings), "n_images": rows, "n_skipped": len(skipped),
                         "skipped_ids": json.dumps(skipped),
                         "versions": json.dumps(package_versions(), sort_keys=True)})
    return {"images": rows, "skipped": len(skipped), "skipped_ids": skipped,
            "feature_dim": int(dim or 0)}
