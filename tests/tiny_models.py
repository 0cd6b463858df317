"""Tiny caption models and random study inputs for the model, decoding and training tests."""

import numpy as np
import tensorflow as tf

from cxr_impressions.captioning.models import build_model
from cxr_impressions.config import ModelParams
from cxr_impressions.data.tokenizer import Vocabulary

WORDS = ("<pad>", "<unk>", "startseq", "endseq", "no", "effusion", ".")


def tiny(kind: str, max_len: int = 6, seed: int = 0, **params: object):
    """A tiny `kind` model (8-d features, 3 regions per view) and its vocabulary; `params`
    override the model params (condition, retrieval_k, ...)."""
    tf.keras.utils.set_random_seed(seed)
    vocab = Vocabulary(WORDS, "startseq", "endseq", max_len)
    matrix = np.random.default_rng(seed).normal(size=(len(WORDS), 4)).astype(np.float32)
    model = build_model(ModelParams(kind=kind, units=16, dropout=0.0, heads=2, layers=1,
                                    **params),
                        matrix, 8, max_len, regions=3)
    return model, vocab


def study_inputs(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pooled": rng.normal(size=(n, 2, 8)).astype(np.float32) * 3,
            "views": np.ones((n, 2), np.float32),
            "grid": rng.normal(size=(n, 2, 3, 8)).astype(np.float16)}


# The backbone settings a tiny bundle records: random Xception weights at its smallest size, so
# `Predictor` builds without the ImageNet file.
TINY_FEATURES = {"backbone": "xception", "weights": "none", "image_size": 71, "resize": "squash"}


def tiny_bundle(directory, kind: str = "transformer") -> dict:
    """A tiny model saved as a `models/` folder (config.json, model.weights.h5, vocab.json);
    returns its config."""
    from cxr_impressions.captioning.bundle import bundle_config, save_bundle
    from cxr_impressions.captioning.retrieval import empty_bank

    model, vocab = tiny(kind)
    params = ModelParams(kind=kind, units=16, dropout=0.0, heads=2, layers=1)
    config = bundle_config(params, dict(TINY_FEATURES), 8, 3, 4, vocab)
    save_bundle(directory, model, vocab, config, empty_bank(8, vocab.max_len - 1))
    return config
