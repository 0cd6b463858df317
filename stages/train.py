"""train: a caption model on cached features and the GloVe matrix, its epoch chosen on
validation. The label thresholds and decoding settings are the selection stage's.

With `train.strategy: multi_worker`, `dvc repro` runs the chief and the same command runs on each
other worker with its own TF_CONFIG; only the chief writes the declared outputs.
"""

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
    machine = load_section("machine")  # not tracked by DVC: collective_timeout
    from cxr_impressions.captioning.distribute import current_task, make_strategy, run_paths

    task = current_task(params.strategy)  # a malformed TF_CONFIG stops here, in one line

    import keras
    import tensorflow as tf

    # Before any other TensorFlow op: MultiWorkerMirroredStrategy sets up the cluster's context.
    strategy = make_strategy(params.strategy, machine.collective_timeout)

    from cxr_impressions.captioning.bundle import bundle_config, save_bundle
    from cxr_impressions.captioning.models import CaptionModel, build_model
    from cxr_impressions.captioning.retrieval import empty_bank
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.captioning.training import (
        attach_memory,
        prepare_state_dir,
        train_members,
    )
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
        # The settings the features were made with, as the file records them (not params.yaml,
        # which this stage does not track): predict rebuilds the same backbone from them.
        features = {"backbone": store.attrs["backbone"], "weights": store.attrs["weights"],
                    "image_size": int(store.attrs["input_size"]),
                    "resize": store.attrs["resize"],
                    # `cxr predict` checks it runs the backbone weights these features came from.
                    "weights_sha256": str(store.attrs.get("weights_sha256", "")),
                    # predict and serve run the backbone at the precision the features ran at
                    "precision": str(store.attrs.get("precision", "float32"))}
    regions = splits["train"].grid.shape[2] if model_params.needs_grid else None
    bank, titles = attach_memory(splits, model_params)
    if bank is None:
        bank = empty_bank(feature_dim, vocab.max_len - 1)

    # DVC deletes only the declared files in `out`, so the state survives for a resume. Workers
    # other than the chief write to temporary paths (captioning/distribute.py).
    paths = run_paths(task, Path(args.out), Path(args.live), Path(args.metrics),
                      Path(args.out) / ".train-state")
    prepare_state_dir(paths.state, model_params, params, vocab, splits["train"].uids)

    def build() -> CaptionModel:
        return build_model(model_params, matrix, feature_dim, vocab.max_len, regions,
                           len(titles) if titles is not None else 0)

    with strategy.scope():
        model, summary = train_members(build, model_params, vocab, splits["train"],
                                       splits["val"], params, paths.state, paths.live)
    if task.is_chief:  # the others' outputs would only be deleted
        config = bundle_config(model_params, features, feature_dim, regions, matrix.shape[1],
                               vocab, titles)
        save_bundle(paths.out, model, vocab, config, bank)
        write_json(paths.metrics, {"kind": model_params.kind,
                                   "parameters": model.train_model.count_params(), **summary})
    shutil.rmtree(paths.state)
    paths.cleanup()


if __name__ == "__main__":
    run_stage(main)
