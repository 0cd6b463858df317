"""Training: tf.data input, masked loss, selection on the validation split, resume, DVCLive.

Resume: Keras' BackupAndRestore keeps the model, optimizer and epoch in a backup folder beside
the outputs (DVC deletes declared outputs before a rerun, not that folder), and
`SelectOnValidation` keeps its best score, its patience counter and the best weights there too,
so an interrupted `dvc repro` continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..atomic import write_json
from ..config import DecodeParams, ModelParams, TrainParams
from ..data.tokenizer import Vocabulary
from ..evaluation.scoring import text_metrics
from .decoding import Decoder
from .models import CaptionModel, MaskedAccuracy, masked_loss
from .studies import Studies

log = logging.getLogger(__name__)


def training_pairs(studies: Studies, prefix_training: bool) -> tuple[np.ndarray, np.ndarray]:
    """(study index, prefix length) pairs: one per study, or one per prefix for prefix models."""
    if not prefix_training:
        return np.arange(len(studies)), np.zeros(len(studies), dtype=np.int64)
    lengths = (studies.tokens != 0).sum(axis=1)
    index = np.repeat(np.arange(len(studies)), lengths - 1)
    prefix = np.concatenate([np.arange(1, n) for n in lengths])
    return index, prefix


def make_dataset(studies: Studies, model: CaptionModel, batch_size: int, shuffle: bool,
                 seed: int, first_epoch: int = 0) -> tf.data.Dataset:
    """Batches of (inputs, targets). Teacher forcing: tokens[:-1] -> tokens[1:]; prefix models:
    tokens[:t] (0-padded) -> tokens[t]. Built from a generator so that large feature arrays
    never become graph constants."""
    index, prefix = training_pairs(studies, model.prefix_training)
    length = studies.tokens.shape[1] - 1
    epoch = [first_epoch]  # each epoch's order depends on (seed, epoch) only, also on resume

    def batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        order = np.arange(len(index))
        if shuffle:
            order = np.random.default_rng(seed + epoch[0]).permutation(len(index))
            epoch[0] += 1
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            rows = index[chosen]
            inputs = studies.inputs(rows)
            tokens = studies.tokens[rows]
            if model.prefix_training:
                t = prefix[chosen]
                keep = np.arange(length)[None, :] < t[:, None]
                inputs["tokens"] = np.where(keep, tokens[:, :length], 0).astype(np.int32)
                targets = {"logits": tokens[np.arange(len(rows)), t].astype(np.int32)}
            else:
                inputs["tokens"] = tokens[:, :-1]
                targets = {"logits": tokens[:, 1:]}
            if model.conditioned:
                # Teacher forcing of the labels too: the decoder learns to write what it is told.
                labels = studies.label_matrix(model.labels)[rows]
                inputs["condition"] = labels
                targets["labels"] = labels
            yield inputs, targets

    first_inputs, first_targets = next(batches())
    epoch[0] = first_epoch
    signature = tuple(
        {k: tf.TensorSpec((None, *v.shape[1:]), tf.as_dtype(v.dtype)) for k, v in part.items()}
        for part in (first_inputs, first_targets))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    steps = math.ceil(len(index) / batch_size)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


class ValidationBleu(keras.callbacks.Callback):
    """Adds `val_bleu4` (greedy decoding of the validation split) to each epoch's logs."""

    def __init__(self, caption_model: CaptionModel, vocab: Vocabulary, val: Studies) -> None:
        super().__init__()
        self.decoder = Decoder(caption_model, vocab)  # label thresholds at 0.5 until chosen
        self.val = val

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        decoded = self.decoder.decode(self.val.inputs(), DecodeParams(method="greedy"))
        scores = text_metrics(self.val.texts, self.decoder.texts(decoded))
        if logs is not None:
            logs["val_bleu4"] = scores["bleu4"]
            logs["val_distinct"] = float(scores["distinct"])


class SelectOnValidation(keras.callbacks.Callback):
    """Keeps the weights of the best epoch on the monitored validation score, stops training
    after `patience` epochs without improvement, and persists both across a resume."""

    def __init__(self, monitor: str, patience: int, state_dir: Path) -> None:
        super().__init__()
        self.monitor = monitor
        self.sign = 1.0 if monitor == "val_bleu4" else -1.0  # higher is better for BLEU
        self.patience = patience
        self.state_path = state_dir / "selection.json"
        self.weights_path = state_dir / "best.weights.h5"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.best = state.get("best", -math.inf)
        self.best_epoch = state.get("best_epoch", -1)
        self.wait = state.get("wait", 0)
        self.epochs_done = state.get("epochs_done", 0)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = float((logs or {})[self.monitor])
        score = self.sign * value
        if score > self.best:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            self.model.save_weights(self.weights_path)
        else:
            self.wait += 1
        self.epochs_done = epoch + 1
        write_json(self.state_path, {"best": self.best, "best_epoch": self.best_epoch,
                                     "wait": self.wait, "monitor": self.monitor,
                                     "epochs_done": self.epochs_done})
        if self.wait >= self.patience:
            log.info("early stop: %s has not improved for %d epochs", self.monitor, self.wait)
            self.model.stop_training = True

    @property
    def best_value(self) -> float:
        return self.sign * self.best


def prepare_state_dir(state_dir: Path, model_params: ModelParams, params: TrainParams,
                      vocab: Vocabulary, train_uids: np.ndarray) -> None:
    """Make `state_dir` hold only resumable state of this very run: state left by a run with
    other params, vocabulary or training studies is deleted, since resuming from it would mix
    two runs."""
    fingerprint = hashlib.sha256(json.dumps(
        [dataclasses.asdict(model_params), dataclasses.asdict(params), len(vocab),
         np.asarray(train_uids).tolist()], sort_keys=True).encode()).hexdigest()
    stamp = state_dir / "fingerprint"
    if state_dir.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The probability threshold with the best F1 for one label (on validation), and that F1.
    Ties go to the highest threshold, the most conservative one."""
    labels = labels.astype(bool)
    best_f1, best_t = -1.0, 0.5
    for t in np.unique(probabilities)[::-1]:
        guess = probabilities >= t
        true_positive = float((guess & labels).sum())
        f1 = 2 * true_positive / max(guess.sum() + labels.sum(), 1)
        if f1 > best_f1:
            best_f1, best_t = f1, float(t)
    return best_t, best_f1


# A label with no positive on validation has no F1 to maximise: it keeps this threshold, the
# one its binary cross-entropy is calibrated for, rather than one fitted to no evidence.
FALLBACK_THRESHOLD = 0.5


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray, names: tuple[str, ...]
                      ) -> tuple[np.ndarray, dict[str, dict]]:
    """Per label (columns of the (N, L) arrays): the threshold with the best validation F1,
    or FALLBACK_THRESHOLD where validation has no positive. Also a summary per label."""
    thresholds = np.full(len(names), FALLBACK_THRESHOLD)
    summary: dict[str, dict] = {}
    for j, name in enumerate(names):
        positives = int(labels[:, j].sum())
        if positives:
            thresholds[j], f1 = choose_threshold(probabilities[:, j], labels[:, j])
        else:
            f1 = None
        summary[name] = {"threshold": round(float(thresholds[j]), 4),
                         "val_f1": None if f1 is None else round(f1, 4),
                         "val_positives": positives, "fallback": not positives}
    return thresholds, summary


def compile_for_training(caption_model: CaptionModel, learning_rate: float) -> None:
    """Compile the training model: masked caption loss and accuracy, plus, when conditioned,
    the label head's binary cross-entropy (averaged over its labels) and AUC (over all)."""
    losses: dict[str, object] = {"logits": masked_loss}
    metrics: dict[str, list] = {"logits": [MaskedAccuracy()]}
    if caption_model.conditioned:
        losses["labels"] = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics["labels"] = [keras.metrics.AUC(from_logits=True, name="auc")]
    # Keras' default jit_compile="auto" turns XLA on, which is several times slower on CPU here.
    caption_model.train_model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, clipnorm=5.0), loss=losses,
        metrics=metrics, jit_compile=False)


def train(caption_model: CaptionModel, vocab: Vocabulary, train_set: Studies, val_set: Studies,
          params: TrainParams, state_dir: Path, live_dir: Path) -> dict[str, object]:
    """Fit with teacher forcing; leave the best validation epoch's weights in the model."""
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    model = caption_model.train_model
    compile_for_training(caption_model, params.learning_rate)
    state_dir.mkdir(parents=True, exist_ok=True)
    resuming = (state_dir / "selection.json").exists()
    selection = SelectOnValidation(params.monitor, params.patience, state_dir)
    train_data = make_dataset(train_set, caption_model, params.batch_size, True, params.seed,
                              first_epoch=selection.epochs_done)
    val_data = make_dataset(val_set, caption_model, params.batch_size, False, params.seed)
    with Live(str(live_dir), resume=resuming, save_dvc_exp=False, dvcyaml=None) as live:
        model.fit(
            train_data, validation_data=val_data, epochs=params.epochs, verbose=2,
            shuffle=False,  # make_dataset shuffles, seeded (Keras ignores this for a Dataset)
            callbacks=[
                keras.callbacks.BackupAndRestore(str(state_dir / "backup")),
                ValidationBleu(caption_model, vocab, val_set),
                selection,
                DVCLiveCallback(live=live),
            ])
    if selection.weights_path.exists():
        model.load_weights(selection.weights_path)
    return {"epochs_run": selection.epochs_done, "best_epoch": selection.best_epoch + 1,
            "monitor": params.monitor, "best_value": round(selection.best_value, 4),
            "resumed": resuming}
