"""Training time per epoch for each model kind, on the data of a DVC checkout.

Times `--steps` training steps (after `--warmup` steps that trace the graph) of each model over
the checkout's clean split, features and embedding matrix, and extrapolates to one epoch of its
training split. The merge model, the article's, is the baseline of the ratios (or, without it,
the first variant). Validation (the greedy val_bleu4 decoding) is timed once per variant as well.

A variant is a model kind with model params overridden by `+param=value` suffixes, e.g.
`transformer+condition=findings+retrieval_k=3` (the retrieval memory is attached as in training).
An ensemble (`+ensemble=N`) trains its N members one after the other, each an epoch of the same
network: its epoch is N times one member's, timed on one member; its validation decoding is
timed on the whole ensemble.

    python benchmarks/train.py [--repo .] [--kinds merge,bilstm_attention,transformer]
    python benchmarks/train.py --kinds transformer,transformer+condition=findings,\
        transformer+condition=findings+retrieval_k=3
Needs `dvc repro embeddings features` in that checkout (e.g. one with data.root ../shared/iuxray
for the full data).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import pandas as pd
import yaml


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--repo", default=".", help="a DVC checkout with the pipeline's outputs")
    cli.add_argument("--kinds", default="merge,bilstm_attention,transformer")
    cli.add_argument("--steps", type=int, default=12)
    cli.add_argument("--warmup", type=int, default=3)
    args = cli.parse_args()

    import os

    os.chdir(args.repo)  # params.yaml and the outputs' paths are relative to the checkout
    import keras

    from cxr_impressions.captioning.decoding import Decoder
    from cxr_impressions.captioning.models import build_model, ensemble
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.captioning.training import (
        attach_memory,
        compile_for_training,
        make_dataset,
    )
    from cxr_impressions.config import build_section, load_section
    from cxr_impressions.data.tokenizer import Vocabulary
    from cxr_impressions.features.store import FeatureStore
    from cxr_impressions.settings.decoding import DecodingSettings
    from cxr_impressions.settings.model import ModelParams

    model_params = load_section("model")
    train_params = load_section("train")
    backbone = load_section("features").backbone
    vocab = Vocabulary.load("data/clean/vocab.json")
    matrix = np.load("data/embeddings/matrix.npy")
    rows = []
    with FeatureStore(f"features/{backbone}.h5") as store:
        for variant in args.kinds.split(","):
            kind, *overrides = variant.split("+")
            raw = {**dataclasses.asdict(model_params), "kind": kind}
            for override in overrides:
                name, value = override.split("=", 1)
                raw[name] = yaml.safe_load(value)
            params = build_section("model", ModelParams, raw, source=f"--kinds {variant}")
            grid_pool = params.grid_pool if params.needs_grid else None
            split = {s: load_split("data/clean", s, store, vocab, grid_pool)
                     for s in ("train", "val")}
            _, titles = attach_memory(split, params)
            keras.utils.set_random_seed(0)
            members = [build_model(params, matrix, store.dim, vocab.max_len,
                                   split["train"].grid.shape[2] if params.needs_grid else None,
                                   len(titles) if titles is not None else 0)
                       for _ in range(params.ensemble)]
            model = members[0]
            compile_for_training(model, train_params.learning_rate, train_params.ema_momentum)
            data = make_dataset(split["train"], model, train_params.batch_size, True, 0)
            batches = iter(data.repeat())
            for _ in range(args.warmup):
                model.train_model.train_on_batch(*next(batches))
            began = time.perf_counter()
            for _ in range(args.steps):
                model.train_model.train_on_batch(*next(batches))
            per_step = (time.perf_counter() - began) / args.steps
            steps = int(data.cardinality())
            began = time.perf_counter()
            Decoder(ensemble(members), vocab).decode(split["val"].inputs(),
                                                     DecodingSettings(method="greedy"))
            validation = time.perf_counter() - began
            rows.append({"kind": variant, "members": len(members),
                         "parameters": len(members) * model.train_model.count_params(),
                         "train_studies": len(split["train"]), "batch": train_params.batch_size,
                         "steps_per_epoch": steps, "s_per_step": round(per_step, 3),
                         "s_per_epoch": round(per_step * steps * len(members), 1),
                         "val_decode_s": round(validation, 1)})
    table = pd.DataFrame(rows)
    base_kind = "merge" if "merge" in set(table["kind"]) else table["kind"].iloc[0]
    base = table.loc[table["kind"] == base_kind, "s_per_epoch"].iloc[0]
    table[f"epoch_vs_{base_kind}"] = (table["s_per_epoch"] / base).round(2)
    print(table.to_string(index=False))
    total = table["s_per_epoch"] + table["val_decode_s"]
    print("\nepoch incl. validation decoding (s): " + ", ".join(
        f"{k} {v:.0f}" for k, v in zip(table["kind"], total, strict=True)))
    assert all(math.isfinite(v) for v in table["s_per_epoch"])


if __name__ == "__main__":
    main()
