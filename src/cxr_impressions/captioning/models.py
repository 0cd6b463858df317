"""The caption models, each an `encoder` (study features -> memory) and a `decoder`
(memory + tokens -> next-word logits), built from named Keras layers.

- `merge` (the Xception + GloVe article): the views' mean pooled vector through a Dense layer,
  added to an LSTM over the GloVe-embedded caption, then Dense + softmax. Causal, so it trains
  on every position of a caption at once (teacher forcing).
- `bilstm_attention` (the InceptionV3 notebook): frontal and lateral pooled vectors fused
  (concatenated or summed) through a Dense encoder; two Bidirectional LSTM layers over the
  partial caption; additive attention from the image over the caption's steps. A bidirectional
  LSTM would see the future over a whole caption, so this model trains on prefixes: one sample
  per (study, prefix) pair, predicting the next word.
- `transformer` (ours): the spatial grids of both views as regions, projected, with learned
  view and position embeddings; a causal Transformer decoder whose cross-attention looks at
  the regions (empty view slots masked). Its last layer's attention weights are a model output,
  for heat-maps.

With `condition: abnormal` (the default), every encoder also predicts whether the study is
abnormal (a logit, trained against the labeller's reading of the reference text), and every
decoder takes a `condition` input (1: write an abnormal report, 0: a normal one), embedded and
added to the image vector (LSTM models) or to every word (transformer). Training feeds the
reference's label (teacher forcing); decoding feeds the encoder's prediction, thresholded at a
value chosen on the validation split. Without it, the decoder falls back on the most likely
report, which is a normal one, for every study.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

from ..config import ModelParams


@dataclass
class CaptionModel:
    kind: str
    encoder: keras.Model  # study inputs -> memory (dict of tensors), plus `abnormal` logits
    decoder: keras.Model  # memory (+ condition) + tokens -> logits; plus attention
    train_model: keras.Model  # study inputs (+ condition) + tokens -> logits (+ abnormal)
    prefix_training: bool  # True: trained on (prefix -> next word) samples

    @property
    def conditioned(self) -> bool:
        return "condition" in self.decoder.input


class PositionEmbedding(layers.Layer):
    """Adds a learned vector per position to a (batch, steps, width) sequence.

    A layer with its own weight, so the positions are trained and saved with the model. (An
    `Embedding` called on a constant `ops.arange` inside a functional model is evaluated once,
    at build time: its output becomes a random constant, never trained, never saved, and
    different in every process that rebuilds the model.)
    """

    def __init__(self, length: int, width: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.length = length
        self.width = width

    def build(self, input_shape: tuple) -> None:
        self.positions = self.add_weight(
            shape=(self.length, self.width), name="positions",
            initializer=keras.initializers.RandomUniform(-0.05, 0.05))

    def call(self, sequence: keras.KerasTensor) -> keras.KerasTensor:
        steps = ops.shape(sequence)[1]
        return sequence + ops.expand_dims(self.positions[:steps], 0)

    def get_config(self) -> dict:
        return {**super().get_config(), "length": self.length, "width": self.width}


def _study_inputs(feature_dim: int, regions: int | None) -> dict[str, keras.KerasTensor]:
    inputs = {
        "pooled": keras.Input((2, feature_dim), name="pooled"),
        "views": keras.Input((2,), name="views"),
    }
    if regions is not None:
        inputs["grid"] = keras.Input((2, regions, feature_dim), name="grid", dtype="float16")
    return inputs


def _embedding(matrix: np.ndarray, params: ModelParams, mask_zero: bool) -> layers.Embedding:
    return layers.Embedding(
        matrix.shape[0], matrix.shape[1], mask_zero=mask_zero,
        trainable=not params.freeze_embeddings,
        embeddings_initializer=keras.initializers.Constant(matrix), name="glove_embedding")


def _mean_of_views(inputs: dict[str, keras.KerasTensor]) -> keras.KerasTensor:
    """The pooled vectors averaged over the study's views (an empty slot counts for nothing)."""
    views = ops.expand_dims(inputs["views"], -1)
    return ops.sum(inputs["pooled"] * views, axis=1) / ops.maximum(ops.sum(views, axis=1), 1.0)


def _abnormal_head(inputs: dict[str, keras.KerasTensor], params: ModelParams
                   ) -> dict[str, keras.KerasTensor]:
    """{"abnormal": logits (batch, 1)} from the views' mean pooled vector, if conditioned."""
    if params.condition == "none":
        return {}
    mean = layers.Dropout(params.dropout, name="abnormal_dropout")(_mean_of_views(inputs))
    return {"abnormal": layers.Dense(1, name="abnormal_head")(mean)}


def _condition_input(params: ModelParams, width: int
                     ) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor | None]:
    """The decoder's `condition` input and its embedding (None when unconditioned)."""
    if params.condition == "none":
        return {}, None
    condition = keras.Input((1,), name="condition")
    return {"condition": condition}, layers.Dense(width, name="condition_embedding")(condition)


def _lstm_decoder_inputs(params: ModelParams, matrix: np.ndarray, max_len: int
                         ) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor,
                                    keras.KerasTensor, keras.KerasTensor]:
    """The LSTM decoders' inputs: the memory inputs, the tokens, their masked embedding, and
    the image vector (plus the condition's embedding when conditioned)."""
    image = keras.Input((params.units,), name="image")
    conditions, embedded = _condition_input(params, params.units)
    tokens = keras.Input((max_len - 1,), dtype="int32", name="tokens")
    words = _embedding(matrix, params, mask_zero=True)(tokens)
    words = layers.Dropout(params.dropout, name="word_dropout")(words)
    if embedded is not None:
        image_vector = layers.Add(name="conditioned_image")([image, embedded])
    else:
        image_vector = image
    return {"image": image, **conditions}, tokens, words, image_vector


def _merge(params: ModelParams, matrix: np.ndarray, feature_dim: int, max_len: int) -> CaptionModel:
    inputs = _study_inputs(feature_dim, None)
    image = layers.Dropout(params.dropout, name="image_dropout")(_mean_of_views(inputs))
    image = layers.Dense(params.units, activation="relu", name="image_dense")(image)
    encoder = keras.Model(inputs, {"image": image, **_abnormal_head(inputs, params)},
                          name="merge_encoder")

    memory, tokens, words, image_vector = _lstm_decoder_inputs(params, matrix, max_len)
    sequence = layers.LSTM(params.units, return_sequences=True, name="caption_lstm")(words)
    merged = layers.Add(name="merge")([sequence, ops.expand_dims(image_vector, 1)])
    hidden = layers.Dense(params.units, activation="relu", name="decoder_dense")(merged)
    logits = layers.Dense(matrix.shape[0], name="next_word")(hidden)
    decoder = keras.Model({**memory, "tokens": tokens}, {"logits": logits}, name="merge_decoder")
    return _assemble("merge", encoder, decoder, max_len, prefix_training=False)


def _bilstm_attention(params: ModelParams, matrix: np.ndarray, feature_dim: int,
                      max_len: int) -> CaptionModel:
    inputs = _study_inputs(feature_dim, None)
    frontal, lateral = inputs["pooled"][:, 0], inputs["pooled"][:, 1]
    if params.fuse == "concat":
        fused = layers.Concatenate(name="fuse_views")([frontal, lateral])
    else:
        fused = layers.Add(name="fuse_views")([frontal, lateral])
    fused = layers.Dropout(params.dropout, name="image_dropout")(fused)
    image = layers.Dense(params.units, activation="relu", name="image_encoder")(fused)
    encoder = keras.Model(inputs, {"image": image, **_abnormal_head(inputs, params)},
                          name="bilstm_encoder")

    memory, tokens, words, image_vector = _lstm_decoder_inputs(params, matrix, max_len)
    steps = layers.Bidirectional(layers.LSTM(params.units, return_sequences=True),
                                 name="bilstm_1")(words)
    steps = layers.Bidirectional(layers.LSTM(params.units, return_sequences=True),
                                 name="bilstm_2")(steps)
    query = layers.Dense(2 * params.units, name="attention_query")(image_vector)
    context = layers.AdditiveAttention(name="additive_attention")(
        [ops.expand_dims(query, 1), steps])
    joined = layers.Concatenate(name="context_and_image")([context[:, 0], image_vector])
    hidden = layers.Dense(params.units, activation="relu", name="decoder_dense")(joined)
    logits = layers.Dense(matrix.shape[0], name="next_word")(hidden)
    decoder = keras.Model({**memory, "tokens": tokens}, {"logits": logits},
                          name="bilstm_decoder")
    return _assemble("bilstm_attention", encoder, decoder, max_len, prefix_training=True)


def _transformer(params: ModelParams, matrix: np.ndarray, feature_dim: int, max_len: int,
                 regions: int) -> CaptionModel:
    d = params.units
    inputs = _study_inputs(feature_dim, regions)
    grid = ops.reshape(ops.cast(inputs["grid"], "float32"), (-1, 2 * regions, feature_dim))
    grid = layers.Dropout(params.dropout, name="region_dropout")(grid)
    regions_d = layers.Dense(d, name="region_projection")(grid)
    regions_d = PositionEmbedding(2 * regions, d, name="region_position")(regions_d)
    regions_d = layers.LayerNormalization(name="region_norm")(regions_d)
    region_mask = ops.repeat(inputs["views"], regions, axis=1)
    encoder = keras.Model(inputs, {"regions": regions_d, "region_mask": region_mask,
                                   **_abnormal_head(inputs, params)},
                          name="transformer_encoder")

    conditions, embedded = _condition_input(params, d)
    memory = {"regions": keras.Input((2 * regions, d), name="regions"),
              "region_mask": keras.Input((2 * regions,), name="region_mask"), **conditions}
    tokens = keras.Input((max_len - 1,), dtype="int32", name="tokens")
    words = _embedding(matrix, params, mask_zero=False)(tokens)
    words = layers.Dense(d, name="word_projection")(words)
    x = PositionEmbedding(max_len - 1, d, name="word_position")(words)
    if embedded is not None:
        x = x + ops.expand_dims(embedded, 1)
    x = layers.Dropout(params.dropout, name="word_dropout")(x)
    cross_mask = ops.repeat(ops.expand_dims(memory["region_mask"], 1), max_len - 1, axis=1)
    attention = None
    for i in range(params.layers):
        attended = layers.MultiHeadAttention(params.heads, d // params.heads,
                                             dropout=params.dropout, name=f"self_attention_{i}")(
            x, x, use_causal_mask=True)
        x = layers.LayerNormalization(name=f"self_norm_{i}")(x + attended)
        attended, attention = layers.MultiHeadAttention(
            params.heads, d // params.heads, dropout=params.dropout, name=f"cross_attention_{i}")(
            x, memory["regions"], attention_mask=cross_mask, return_attention_scores=True)
        x = layers.LayerNormalization(name=f"cross_norm_{i}")(x + attended)
        hidden = layers.Dense(4 * d, activation="gelu", name=f"ffn_in_{i}")(x)
        hidden = layers.Dropout(params.dropout, name=f"ffn_dropout_{i}")(hidden)
        x = layers.LayerNormalization(name=f"ffn_norm_{i}")(
            x + layers.Dense(d, name=f"ffn_out_{i}")(hidden))
    logits = layers.Dense(matrix.shape[0], name="next_word")(x)
    # Heads averaged: (batch, steps, 2 * regions), where each step looked, for heat-maps.
    decoder = keras.Model({**memory, "tokens": tokens},
                          {"logits": logits, "attention": ops.mean(attention, axis=1)},
                          name="transformer_decoder")
    return _assemble("transformer", encoder, decoder, max_len, prefix_training=False)


def _assemble(kind: str, encoder: keras.Model, decoder: keras.Model, max_len: int,
              prefix_training: bool) -> CaptionModel:
    """The training model: the encoder and decoder joined, with the reference's `condition`
    fed in (teacher forcing) and the encoder's `abnormal` logits as a second output."""
    tokens = keras.Input((max_len - 1,), dtype="int32", name="tokens")
    inputs = {name: keras.Input(t.shape[1:], dtype=t.dtype, name=name)
              for name, t in encoder.input.items()}
    if "condition" in decoder.input:
        inputs["condition"] = keras.Input((1,), name="condition")
    memory = encoder({k: v for k, v in inputs.items() if k in encoder.input})
    decoded = decoder({**{k: v for k, v in memory.items() if k in decoder.input},
                       **{k: v for k, v in inputs.items() if k in decoder.input},
                       "tokens": tokens})
    outputs = {"logits": decoded["logits"]}
    if "abnormal" in memory:
        outputs["abnormal"] = memory["abnormal"]
    train_model = keras.Model({**inputs, "tokens": tokens}, outputs, name=f"{kind}_captioner")
    return CaptionModel(kind, encoder, decoder, train_model, prefix_training)


def build_model(params: ModelParams, matrix: np.ndarray, feature_dim: int, max_len: int,
                regions: int | None = None) -> CaptionModel:
    """The `params.kind` caption model over a (vocab, dim) embedding `matrix`."""
    if params.kind == "merge":
        return _merge(params, matrix, feature_dim, max_len)
    if params.kind == "bilstm_attention":
        return _bilstm_attention(params, matrix, feature_dim, max_len)
    if regions is None:
        raise ValueError("the transformer needs the spatial grid (features.grid: true)")
    return _transformer(params, matrix, feature_dim, max_len, regions)


def masked_loss(targets: keras.KerasTensor, logits: keras.KerasTensor) -> keras.KerasTensor:
    """Cross-entropy averaged over real tokens only: padding (id 0) counts for nothing."""
    mask = ops.cast(ops.not_equal(targets, 0), "float32")
    losses = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    return ops.sum(losses * mask) / ops.maximum(ops.sum(mask), 1.0)


class MaskedAccuracy(keras.metrics.Metric):
    """Next-word accuracy over real tokens only."""

    def __init__(self, name: str = "accuracy", **kwargs: object) -> None:
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable((), initializer="zeros", name="correct")
        self.total = self.add_variable((), initializer="zeros", name="total")

    def update_state(self, targets, logits, sample_weight=None) -> None:
        mask = ops.cast(ops.not_equal(targets, 0), "float32")
        hits = ops.cast(ops.equal(ops.cast(targets, "int32"),
                                  ops.cast(ops.argmax(logits, axis=-1), "int32")), "float32")
        self.correct.assign_add(ops.sum(hits * mask))
        self.total.assign_add(ops.sum(mask))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self) -> None:
        self.correct.assign(0.0)
        self.total.assign(0.0)
