"""Incremental features: adding images to a full-size features file, against a full run.

The full run is measured on a sample and scaled to the data set: (a) a from-scratch run on
`--sample` images gives the start-up cost and the steady images/s; a full run on all N images
is estimated as that start-up plus N / (images/s). (b) The previous output of a full run on all
but `--added` images is written in the stage's exact format (ids, file hashes, attributes,
pooled + grid at the real shapes; zero values, since only the cost is measured), then the stage's
`extract_features` runs on all N images: it hashes every image file, reuses the N - added rows,
computes the added images and copies everything into a new file, so every cost of adding
scales as on real data. Prints the table and (b) / estimated full run.

    python benchmarks/incremental.py                                  # ../shared/iuxray (6,966)
    python benchmarks/incremental.py --images data/sample/images      # the sample's 200
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from cxr_impressions.features.extraction import configure_threads, extract_features, file_sha256
from cxr_impressions.settings.features import FeaturesParams

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def previous_output(path: Path, like: Path, ids: list[str], paths: list[str]) -> None:
    """A features file for `ids` as the stage writes it, with the shapes and attributes of the
    real file `like` (zero values)."""
    with h5py.File(like, "r") as source:
        attrs = dict(source.attrs)
        dim = source["pooled"].shape[1]
        grid_shape = source["grid"].shape[1:] if "grid" in source else None
    n = len(ids)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("ids", data=ids, dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("image_sha256", data=[file_sha256(p) for p in paths],
                          dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("pooled", data=np.zeros((n, dim), np.float32))
        if grid_shape is not None:
            grid = h5.create_dataset("grid", (n, *grid_shape), dtype="float16",
                                     chunks=(1, *grid_shape))
            block = np.zeros((256, *grid_shape), np.float16)
            for start in range(0, n, 256):
                grid[start:start + 256] = block[:min(256, n - start)]
        attrs.update(n_images=n, n_skipped=0, skipped_ids="[]")
        h5.attrs.update(attrs)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--images", default="../shared/iuxray/images")
    cli.add_argument("--added", type=int, default=10)
    cli.add_argument("--sample", type=int, default=40, help="images of the timed full run")
    cli.add_argument("--image-size", type=int, default=299)
    cli.add_argument("--no-grid", action="store_true", help="pooled vectors only")
    args = cli.parse_args()

    configure_threads(0)
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    ids, paths = [f.name.split(".")[0] for f in files], [str(f) for f in files]
    n = len(ids)
    # The added images are spread through the input order, as new studies would be.
    step = max(1, n // args.added)
    added = set(range(0, n, step)[:args.added])
    params = FeaturesParams(weights="none", image_size=args.image_size, grid=not args.no_grid,
                            batch_size=8)
    with tempfile.TemporaryDirectory() as scratch:
        # (a) a from-scratch run on a sample: start-up and steady throughput.
        sample_out = Path(scratch) / "sample.h5"
        started = time.perf_counter()
        sample = extract_features(ids[:args.sample], paths[:args.sample], sample_out, params,
                                  None, progress=False)
        sample_seconds = time.perf_counter() - started
        rate = sample["images_per_second"]
        startup = sample_seconds - args.sample / rate
        full_estimate = startup + n / rate

        # (b) the previous full output without the added images, then the stage adds them.
        out = Path(scratch) / "features.h5"
        keep = [i for i in range(n) if i not in added]
        previous_output(out, sample_out, [ids[i] for i in keep], [paths[i] for i in keep])
        previous_mb = out.stat().st_size / 1e6
        started = time.perf_counter()
        stats = extract_features(ids, paths, out, params, None, progress=False)
        adding = time.perf_counter() - started
        assert stats["computed"] == len(added) and stats["reused"] == len(keep), stats
    print(f"machine: {cpu_model()}; {n} images from {args.images}; Xception {args.image_size} px "
          f"(random weights: the same cost as ImageNet's), batch {params.batch_size}, "
          f"grid {'on' if params.grid else 'off'}; previous file {previous_mb:,.0f} MB")
    print("| run | images computed | seconds |")
    print("|---|---|---|")
    print(f"| from scratch on {args.sample} images (start-up {startup:.1f} s, "
          f"{rate:.2f} img/s steady) | {args.sample} | {sample_seconds:.1f} |")
    print(f"| full run on all {n} images (estimated: start-up + {n} / img/s) | {n} "
          f"| {full_estimate:.0f} |")
    print(f"| adding {len(added)} images to the other {len(keep)} (hash all, reuse, copy) "
          f"| {stats['computed']} | {adding:.1f} |")
    print(f"adding / full run = {adding / full_estimate:.4f}")


if __name__ == "__main__":
    main()
