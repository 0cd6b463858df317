"""finetune: the backbone adapted to chest X-rays (multi-label MeSH findings), before features.

Trains on the training split's images, selects the epoch on validation, and measures the frozen
and the adapted backbone as linear probes in the same run (metrics/finetune.json; seconds
per epoch and peak RSS in timings/finetune.json).
"""

import argparse

import pandas as pd

from cxr_impressions.atomic import write_json
from cxr_impressions.config import load_section, origin_path
from cxr_impressions.stage import note_timing, run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--clean", required=True, help="input: directory of the clean outputs")
    cli.add_argument("--out", required=True, help="output: the adapted backbone's Keras weights")
    cli.add_argument("--cache", required=True,
                     help="the activation cache's folder (kept between runs; not a DVC output; "
                          "relative to the project, which DVC's experiment copies share)")
    cli.add_argument("--metrics", required=True,
                     help="output: AUCs (JSON); the timings go to timings/finetune.json")
    args = cli.parse_args()

    params = load_section("finetune")
    features = load_section("features")
    machine = load_section("machine")
    from cxr_impressions.features.shards import configure_threads

    configure_threads(machine.threads)
    import tensorflow as tf

    from cxr_impressions.evaluation.bootstrap import finetune_intervals
    from cxr_impressions.features.backbones import FINETUNED, get_spec, resolve_weights
    from cxr_impressions.features.finetune import finetune

    if params.weights == FINETUNED:
        from cxr_impressions.errors import InputError

        raise InputError("finetune.weights: the starting point cannot be `finetuned` itself "
                         "(imagenet, none, or a weights file)")
    tf.config.experimental.enable_op_determinism()  # same params and data, same weights
    weights = resolve_weights(get_spec(features.backbone), params.weights, machine.weights_dir,
                              machine.allow_download)
    examples = pd.read_parquet(f"{args.clean}/examples.parquet")
    images = pd.read_parquet(f"{args.clean}/images.parquet")
    metrics, timings, test = finetune(examples, images, args.out, origin_path(args.cache),
                                      params, features, weights)
    metrics["summary"]["test_ci95"] = finetune_intervals(
        test.labels, test.systems, metrics["summary"]["findings_with_enough_test_positives"],
        params.seed)
    write_json(args.metrics, metrics)
    for name, value in timings.items():  # timings/finetune.json: git-ignored, never compared
        note_timing(name, value)


if __name__ == "__main__":
    run_stage(main)
