"""Are finetune's training steps on the cached activations deterministic on this machine?

Builds the adapter twice from the same weights (block 12 up, the default cut), runs the same
batches of a full-data workspace's activation cache through `make_train_step` in the same
order, with TensorFlow's op determinism on, and prints the largest weight difference between
the two runs. With `--threads 1` TensorFlow uses one thread (as `machine.threads: 1`).

    python scripts/finetune_determinism.py --root WORKSPACE [--steps 3] [--threads 0]
                                           [--save run.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, required=True, help="a full-data workspace")
    cli.add_argument("--steps", type=int, default=3)
    cli.add_argument("--threads", type=int, default=0, help="0: every core")
    cli.add_argument("--weights-dir", default="../shared/weights")
    cli.add_argument("--save", type=Path, help="also write the trained weights here (.npz), to "
                     "compare two processes")
    args = cli.parse_args()
    from cxr_impressions.features.shards import configure_threads

    configure_threads(args.threads)
    import keras
    import tensorflow as tf

    from cxr_impressions.config import FeaturesParams, FinetuneParams
    from cxr_impressions.errors import InputError
    from cxr_impressions.features.backbones import get_spec, resolve_weights
    from cxr_impressions.features.finetune import TARGETS, build_adapter, make_train_step

    tf.config.experimental.enable_op_determinism()
    spec = get_spec("xception")
    path = args.root / "features" / ".finetune-cache" / "xception" / "activations.npy"
    if not path.exists():
        raise InputError(f"{path}: no activation cache (run the finetune stage there first)")
    cache = np.load(path, mmap_mode="r")
    if cache.shape[1:] != (19, 19, 728):
        raise InputError(f"{path}: activations of shape {cache.shape[1:]}, not block 12's input")
    batch = 32
    x = np.asarray(cache[: args.steps * batch], np.float32)
    y = (np.random.default_rng(0).random((len(x), len(TARGETS))) < 0.2).astype(np.float32)
    weights = resolve_weights(spec, "imagenet", args.weights_dir, False)
    trained = []
    for _ in range(2):
        adapter, _ = build_adapter(FinetuneParams(), FeaturesParams(), weights, spec.default_cut)
        step = make_train_step(adapter.model, keras.optimizers.Adam(2e-4))
        for i in range(args.steps):
            step(tf.constant(x[i * batch:(i + 1) * batch]),
                 tf.constant(y[i * batch:(i + 1) * batch]))
        trained.append([w.numpy().copy() for w in adapter.model.trainable_weights])
    if args.save:
        np.savez(args.save, *trained[0])
    largest = max(float(np.max(np.abs(a - b))) for a, b in zip(*trained, strict=True))
    print(f"{args.steps} steps, threads {args.threads or 'all'}: largest weight difference "
          f"between two identical runs {largest:.3g}")


if __name__ == "__main__":
    run_stage(main)
