"""Tiny caption models and random study inputs for the model, decoding and training tests."""

from pathlib import Path

import numpy as np
import tensorflow as tf

from cxr_impressions.captioning.models import build_model
from cxr_impressions.data.tokenizer import Vocabulary
from cxr_impressions.settings.model import ModelParams

WORDS = ("<pad>", "<unk>", "startseq", "endseq", "no", "effusion", ".")


def tiny(kind: str, max_len: int = 6, seed: int = 0, exam_titles: int = 0, **params: object):
    """A tiny `kind` model (8-d features, 3 regions per view) and its vocabulary; `params`
    override the model params (condition, retrieval_k, ...); `exam_titles` is the size of the
    title vocabulary of a `exam_title=True` model."""
    tf.keras.utils.set_random_seed(seed)
    vocab = Vocabulary(WORDS, "startseq", "endseq", max_len)
    matrix = np.random.default_rng(seed).normal(size=(len(WORDS), 4)).astype(np.float32)
    # what these tests were written for
    params = {"condition": "abnormal", "exam_title": False, **params}
    model = build_model(ModelParams(kind=kind, units=16, dropout=0.0, heads=2, layers=1,
                                    **params),
                        matrix, 8, max_len, regions=3, exam_titles=exam_titles)
    return model, vocab


def random_studies(n: int, seed: int = 0, first_uid: int = 0):
    """`n` random studies of the tiny models' shapes (8-d features, 3 regions per view), uids
    from `first_uid`, each impression two words between startseq and endseq."""
    from cxr_impressions.captioning.studies import LABELS, Studies

    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, 6), np.int32)
    tokens[:, 0] = 2
    tokens[:, 1:3] = rng.integers(4, 7, size=(n, 2))
    tokens[:, 3] = 3
    return Studies(np.arange(first_uid, first_uid + n), np.full((n, 2), "x"),
                   rng.normal(size=(n, 2, 8)).astype(np.float32), np.ones((n, 2), np.float32),
                   tokens, ["t"] * n, np.zeros((n, len(LABELS)), np.float32),
                   grid=rng.normal(size=(n, 2, 3, 8)).astype(np.float16))


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
    params = ModelParams(kind=kind, units=16, dropout=0.0, heads=2, layers=1,
                         condition="abnormal", exam_title=False)
    config = bundle_config(params, dict(TINY_FEATURES), 8, 3, 4, vocab)
    save_bundle(directory, model, vocab, config, empty_bank(8, vocab.max_len - 1))
    return config


BUNDLE_WORDS = WORDS + ("normal", "heart", "size", "lungs", "clear", "small", "left", "right",
                        "opacity", "acute", "disease")


def serving_bundle(directory, seed: int = 0, image_size: int = 71, max_len: int = 8,
                   exam_titles: tuple[str, ...] = ()):
    """A model folder as `cxr predict` and `cxr serve` load it: an untrained tiny transformer
    over random-weight Xception grids (3x3 per view at 71 px), conditioned on `abnormal`;
    with `exam_titles`, a `model.exam_title` model that knows those titles."""
    from cxr_impressions.captioning.bundle import bundle_config, save_bundle, save_decoding
    from cxr_impressions.captioning.retrieval import empty_bank
    from cxr_impressions.data.titles import TitleVocabulary
    from cxr_impressions.settings.decoding import DecodingSettings

    tf.keras.utils.set_random_seed(seed)
    vocab = Vocabulary(BUNDLE_WORDS, "startseq", "endseq", max_len)
    matrix = np.random.default_rng(seed).normal(size=(len(BUNDLE_WORDS), 8)).astype(np.float32)
    titles = TitleVocabulary.from_titles(exam_titles, 1) if exam_titles else None
    params = ModelParams(kind="transformer", units=16, dropout=0.0, heads=2, layers=1,
                         condition="abnormal", grid_pool=1, exam_title=titles is not None)
    side = 3  # Xception's grid at 71 px
    model = build_model(params, matrix, 2048, max_len, regions=side * side,
                        exam_titles=len(titles) if titles is not None else 0)
    # Untrained, every word is nearly as likely as the next, and the abnormal probability sits
    # near 0.5: float noise between batch shapes could flip a beam or the label. Sharper word
    # logits and a threshold away from 0.5 make the outputs stable, as a trained model's are.
    head = model.train_model.get_layer("transformer_decoder").get_layer("next_word")
    head.set_weights([w * 8 for w in head.get_weights()])
    # The random backbone as a weights file: a `weights: none` net rebuilt in another process
    # (the server, `cxr predict`) is not always the same net, and outputs must match exactly.
    import keras

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone = keras.applications.Xception(include_top=False, weights=None,
                                           input_shape=(image_size, image_size, 3))
    weights = directory / "xception.weights.h5"
    backbone.save_weights(weights)
    features = {"backbone": "xception", "weights": str(weights), "image_size": image_size,
                "resize": "squash", "precision": "float32"}
    config = bundle_config(params, features, 2048, side * side, matrix.shape[1], vocab, titles)
    save_bundle(directory, model, vocab, config, empty_bank(2048, max_len - 1))
    save_decoding(directory, DecodingSettings(), {label: 0.3 for label in model.labels})
    return directory
