"""Training inputs, the validation-chosen label threshold, and the resume state."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cxr_impressions.captioning.selection import (
    FALLBACK_THRESHOLD,
    choose_prevalence_thresholds,
    choose_threshold,
    choose_thresholds,
)
from cxr_impressions.captioning.studies import LABELS, Studies
from cxr_impressions.captioning.training import (
    AtomicBackupAndRestore,
    AveragedWeights,
    MirrorLive,
    SelectOnValidation,
    backed_up_epochs,
    live_copies,
    live_logging,
    make_dataset,
    restore_live,
    train,
    train_members,
    training_pairs,
)
from cxr_impressions.errors import InputError
from cxr_impressions.schedules import learning_rate

from .repos import DVC
from .tiny_models import tiny


def _labels(**columns: list[float]) -> np.ndarray:
    n = len(next(iter(columns.values())))
    labels = np.zeros((n, len(LABELS)), np.float32)
    for name, values in columns.items():
        labels[:, LABELS.index(name)] = values
    return labels


def test_prefix_training_pairs_hide_the_future() -> None:
    model, vocab = tiny("bilstm_attention")
    tokens = np.array([[2, 4, 5, 3, 0, 0], [2, 6, 3, 0, 0, 0]], np.int32)
    studies = Studies(np.array([1, 2]), np.array([["a", "b"], ["c", ""]]),
                      np.zeros((2, 2, 8), np.float32), np.ones((2, 2), np.float32), tokens,
                      ["no effusion", "."], _labels(abnormal=[0.0, 1.0]))
    index, prefix = training_pairs(studies, True)
    assert index.tolist() == [0, 0, 0, 1, 1] and prefix.tolist() == [1, 2, 3, 1, 2]
    inputs, targets = next(iter(make_dataset(studies, model, 8, False, 0)))
    np.testing.assert_array_equal(inputs["tokens"].numpy()[:3],
                                  [[2, 0, 0, 0, 0], [2, 4, 0, 0, 0], [2, 4, 5, 0, 0]])
    assert targets["logits"].numpy().tolist() == [4, 5, 3, 6, 3]
    # The reference's label is both the decoder's condition and the label head's target.
    assert inputs["condition"].numpy()[:, 0].tolist() == [0, 0, 0, 1, 1]
    assert targets["labels"].numpy()[:, 0].tolist() == [0, 0, 0, 1, 1]


def test_threshold_is_the_best_f1_on_the_given_split() -> None:
    probabilities = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 1])
    threshold, f1 = choose_threshold(probabilities, labels)
    assert threshold == 0.35 and f1 == pytest.approx(2 * 3 / (4 + 3))


def test_findings_condition_feeds_the_reference_labels() -> None:
    model, _ = tiny("transformer", condition="findings")
    tokens = np.array([[2, 4, 5, 3, 0, 0], [2, 6, 3, 0, 0, 0]], np.int32)
    labels = _labels(cardiomegaly=[1.0, 0.0], edema=[0.0, 1.0], abnormal=[1.0, 1.0])
    studies = Studies(np.array([1, 2]), np.array([["a", "b"], ["c", ""]]),
                      np.zeros((2, 2, 8), np.float32), np.ones((2, 2), np.float32), tokens,
                      ["cardiomegaly .", "edema ."], labels,
                      grid=np.zeros((2, 2, 3, 8), np.float16))
    inputs, targets = next(iter(make_dataset(studies, model, 8, False, 0)))
    np.testing.assert_array_equal(inputs["condition"].numpy(), labels)
    np.testing.assert_array_equal(targets["labels"].numpy(), labels)


def test_per_label_thresholds_are_chosen_on_the_given_split() -> None:
    probabilities = np.array([[0.1, 0.9, 0.2], [0.2, 0.8, 0.1], [0.35, 0.3, 0.3],
                              [0.4, 0.2, 0.05], [0.8, 0.6, 0.2], [0.9, 0.1, 0.1]])
    labels = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]])
    thresholds, summary = choose_thresholds(probabilities, labels, ("a", "b", "c"))
    # Each label its own best F1: a as in the single-label case, b perfectly at 0.8.
    assert thresholds[0] == 0.35 and summary["a"]["val_f1"] == pytest.approx(6 / 7, abs=1e-4)
    assert thresholds[1] == 0.8 and summary["b"]["val_f1"] == 1.0
    # No positive on validation: the documented fallback, flagged, with no F1 to report.
    assert thresholds[2] == FALLBACK_THRESHOLD
    assert summary["c"] == {"threshold": FALLBACK_THRESHOLD, "val_f1": None,
                            "val_positives": 0, "fallback": True}
    assert not summary["a"]["fallback"] and summary["a"]["val_positives"] == 3


def test_prevalence_thresholds_share_one_multiplier_chosen_on_the_given_split() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(size=(200, 3))
    # a: positive exactly where its probability is in the top 20%; b: in the top 10%;
    # c: never positive on this split (no F1 to weigh, but a threshold all the same).
    labels = np.stack([probabilities[:, 0] >= np.quantile(probabilities[:, 0], 0.8),
                       probabilities[:, 1] >= np.quantile(probabilities[:, 1], 0.9),
                       np.zeros(200, bool)], axis=1).astype(np.float32)
    prevalence = np.array([0.1, 0.05, 0.02])  # each half its share here: m = 2 is perfect
    thresholds, summary, choice = choose_prevalence_thresholds(
        probabilities, labels, prevalence, (1.0, 2.0, 4.0), ("a", "b", "c"))
    assert choice["multiplier"] == 2.0
    assert choice["candidates_mean_val_f1"]["2.0"] == 1.0
    assert choice["candidates_mean_val_f1"]["1.0"] < 1.0
    assert summary["a"]["val_f1"] == 1.0 and summary["b"]["val_f1"] == 1.0
    assert summary["a"]["val_predicted_share"] == 0.2
    # c is set by its training prevalence alone: 2 x 2% of the split predicted positive.
    assert summary["c"]["val_f1"] is None and summary["c"]["val_predicted_share"] == 0.04
    assert np.mean(probabilities[:, 2] >= thresholds[2]) == 0.04


def test_the_abnormal_label_can_have_its_own_multiplier() -> None:
    """`abnormal_own`: the findings' m is their best mean F1 without `abnormal`, and
    `abnormal` gets the m of its own best F1, which the shared m (a mean over all the labels,
    most of them findings) misses here."""
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(size=(400, 3))
    # Each finding positive in its top 10% (training prevalence 5%: m = 2 is perfect);
    # abnormal in its top 30% (training prevalence 30%: m = 1 is perfect).
    labels = np.stack([probabilities[:, 0] >= np.quantile(probabilities[:, 0], 0.9),
                       probabilities[:, 1] >= np.quantile(probabilities[:, 1], 0.9),
                       probabilities[:, 2] >= np.quantile(probabilities[:, 2], 0.7)],
                      axis=1).astype(np.float32)
    prevalence = np.array([0.05, 0.05, 0.3])
    names = ("cardiomegaly", "edema", "abnormal")
    _, shared_summary, shared = choose_prevalence_thresholds(
        probabilities, labels, prevalence, (1.0, 2.0), names)
    thresholds, summary, own = choose_prevalence_thresholds(
        probabilities, labels, prevalence, (1.0, 2.0), names, abnormal_own=True)
    assert shared["multiplier"] == 2.0 and "abnormal_multiplier" not in shared
    assert shared_summary["abnormal"]["val_predicted_share"] == 0.6
    assert own["multiplier"] == 2.0 and own["abnormal_multiplier"] == 1.0
    assert own["candidates_mean_val_f1"] == {"1.0": 0.6667, "2.0": 1.0}  # the findings alone
    assert own["abnormal_candidates_val_f1"]["1.0"] == 1.0
    assert summary["abnormal"]["val_f1"] == 1.0
    assert summary["abnormal"]["val_predicted_share"] == 0.3
    assert np.mean(probabilities[:, 2] >= thresholds[2]) == 0.3
    assert summary["edema"] == shared_summary["edema"]
    # A model conditioned on `abnormal` alone has nothing to share its m with.
    _, _, alone = choose_prevalence_thresholds(probabilities[:, 2:], labels[:, 2:],
                                              prevalence[2:], (1.0, 2.0), ("abnormal",),
                                              abnormal_own=True)
    assert alone["multiplier"] == 1.0 and "abnormal_multiplier" not in alone


def test_a_label_never_positive_in_training_is_never_predicted() -> None:
    probabilities = np.array([[0.2, 0.9], [0.4, 0.99], [0.6, 0.95], [0.8, 0.97]])
    labels = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    thresholds, summary, _ = choose_prevalence_thresholds(
        probabilities, labels, np.array([0.5, 0.0]), (1.0,), ("a", "b"))
    assert thresholds[1] == 1.0 and summary["b"]["val_predicted_share"] == 0.0
    assert summary["a"]["val_f1"] == 1.0


def test_decode_prevalence_multipliers_are_checked() -> None:
    from cxr_impressions.errors import InputError
    from cxr_impressions.settings.decode import DecodeParams

    for bad in ((), (0.0,), (-1.0, 2.0), (True,)):
        with pytest.raises(InputError, match="decode.prevalence_multipliers"):
            DecodeParams(prevalence_multipliers=bad).validate("params.yaml")


def _live_folder(folder: Path, steps: int) -> None:
    """A DVCLive folder as its Keras callback leaves it after `steps` epochs."""
    for curve in ("train/loss", "eval/loss"):
        tsv = folder / "plots" / "metrics" / f"{curve}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text("step\tloss\n" + "".join(f"{i}\t{5.0 - i}\n" for i in range(steps)))
    (folder / "metrics.json").write_text(json.dumps({"step": steps - 1}))


def test_resume_cuts_the_curves_back_to_the_backup(tmp_path: Path) -> None:
    """DVC deletes the DVCLive folder before a rerun; the copy in the state comes back, cut to
    the epochs the backup holds (an epoch logged after the last backup runs again)."""
    state, live = tmp_path / "state", tmp_path / "live"
    state.mkdir()
    mirror = MirrorLive(live, state)
    for epoch in range(3):
        _live_folder(live, epoch + 1)
        mirror.on_epoch_end(epoch)
    assert live_copies(state) == [state / "live.3"]  # older copies removed
    (state / ".live.4.tmp").mkdir()  # a copy cut short by a kill is never used
    restore_live(state, live, first_epoch=2)
    for curve in ("train/loss", "eval/loss"):
        rows = (live / "plots" / "metrics" / f"{curve}.tsv").read_text().splitlines()
        assert rows == ["step\tloss", "0\t5.0", "1\t4.0"]
    restore_live(tmp_path / "empty", live, first_epoch=2)  # no copy: the curves start afresh
    assert not live.exists()


def test_selection_rewinds_to_the_backup(tmp_path: Path) -> None:
    state = tmp_path
    (state / "selection.json").write_text(json.dumps({"scores": [-3.0, -2.0, -2.5, -2.6]}))
    selection = SelectOnValidation("val_loss", 3, state, first_epoch=3)
    assert selection.epochs_done == 3 and selection.best_epoch == 1 and selection.wait == 1
    assert selection.best_value == 2.0
    fresh = SelectOnValidation("val_loss", 3, state, first_epoch=0)
    assert fresh.epochs_done == 0 and fresh.best_epoch == -1


def test_backed_up_epochs_reads_the_backup(tmp_path: Path) -> None:
    assert backed_up_epochs(tmp_path / "backup") == 0
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    assert backed_up_epochs(tmp_path / "backup") == 2


def test_backup_files_are_replaced_whole_and_a_fit_resumes_from_them(tmp_path: Path) -> None:
    """Each epoch's backup is renamed into place (no reader ever meets a truncated metadata file,
    no temporary file stays), and a second fit starts after the backed-up epochs."""
    import keras

    backup = tmp_path / "backup"
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
    seen: list[int] = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen.append(epoch)
            if (backup / "training_metadata.json").exists():
                assert backed_up_epochs(backup) == epoch  # the previous epoch's, whole

    def fit(epochs: int) -> None:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(x, y, epochs=epochs, verbose=0, callbacks=[
            Record(), AtomicBackupAndRestore(str(backup), delete_checkpoint=False)])

    fit(2)
    # One weights file, the one the metadata names (an older epoch's goes after the metadata).
    assert sorted(p.name for p in backup.iterdir()) == ["epoch2.batch0.weights.h5",
                                                       "training_metadata.json"]
    assert backed_up_epochs(backup) == 2
    fit(3)
    assert seen == [0, 1, 2] and backed_up_epochs(backup) == 3


def test_cosine_schedule_falls_from_the_rate_to_zero_over_the_run() -> None:
    rate = learning_rate(1e-3, "cosine", 10)
    assert [round(float(rate(step)), 9) for step in (0, 5, 10)] == [1e-3, 5e-4, 0.0]
    assert float(rate(2)) > float(rate(3)) > float(rate(7)) > 0
    assert learning_rate(1e-3, "constant", 10) == 1e-3


@pytest.mark.parametrize(("schedule", "ema"), [("constant", False), ("cosine", False),
                                               ("constant", True)])
def test_a_resumed_fit_ends_with_the_uninterrupted_weights(tmp_path: Path, schedule: str,
                                                           ema: bool) -> None:
    """Dropout draws its masks from Keras seed generators, whose state the weights file does
    not hold: the backup keeps it, so a fit resumed after its first epoch ends with the weights
    of an uninterrupted fit, bit for bit (the optimizer's state comes back with the weights,
    and with it the step count a cosine schedule is a function of, and the moving average of
    `train.ema_momentum`). A later epoch's weights file that a kill left without its metadata
    is not used."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.normal(size=(32, 1)).astype(np.float32)
    backup = tmp_path / "backup"

    def fit(epochs: int, backed_up: bool) -> keras.Model:
        keras.utils.set_random_seed(0)  # as stages/train.py does in each process
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(learning_rate(0.01, schedule, 3 * 4), use_ema=ema),
                      "mse")
        use_average, use_raw = AveragedWeights(model).callbacks() if ema else ([], [])
        backups = [AtomicBackupAndRestore(str(backup), delete_checkpoint=False)]
        model.fit(x, y, validation_data=(x[:8], y[:8]), epochs=epochs, batch_size=8,
                  shuffle=False, verbose=0,
                  callbacks=[*use_average, *use_raw, *(backups if backed_up else [])])
        return model

    uninterrupted = fit(3, backed_up=False)
    fit(1, backed_up=True)  # a run stopped after its first epoch's backup
    assert backed_up_epochs(backup) == 1
    uninterrupted.save_weights(backup / "epoch2.batch0.weights.h5")  # renamed, then the kill
    resumed = fit(3, backed_up=True)
    assert backed_up_epochs(backup) == 3
    for ours, theirs in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_train_follows_its_schedule_to_the_last_step(tmp_path: Path) -> None:
    """`train.schedule: cosine` runs over `epochs` x the batches per epoch: the last step's
    learning rate is 0, where `constant` keeps `train.learning_rate`."""
    from cxr_impressions.settings.train import TrainParams

    from .tiny_models import random_studies

    train_set, val_set = random_studies(16, seed=0), random_studies(8, seed=1, first_uid=100)
    for schedule, last_rate in (("cosine", 0.0), ("constant", 1e-3)):
        model, vocab = tiny("transformer")
        params = TrainParams(epochs=2, batch_size=8, patience=99, schedule=schedule)
        train(model, vocab, train_set, val_set, params, tmp_path / schedule, None)
        optimizer = model.train_model.optimizer
        assert int(optimizer.iterations) == 4  # 2 epochs of 16 studies in batches of 8
        assert float(optimizer.learning_rate) == pytest.approx(last_rate, abs=1e-9)


def test_ensemble_members_train_on_their_own_seeds_and_resume_member_by_member(
        tmp_path: Path) -> None:
    """`model.ensemble: 2` trains two members, on train seeds seed x 2 and seed x 2 + 1. A
    rerun after the first member finished (the second's state lost to a kill) loads the first
    rather than training it again, trains the second, and ends with the weights of an
    uninterrupted run."""
    from cxr_impressions.settings.model import ModelParams
    from cxr_impressions.settings.train import TrainParams

    from .tiny_models import random_studies

    train_set, val_set = random_studies(16, seed=0), random_studies(8, seed=1, first_uid=100)
    model_params = ModelParams(ensemble=2)
    params = TrainParams(epochs=2, batch_size=8, patience=99, seed=1)
    assert model_params.member_seeds(params.seed) == [2, 3]
    assert ModelParams().member_seeds(5) == [5]

    def run(state: Path):
        built = []

        def build():
            # tiny() seeds itself: the member's seed (set by train_members) picks tiny's
            built.append(tiny("transformer", seed=int(np.random.randint(1000)))[0])
            return built[-1]

        vocab = tiny("transformer")[1]
        model, summary = train_members(build, model_params, vocab, train_set, val_set, params,
                                       state, tmp_path / "live")
        return model, summary, built

    whole, summary, built = run(tmp_path / "whole")
    assert summary["members"] == 2 and summary["epochs_run"] == 4
    assert [summary["member"][i]["seed"] for i in ("0", "1")] == [2, 3]
    first, second = (m.train_model.get_weights() for m in built)
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert (tmp_path / "live" / "member1").is_dir()  # the second member's curves

    state = tmp_path / "interrupted"
    run(state)
    shutil.rmtree(state / "member1")  # killed while training the second member
    resumed, _, rebuilt = run(state)
    assert getattr(rebuilt[0].train_model, "optimizer", None) is None  # loaded, not trained
    assert rebuilt[1].train_model.optimizer is not None  # trained
    for ours, theirs in zip(resumed.train_model.get_weights(), whole.train_model.get_weights(),
                            strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_validation_scores_and_keeps_the_moving_average_while_training_goes_on_raw() -> None:
    """`train.ema_momentum`: each epoch's validation (and whatever keeps the weights at the
    epoch's end) sees the optimizer's moving average of the weights, and training continues
    from the raw weights, which follow the same path as without the average."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 1))).astype(np.float32)

    class Record(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.weights: list[list[np.ndarray]] = []
            self.val_loss: list[float] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.weights.append([np.array(w) for w in self.model.get_weights()])
            self.val_loss.append(float((logs or {})["val_loss"]))

    def fit(ema: bool) -> tuple[keras.Model, Record, Record]:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(0.05, use_ema=ema, ema_momentum=0.9), "mse")
        validated, raw = Record(), Record()
        use_average, use_raw = AveragedWeights(model).callbacks() if ema else ([], [])
        model.fit(x, y, validation_data=(x[:8], y[:8]), epochs=3, batch_size=8, shuffle=False,
                  verbose=0, callbacks=[*use_average, validated, *use_raw, raw])
        return model, validated, raw

    model, validated, raw = fit(ema=True)
    _, plain, _ = fit(ema=False)
    for epoch in range(3):
        for ours, theirs in zip(raw.weights[epoch], plain.weights[epoch], strict=True):
            np.testing.assert_array_equal(ours, theirs)  # the raw path is untouched
        assert not all(np.array_equal(a, b) for a, b in zip(validated.weights[epoch],
                                                              raw.weights[epoch], strict=True))
        model.set_weights(validated.weights[epoch])
        assert model.evaluate(x[:8], y[:8], verbose=0) == pytest.approx(
            validated.val_loss[epoch], rel=1e-5)  # validation scored the average


def test_train_keeps_the_best_epochs_moving_average(tmp_path: Path) -> None:
    """With `train.ema_momentum`, the weights `train` leaves in the model are the ones its
    validation scored best: their validation loss is the kept epoch's."""
    from cxr_impressions.settings.train import TrainParams

    from .tiny_models import random_studies

    train_set, val_set = random_studies(16, seed=0), random_studies(8, seed=1, first_uid=100)
    model, vocab = tiny("transformer")
    params = TrainParams(epochs=3, batch_size=8, patience=99, ema_momentum=0.9)
    summary = train(model, vocab, train_set, val_set, params, tmp_path / "state", None)
    val_data = make_dataset(val_set, model, params.batch_size, False, params.seed)
    logs = model.train_model.evaluate(val_data, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(summary["best_value"], abs=1e-4)


def test_live_logging_in_a_git_repository_without_commits_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught, live_logging(
            tmp_path / "live", tmp_path / "state", resuming=False, first_epoch=0):
        pass
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path}: ") and "git commit" in message
    # After the first commit the same call logs.
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "first"], cwd=tmp_path, check=True)
    with live_logging(tmp_path / "live", tmp_path / "state", resuming=False,
                      first_epoch=0) as callbacks:
        assert len(callbacks) == 2
