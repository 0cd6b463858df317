"""evaluate: decode the test split; score the model beside the baselines (the constant, the
closest constant, the constant by exam title, 1-NN), with bootstrap intervals and paired
differences."""

import argparse
from pathlib import Path

import pandas as pd

from cxr_impressions.atomic import write_json
from cxr_impressions.config import load_section
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--clean", required=True, help="input: directory of the clean outputs")
    cli.add_argument("--features", required=True, help="input: features HDF5 file")
    cli.add_argument("--model", required=True, help="input: model directory (train's output)")
    cli.add_argument("--metrics", required=True, help="output: all scores (JSON)")
    cli.add_argument("--scores", required=True,
                     help="output: the headline scores, DVC's metrics file (JSON)")
    cli.add_argument("--tables", required=True, help="output: directory of per-study tables")
    cli.add_argument("--attention", required=True,
                     help="output: where each generated word looked (.npz; empty without "
                          "spatial attention)")
    args = cli.parse_args()

    params = load_section("evaluate")

    from cxr_impressions.captioning.bundle import load_bundle
    from cxr_impressions.captioning.retrieval import study_vectors
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.evaluation.baselines import (
        closest_constant_baseline,
        constant_baseline,
        nearest_neighbour_baseline,
        title_constant_baseline,
    )
    from cxr_impressions.evaluation.bootstrap import LEVEL
    from cxr_impressions.evaluation.meteor import MeteorScorer, require_java
    from cxr_impressions.evaluation.tables import (
        evaluate_systems,
        headline_scores,
        per_study_table,
        save_attention,
        validate_labeller,
        write_tables,
    )
    from cxr_impressions.features.store import FeatureStore

    require_java()
    bundle = load_bundle(args.model)
    examples = pd.read_parquet(Path(args.clean) / "examples.parquet")
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    with FeatureStore(args.features) as store:
        test = load_split(args.clean, "test", store, bundle.vocab, grid_pool)
        train = load_split(args.clean, "train", store, bundle.vocab)

    decoder = bundle.decoder()
    inputs = bundle.model_inputs(test.inputs(), test.titles)
    decoded = decoder.decode(inputs, bundle.decode, progress="decode test")  # as chosen on val
    generated = decoder.texts(decoded)
    maps = (decoder.explain(inputs, decoded)
            if "attention" in bundle.model.decoder.output else [])
    save_attention(args.attention, test.uids, maps)
    systems = {
        "model": generated,
        "constant": constant_baseline(train.texts, len(test)),
        "closest_constant": closest_constant_baseline(train.texts, len(test)),
        "title_constant": title_constant_baseline(train.titles, train.texts, test.titles,
                                                  bundle.params.exam_title_min_count),
        "nearest_neighbour": nearest_neighbour_baseline(
            study_vectors(train.pooled, train.views), train.texts,
            study_vectors(test.pooled, test.views)),
    }
    mesh = examples.set_index("uid").loc[test.uids, "mesh"].fillna("").str.lower()
    normal = (mesh == "normal").to_numpy()
    meteor = MeteorScorer()
    try:
        scores = evaluate_systems(test.texts, systems, normal, meteor.statistics, params.bootstrap,
                                  params.seed)
    finally:
        meteor.close()

    table = per_study_table(test.uids, test.texts, systems, normal,
                            [d.abnormal for d in decoded])
    write_tables(args.tables, table, list(systems), params.worst)
    write_json(args.metrics, {
        "kind": bundle.model.kind, "test_studies": len(test),
        "decode": bundle.decode.settings(),
        "bootstrap": {"resamples": params.bootstrap, "seed": params.seed, "level": LEVEL},
        **scores,
        "labeller": validate_labeller(examples)})
    write_json(args.scores, headline_scores(scores))


if __name__ == "__main__":
    run_stage(main)
