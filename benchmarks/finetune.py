"""Fine-tuning cost: an epoch on the cached cut activations against a full backward pass.

Times, on the same images, labels, batch size and in the same process (the functions the stage
runs: `build_adapter`, `make_train_step`):
  (a) `train_from: top`: an epoch of optimizer steps on the cached activations at the cut (the
      layers above the cut plus the head train; BatchNorm frozen);
  (b) `train_from: all`: an epoch of optimizer steps through the whole backbone from decoded
      images (what the cache saves: the forward and backward pass below the cut);
  (c) building the cache once: the forward pass below the cut over the same images;
  (d) the features stage's work: the forward pass of the whole backbone;
  (e) a forward pass above the cut (the probes' pooled vectors and the validation pass).
All alternate over several rounds and the medians are compared, because a shared machine's
speed drifts from minute to minute. The first pass of each (tracing) is not timed.

From these it projects the finetune stage's time against the features stage's on the full data
(`--clean-images`, `--train-images`, `--found-images`, `--epochs`): the cache once, the epochs,
a validation pass per epoch and two probe passes above the cut, against one full forward pass
over every image found.

With `--precision bfloat16` (a)-(c) and (e) run as `finetune.precision: bfloat16` does (Keras'
mixed_bfloat16, where the CPU has AVX512_BF16/AMX; elsewhere float32, said in one line); (d)
stays float32, the features stage's default.

    python benchmarks/finetune.py [--n 32] [--rounds 2] [--batch-size 8] [--image-size 299]
                                  [--cut LAYER] [--precision float32]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    info = dict(line.split(":", 1) for line in lines.splitlines() if ":" in line)
    flags = [f for f in info.get("Flags", "").split() if f.startswith(("avx", "fma", "amx"))]
    return (f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs, "
            f"{' '.join(flags)}")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--n", type=int, default=32, help="images in the epoch")
    cli.add_argument("--rounds", type=int, default=2)
    cli.add_argument("--batch-size", type=int, default=8)
    cli.add_argument("--image-size", type=int, default=299)
    cli.add_argument("--cut", default="", help="the first layer above the cut; \"\": the "
                     "backbone's default, as finetune.cut")
    # The full data's counts (metrics/clean.json, metrics/parse.json) and the default epochs.
    cli.add_argument("--clean-images", type=int, default=6954)
    cli.add_argument("--train-images", type=int, default=5556)
    cli.add_argument("--val-images", type=int, default=711)
    cli.add_argument("--found-images", type=int, default=6966)
    cli.add_argument("--epochs", type=int, default=3)
    cli.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                     help="as finetune.precision")
    args = cli.parse_args()

    import keras
    import tensorflow as tf

    from cxr_impressions.data.images import image_dataset
    from cxr_impressions.features.backbones import (
        build_backbone,
        get_spec,
        preprocess,
        resolve_precision,
    )
    from cxr_impressions.features.finetune import TARGETS, build_adapter, make_train_step
    from cxr_impressions.settings.features import FeaturesParams
    from cxr_impressions.settings.finetune import FinetuneParams

    cut = args.cut or get_spec("xception").default_cut
    precision = resolve_precision(args.precision)
    files = sorted((REPO / "data" / "sample" / "images").iterdir())[: args.n]
    features = FeaturesParams(weights="none", image_size=args.image_size)
    images = np.stack([image.numpy() for _, image in image_dataset(
        [str(f) for f in files], args.image_size)])
    labels = np.random.default_rng(0).random((len(images), len(TARGETS))) < 0.2
    labels = labels.astype(np.float32)

    timings: dict[str, list[float]] = {"top": [], "all": [], "cache": [], "full": [],
                                       "above": []}
    adapters = {}
    for mode in ("top", "all"):
        params = FinetuneParams(weights="none", train_from=mode, batch_size=args.batch_size)
        adapter, bottom = build_adapter(params, features, None, cut, precision)
        step = make_train_step(adapter.model, keras.optimizers.Adam(params.learning_rate))
        inputs = images
        if bottom is not None:
            raw = keras.Input((args.image_size, args.image_size, 3))
            scale = keras.Model(raw, preprocess("xception", raw))  # the backbone's own scaling
            forward = tf.function(lambda x, bottom=bottom, scale=scale: tf.cast(
                bottom(scale(x)), tf.float32))

            def cache(forward=forward) -> np.ndarray:
                return np.concatenate([forward(images[i:i + args.batch_size]).numpy()
                                       for i in range(0, len(images), args.batch_size)]
                                      ).astype(np.float16)
            inputs = cache()  # traced once, untimed
            adapters["cache"] = cache
            above = adapter.forward

            def forward_above(inputs=inputs, above=above) -> None:
                for i in range(0, len(inputs), args.batch_size):
                    above(tf.constant(inputs[i:i + args.batch_size], tf.float32))
            adapters["above"] = forward_above
        adapters[mode] = (step, inputs)

    backbone = build_backbone("xception", None, args.image_size, grid=False)
    whole = tf.function(lambda x: backbone(x, training=False))

    def forward_full() -> None:
        for i in range(0, len(images), args.batch_size):
            whole(images[i:i + args.batch_size])
    adapters["full"] = forward_full

    def epoch(step, inputs) -> float:
        began = time.perf_counter()
        for i in range(0, len(inputs), args.batch_size):
            step(tf.constant(inputs[i:i + args.batch_size], tf.float32),
                 tf.constant(labels[i:i + args.batch_size]))
        return time.perf_counter() - began

    def timed(run) -> float:
        began = time.perf_counter()
        run()
        return time.perf_counter() - began

    for mode in ("top", "all"):
        epoch(*adapters[mode])  # tracing and warm-up
    adapters["full"]()
    adapters["above"]()
    for _ in range(args.rounds):
        for mode in ("top", "all"):
            timings[mode].append(epoch(*adapters[mode]))
        for key in ("cache", "full", "above"):
            timings[key].append(timed(adapters[key]))

    median = {k: statistics.median(v) for k, v in timings.items()}
    print(f"machine: {machine()}")
    print(f"xception, cut at {cut}, {len(images)} images of {args.image_size} px, "
          f"batch {args.batch_size}, finetune at {precision}, median of {args.rounds} rounds\n")
    print(f"| {'what':<46} | {'seconds':>8} | {'images/s':>8} | {'vs (a)':>7} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    rows = (("(a) epoch on cached activations (top)", "top"),
            ("(b) epoch with a full backward pass (all)", "all"),
            ("(c) building the cache (forward below the cut)", "cache"),
            ("(d) features: forward, whole backbone", "full"),
            ("(e) forward above the cut (probes, validation)", "above"))
    for label, key in rows:
        print(f"| {label:<46} | {median[key]:8.2f} | {len(images) / median[key]:8.1f} | "
              f"{median[key] / median['top']:6.2f}x |")
    print(f"\nfull backward / cached epoch: {median['all'] / median['top']:.2f}x; "
          f"the cache pays for itself after "
          f"{median['cache'] / max(median['all'] - median['top'], 1e-9):.2f} epochs")
    per = {k: v / len(images) for k, v in median.items()}  # seconds per image
    finetune = (args.clean_images * per["cache"] + args.epochs * (
        args.train_images * per["top"] + args.val_images * per["above"])
        + 2 * args.clean_images * per["above"])
    features_stage = args.found_images * per["full"]
    print(f"projected on the full data ({args.clean_images} clean images, {args.train_images} "
          f"training, {args.epochs} epochs): finetune {finetune / 60:.0f} min (cache "
          f"{args.clean_images * per['cache'] / 60:.0f}) against features "
          f"{features_stage / 60:.0f} min: **{finetune / features_stage:.2f}x**")


if __name__ == "__main__":
    main()
