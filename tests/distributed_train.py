"""Run by tests/test_distribute.py in a subprocess (a strategy is per process): train a tiny merge
model on seeded random studies with `train.strategy`, through the same calls as stages/train.py
(current_task, make_strategy, run_paths, prepare_state_dir, train in the strategy's scope),
with a `condition: abnormal` label head."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STUDIES, VAL, FEATURE_DIM, MAX_LEN = 64, 8, 8, 7
WORDS = ("<pad>", "<unk>", "startseq", "endseq", "no", "effusion", ".", "small", "left")


def studies(n: int, seed: int):
    import numpy as np

    from cxr_impressions.captioning.studies import LABELS, Studies

    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, MAX_LEN + 1, n)
    tokens = np.zeros((n, MAX_LEN), np.int32)
    for row, length in enumerate(lengths):
        tokens[row, 0], tokens[row, length - 1] = 2, 3
        tokens[row, 1:length - 1] = rng.integers(4, len(WORDS), length - 2)
    pooled = rng.normal(size=(n, 2, FEATURE_DIM)).astype(np.float32)
    labels = (rng.random((n, len(LABELS))) < 0.5).astype(np.float32)
    return Studies(np.arange(n) + seed * 1000, np.array([["a", "b"]] * n), pooled,
                   np.ones((n, 2), np.float32), tokens, ["no effusion ."] * n, labels)


def main() -> None:
    cli = argparse.ArgumentParser()
    cli.add_argument("--strategy", default="default")
    cli.add_argument("--logical-cpus", type=int, default=0)
    cli.add_argument("--out", required=True)
    cli.add_argument("--epochs", type=int, default=3)
    cli.add_argument("--batch-size", type=int, default=16)
    args = cli.parse_args()

    from cxr_impressions.captioning.distribute import current_task, make_strategy, run_paths
    from cxr_impressions.settings.model import ModelParams
    from cxr_impressions.settings.train import TrainParams
    from cxr_impressions.stage import run_stage

    def run() -> None:
        params = TrainParams(epochs=args.epochs, batch_size=args.batch_size, patience=99,
                             strategy=args.strategy)
        task = current_task(params.strategy)
        import keras
        import numpy as np
        import tensorflow as tf

        if args.logical_cpus:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
        strategy = make_strategy(params.strategy, collective_timeout=120.0)

        from cxr_impressions.captioning.models import build_model
        from cxr_impressions.captioning.training import prepare_state_dir, train
        from cxr_impressions.data.tokenizer import Vocabulary

        keras.utils.set_random_seed(params.seed)
        tf.config.experimental.enable_op_determinism()
        vocab = Vocabulary(WORDS, "startseq", "endseq", MAX_LEN)
        matrix = np.random.default_rng(0).normal(size=(len(WORDS), 4)).astype(np.float32)
        model_params = ModelParams(kind="merge", units=16, dropout=0.0, condition="abnormal",
                                   exam_title=False)
        train_set, val_set = studies(STUDIES, 1), studies(VAL, 2)
        out = Path(args.out)
        paths = run_paths(task, out / "models", out / "live", out / "train.json",
                          out / "models" / ".train-state")
        prepare_state_dir(paths.state, model_params, params, vocab, train_set.uids)
        with strategy.scope():
            model = build_model(model_params, matrix, FEATURE_DIM, MAX_LEN)
            summary = train(model, vocab, train_set, val_set, params, paths.state, paths.live)
        paths.out.mkdir(parents=True, exist_ok=True)
        model.train_model.save_weights(paths.out / "model.weights.h5")
        from cxr_impressions.atomic import write_json

        write_json(paths.metrics, {**summary, "replicas": strategy.num_replicas_in_sync,
                                   "chief": task.is_chief})
        shutil.rmtree(paths.state)
        paths.cleanup()

    run_stage(run)


if __name__ == "__main__":
    main()
