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

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_path
from ..config import FeaturesParams
from ..errors import InputError
from .shards import compute_shards, configure_threads, package_versions, shard_files

__all__ = ["ExtractionSettings", "configure_threads", "extract_features", "partial_dir"]

log = logging.getLogger(__name__)


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


def partial_dir(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.partial"


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

    from .backbones import build_backbone, resolve_precision, sha256_of

    out_path = Path(out_path)
    settings = ExtractionSettings(
        backbone=params.backbone, weights=params.weights,
        weights_sha256=sha256_of(weights_path) if weights_path else "",
        input_size=params.image_size, resize=params.resize, grid=params.grid,
        batch_size=params.batch_size, precision=resolve_precision(params.precision))
    folder = partial_dir(out_path)

    def make_forward():
        model = build_backbone(params.backbone, weights_path, params.image_size,
                               seed=params.seed, grid=params.grid, precision=settings.precision)
        forward = tf.function(lambda x: model(x, training=False), autograph=False)

        def run(images):
            outputs = forward(images)
            arrays = {"pooled": outputs["pooled"].numpy().astype(np.float32)}
            if params.grid:
                arrays["grid"] = outputs["grid"].numpy().astype(np.float16)
            return arrays
        return run

    run = compute_shards(folder, settings.fingerprint(ids, paths), paths, params.image_size,
                         params.resize, params.batch_size, make_forward, progress,
                         desc=f"features {params.backbone}")
    if paths and not run.shards:
        shutil.rmtree(folder)
        raise InputError(f"none of the {len(paths)} images could be read (first: {paths[0]}); "
                         "paths are relative to the repo root")
    stats = _assemble(folder, out_path, ids, settings)
    shutil.rmtree(folder)
    stats["seconds"] = run.seconds
    if run.images_per_second is not None:
        stats["images_per_second"] = run.images_per_second
    return stats


def _assemble(folder: Path, out_path: Path, ids: Sequence[str],
              settings: ExtractionSettings) -> dict[str, object]:
    """Stream the shards into the final HDF5 file, written to a temporary name first."""
    shards = shard_files(folder)
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
            log.warning("skipped image %s: missing, unreadable or not a PNG, JPEG or DICOM image",
                        image_id)
        h5.attrs.update({**asdict(settings), "n_images": rows, "n_skipped": len(skipped),
                         "skipped_ids": json.dumps(skipped),
                         "versions": json.dumps(package_versions(), sort_keys=True)})
    return {"images": rows, "skipped": len(skipped), "skipped_ids": skipped,
            "feature_dim": int(dim or 0)}
