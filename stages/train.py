"""train: a caption model on cached features and the GloVe matrix, selected on validation."""

import argparse
import shutil
from pathlib import Path

import numpy as np

from cxr_impressions.atomic import write_json
from cxr_impressions.config import load_section
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--clean", required=True, help="input: directory of the clean outputs")
    cli.add_argument("--features", required=True, help="input: features HDF5 file")
    cli.add_argument("--embeddings", required=True, help="input: embedding matrix (.npy)")
    cli.add_argument("--out", required=True, help="output: model directory")
    cli.add_argument("--live", required=True, help="output: DVCLive directory")
    cli.add_argument("--metrics", required=True, help="output: training summary (JSON)")
    args = cli.parse_args()

    model_params = load_section("model")
    params = load_section("train")
    features = load_section("features")

    import keras
    import tensorflow as tf

    from cxr_impressions.captioning.bundle import bundle_config, save_bundle
    from cxr_impressions.captioning.decoding import Decoder
    from cxr_impressions.captioning.models import build_model
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.captioning.training import choose_threshold, prepare_state_dir, train
    from cxr_impressions.data.tokenizer import Vocabulary
    from cxr_impressions.features.store import FeatureStore

    keras.utils.set_random_seed(params.seed)
    tf.config.experimental.enable_op_determinism()
    vocab = Vocabulary.load(Path(args.clean) / "vocab.json")
    matrix = np.load(args.embeddings)
    grid_pool = model_params.grid_pool if model_params.needs_grid else None
    with FeatureStore(args.features) as store:
        splits = {s: load_split(args.clean, s, store, vocab, grid_pool) for s in ("train", "val")}
        feature_dim = store.dim
    regions = splits["train"].grid.shape[2] if model_params.needs_grid else None

    out = Path(args.out)
    state_dir = out / ".train-state"  # DVC deletes only the declared files in `out`
    prepare_state_dir(state_dir, model_params, params, vocab, splits["train"].uids)

    model = build_model(model_params, matrix, feature_dim, vocab.max_len, regions)
    summary = train(model, vocab, splits["train"], splits["val"], params, state_dir,
                    Path(args.live))
    config = bundle_config(model_params, {k: getattr(features, k) for k in (
        "backbone", "weights", "image_size", "resize", "precision")}, feature_dim, regions,
        matrix.shape[1], vocab)
    if model.conditioned:
        # The label threshold, like everything selected, is chosen on the validation split.
        val = splits["val"]
        probabilities = Decoder(model, vocab).encode(val.inputs())["abnormal"]
        threshold, f1 = choose_threshold(probabilities, val.abnormal)
        config["abnormal_threshold"] = threshold
        summary.update(abnormal_threshold=round(threshold, 4), val_abnormal_f1=round(f1, 4),
                       val_abnormal_share=round(float(val.abnormal.mean()), 4))
    save_bundle(out, model, vocab, config)
    write_json(args.metrics, {"kind": model_params.kind, **summary,
                              "train_studies": len(splits["train"]),
                              "val_studies": len(splits["val"]),
                              "parameters": model.train_model.count_params()})
    shutil.rmtree(state_dir)


if __name__ == "__main__":
    run_stage(main)
