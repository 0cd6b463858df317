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
