"""Incremental features: adding images to an existing features file against a full run.

Runs, in one process and on the same images: (a) a full features run on all images but `--added`,
(b) the same file plus the `--added` images, which reuses the rest, and (c) a full run on all
images. Prints seconds and the ratio (b)/(c). The backbone is Xception at its full 299 px with
random weights (the same cost as ImageNet's), without the grid so that the copying stays small.

    python benchmarks/incremental.py                 # the sample's 200 images, 10 added
    python benchmarks/incremental.py --images ../shared/iuxray/images --limit 1000
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cxr_impressions.config import FeaturesParams
from cxr_impressions.features.extraction import configure_threads, extract_features


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--images", default="data/sample/images")
    cli.add_argument("--limit", type=int, default=0, help="use the first N images (0: all)")
    cli.add_argument("--added", type=int, default=10)
    cli.add_argument("--image-size", type=int, default=299)
    args = cli.parse_args()

    configure_threads(0)
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix in (".png", ".jpg"))
    files = files[:args.limit] if args.limit else files
    ids, paths = [f.name.split(".")[0] for f in files], [str(f) for f in files]
    # The added images are spread through the input order, as new studies would be.
    step = max(1, len(ids) // args.added)
    added = set(range(0, len(ids), step)[:args.added])
    params = FeaturesParams(weights="none", image_size=args.image_size, grid=False)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "xception.h5"
        keep = [i for i in range(len(ids)) if i not in added]
        started = time.perf_counter()
        extract_features([ids[i] for i in keep], [paths[i] for i in keep], out, params, None)
        before = time.perf_counter() - started
        started = time.perf_counter()
        incremental = extract_features(ids, paths, out, params, None)
        adding = time.perf_counter() - started
        fresh_out = Path(scratch) / "fresh.h5"
        started = time.perf_counter()
        extract_features(ids, paths, fresh_out, params, None)
        full = time.perf_counter() - started
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine: {cpu_model()}; Xception {args.image_size} px, batch {params.batch_size}")
    print("| run | images computed | seconds |")
    print("|---|---|---|")
    print(f"| full run without the added images | {len(keep)} | {before:.1f} |")
    print(f"| adding {len(added)} images (the rest reused) | {incremental['computed']} "
          f"| {adding:.1f} |")
    print(f"| full run on all {len(ids)} images | {len(ids)} | {full:.1f} |")
    print(f"adding / full = {adding / full:.3f}")


if __name__ == "__main__":
    main()
