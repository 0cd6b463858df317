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

Label conditioning (`model.condition`) against mode collapse: every encoder also predicts labels
of the study from the views' mean pooled vector (a multi-label head, logits trained with binary
cross-entropy against the labeller's reading of the reference text): `abnormal` predicts the one
normal/abnormal label, `findings` the labeller's 13 findings plus abnormal. Every decoder takes
those labels as its `condition` input, through learned prompt embeddings, one per (label, state):
the LSTM models add the prompts to the image vector, the transformer adds them to every word and
also attends to them as extra memory tokens beside the regions. Training feeds the reference's
labels (teacher forcing); decoding feeds the encoder's predictions, each thresholded at a value
chosen on the validation split. Without it (`none`), the decoder falls back on the most likely
report, a normal one, for every study.

Exam title (`model.exam_title`): the report template's title as one learned vector, added to the
image vector (LSTM models) or to every word and attended to as one more memory token
(transformer): how the report is worded (data/titles.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers, ops

from ..settings.model import ModelParams
from .studies import LABELS


def label_names(condition: str) -> tuple[str, ...]:
    """The labels a model with `model.condition: condition` predicts and is conditioned on."""
    return {"none": (), "abnormal": ("abnormal",), "findings": LABELS}[condition]


@dataclass
class CaptionModel:
    kind: str
    encoder: keras.Model  # study inputs -> memory (dict of tensors), plus `labels` logits
    decoder: keras.Model  # memory (+ condition) + tokens -> logits; plus attention
    train_model: keras.Model  # study inputs (+ condition) + tokens -> logits (+ labels)
    prefix_training: bool  # True: trained on (prefix -> next word) samples
    labels: tuple[str, ...] = ()  # the condition's labels, in the order of its columns
    _functions: dict = field(default_factory=dict, repr=False)

    @property
    def conditioned(self) -> bool:
        return bool(self.labels)

    def inference_function(self, part: str):
        """`encoder` or `decoder` as a tf.function for inference, built once per model with a
        signature whose batch dimension is free. So it is traced once, whatever the batch
        size (the last chunk of a split, a beam's k rows per study) and however many decoders
        share the model; a tf.function made per decoder, or traced per input shape, retraces
        every epoch of training (TensorFlow's "tf.function retracing" warning)."""
        if part not in self._functions:
            import tensorflow as tf

            network = {"encoder": self.encoder, "decoder": self.decoder}[part]
            signature = {name: tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=name)
                         for name, t in network.input.items()}
            self._functions[part] = tf.function(_Inference(network),
                                                input_signature=[signature])
        return self._functions[part]


class _Inference:
    """`network(inputs, training=False)` as a callable object. TensorFlow counts the traces of
    a tf.function under its Python function's code object, shared by every lambda made from
    one line; an object keeps each model's and part's count apart, so several models in one
    process (the benchmarks, the tests) do not add up to a false "retracing" warning."""

    def __init__(self, network: keras.Model) -> None:
        self.network = network

    def __call__(self, inputs: dict) -> dict:
        return self.network(inputs, training=False)


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


class RetrievedSegments(layers.Layer):
    """Retrieved impressions as memory tokens: (batch, k, T, width) embedded words plus a
    learned vector per rank (which neighbour: the segment) and per word position, flattened to
    (batch, k * T, width)."""

    def __init__(self, k: int, length: int, width: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.k, self.length, self.width = k, length, width

    def build(self, input_shape: tuple) -> None:
        init = keras.initializers.RandomUniform(-0.05, 0.05)
        self.ranks = self.add_weight(shape=(self.k, self.width), name="ranks", initializer=init)
        self.positions = self.add_weight(shape=(self.length, self.width), name="positions",
                                         initializer=init)

    def call(self, words: keras.KerasTensor) -> keras.KerasTensor:
        words = words + self.ranks[None, :, None, :] + self.positions[None, None, :, :]
        return ops.reshape(words, (-1, self.k * self.length, self.width))

    def get_config(self) -> dict:
        return {**super().get_config(), "k": self.k, "length": self.length, "width": self.width}


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


class LabelPrompts(layers.Layer):
    """One learned prompt vector per (label, state): a (batch, labels) vector of 0/1 states
    becomes (batch, labels, width), each label's prompt for its state."""

    def __init__(self, labels: int, width: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.labels = labels
        self.width = width

    def build(self, input_shape: tuple) -> None:
        self.prompts = self.add_weight(
            shape=(self.labels, 2, self.width), name="prompts",
            initializer=keras.initializers.RandomNormal(stddev=0.05))

    def call(self, condition: keras.KerasTensor) -> keras.KerasTensor:
        state = ops.expand_dims(ops.cast(condition, self.prompts.dtype), -1)
        return state * self.prompts[:, 1] + (1.0 - state) * self.prompts[:, 0]

    def get_config(self) -> dict:
        return {**super().get_config(), "labels": self.labels, "width": self.width}


def _label_head(inputs: dict[str, keras.KerasTensor], params: ModelParams
                ) -> dict[str, keras.KerasTensor]:
    """{"labels": logits (batch, labels)} from the views' mean pooled vector, if conditioned."""
    names = label_names(params.condition)
    if not names:
        return {}
    mean = layers.Dropout(params.dropout, name="label_dropout")(_mean_of_views(inputs))
    return {"labels": layers.Dense(len(names), name="label_head")(mean)}


def _condition_input(params: ModelParams, width: int
                     ) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor | None]:
    """The decoder's `condition` input and its prompts, (batch, labels, width) (None when
    unconditioned)."""
    names = label_names(params.condition)
    if not names:
        return {}, None
    condition = keras.Input((len(names),), name="condition")
    return {"condition": condition}, LabelPrompts(len(names), width, name="label_prompts")(
        condition)


def _title_input(params: ModelParams, exam_titles: int, width: int
                 ) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor | None]:
    """The decoder's `exam_title` input, (batch, 1) ids, and its learned vector, (batch, 1,
    width) (None without `model.exam_title`). Id 0, no title, has a vector of its own."""
    if not params.exam_title:
        return {}, None
    if exam_titles < 1:
        raise ValueError("model.exam_title needs the exam-title vocabulary's size")
    title = keras.Input((1,), dtype="int32", name="exam_title")
    return {"exam_title": title}, layers.Embedding(
        exam_titles, width, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.05),
        name="exam_title_embedding")(title)


def _lstm_decoder_inputs(params: ModelParams, matrix: np.ndarray, max_len: int,
                         exam_titles: int
                         ) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor,
                                    keras.KerasTensor, keras.KerasTensor]:
    """The LSTM decoders' inputs: the memory inputs, the tokens, their masked embedding, and
    the image vector (plus the condition's and the exam title's vectors when given)."""
    image = keras.Input((params.units,), name="image")
    conditions, prompts = _condition_input(params, params.units)
    titles, title = _title_input(params, exam_titles, params.units)
    tokens = keras.Input((max_len - 1,), dtype="int32", name="tokens")
    words = _embedding(matrix, params, mask_zero=True)(tokens)
    words = layers.Dropout(params.dropout, name="word_dropout")(words)
    added = [image]
    if prompts is not None:
        added.append(ops.sum(prompts, axis=1))
    if title is not None:
        added.append(title[:, 0])
    image_vector = layers.Add(name="conditioned_image")(added) if len(added) > 1 else image
    return {"image": image, **conditions, **titles}, tokens, words, image_vector


def _merge(params: ModelParams, matrix: np.ndarray, feature_dim: int, max_len: int,
           exam_titles: int) -> CaptionModel:
    inputs = _study_inputs(feature_dim, None)
    image = layers.Dropout(params.dropout, name="image_dropout")(_mean_of_views(inputs))
    image = layers.Dense(params.units, activation="relu", name="image_dense")(image)
    encoder = keras.Model(inputs, {"image": image, **_label_head(inputs, params)},
                          name="merge_encoder")

    memory, tokens, words, image_vector = _lstm_decoder_inputs(params, matrix, max_len,
                                                               exam_titles)
    sequence = layers.LSTM(params.units, return_sequences=True, name="caption_lstm")(words)
    merged = layers.Add(name="merge")([sequence, ops.expand_dims(image_vector, 1)])
    hidden = layers.Dense(params.units, activation="relu", name="decoder_dense")(merged)
    logits = layers.Dense(matrix.shape[0], name="next_word")(hidden)
    decoder = keras.Model({**memory, "tokens": tokens}, {"logits": logits}, name="merge_decoder")
    return _assemble("merge", encoder, decoder, max_len, False, label_names(params.condition))


def _bilstm_attention(params: ModelParams, matrix: np.ndarray, feature_dim: int,
                      max_len: int, exam_titles: int) -> CaptionModel:
    inputs = _study_inputs(feature_dim, None)
    frontal, lateral = inputs["pooled"][:, 0], inputs["pooled"][:, 1]
    if params.fuse == "concat":
        fused = layers.Concatenate(name="fuse_views")([frontal, lateral])
    else:
        fused = layers.Add(name="fuse_views")([frontal, lateral])
    fused = layers.Dropout(params.dropout, name="image_dropout")(fused)
    image = layers.Dense(params.units, activation="relu", name="image_encoder")(fused)
    encoder = keras.Model(inputs, {"image": image, **_label_head(inputs, params)},
                          name="bilstm_encoder")

    memory, tokens, words, image_vector = _lstm_decoder_inputs(params, matrix, max_len,
                                                               exam_titles)
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
    return _assemble("bilstm_attention", encoder, decoder, max_len, True,
                     label_names(params.condition))


def _transformer(params: ModelParams, matrix: np.ndarray, feature_dim: int, max_len: int,
                 regions: int, exam_titles: int) -> CaptionModel:
    d = params.units
    inputs = _study_inputs(feature_dim, regions)
    grid = ops.reshape(ops.cast(inputs["grid"], "float32"), (-1, 2 * regions, feature_dim))
    grid = layers.Dropout(params.dropout, name="region_dropout")(grid)
    regions_d = layers.Dense(d, name="region_projection")(grid)
    regions_d = PositionEmbedding(2 * regions, d, name="region_position")(regions_d)
    regions_d = layers.LayerNormalization(name="region_norm")(regions_d)
    region_mask = ops.repeat(inputs["views"], regions, axis=1)
    encoder = keras.Model(inputs, {"regions": regions_d, "region_mask": region_mask,
                                   **_label_head(inputs, params)},
                          name="transformer_encoder")

    conditions, prompts = _condition_input(params, d)
    memory = {"regions": keras.Input((2 * regions, d), name="regions"),
              "region_mask": keras.Input((2 * regions,), name="region_mask"), **conditions}
    tokens = keras.Input((max_len - 1,), dtype="int32", name="tokens")
    embed = _embedding(matrix, params, mask_zero=False)
    project = layers.Dense(d, name="word_projection")
    x = PositionEmbedding(max_len - 1, d, name="word_position")(project(embed(tokens)))
    # What cross-attention looks at: the regions, then (conditioned) one prompt per label, then
    # (exam title) the title's vector, then (retrieval) the words of the k nearest training
    # impressions, padding masked.
    keys, key_mask = [memory["regions"]], [memory["region_mask"]]
    if prompts is not None:
        x = x + ops.expand_dims(ops.sum(prompts, axis=1), 1)
        keys.append(prompts)
        key_mask.append(ops.ones_like(memory["condition"]))
    titles, title = _title_input(params, exam_titles, d)
    if title is not None:
        memory.update(titles)
        x = x + title
        keys.append(title)
        key_mask.append(ops.ones_like(ops.cast(memory["exam_title"], "float32")))
    if params.retrieval_k:
        k = params.retrieval_k
        memory["retrieved"] = keras.Input((k, max_len - 1), dtype="int32", name="retrieved")
        retrieved = RetrievedSegments(k, max_len - 1, d, name="retrieved_segments")(
            project(embed(memory["retrieved"])))
        keys.append(layers.LayerNormalization(name="retrieved_norm")(retrieved))
        key_mask.append(ops.reshape(ops.cast(ops.not_equal(memory["retrieved"], 0), "float32"),
                                    (-1, k * (max_len - 1))))
    keys = ops.concatenate(keys, axis=1) if len(keys) > 1 else keys[0]
    key_mask = ops.concatenate(key_mask, axis=1) if len(key_mask) > 1 else key_mask[0]
    x = layers.Dropout(params.dropout, name="word_dropout")(x)
    cross_mask = ops.repeat(ops.expand_dims(key_mask, 1), max_len - 1, axis=1)
    attention = None
    for i in range(params.layers):
        attended = layers.MultiHeadAttention(params.heads, d // params.heads,
                                             dropout=params.dropout, name=f"self_attention_{i}")(
            x, x, use_causal_mask=True)
        x = layers.LayerNormalization(name=f"self_norm_{i}")(x + attended)
        attended, attention = layers.MultiHeadAttention(
            params.heads, d // params.heads, dropout=params.dropout, name=f"cross_attention_{i}")(
            x, keys, attention_mask=cross_mask, return_attention_scores=True)
        x = layers.LayerNormalization(name=f"cross_norm_{i}")(x + attended)
        hidden = layers.Dense(4 * d, activation="gelu", name=f"ffn_in_{i}")(x)
        hidden = layers.Dropout(params.dropout, name=f"ffn_dropout_{i}")(hidden)
        x = layers.LayerNormalization(name=f"ffn_norm_{i}")(
            x + layers.Dense(d, name=f"ffn_out_{i}")(hidden))
    logits = layers.Dense(matrix.shape[0], name="next_word")(x)
    # Where each step looked among the image regions, for heat-maps: heads averaged, the other
    # memory tokens left out and the rest renormalised, (batch, steps, 2 * regions).
    looked = ops.mean(attention, axis=1)[:, :, : 2 * regions]
    looked = looked / ops.maximum(ops.sum(looked, axis=-1, keepdims=True), 1e-9)
    decoder = keras.Model({**memory, "tokens": tokens}, {"logits": logits, "attention": looked},
                          name="transformer_decoder")
    return _assemble("transformer", encoder, decoder, max_len, False,
                     label_names(params.condition))


def _assemble(kind: str, encoder: keras.Model, decoder: keras.Model, max_len: int,
              prefix_training: bool, labels: tuple[str, ...]) -> CaptionModel:
    """The training model: the encoder and decoder joined, with the reference's labels fed in
    as the `condition` (teacher forcing) and the encoder's `labels` logits as a second output."""
    tokens = keras.Input((max_len - 1,), dtype="int32", name="tokens")
    inputs = {name: keras.Input(t.shape[1:], dtype=t.dtype, name=name)
              for name, t in encoder.input.items()}
    for name, t in decoder.input.items():  # the condition, the exam title, the retrieval memory
        if name not in encoder.output and name != "tokens":
            inputs[name] = keras.Input(t.shape[1:], dtype=t.dtype, name=name)
    memory = encoder({k: v for k, v in inputs.items() if k in encoder.input})
    decoded = decoder({**{k: v for k, v in memory.items() if k in decoder.input},
                       **{k: v for k, v in inputs.items() if k in decoder.input},
                       "tokens": tokens})
    outputs = {"logits": decoded["logits"]}
    if "labels" in memory:
        outputs["labels"] = memory["labels"]
    train_model = keras.Model({**inputs, "tokens": tokens}, outputs, name=f"{kind}_captioner")
    return CaptionModel(kind, encoder, decoder, train_model, prefix_training, labels)


def build_model(params: ModelParams, matrix: np.ndarray, feature_dim: int, max_len: int,
                regions: int | None = None, exam_titles: int = 0) -> CaptionModel:
    """The `params.kind` caption model over a (vocab, dim) embedding `matrix`; `exam_titles`
    is the size of the exam-title vocabulary, the unknown id included (`model.exam_title`)."""
    if params.kind == "merge":
        return _merge(params, matrix, feature_dim, max_len, exam_titles)
    if params.kind == "bilstm_attention":
        return _bilstm_attention(params, matrix, feature_dim, max_len, exam_titles)
    if regions is None:
        raise ValueError("the transformer needs the spatial grid (features.grid: true)")
    return _transformer(params, matrix, feature_dim, max_len, regions, exam_titles)


def ensemble(members: Sequence[CaptionModel]) -> CaptionModel:
    """One caption model that averages `members` (same kind, vocabulary and inputs; other
    weights, e.g. other training seeds): the label probabilities and each next word's
    probability are the members' means, and its attention is their mean. Its encoder returns
    each member's memory under `member<i>_<name>` (the labels once, averaged) and its decoder
    takes them back, so every decoding method runs on it unchanged; its `train_model` holds
    every member's weights, in order, for saving and loading as one file."""
    if len(members) == 1:
        return members[0]
    first = members[0]
    # A functional model's operations need unique names; Keras saves weights by class name and
    # position, not by these names, so renaming changes no weights file.
    for i, member in enumerate(members):
        for network in (member.encoder, member.decoder, member.train_model):
            if not network.name.startswith("member"):
                network.name = f"member{i}_{network.name}"
    memory_names = [set(m.encoder.output) - {"labels"} for m in members]
    study = {name: keras.Input(t.shape[1:], dtype=t.dtype, name=name)
             for name, t in first.encoder.input.items()}
    memory: dict[str, keras.KerasTensor] = {}
    probabilities = []
    for i, member in enumerate(members):
        for name, value in member.encoder(study).items():
            if name == "labels":
                probabilities.append(ops.sigmoid(ops.cast(value, "float32")))
            else:
                memory[f"member{i}_{name}"] = value
    if probabilities:
        mean = ops.clip(ops.mean(ops.stack(probabilities), axis=0), 1e-7, 1.0 - 1e-7)
        memory["labels"] = ops.log(mean) - ops.log1p(-mean)  # back to logits
    encoder = keras.Model(study, memory, name=f"{first.kind}_ensemble_encoder")

    given: dict[str, keras.KerasTensor] = {}
    word_logits, attention = [], []
    for i, member in enumerate(members):
        feed = {}
        for name, t in member.decoder.input.items():
            key = f"member{i}_{name}" if name in memory_names[i] else name
            if key not in given:
                given[key] = keras.Input(t.shape[1:], dtype=t.dtype, name=key)
            feed[name] = given[key]
        out = member.decoder(feed)
        word_logits.append(out["logits"])
        if "attention" in out:
            attention.append(out["attention"])
    outputs = {"logits": _mean_probability(word_logits)}
    if attention:
        outputs["attention"] = ops.mean(ops.stack(attention), axis=0)
    decoder = keras.Model(given, outputs, name=f"{first.kind}_ensemble_decoder")

    inputs = {name: keras.Input(t.shape[1:], dtype=t.dtype, name=name)
              for name, t in first.train_model.input.items()}
    combined = {"logits": _mean_probability([m.train_model(inputs)["logits"] for m in members])}
    train_model = keras.Model(inputs, combined, name=f"{first.kind}_ensemble")
    return CaptionModel(first.kind, encoder, decoder, train_model, first.prefix_training,
                        first.labels)


def _mean_probability(logits: list[keras.KerasTensor]) -> keras.KerasTensor:
    """log of the members' mean next-word probability (normalised logits), computed stably
    from each member's logits."""
    log_probabilities = [ops.log_softmax(ops.cast(x, "float32"), axis=-1) for x in logits]
    return (ops.logsumexp(ops.stack(log_probabilities), axis=0)
            - float(np.log(len(log_probabilities))))


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
