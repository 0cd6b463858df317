"""How cost grows with the data set: parse, clean, features and feature reads at 1x, 4x, 16x IU.

Synthesises data sets in the MIMIC-CXR layout of N studies (N = 1x, 4x and 16x IU X-Ray's 3,955
reports) with `scripts/make_mimic_fixture.py`: the sample's 100 real reports and images repeated
under new study, patient and image ids, the images hard-linked (one tree of the largest N; each
smaller set lists a prefix of its studies in its own metadata CSV). Then, each in a subprocess
whose peak RSS is read from `os.wait4`:

  - the parse and clean stage scripts on each set (wall time, peak RSS, time per 1,000 studies);
  - the features stage on the first K images of each set's image table (K grows 4x with N too:
    running it on every image would take hours on a CPU), `weights: none` and small images, so
    its throughput and RSS can be compared across K;
  - FeatureStore on synthetic features files of R rows, in the layout the features stage writes
    (`pooled` R x 2048 float32, `grid` chunked per row): time to open it (reads the ids: O(R))
    and to read one batch of 64 random ids (must be O(batch), not O(R)).

    python benchmarks/scale.py [--factors 1 4 16] [--features 256 1024 4096] \\
        [--rows 2000 8000 32000] [--work DIR]

Prints one table per part and the machine (CPU model, cores). Everything is written under a
temporary folder (or --work) and deleted at the end unless --work is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
IU_STUDIES = 3955


def run_measured(args: list[str], cwd: Path, timeout: float) -> tuple[float, float, float]:
    """Run a command; return its wall seconds, CPU seconds (user + system) and peak RSS in MB,
    its own, from wait4. CPU time is the figure to compare on a shared machine: wall time
    stretches with whatever else runs."""
    began = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=open(cwd / "stderr.log", "ab"))  # noqa: SIM115
    deadline = began + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            process.kill()
            os.wait4(process.pid, 0)
            raise TimeoutError(f"{args[1]} ran past {timeout} s")
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (cwd / "stderr.log").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(args)} failed:\n{tail}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def stage(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "stages" / script), *args]


def synthesise(work: Path, factors: list[int]) -> dict[int, Path]:
    """One tree for the largest set; each set is a root with its own CSVs and `files` linked."""
    from make_mimic_fixture import build

    largest = max(factors) * IU_STUDIES
    tree = work / "tree"
    copies = math.ceil(largest / 100)
    stamp = work / f"tree-{copies}-copies.done"
    if not stamp.exists():  # with --work, a second run reuses the tree
        shutil.rmtree(tree, ignore_errors=True)
        began = time.perf_counter()
        counts = build(tree, copies=copies, jpeg_only=True)
        stamp.touch()
        print(f"synthesised {counts['studies']:,} studies, {counts['images']:,} images in "
              f"{time.perf_counter() - began:.0f} s (hard links)", flush=True)
    metadata = pd.read_csv(tree / "mimic-cxr-2.0.0-metadata.csv.gz", dtype=str)
    split = pd.read_csv(tree / "mimic-cxr-2.0.0-split.csv.gz", dtype=str)
    studies = metadata["study_id"].drop_duplicates()
    roots = {}
    for factor in factors:
        root = work / f"x{factor}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        keep = set(studies.iloc[:factor * IU_STUDIES])
        metadata[metadata["study_id"].isin(keep)].to_csv(
            root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
        split[split["study_id"].isin(keep)].to_csv(root / "mimic-cxr-2.0.0-split.csv.gz",
                                                   index=False)
        (root / "files").symlink_to(tree / "files")
        roots[factor] = root
    return roots


def parse_and_clean(roots: dict[int, Path], work: Path) -> list[dict]:
    rows = []
    for factor, root in roots.items():
        run = work / f"run-x{factor}"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        (run / "params.yaml").write_text(yaml.safe_dump(
            {"data": {"root": str(root), "images": "files"}, "clean": {"split": "official"}}))
        parse_s, parse_cpu, parse_mb = run_measured(stage(
            "parse.py", "--reports", "p/reports.parquet", "--images", "p/images.parquet",
            "--metrics", "parse.json"), run, timeout=1800)
        clean_s, clean_cpu, clean_mb = run_measured(stage(
            "clean.py", "--parsed", "p", "--out", "c", "--metrics", "clean.json", "--eda", "eda"),
            run, timeout=1800)
        parsed = json.loads((run / "parse.json").read_text())
        rows.append({"factor": factor, "studies": parsed["reports"],
                     "images": parsed["images_found"], "parse_s": parse_s,
                     "parse_cpu": parse_cpu, "parse_mb": parse_mb, "clean_s": clean_s,
                     "clean_cpu": clean_cpu, "clean_mb": clean_mb})
        print(f"  x{factor}: parse {parse_s:.1f} s ({parse_cpu:.1f} s CPU) {parse_mb:.0f} MB, "
              f"clean {clean_s:.1f} s ({clean_cpu:.1f} s CPU) {clean_mb:.0f} MB", flush=True)
    return rows


def features(roots: dict[int, Path], work: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for (factor, _root), k in zip(roots.items(), sizes, strict=True):
        run = work / f"run-x{factor}"
        images = pd.read_parquet(run / "p" / "images.parquet")
        images = images[images["exists"]].head(k)
        images.to_parquet(run / "features-images.parquet")
        (run / "params.yaml").write_text(yaml.safe_dump({"features": {
            "weights": "none", "image_size": 71, "batch_size": 32, "grid": True}}))
        seconds, cpu, mb = run_measured(stage(
            "features.py", "--images", "features-images.parquet", "--out", "f/xception.h5",
            "--metrics", "features.json"), run, timeout=3600)
        metrics = json.loads((run / "features.json").read_text())
        # The steady rate is a timing: the stage writes it beside the metrics, not in them.
        timings = json.loads((run / "timings" / "features.json").read_text())
        rate = timings.get("images_per_second", float("nan"))
        rows.append({"factor": factor, "images": metrics["images"], "seconds": seconds,
                     "cpu": cpu, "img_s": rate, "mb": mb})
        print(f"  {metrics['images']} images: {seconds:.0f} s ({cpu:.0f} s CPU), "
              f"{rate:.1f} img/s, {mb:.0f} MB", flush=True)
    return rows


def feature_reads(work: Path, sizes: list[int], batch: int = 64, repeats: int = 30) -> list[dict]:
    import h5py

    from cxr_impressions.features.store import FeatureStore

    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        path = work / f"features-{n}.h5"
        with h5py.File(path, "w") as h5:  # the layout extraction._assemble writes
            ids = h5.create_dataset("ids", (n,), dtype=h5py.string_dtype("utf-8"))
            pooled = h5.create_dataset("pooled", (n, 2048), dtype="float32")
            grid = h5.create_dataset("grid", (n, 3, 3, 2048), dtype="float16",
                                     chunks=(1, 3, 3, 2048))
            for start in range(0, n, 4096):
                stop = min(n, start + 4096)
                ids[start:stop] = [f"img-{i:07d}" for i in range(start, stop)]
                pooled[start:stop] = rng.standard_normal((stop - start, 2048), np.float32)
                grid[start:stop] = rng.standard_normal((stop - start, 3, 3, 2048),
                                                       np.float32).astype(np.float16)
        began = time.perf_counter()
        store = FeatureStore(path)
        opened = time.perf_counter() - began
        times = []
        for _ in range(repeats):
            picked = [f"img-{i:07d}" for i in rng.choice(n, batch, replace=False)]
            began = time.perf_counter()
            store.pooled(picked)
            store.grid(picked)
            times.append(time.perf_counter() - began)
        store.close()
        rows.append({"rows": n, "mb": path.stat().st_size / 2**20, "open_s": opened,
                     "batch_ms": statistics.median(times) * 1000})
        path.unlink()
    return rows


def machine() -> str:
    model = ""
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            model = line.split(":", 1)[1].strip()
    flags = Path("/proc/cpuinfo").read_text()
    simd = [f for f in ("avx2", "avx512f") if f" {f}" in flags]
    return f"{model}, {os.cpu_count()} cores, {'/'.join(simd) or 'no AVX2'}"


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    cli.add_argument("--features", type=int, nargs="+", default=[256, 1024, 4096],
                     help="images through the features stage, one count per factor")
    cli.add_argument("--rows", type=int, nargs="+", default=[2000, 8000, 32000],
                     help="rows of the synthetic features files read back")
    cli.add_argument("--work", type=Path, help="keep everything here (default: a temp folder)")
    args = cli.parse_args()
    if len(args.features) != len(args.factors):
        cli.error("--features needs one count per factor")
    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; work folder {work}", flush=True)
    try:
        roots = synthesise(work, args.factors)
        print("parse + clean:", flush=True)
        stages = parse_and_clean(roots, work)
        print("features:", flush=True)
        extracted = features(roots, work, args.features)
        print("feature reads:", flush=True)
        reads = feature_reads(work, args.rows)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    base = stages[0]
    base_cpu = base["parse_cpu"] + base["clean_cpu"]
    print("\n| data set | studies | images | parse s (CPU s) | parse peak MB | clean s (CPU s) |"
          " clean peak MB | parse+clean CPU ms per study | CPU vs 1x | studies vs 1x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in stages:
        cpu = row["parse_cpu"] + row["clean_cpu"]
        print(f"| {row['factor']}x IU | {row['studies']:,} | {row['images']:,} | "
              f"{row['parse_s']:.1f} ({row['parse_cpu']:.1f}) | {row['parse_mb']:.0f} | "
              f"{row['clean_s']:.1f} ({row['clean_cpu']:.1f}) | {row['clean_mb']:.0f} | "
              f"{1000 * cpu / row['studies']:.2f} | {cpu / base_cpu:.2f} | "
              f"{row['studies'] / base['studies']:.1f} |")
    print("\n| features stage (weights none, 71 px, batch 32, grid) | images | seconds |"
          " CPU s | img/s (steady) | CPU ms per image | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for row in extracted:
        print(f"| {row['factor']}x set | {row['images']:,} | {row['seconds']:.0f} | "
              f"{row['cpu']:.0f} | {row['img_s']:.1f} | {1000 * row['cpu'] / row['images']:.0f} |"
              f" {row['mb']:.0f} |")
    print("\n| features file rows | file MB | open (reads ids) s | one batch of 64 "
          "(pooled + grid) ms |")
    print("|---|---|---|---|")
    for row in reads:
        print(f"| {row['rows']:,} | {row['mb']:.0f} | {row['open_s']:.3f} | "
              f"{row['batch_ms']:.1f} |")


if __name__ == "__main__":
    main()
