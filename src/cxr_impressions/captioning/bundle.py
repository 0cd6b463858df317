"""The trained model as files under `models/`, loadable without DVC.

- `config.json`: the model params, the backbone settings of the features it was trained on,
  the shapes needed to rebuild it, and the abnormal-label threshold chosen on validation;
- `model.weights.h5`: the Keras weights; `vocab.json`: the vocabulary;
- `decoding.json` (written by evaluate): the decoding settings used for the reported metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_json
from ..config import DecodeParams, ModelParams, build_section
from ..data.tokenizer import Vocabulary
from ..errors import InputError
from .models import CaptionModel, build_model


@dataclass
class Bundle:
    model: CaptionModel
    vocab: Vocabulary
    config: dict
    decode: DecodeParams
    params: ModelParams
    sha256: str = ""  # the bundle's identity: `bundle_hash` of its files


    @property
    def threshold(self) -> float:
        """The abnormal-label threshold chosen on validation (0.5 for older bundles)."""
        return float(self.config.get("abnormal_threshold", 0.5))


def save_bundle(directory: str | os.PathLike[str], model: CaptionModel, vocab: Vocabulary,
                config: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "model.weights.h5", suffix=".weights.h5") as tmp:
        model.train_model.save_weights(tmp)
    vocab.save(directory / "vocab.json")
    write_json(directory / "config.json", config)


def bundle_config(model_params: ModelParams, features: dict, feature_dim: int,
                  regions: int | None, embedding_dim: int, vocab: Vocabulary) -> dict:
    return {"model": dataclasses.asdict(model_params), "features": features,
            "feature_dim": feature_dim, "regions": regions, "embedding_dim": embedding_dim,
            "vocab_size": len(vocab), "max_len": vocab.max_len}


BUNDLE_FILES = ("config.json", "model.weights.h5", "vocab.json", "decoding.json")


def bundle_hash(directory: str | os.PathLike[str]) -> str:
    """SHA-256 over the bundle's files (name and bytes, in a fixed order): two folders with
    the same hash decode alike."""
    import hashlib

    digest = hashlib.sha256()
    for name in BUNDLE_FILES:
        path = Path(directory) / name
        if path.is_file():
            digest.update(f"{name}\n{path.stat().st_size}\n".encode())
            with path.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    directory = Path(directory)
    for name in ("config.json", "model.weights.h5", "vocab.json"):
        if not (directory / name).is_file():
            raise InputError(f"{directory / name}: not found (train the model with `dvc repro "
                             "train`, or pass --model DIR)")
    config = json.loads((directory / "config.json").read_text())
    vocab = Vocabulary.load(directory / "vocab.json")
    params = build_section("model", ModelParams, config["model"], source=str(directory))
    matrix = np.zeros((config["vocab_size"], config["embedding_dim"]), dtype=np.float32)
    model = build_model(params, matrix, config["feature_dim"], config["max_len"],
                        config["regions"])
    model.train_model.load_weights(directory / "model.weights.h5")
    decode = DecodeParams()
    if (directory / "decoding.json").is_file():
        decode = build_section("decode", DecodeParams,
                               json.loads((directory / "decoding.json").read_text()),
                               source=str(directory / "decoding.json"))
    return Bundle(model, vocab, config, decode, params, bundle_hash(directory))
