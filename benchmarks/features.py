"""Feature extraction throughput: the stage against the bare forward pass and the notebooks' way.

Times, on the same images and at the same batch size:
  (a) the stage's extraction end to end, files on disk -> finished HDF5 (`extract_features`,
      the function the stage runs, including the HDF5 assembly; steady state after its first
      batch);
  (b) the bare model forward pass on tensors already decoded in memory;
  (c) the earlier notebooks' way: a Python loop that loads one image with PIL and calls
      `model.predict` on it;
  (d) the bare forward pass of (b) with `features.precision: bfloat16`, the bf16/float32 ratio
      (goal >= 1.4 where the CPU has AVX512_BF16 or AMX). Without them the backbone falls back
      to float32 (said in one line) and (d) measures that; `--emulated-bf16` builds the bf16
      model anyway, to see what emulated bf16 costs here.
(a), (b), (c) and (d) alternate over several rounds ((c) on the first 16 images, it is slow) and the
medians are compared, because a shared 2-core machine's speed drifts by 30% from minute to
minute. The stage's peak resident memory is measured by running the real stage script once in a
subprocess.

    python benchmarks/features.py [--n 64] [--rounds 3] [--batch-size 8] [--image-size 299]
"""

from __future__ import annotations

import argparse
import json
import resource
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


def stage_peak_memory(images: pd.DataFrame, params: dict, weights_dir: str
                      ) -> tuple[float, dict]:
    """Run the real stage script in a subprocess; return its peak RSS (MB) and its timings."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "params.yaml").write_text(yaml.safe_dump(
            {"features": params, "machine": {"weights_dir": weights_dir}}))
        images.to_parquet(workdir / "images.parquet")
        subprocess.run(
            [sys.executable, str(REPO / "stages" / "features.py"), "--images", "images.parquet",
             "--out", "out.h5", "--metrics", "metrics.json"],
            cwd=workdir, check=True, stderr=subprocess.DEVNULL)
        timings = json.loads((workdir / "timings" / "features.json").read_text())
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, timings


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--images", default=str(REPO / "data" / "sample" / "images"))
    cli.add_argument("--n", type=int, default=64)
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--batch-size", type=int, default=8)
    cli.add_argument("--image-size", type=int, default=299)
    cli.add_argument("--backbone", default="xception")
    cli.add_argument("--weights", default="imagenet")
    cli.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"))
    cli.add_argument("--emulated-bf16", action="store_true",
                     help="(d): run the bf16 model even where the CPU lacks bf16 support")
    args = cli.parse_args()

    files = sorted(p for p in Path(args.images).iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.n]
    n = len(files)
    ids = [p.name for p in files]
    paths = [str(p.resolve()) for p in files]
    params = {"backbone": args.backbone, "weights": args.weights, "image_size": args.image_size,
              "batch_size": args.batch_size, "grid": False}
    table = pd.DataFrame({"uid": range(n), "image_id": ids, "path": paths, "exists": True})
    peak_mb, stage_metrics = stage_peak_memory(table, params, args.weights_dir)

    import tensorflow as tf
    from PIL import Image

    from cxr_impressions.config import build_section
    from cxr_impressions.data.images import load_image
    from cxr_impressions.features.backbones import (
        build_backbone,
        cpu_flags,
        get_spec,
        resolve_precision,
        resolve_weights,
    )
    from cxr_impressions.features.extraction import extract_features
    from cxr_impressions.settings.features import FeaturesParams

    weights = resolve_weights(get_spec(args.backbone), args.weights, args.weights_dir, False)
    model = build_backbone(args.backbone, weights, args.image_size, grid=False)
    bf16_precision = "bfloat16" if args.emulated_bf16 else resolve_precision("bfloat16")
    bf16_model = build_backbone(args.backbone, weights, args.image_size, grid=False,
                                precision=bf16_precision)
    features_params = build_section("features", FeaturesParams, params)

    def stage_round(workdir: Path) -> float:
        # A new file each round: the stage reuses what an existing one holds (incremental).
        out = Path(tempfile.mkdtemp(dir=workdir)) / "out.h5"
        stats = extract_features(ids, paths, out, features_params, weights, progress=False)
        return float(stats["images_per_second"])

    decoded = tf.stack([load_image(p, args.image_size) for p in files])
    forward = tf.function(lambda x: model(x, training=False), autograph=False)
    forward_bf16 = tf.function(lambda x: bf16_model(x, training=False), autograph=False)
    batches = [decoded[i:i + args.batch_size] for i in range(0, n, args.batch_size)]

    def bare_round(run: object = forward) -> float:
        run(batches[0])["pooled"].numpy()  # warm-up, as the stage's first batch
        began = time.perf_counter()
        for batch in batches[1:]:
            run(batch)["pooled"].numpy()
        return (n - len(batches[0])) / (time.perf_counter() - began)

    def notebook_features(path: Path) -> np.ndarray:
        image = Image.open(path).convert("RGB").resize((args.image_size, args.image_size))
        batch = np.expand_dims(np.asarray(image, dtype=np.float32), 0)
        return model.predict(batch, verbose=0)["pooled"]

    def notebook_round() -> float:
        notebook_features(files[0])
        began = time.perf_counter()
        for path in files[1:16]:
            notebook_features(path)
        return (min(n, 16) - 1) / (time.perf_counter() - began)

    stage_ips, bare_ips, notebook_runs, bf16_ips = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            stage_ips.append(stage_round(Path(tmp)))
            bare_ips.append(bare_round())
            notebook_runs.append(notebook_round())
            bf16_ips.append(bare_round(forward_bf16))
    first_bf16 = forward_bf16(batches[0])["pooled"].numpy()
    first_fp32 = forward(batches[0])["pooled"].numpy()
    cosine = ((first_bf16 * first_fp32).sum(1) / np.linalg.norm(first_bf16, axis=1)
              / np.linalg.norm(first_fp32, axis=1)).min()

    a, b = statistics.median(stage_ips), statistics.median(bare_ips)
    notebook_ips = statistics.median(notebook_runs)
    d = statistics.median(bf16_ips)
    flags = cpu_flags()
    bf16_label = ("(d) bf16 forward pass" if bf16_precision == "bfloat16" else
                  "(d) bf16 asked: float32 fallback")
    if args.emulated_bf16 and not ({"avx512_bf16", "amx_bf16"} & flags):
        bf16_label = "(d) bf16 forward pass, EMULATED"
    print(f"\n{args.backbone} @ {args.image_size}px, batch {args.batch_size}, {n} images, "
          f"{args.rounds} alternating rounds of (a) and (b)")
    print(f"{'path':44} {'img/s':>8} {'ms/img':>8}  rounds (img/s)")
    for name, ips, runs in (("(a) stage, disk -> HDF5", a, stage_ips),
                            ("(b) bare forward pass, in memory", b, bare_ips),
                            ("(c) notebooks: PIL + predict per image", notebook_ips,
                             notebook_runs),
                            (bf16_label, d, bf16_ips)):
        print(f"{name:44} {ips:8.2f} {1000 / ips:8.1f}  {' '.join(f'{r:.2f}' for r in runs)}")
    print(f"\n(a)/(b) = {a / b:.3f}   (goal >= 0.9)")
    print(f"(a)/(c) = {a / notebook_ips:.3f}   (goal >= 2)")
    has = ", ".join(sorted({"avx512_bf16", "amx_bf16"} & flags)) or "neither bf16 flag"
    print(f"(d)/(b) bf16/float32 = {d / b:.3f}   (goal >= 1.4 where the CPU has bf16; this "
          f"one has {has}); min cosine of (d) to (b) pooled: {cosine:.5f}")
    seconds = stage_metrics["extraction_seconds"]
    print(f"stage script in a subprocess: {seconds:.1f} s for {n} images "
          f"(model build included), peak RSS {peak_mb:.0f} MB (goal <= 3000)")


if __name__ == "__main__":
    main()
