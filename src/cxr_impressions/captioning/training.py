"""Training: tf.data input, masked loss, selection on the validation split, resume, DVCLive.

Resume: Keras' BackupAndRestore keeps the model, optimizer and epoch in a backup folder beside
the outputs (DVC deletes declared outputs before a rerun, not that folder). `SelectOnValidation`
keeps its per-epoch scores and the best weights there too, and `MirrorLive` a copy of the DVCLive
folder (a declared output, so deleted by DVC before the rerun). The backup is written last at
each epoch's end, so the epoch it records is the one everything resumes from: the selection and
the DVCLive curves are cut back to it, and DVCLive continues at that step. An interrupted
`dvc repro` therefore continues where it stopped, with no epoch lost or logged twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..atomic import atomic_path, write_json
from ..data.titles import TitleVocabulary, hide_titles
from ..data.tokenizer import Vocabulary
from ..errors import InputError
from ..evaluation.scoring import text_metrics
from ..schedules import learning_rate, load_moving_average, restore_raw
from ..settings.decoding import DecodingSettings
from ..settings.model import ModelParams
from ..settings.train import TrainParams
from .decoding import Decoder
from .distribute import per_replica
from .models import CaptionModel, MaskedAccuracy, ensemble, masked_loss
from .retrieval import MemoryBank
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


def attach_memory(splits: dict[str, Studies], params: ModelParams
                  ) -> tuple[MemoryBank | None, TitleVocabulary | None]:
    """Give each split (`train` first) what the model takes beside the images: for
    `model.retrieval_k`, each study's retrieved training impressions (the training split is the
    memory bank, and a training study never retrieves itself, by uid); for `model.exam_title`,
    its title ids (the vocabulary from the training split). Returns the bank and the
    vocabulary (None where off), which the bundle saves."""
    train = splits["train"]
    bank = titles = None
    if params.retrieval_k:
        bank = MemoryBank.from_studies(train)
        for split in splits.values():
            split.retrieved = bank.retrieve(split.pooled, split.views, params.retrieval_k,
                                            uids=split.uids)
    if params.exam_title:
        titles = TitleVocabulary.from_titles(train.titles, params.exam_title_min_count)
        for split in splits.values():
            split.exam_title = titles.encode(split.titles)
    return bank, titles


def make_dataset(studies: Studies, model: CaptionModel, batch_size: int, shuffle: bool,
                 seed: int, first_epoch: int = 0, title_dropout: float = 0.0) -> tf.data.Dataset:
    """Batches of (inputs, targets). Teacher forcing: tokens[:-1] -> tokens[1:]; prefix models:
    tokens[:t] (0-padded) -> tokens[t]. Built from a generator so that large feature arrays
    never become graph constants. With `title_dropout`, about that share of each epoch's
    studies is shown with no exam title (seeded by seed and epoch, like the order)."""
    index, prefix = training_pairs(studies, model.prefix_training)
    length = studies.tokens.shape[1] - 1
    epoch = [first_epoch]  # each epoch's order depends on (seed, epoch) only, also on resume

    def batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        order = np.arange(len(index))
        hiding = np.random.default_rng((seed, epoch[0], 1))
        if shuffle:
            order = np.random.default_rng(seed + epoch[0]).permutation(len(index))
            epoch[0] += 1
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            rows = index[chosen]
            inputs = studies.inputs(rows)
            if "exam_title" in inputs:
                inputs["exam_title"] = hide_titles(inputs["exam_title"], title_dropout, hiding)
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
        decoded = self.decoder.decode(self.val.inputs(), DecodingSettings(method="greedy"))
        scores = text_metrics(self.val.texts, self.decoder.texts(decoded))
        if logs is not None:
            logs["val_bleu4"] = scores["bleu4"]
            logs["val_distinct"] = float(scores["distinct"])


class AveragedWeights:
    """Validation on the optimizer's exponential moving average of the weights
    (`train.ema_momentum`), with training going on from the raw weights: the average goes in
    as the epoch's validation begins (`callbacks()[0]`, before anything scores or keeps the
    weights) and the raw weights come back at the epoch's end (`callbacks()[1]`, placed before
    the backup, so that a resume continues from the raw weights and the average in the
    optimizer's state)."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.raw: list[np.ndarray] | None = None

    def use_average(self) -> None:
        if self.raw is None:
            self.raw = load_moving_average(self.model.trainable_weights, self.model.optimizer)

    def use_raw(self) -> None:
        if self.raw is not None:
            restore_raw(self.model.trainable_weights, self.raw)
            self.raw = None

    def callbacks(self) -> tuple[list[keras.callbacks.Callback], list[keras.callbacks.Callback]]:
        weights = self

        class UseAverage(keras.callbacks.Callback):
            def on_test_begin(self, logs: dict | None = None) -> None:
                weights.use_average()

        class UseRaw(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                weights.use_raw()

        return [UseAverage()], [UseRaw()]


class SelectOnValidation(keras.callbacks.Callback):
    """Keeps the weights of the best epoch on the monitored validation score, stops training
    after `patience` epochs without improvement, and persists both across a resume.

    Its state is the score of every epoch run, cut back to the `first_epoch` a resumed fit
    starts at (an epoch it scored after the last backup runs again)."""

    def __init__(self, monitor: str, patience: int, state_dir: Path, first_epoch: int = 0) -> None:
        super().__init__()
        self.monitor = monitor
        self.sign = 1.0 if monitor == "val_bleu4" else -1.0  # higher is better for BLEU
        self.patience = patience
        self.state_path = state_dir / "selection.json"
        self.weights_path = state_dir / "best.weights.h5"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.scores: list[float] = state.get("scores", [])[:first_epoch]
        self.best, self.best_epoch, self.wait = -math.inf, -1, 0
        for epoch, score in enumerate(self.scores):
            self._update(epoch, score)

    @property
    def epochs_done(self) -> int:
        return len(self.scores)

    def _update(self, epoch: int, score: float) -> bool:
        if score > self.best:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            return True
        self.wait += 1
        return False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = self.sign * float((logs or {})[self.monitor])
        del self.scores[epoch:]
        self.scores.append(score)
        if self._update(epoch, score):
            self.model.save_weights(self.weights_path)
        write_json(self.state_path, {"scores": self.scores, "best": self.best,
                                     "best_epoch": self.best_epoch, "wait": self.wait,
                                     "monitor": self.monitor, "epochs_done": self.epochs_done})
        if self.wait >= self.patience:
            log.info("early stop: %s has not improved for %d epochs", self.monitor, self.wait)
            self.model.stop_training = True

    @property
    def best_value(self) -> float:
        return self.sign * self.best


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, made whole at any kill and exact on resume.

    - Keras truncates `training_metadata.json` before writing it, so a kill (or a reader) at
      that moment met an empty file, and the resume failed on it: each file is written beside
      its place, then renamed onto it.
    - Keras writes the weights (with the optimizer's variables) to one fixed name, then the
      metadata: a kill between the two left one epoch's weights under the previous epoch's
      count, and the resume ran that epoch again from them. Each backup's weights get their
      own name (`epoch<E>.batch<B>.weights.h5`), the metadata written after them names the
      file, and older files go only then, so the metadata always describes a whole backup.
    - The weights file does not hold the state of the `SeedGenerator`s (Keras saves a layer's
      weights, not `layer.variables`' random seeds): a resumed process rebuilt them at their
      initial state, so every Dropout (and attention dropout) drew epoch 1's masks again, and
      the resumed run ended with other weights than an uninterrupted one. Their states (a
      (seed, counter) pair each) go into the metadata, and are put back on resume, so the
      masks continue where they stopped.
    Uses the callback's own paths and epoch counters (Keras 3, pinned in requirements.lock)."""

    def _seed_states(self) -> list[keras.Variable]:
        # `variables` is `weights` plus the seed generators' states (and no metric state), in
        # the model's build order: the same in every process that builds the model, unlike the
        # generators' auto-numbered names, so the states are matched by position.
        weights = {id(v) for v in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def _save_model(self) -> None:
        backup = Path(self.backup_dir)
        name = f"epoch{self._current_epoch}.batch{self._last_batch_seen}.weights.h5"
        with atomic_path(backup / name, suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        write_json(self._training_metadata_path, {
            "epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name,
            "seed_generators": [np.asarray(v.numpy()).tolist() for v in self._seed_states()]})
        for old in backup.glob("*.weights.h5"):
            if old.name != name:
                old.unlink()

    def _load_model(self) -> None:
        metadata_path = Path(self._training_metadata_path)
        metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        if "weights" in metadata:
            self._weights_path = str(Path(self.backup_dir) / metadata["weights"])
        super()._load_model()
        if not metadata:
            return
        states, saved = self._seed_states(), metadata.get("seed_generators")
        if saved is None or len(saved) != len(states):
            log.warning("the backup holds no matching random-seed state; the resumed run's "
                        "dropout differs from an uninterrupted run's")
            return
        for variable, value in zip(states, saved, strict=True):
            variable.assign(np.asarray(value, dtype=variable.dtype))


def backed_up_epochs(backup_dir: Path) -> int:
    """The epochs Keras' BackupAndRestore has saved in `backup_dir`: the epoch a resumed fit
    starts at (0 without a backup). Read from the callback's own metadata file."""
    metadata = backup_dir / "training_metadata.json"
    if not metadata.exists():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


class MirrorLive(keras.callbacks.Callback):
    """After each epoch's DVCLive step, copy the DVCLive folder into the resume state as
    `live.<epochs>`: DVC deletes the folder (a declared output) before it reruns the stage,
    and a resumed run must continue its curves, not start them again."""

    def __init__(self, live_dir: Path, state_dir: Path) -> None:
        super().__init__()
        self.live_dir, self.state_dir = live_dir, state_dir

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        target = self.state_dir / f"live.{epoch + 1}"
        partial = self.state_dir / f".live.{epoch + 1}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(self.live_dir, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # complete or absent
        for older in live_copies(self.state_dir):
            if older != target:
                shutil.rmtree(older)


def live_copies(state_dir: Path) -> list[Path]:
    """The complete DVCLive copies in `state_dir`, oldest first."""
    found = [p for p in state_dir.glob("live.*") if p.suffix[1:].isdigit() and p.is_dir()]
    return sorted(found, key=lambda p: int(p.suffix[1:]))


def restore_live(state_dir: Path, live_dir: Path, first_epoch: int) -> None:
    """Put the newest DVCLive copy back in `live_dir`, with every curve cut back to the steps
    before `first_epoch` (an epoch logged after the last backup runs again)."""
    copies = [p for p in live_copies(state_dir) if int(p.suffix[1:]) >= first_epoch]
    shutil.rmtree(live_dir, ignore_errors=True)
    if not copies:
        log.warning("no copy of the DVCLive logs to resume; the curves start at epoch %d",
                    first_epoch + 1)
        return
    shutil.copytree(copies[-1], live_dir)
    for tsv in live_dir.rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines()
        step = header.split("\t").index("step")
        kept = [r for r in rows if int(r.split("\t")[step]) < first_epoch]
        tsv.write_text("\n".join([header, *kept]) + "\n")


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


def compile_for_training(caption_model: CaptionModel, rate: float | object,
                         ema_momentum: float = 0.0) -> None:
    """Compile the training model: masked caption loss and accuracy, plus, when conditioned,
    the label head's binary cross-entropy (averaged over its labels) and AUC (over all).
    `rate`: Adam's learning rate, a number or a Keras schedule (`schedules.learning_rate`);
    `ema_momentum` > 0: Adam also keeps a moving average of the weights (`AveragedWeights`)."""
    # per_replica: the caption loss is a scalar mean, which Keras leaves unscaled across
    # replicas (it divides only its own per-example losses); see captioning/distribute.py.
    losses: dict[str, object] = {"logits": per_replica(masked_loss)}
    metrics: dict[str, list] = {"logits": [MaskedAccuracy()]}
    if caption_model.conditioned:
        losses["labels"] = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics["labels"] = [keras.metrics.AUC(from_logits=True, name="auc")]
    # Keras' default jit_compile="auto" turns XLA on, which is several times slower on CPU here.
    caption_model.train_model.compile(
        optimizer=keras.optimizers.Adam(rate, clipnorm=5.0, use_ema=ema_momentum > 0,
                                        ema_momentum=ema_momentum or 0.99),
        loss=losses,
        metrics=metrics, jit_compile=False)


@contextlib.contextmanager
def live_logging(live_dir: Path | None, state_dir: Path, resuming: bool,
                 first_epoch: int) -> Iterator[list[keras.callbacks.Callback]]:
    """The DVCLive callbacks for `fit` (none when `live_dir` is None), inside DVCLive's run."""
    if live_dir is None:
        yield []
        return
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback
    from scmrepo.exceptions import SCMError

    try:
        live = Live(str(live_dir), resume=resuming, save_dvc_exp=False, dvcyaml=None)
    except SCMError as exc:  # DVCLive reads HEAD before it checks that there is one
        raise InputError(f"{Path.cwd()}: {exc}: train's live metrics (DVCLive) need a first "
                         "commit in this git repository (git add -A && git commit)") from None
    with live:
        # DVCLive's own resume adds 1 to the step it read except to step 0, so after one epoch
        # it would log the second at step 0 again: the backup's epoch count is the step.
        live.step = first_epoch
        yield [DVCLiveCallback(live=live), MirrorLive(live_dir, state_dir)]


def train(caption_model: CaptionModel, vocab: Vocabulary, train_set: Studies, val_set: Studies,
          params: TrainParams, state_dir: Path, live_dir: Path | None) -> dict[str, object]:
    """Fit with teacher forcing; leave the best validation epoch's weights in the model.
    `live_dir` None logs nothing to DVCLive (a multi-worker job's non-chief tasks)."""
    model = caption_model.train_model
    log.info("training on %d replica(s) (train.strategy: %s)",
             tf.distribute.get_strategy().num_replicas_in_sync, params.strategy)
    state_dir.mkdir(parents=True, exist_ok=True)
    backup_dir = state_dir / "backup"
    first_epoch = backed_up_epochs(backup_dir)
    resuming = first_epoch > 0
    selection = SelectOnValidation(params.monitor, params.patience, state_dir, first_epoch)
    if resuming:
        log.info("resuming after epoch %d", first_epoch)
        if live_dir is not None:
            restore_live(state_dir, live_dir, first_epoch)
    train_data = make_dataset(train_set, caption_model, params.batch_size, True, params.seed,
                              first_epoch=first_epoch, title_dropout=params.exam_title_dropout)
    val_data = make_dataset(val_set, caption_model, params.batch_size, False, params.seed)
    steps = params.epochs * int(train_data.cardinality())
    compile_for_training(caption_model, learning_rate(params.learning_rate, params.schedule, steps),
                         params.ema_momentum)
    use_average, use_raw = (AveragedWeights(model).callbacks() if params.ema_momentum > 0
                            else ([], []))
    with live_logging(live_dir, state_dir, resuming, first_epoch) as live_callbacks:
        model.fit(
            train_data, validation_data=val_data, epochs=params.epochs, verbose=2,
            shuffle=False,  # make_dataset shuffles, seeded (Keras ignores this for a Dataset)
            # At each epoch's end in this order, the backup last: whatever the others wrote
            # after the last backup is cut back on resume (SelectOnValidation, restore_live).
            callbacks=[
                *use_average,
                ValidationBleu(caption_model, vocab, val_set),
                selection,
                *live_callbacks,
                *use_raw,
                AtomicBackupAndRestore(str(backup_dir)),
            ])
    if selection.weights_path.exists():
        model.load_weights(selection.weights_path)
    return {"epochs_run": selection.epochs_done, "best_epoch": selection.best_epoch + 1,
            "monitor": params.monitor, "best_value": round(selection.best_value, 4),
            "resumed": resuming}


def train_members(build: Callable[[], CaptionModel], model_params: ModelParams,
                  vocab: Vocabulary, train_set: Studies, val_set: Studies, params: TrainParams,
                  state_dir: Path, live_dir: Path | None) -> tuple[CaptionModel, dict[str, object]]:
    """`train` each of the `model.ensemble` members (built by `build`, seeded by
    `model_params.member_seeds`), and return them as one model (`models.ensemble`) with the
    training summary. A single model trains as before. An ensemble's member i keeps its resume
    state in `state_dir/member<i>` and logs to `live_dir` (member 0) or `live_dir/member<i>`; a
    member already trained when the stage is rerun after an interruption is loaded, not
    trained again."""
    seeds = model_params.member_seeds(params.seed)
    if len(seeds) == 1:
        keras.utils.set_random_seed(seeds[0])
        model = build()
        return model, train(model, vocab, train_set, val_set, params, state_dir, live_dir)
    members, summaries = [], []
    for i, seed in enumerate(seeds):
        keras.utils.set_random_seed(seed)
        member = build()
        member_state = state_dir / f"member{i}"
        member_live = None if live_dir is None else (live_dir if i == 0 else
                                                     live_dir / f"member{i}")
        done = member_state / "trained.json"
        if done.exists():
            summary = json.loads(done.read_text())
            log.info("ensemble member %d (seed %d): trained before the interruption, loaded",
                     i, seed)
            member.train_model.load_weights(member_state / "best.weights.h5")
            if member_live is not None:
                restore_live(member_state, member_live, int(summary["epochs_run"]))
        else:
            log.info("ensemble member %d of %d: train.seed %d", i + 1, len(seeds), seed)
            summary = train(member, vocab, train_set, val_set,
                            dataclasses.replace(params, seed=seed), member_state, member_live)
            write_json(done, summary)
        members.append(member)
        summaries.append({"seed": seed, **summary})
    return ensemble(members), {
        "members": len(members),
        "epochs_run": sum(int(s["epochs_run"]) for s in summaries),
        "monitor": params.monitor,
        "best_value": round(float(np.mean([s["best_value"] for s in summaries])), 4),
        "resumed": any(s["resumed"] for s in summaries),
        "member": {str(i): s for i, s in enumerate(summaries)}}
