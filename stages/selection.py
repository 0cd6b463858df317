"""selection: on the validation split, a trained model's label thresholds and decoding settings.

Its own stage, tracking only the `decode` section, so that a decode experiment reruns this,
evaluate and report on the saved model (minutes) instead of retraining it.
"""

import argparse

from cxr_impressions.atomic import write_json
from cxr_impressions.config import load_section
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--clean", required=True, help="input: directory of the clean outputs")
    cli.add_argument("--features", required=True, help="input: features HDF5 file")
    cli.add_argument("--model", required=True,
                     help="input: model directory (train's output); output: its decoding.json")
    cli.add_argument("--metrics", required=True,
                     help="output: the chosen candidate's validation scores, DVC's metrics file "
                          "(JSON)")
    cli.add_argument("--selection", required=True,
                     help="output: every threshold and candidate weighed (JSON)")
    args = cli.parse_args()

    decode = load_section("decode")

    from cxr_impressions.captioning.bundle import load_bundle, save_decoding
    from cxr_impressions.captioning.selection import select_on_validation
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.features.store import FeatureStore

    bundle = load_bundle(args.model)
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    with FeatureStore(args.features) as store:
        val = load_split(args.clean, "val", store, bundle.vocab, grid_pool)
        train = load_split(args.clean, "train", store, bundle.vocab)  # labels and counts only
    chosen = select_on_validation(bundle, val, train, decode)
    save_decoding(args.model, chosen.decode, chosen.label_thresholds, chosen.normal_templates,
                  chosen.normal_impressions, chosen.finding_phrases)
    write_json(args.selection, chosen.record)
    write_json(args.metrics, chosen.summary)


if __name__ == "__main__":
    run_stage(main)
