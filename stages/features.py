"""features: ImageNet CNN features of every image found, cached in one HDF5 file per backbone.

Every image parse found, not only those of the reports clean keeps: switching the target or the
split then never recomputes this, the pipeline's most expensive output. Images already in the
previous output (kept by DVC: `persist: true`) are reused, so adding images computes only those;
`machine.features_engine: ray` runs the backbone on a Ray cluster.
"""

import argparse

import pandas as pd

from cxr_impressions.atomic import write_json
from cxr_impressions.config import load_section
from cxr_impressions.stage import note_timing, run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--images", required=True, help="input: image table from parse (Parquet)")
    cli.add_argument("--out", required=True, help="output: features HDF5 file")
    cli.add_argument("--metrics", required=True, help="output: extraction counts (JSON)")
    cli.add_argument("--finetuned", help="input: the finetune stage's weights, read with "
                     "features.weights: finetuned")
    args = cli.parse_args()

    params = load_section("features")
    machine = load_section("machine")  # not tracked by DVC: changes how, not what
    if machine.features_engine == "ray":
        from cxr_impressions.features.ray_engine import preflight

        preflight(machine)  # Ray missing, or no cluster at the address: one line, at once
    from cxr_impressions.features.backbones import get_spec, resolve_weights

    # Before TensorFlow loads: a missing weights file is one line at once.
    weights = resolve_weights(get_spec(params.backbone), params.weights,
                              machine.weights_dir, machine.allow_download,
                              finetuned=args.finetuned)
    if machine.features_engine != "ray":  # the Ray driver runs no model; the actors load TF
        from cxr_impressions.features.extraction import configure_threads

        configure_threads(machine.threads)
    from cxr_impressions.features.extraction import extract_features

    images = pd.read_parquet(args.images)
    images = images[images["exists"]].sort_values(["uid", "image_id"])
    stats = extract_features(images["image_id"].tolist(), images["path"].tolist(), args.out,
                             params, weights, machine=machine)
    for timing in ("seconds", "images_per_second"):  # to timings/features.json, not the metrics
        if timing in stats:
            note_timing(f"extraction_{timing}" if timing == "seconds" else timing,
                        stats.pop(timing))
    write_json(args.metrics, {"backbone": params.backbone, **stats})


if __name__ == "__main__":
    run_stage(main)
