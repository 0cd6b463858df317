"""How far do the finetune stage's linear probes move when the vectors barely change?

Fits the probes (`features.finetune.fit_probes`) on a features file's pooled vectors, then on
the same vectors perturbed by one part in a thousand (Gaussian, seeded) and rounded to float16
(as the activation cache rounds), and prints the AUCs and the largest change per split.
Converged probes move by about the perturbation's effect on the optimum; an unconverged
optimiser can move far more.

    python scripts/probe_stability.py [--root .] [--features features/xception.h5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_impressions.errors import InputError
from cxr_impressions.features.finetune import TARGETS, fit_probes, labelled_images, study_vectors
from cxr_impressions.features.store import FeatureStore
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, default=Path("."), help="the pipeline's workspace")
    cli.add_argument("--features", default="features/xception.h5", help="under --root")
    cli.add_argument("--labels", default="mesh", choices=("mesh", "text"))
    args = cli.parse_args()
    clean = args.root / "data" / "clean"
    for name in ("examples.parquet", "images.parquet"):
        if not (clean / name).is_file():
            raise InputError(f"{clean / name}: missing (run the clean stage in {args.root})")
    data = labelled_images(pd.read_parquet(clean / "examples.parquet"),
                           pd.read_parquet(clean / "images.parquet"), args.labels)
    with FeatureStore(args.root / args.features) as store:
        vectors = store.pooled(data.image_ids)
    rng = np.random.default_rng(0)
    variants = {
        "as stored": vectors,
        "x (1 + 1e-3 noise)": vectors * (1 + 1e-3 * rng.standard_normal(vectors.shape)
                                         ).astype(np.float32),
        "rounded to float16": vectors.astype(np.float16).astype(np.float32)}
    results = {}
    for name, per_image in variants.items():
        began = time.perf_counter()
        results[name], _ = fit_probes(*(study_vectors(per_image, data, s)
                                     for s in ("train", "val", "test")))
        print(f"{name:>20}: fitted in {time.perf_counter() - began:.0f} s")
    base = results["as stored"]
    for split in ("val", "test"):
        for name, out in results.items():
            values = [out[split][t] for t in TARGETS if out[split][t] is not None]
            change = max(abs(out[split][t] - base[split][t]) for t in TARGETS
                         if out[split][t] is not None)
            print(f"{split:>4} {name:>20}: abnormal {out[split]['abnormal']:.4f}, mean of "
                  f"{len(values)} {np.mean(values):.4f}, largest change {change:.4f}")


if __name__ == "__main__":
    run_stage(main)
