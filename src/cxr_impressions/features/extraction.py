"""Extract CNN features for every image into one HDF5 file per backbone, resumably and
incrementally.

Layout of `features/<backbone>.h5`:

- `ids` (N,) image ids, in input order; `pooled` (N, D) float32, the global-average-pooled vector;
- `grid` (N, H, W, D) float16, the spatial feature map (only with `features.grid: true`);
- `image_sha256` (N,) the SHA-256 of each image file's bytes, the key of incremental runs;
- attributes: backbone, weights, weights_sha256, input_size, resize, grid, batch_size,
  precision (the one the backbone ran at), n_images, n_skipped, skipped_ids, versions.

Incremental: the output is `persist: true` in dvc.yaml, so DVC leaves the previous file in place
(whether this workspace made it or `dvc pull` fetched it). A row of that file is reused when its
image id and file hash are unchanged and it was made with the same settings and package versions;
only the other images go through the backbone. The new file lists the current images in the
current order, so it equals a from-scratch run (values up to float rounding).

Resume: the images to compute go through `shards.compute_shards` (or the Ray engine's
`write_shards`): each batch lands in an atomically renamed shard in `.<name>.partial/` beside the
output, which DVC does not delete, so an interrupted run (Ctrl-C or kill -9) continues after its
last shard. The HDF5 file is written to a temporary name and renamed into place only when
complete; then the shards are removed. The shards carry a fingerprint of the settings and of the
images to compute (ids, paths, file hashes), and are discarded if it changed.
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
from ..errors import InputError
from ..settings.features import FeaturesParams
from ..settings.machine import MachineParams
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

    def fingerprint(self, items: Sequence[tuple[str, str, str]]) -> str:
        """Of the settings and the (id, path, file hash) of each image to compute."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for item in items:
            digest.update(("\t".join(item) + "\n").encode())
        return digest.hexdigest()

    def reuse_key(self) -> dict[str, object]:
        """What an earlier file's rows must have been made with to be reused: these settings
        and the same package versions (another TensorFlow may round differently)."""
        return {**asdict(self), "versions": json.dumps(package_versions(), sort_keys=True)}


def partial_dir(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.partial"


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, or "" when it cannot be read (the image loader then skips
    and counts it)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return ""


def reusable_rows(out_path: Path, key: dict[str, object]) -> dict[tuple[str, str], int]:
    """(image id, file hash) -> row of the previous output, when it was made with `key`."""
    if not out_path.is_file():
        return {}
    try:
        with h5py.File(out_path, "r") as h5:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()}
            if "image_sha256" not in h5 or any(attrs.get(k) != v for k, v in key.items()):
                log.info("not reusing %s: made with other settings or package versions",
                         out_path)
                return {}
            ids = h5["ids"].asstr()[...]
            hashes = h5["image_sha256"].asstr()[...]
    except OSError as exc:
        log.warning("not reusing %s: unreadable (%s)", out_path, exc)
        return {}
    return {(i, h): row for row, (i, h) in enumerate(zip(ids, hashes, strict=True))}


def extract_features(
    ids: Sequence[str],
    paths: Sequence[str],
    out_path: str | os.PathLike[str],
    params: FeaturesParams,
    weights_path: str | None,
    progress: bool = True,
    machine: MachineParams | None = None,
) -> dict[str, object]:
    """Compute features for `paths` into `out_path`, reusing the rows of a previous `out_path`
    whose image is unchanged; return counts for the stage's metrics. `machine.features_engine`
    picks where the backbone runs: here (`local`, the default) or on Ray."""
    import time

    from .backbones import resolve_precision, sha256_of

    machine = machine or MachineParams()
    out_path = Path(out_path)
    settings = ExtractionSettings(
        backbone=params.backbone, weights=params.weights,
        weights_sha256=sha256_of(weights_path) if weights_path else "",
        input_size=params.image_size, resize=params.resize, grid=params.grid,
        batch_size=params.batch_size, precision=resolve_precision(params.precision))
    began = time.perf_counter()
    hashes = [file_sha256(p) for p in paths]
    reusable = reusable_rows(out_path, settings.reuse_key())
    reused = {i: reusable[(ids[i], hashes[i])] for i in range(len(ids))
              if hashes[i] and (ids[i], hashes[i]) in reusable}
    needed = np.array([i for i in range(len(ids)) if i not in reused], dtype=np.int64)
    if reused:
        log.info("reusing %d of %d images from %s; computing %d", len(reused), len(ids),
                 out_path, len(needed))
    folder = partial_dir(out_path)
    fingerprint = settings.fingerprint([(ids[i], paths[i], hashes[i]) for i in needed])
    needed_paths = [paths[i] for i in needed]
    desc = f"features {params.backbone}"
    if machine.features_engine == "ray" and len(needed):
        from .ray_engine import ray_shards

        run = ray_shards(folder, fingerprint, needed_paths, params, machine, weights_path,
                         settings.precision, progress, desc=f"{desc} (ray)")
    else:
        run = compute_shards(folder, fingerprint, needed_paths, params.image_size,
                             params.resize, params.batch_size,
                             lambda: local_forward(params, weights_path, settings.precision),
                             progress, desc=desc)
    if paths and not reused and not run.shards:
        shutil.rmtree(folder)
        raise InputError(f"none of the {len(paths)} images could be read (first: {paths[0]}); "
                         "paths are relative to the repo root")
    stats = _assemble(folder, out_path, ids, hashes, needed, reused, settings)
    shutil.rmtree(folder)
    stats.update(computed=len(needed), reused=len(reused),
                 seconds=round(time.perf_counter() - began, 2))
    if run.images_per_second is not None:
        stats["images_per_second"] = run.images_per_second
    return stats


def local_forward(params: FeaturesParams, weights_path: str | None, precision: str):
    """The backbone in this process: batch of [0, 255] images -> the arrays a shard stores."""
    import tensorflow as tf

    from .backbones import build_backbone, stored_arrays

    model = build_backbone(params.backbone, weights_path, params.image_size, seed=params.seed,
                           grid=params.grid, precision=precision)
    forward = tf.function(lambda x: model(x, training=False), autograph=False)
    return lambda images: stored_arrays(forward(images), params.grid)


def _assemble(folder: Path, out_path: Path, ids: Sequence[str], hashes: Sequence[str],
              needed: np.ndarray, reused: dict[int, int], settings: ExtractionSettings,
              block: int = 256) -> dict[str, object]:
    """Stream the previous file's reused rows and the shards (whose indices are positions in
    `needed`) into the final HDF5 file in input order, written to a temporary name first."""
    shards = shard_files(folder)
    located: dict[int, Path] = {}  # input position -> the shard holding it
    dim, grid_shape = None, None
    for shard in shards:
        with np.load(shard) as data:
            located.update(dict.fromkeys(needed[data["indices"]].tolist(), shard))
            dim = data["pooled"].shape[1]
            if settings.grid:
                grid_shape = data["grid"].shape[1:]
    previous = h5py.File(out_path, "r") if reused else None
    try:
        if previous is not None:
            dim = previous["pooled"].shape[1]
            if settings.grid:
                grid_shape = previous["grid"].shape[1:]
        present = [i for i in range(len(ids)) if i in reused or i in located]
        rows = len(present)
        with atomic_path(out_path, suffix=".h5") as tmp, h5py.File(tmp, "w") as h5:
            h5.create_dataset("ids", data=[ids[i] for i in present],
                              dtype=h5py.string_dtype("utf-8"), shape=(rows,))
            h5.create_dataset("image_sha256", data=[hashes[i] for i in present],
                              dtype=h5py.string_dtype("utf-8"), shape=(rows,))
            targets = {"pooled": h5.create_dataset("pooled", (rows, dim or 0), dtype="float32")}
            if settings.grid and rows:
                targets["grid"] = h5.create_dataset("grid", (rows, *grid_shape), dtype="float16",
                                                    chunks=(1, *grid_shape))
            loaded: dict[Path, dict] = {}
            for start in range(0, rows, block):
                chunk = present[start:start + block]
                for name, target in targets.items():
                    values = np.empty((len(chunk), *target.shape[1:]), dtype=target.dtype)
                    old = sorted(((reused[i], k) for k, i in enumerate(chunk) if i in reused))
                    if old:  # h5py reads rows in increasing order only
                        for (_, k), value in zip(old, previous[name][[r for r, _ in old]],
                                                 strict=True):
                            values[k] = value
                    for k, i in enumerate(chunk):
                        if i in reused:
                            continue
                        shard = located[i]
                        if shard not in loaded:
                            with np.load(shard) as data:
                                loaded[shard] = {key: data[key] for key in data.files}
                            loaded[shard]["row"] = {int(j): r for r, j in enumerate(
                                needed[loaded[shard]["indices"]])}
                        values[k] = loaded[shard][name][loaded[shard]["row"][i]]
                    target[start:start + len(chunk)] = values
                # Shards hold consecutive images: drop those this block has finished with.
                for shard in [s for s, d in loaded.items() if max(d["row"]) <= chunk[-1]]:
                    del loaded[shard]
            skipped = [ids[i] for i in range(len(ids)) if i not in reused and i not in located]
            for image_id in skipped:
                log.warning("skipped image %s: missing, unreadable or not a PNG, JPEG or DICOM "
                            "image", image_id)
            h5.attrs.update({**asdict(settings), "n_images": rows, "n_skipped": len(skipped),
                             "skipped_ids": json.dumps(skipped),
                             "versions": json.dumps(package_versions(), sort_keys=True)})
    finally:
        if previous is not None:
            previous.close()
    return {"images": rows, "skipped": len(skipped), "skipped_ids": skipped,
            "feature_dim": int(dim or 0)}
