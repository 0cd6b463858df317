"""Are finetune's training runs on the cached activations deterministic on this machine?

`--mode steps`: builds the adapter twice from the same weights (the layers above the default cut),
runs the same batches of a full-data workspace's activation cache through `make_train_step` in
the same order, and prints the largest weight difference between the two runs.

`--mode epochs`: runs the stage's own `train_adapter` twice on the workspace's real labels and
cached activations, limited to the first `--train` training and `--val` validation images
(so an epoch ends on a partial batch and validation runs between epochs, as in the stage;
`--frozen-pass` first predicts every image, as the stage does for its frozen probe), and
prints the largest weight difference and each run's validation history.

Both turn on TensorFlow's op determinism, as the stage does. `--threads 1` makes TensorFlow use
one thread (as `machine.threads: 1`); 0 sets every core, as the stage's default.

    python scripts/finetune_determinism.py --root WORKSPACE [--mode steps] [--steps 3]
                                           [--threads 0] [--save run.npz]
    python scripts/finetune_determinism.py --root WORKSPACE --mode epochs [--epochs 2]
                                           [--train 300] [--val 100] [--frozen-pass]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr_impressions.stage import run_stage


def steps_weights(cache: np.ndarray, steps: int, weights: str) -> list[list[np.ndarray]]:
    import keras
    import tensorflow as tf

    from cxr_impressions.features.backbones import get_spec
    from cxr_impressions.features.finetune import TARGETS, build_adapter, make_train_step
    from cxr_impressions.settings.features import FeaturesParams
    from cxr_impressions.settings.finetune import FinetuneParams

    batch = 32
    x = np.asarray(cache[: steps * batch], np.float32)
    y = (np.random.default_rng(0).random((len(x), len(TARGETS))) < 0.2).astype(np.float32)
    trained = []
    for _ in range(2):
        adapter, _ = build_adapter(FinetuneParams(), FeaturesParams(), weights,
                                   get_spec("xception").default_cut)
        step = make_train_step(adapter.model, keras.optimizers.Adam(2e-4))
        for i in range(steps):
            step(tf.constant(x[i * batch:(i + 1) * batch]),
                 tf.constant(y[i * batch:(i + 1) * batch]))
        trained.append([w.numpy().copy() for w in adapter.model.trainable_weights])
    return trained


def epochs_weights(root: Path, cache: tuple[np.ndarray, np.ndarray], weights: str, epochs: int,
                   n_train: int, n_val: int, frozen_pass: bool) -> list[list[np.ndarray]]:
    import pandas as pd

    from cxr_impressions.features import finetune as ft
    from cxr_impressions.features.backbones import get_spec
    from cxr_impressions.settings.features import FeaturesParams
    from cxr_impressions.settings.finetune import FinetuneParams

    examples = pd.read_parquet(root / "data" / "clean" / "examples.parquet")
    images = pd.read_parquet(root / "data" / "clean" / "images.parquet")
    data = ft.labelled_images(examples, images, "mesh")
    split = data.split.copy()
    for name, keep in (("train", n_train), ("val", n_val)):
        split[data.rows(name)[keep:]] = "unused"
    slots = data.slots.copy()  # a study's vector averages only the views kept
    slots.loc[~slots["uid"].isin(data.uids[split == "val"]) & (slots["split"] == "val"),
              "split"] = "unused"
    data = replace(data, split=split, slots=slots)
    params = FinetuneParams(epochs=epochs)
    trained = []
    for run in range(2):
        adapter, _ = ft.build_adapter(params, FeaturesParams(), weights,
                                   get_spec("xception").default_cut)
        feed = ft.Feed(data, FeaturesParams(), cache)
        if frozen_pass:  # as the stage: the starting backbone's vectors, before training
            ft.predict(adapter, feed, feed.available(np.arange(len(data.paths))), params.batch_size,
                    len(data.paths))
        with tempfile.TemporaryDirectory() as tmp:
            state = ft.TrainState(Path(tmp) / "state", "determinism")
            history = ft.train_adapter(adapter, feed, data, params, state,
                                    progress_bar=False)["history"]
        print(f"run {run + 1}: " + ", ".join(
            f"epoch {h['epoch']} loss {h['loss']} val AUC {h['val_mean_auc']}" for h in history))
        trained.append([w.numpy().copy() for w in adapter.model.trainable_weights])
    return trained


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, required=True, help="a full-data workspace")
    cli.add_argument("--mode", choices=("steps", "epochs"), default="steps")
    cli.add_argument("--steps", type=int, default=3)
    cli.add_argument("--epochs", type=int, default=2)
    cli.add_argument("--train", type=int, default=300, help="training images (--mode epochs)")
    cli.add_argument("--val", type=int, default=100, help="validation images (--mode epochs)")
    cli.add_argument("--frozen-pass", action="store_true",
                     help="--mode epochs: first predict every image, as the stage does")
    cli.add_argument("--threads", type=int, default=0, help="0: every core")
    cli.add_argument("--weights-dir", default="../shared/weights")
    cli.add_argument("--save", type=Path, help="also write the first run's trained weights here "
                     "(.npz), to compare two processes")
    args = cli.parse_args()
    from cxr_impressions.features.shards import configure_threads

    configure_threads(args.threads)
    import tensorflow as tf

    from cxr_impressions.errors import InputError
    from cxr_impressions.features.backbones import get_spec, resolve_weights

    tf.config.experimental.enable_op_determinism()
    folder = args.root / "features" / ".finetune-cache" / "xception"
    path = folder / "activations.npy"
    if not path.exists():
        raise InputError(f"{path}: no activation cache (run the finetune stage there first)")
    cache = np.load(path, mmap_mode="r")
    if cache.shape[1:] != (19, 19, 728):
        raise InputError(f"{path}: activations of shape {cache.shape[1:]}, "
                         "not the default cut's 19x19x728 input")
    weights = resolve_weights(get_spec("xception"), "imagenet", args.weights_dir, False)
    if args.mode == "steps":
        trained = steps_weights(cache, args.steps, weights)
        what = f"{args.steps} steps"
    else:
        trained = epochs_weights(args.root, (np.load(folder / "index.npy"), cache), weights,
                                 args.epochs, args.train, args.val, args.frozen_pass)
        what = f"{args.epochs} epochs of {args.train} images"
    if args.save:
        np.savez(args.save, *trained[0])
    largest = max(float(np.max(np.abs(a - b))) for a, b in zip(*trained, strict=True))
    print(f"{what}, threads {args.threads or 'all'}: largest weight difference between two "
          f"identical runs {largest:.3g}")


if __name__ == "__main__":
    run_stage(main)
