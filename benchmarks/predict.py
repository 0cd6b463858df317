"""Predict command latency and throughput on this CPU.

  cold:  `cxr predict FRONTAL LATERAL` as a fresh process (imports, model builds, one study);
  warm:  one study (two images) in a loaded Predictor, beam 3, against greedy in the same run;
         beam 5 choosing its caption by minimum Bayes risk against by score;
  batch: studies per second through `predict_batch` (8 per backbone call) against one study
         per call, on the same studies.

    python benchmarks/predict.py [--model models] [--studies 16] [--weights-dir ../shared/weights]
Needs a trained model (`bash scripts/repro.sh`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--model", default=str(REPO / "models"))
    cli.add_argument("--sample", default=str(REPO / "data" / "sample"))
    cli.add_argument("--studies", type=int, default=16)
    cli.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"))
    args = cli.parse_args()

    from cxr_impressions.captioning.predict import (
        Predictor,
        predict_batch,
        studies_from_projections,
    )
    from cxr_impressions.settings.decoding import DecodingSettings

    sample = Path(args.sample)
    studies, _ = studies_from_projections(sample / "indiana_projections.csv", sample / "images")
    studies = studies[: args.studies]
    one = studies[0]

    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cxr_impressions.cli", "predict", str(one.frontal),
                    str(one.lateral), "--model", args.model, "--weights-dir", args.weights_dir,
                    "--beam", "3"], check=True, capture_output=True)
    cold = time.perf_counter() - began

    predictor = Predictor(args.model, args.weights_dir, beam_size=3)

    def latency(params: DecodingSettings, repeats: int = 5) -> float:
        predictor.decode_params = params
        predictor.predict([one])  # warm-up: traces the tf.functions for this shape
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            predictor.predict([one])
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    beam = DecodingSettings(method="beam", beam_size=3)
    warm_beam = latency(beam)
    warm_greedy = latency(DecodingSettings(method="greedy"))
    warm_beam5 = latency(DecodingSettings(method="beam", beam_size=5))
    warm_mbr5 = latency(DecodingSettings(method="beam", beam_size=5, beam_choice="mbr"))
    predictor.decode_params = beam
    began = time.perf_counter()
    images = [predictor.load(one)]
    predictor.inputs(images)
    backbone_only = time.perf_counter() - began

    predict_batch(predictor, studies[:2], progress=False)  # warm-up of the batch shapes
    began = time.perf_counter()
    rows, _ = predict_batch(predictor, studies, chunk=8, progress=False)
    batched = len(rows) / (time.perf_counter() - began)
    began = time.perf_counter()
    rows, _ = predict_batch(predictor, studies, chunk=1, progress=False)
    single = len(rows) / (time.perf_counter() - began)

    table = pd.DataFrame([
        ("cold: fresh process, one study, beam 3", f"{cold:.2f} s"),
        ("warm: one study, beam 3", f"{warm_beam:.3f} s"),
        ("warm: one study, greedy", f"{warm_greedy:.3f} s"),
        ("warm: one study, beam 5", f"{warm_beam5:.3f} s"),
        ("warm: one study, beam 5, beam_choice mbr", f"{warm_mbr5:.3f} s"),
        ("warm: backbone only (2 images)", f"{backbone_only:.3f} s"),
        (f"batch: {len(studies)} studies, 8 per call", f"{batched:.2f} studies/s"),
        (f"batch: {len(studies)} studies, 1 per call", f"{single:.2f} studies/s"),
    ], columns=["measure", "value"])
    print(table.to_string(index=False))
    print(f"\nbeam 3 / greedy latency = {warm_beam / warm_greedy:.2f}x; warm goal <= 0.5 s "
          f"-> {'met' if warm_beam <= 0.5 else 'NOT met'}")
    print(f"beam 5 mbr / beam 5 score latency = {warm_mbr5 / warm_beam5:.2f}x")
    print(f"batched / one-per-call throughput = {batched / single:.2f}x")


if __name__ == "__main__":
    main()
