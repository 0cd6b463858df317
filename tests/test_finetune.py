import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxr_impressions.errors import InputError
from cxr_impressions.features.backbones import build_base, get_spec, sha256_of, split_base
from cxr_impressions.features.finetune import (
    TARGETS,
    Adapter,
    Feed,
    LabelledImages,
    auc,
    auxiliary_headings,
    backbone_anchors,
    cache_lock,
    fit_probes,
    labelled_images,
    logistic_newton,
    make_train_step,
    mix_examples,
    positive_weights,
    probe_head,
    shift_activations,
    study_vectors,
    view_rows,
)

from .helpers import REPO, SAMPLE, run_stage, write_params

# Small: random weights, 71-pixel images (block 12's output is 5x5x728), 2 epochs, the
# cached activations shifted (so the resume test covers the shifts' seeding too), the
# positives weighted, the learning rate on the cosine schedule (so a resumed run must
# restore the optimizer's step count), auxiliary MeSH headings and the text's reading
# trained beside the targets, the head started from the frozen probes (so a run killed in
# its first epoch must fit the same head again), the examples mixed (mixup: a resumed
# epoch must draw the same partners and weights), and the backbone pulled toward its start
# (anchor_decay, lr x d = 0.05: a resumed run must pull toward the starting weights, not
# toward the epoch it restored).
PARAMS = f"""data:
  root: {SAMPLE}
features:
  weights: none
  image_size: 71
finetune:
  weights: none
  epochs: 2
  batch_size: 8
  activation_shift: 1
  positive_weight_power: 0.5
  schedule: cosine
  auxiliary_mesh: 3
  auxiliary_text: true
  head_init: probe
  mixup: 0.4
  anchor_decay: 250
"""
OUT = "models/finetuned/xception.weights.h5"
CACHE = Path("features/.finetune-cache")
STATE = Path("models/finetuned/.xception.weights.h5.train-state")


def _stage(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "finetune.py"), "--clean", "data/clean",
         "--out", OUT, "--cache", str(CACHE), "--metrics", "metrics/finetune.json"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def _workdir(base: Path, clean: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    write_params(base, PARAMS)
    shutil.copytree(clean, base / "data" / "clean")
    return base


def keep_training_studies(clean: Path, n: int) -> None:
    """Cut the clean tables to the first `n` training studies (validation and test kept)."""
    import pandas as pd

    examples = pd.read_parquet(clean / "examples.parquet")
    train = examples[examples["split"] == "train"]
    examples = examples[(examples["split"] != "train") | examples["uid"].isin(train["uid"][:n])]
    images = pd.read_parquet(clean / "images.parquet")
    examples.reset_index(drop=True).to_parquet(clean / "examples.parquet")
    images[images["uid"].isin(examples["uid"])].reset_index(drop=True).to_parquet(
        clean / "images.parquet")


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    """The sample's clean outputs, made by the real parse and clean stages."""
    work = tmp_path_factory.mktemp("clean")
    write_params(work, PARAMS)
    run_stage("parse.py", "--reports", "data/parsed/reports.parquet", "--images",
              "data/parsed/images.parquet", "--metrics", "metrics/parse.json", cwd=work)
    run_stage("clean.py", "--parsed", "data/parsed", "--out", "data/clean", "--metrics",
              "metrics/clean.json", "--eda", "metrics/eda", cwd=work)
    return work / "data" / "clean"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clean_dir: Path) -> Path:
    """The stage run once without interruption."""
    work = _workdir(tmp_path_factory.mktemp("reference"), clean_dir)
    stderr = _finish(_stage(work))
    assert "resuming" not in stderr
    return work


def weights_of(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: arrays.__setitem__(name, obj[...])
                      if isinstance(obj, h5py.Dataset) else None)
    return arrays


def results_of(work: Path) -> dict:
    """The metrics that depend on the data and params (not the timings)."""
    metrics = json.loads((work / "metrics/finetune.json").read_text())
    return {"probes": metrics["probes"], "head": metrics["head"],
            "best_epoch": metrics["best_epoch"], "summary": metrics["summary"],
            "val": [e["val_mean_auc"] for e in metrics["epochs"]],
            "loss": [e["loss"] for e in metrics["epochs"]]}


def test_stage_on_the_sample(reference: Path) -> None:
    metrics = json.loads((reference / "metrics/finetune.json").read_text())
    assert metrics["images"] == {"train": 160, "val": 20, "test": 20}
    assert metrics["cut_shape"] == [5, 5, 728] and metrics["cut"] == "block12_sepconv1_act"
    # The sample's training studies' most frequent unscored heading is "lung" (15 studies).
    assert metrics["auxiliary_targets"][0] == "lung" and len(metrics["auxiliary_targets"]) > 3
    assert metrics["auxiliary_targets"][-len(TARGETS):] == [f"text:{t}" for t in TARGETS]
    assert len(metrics["epochs"]) == 2 and metrics["best_epoch"] in (1, 2)
    assert metrics["best_epoch"] == 1 + int(np.argmax([e["val_mean_auc"]
                                                       for e in metrics["epochs"]]))
    for model in ("frozen", "adapted"):
        for split in ("val", "test"):
            aucs = metrics["probes"][model][split]
            assert set(aucs) == set(TARGETS)
            assert all(a is None or 0 <= a <= 1 for a in aucs.values())
    assert "seconds" not in json.dumps(metrics)  # git-tracked: only what data and params decide
    timings = json.loads((reference / "timings/finetune.json").read_text())
    assert timings["seconds_per_epoch"] > 0 and timings["peak_rss_mb"] > 100
    assert not (reference / STATE).exists()  # training state is removed once done
    # The cache stays for the next run, joined into one float16 array.
    cached = np.load(reference / CACHE / "xception" / "activations.npy", mmap_mode="r")
    assert cached.dtype == np.float16 and cached.shape == (200, 5, 5, 728)
    assert not list((reference / CACHE / "xception").glob("*.npz"))


def test_only_the_layers_above_the_cut_change(reference: Path) -> None:
    import keras

    start = build_base("xception", None, 71, seed=0)  # the stage's starting point
    adapted = build_base("xception", None, 71, seed=0)
    adapted.load_weights(reference / OUT)
    _, top = split_base(start, get_spec("xception").default_cut)
    above = {layer.name for layer in top.layers}
    changed = [a for a, b in zip(start.layers, adapted.layers, strict=True)
               if any(not np.array_equal(x.numpy(), y.numpy())
                      for x, y in zip(a.weights, b.weights, strict=True))]
    assert changed and {layer.name for layer in changed} <= above
    assert any(layer.name.startswith("block12_") for layer in changed)  # the default cut
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in changed)


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 600
    while not ready():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_killed_during_cache_then_training_resumes_to_identical_outputs(
        tmp_path: Path, clean_dir: Path, reference: Path) -> None:
    """kill -9 while the activation cache is built, then again in training's second epoch: the
    third run resumes both and ends with the uninterrupted run's weights and AUCs exactly."""
    work = _workdir(tmp_path / "w", clean_dir)
    shards = work / CACHE / "xception"
    process = _stage(work)
    _kill_when(process, lambda: len(list(shards.glob("*.npz"))) >= 3)
    assert not (work / OUT).exists()
    assert not (shards / "activations.npy").exists()
    process = _stage(work)
    _kill_when(process, lambda: (work / STATE / "progress.json").exists())
    assert "resuming after" in process.stderr.read()  # the cache's shards
    assert not (work / OUT).exists()
    assert (shards / "activations.npy").exists()
    stderr = _finish(_stage(work))
    assert "resuming training after epoch 1" in stderr
    assert "activation cache complete" in stderr
    assert results_of(work) == results_of(reference)
    ours, theirs = weights_of(work / OUT), weights_of(reference / OUT)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_a_queued_experiment_reuses_the_projects_activation_cache(
        tmp_path: Path, reference: Path) -> None:
    """`dvc queue` runs the stage in a copy under `.dvc/tmp/exps/` (no ignored files there):
    the copy opens the project's complete cache instead of building its own."""
    project = tmp_path / "project"
    shutil.copytree(reference, project)
    copy = project / ".dvc" / "tmp" / "exps" / "tmpq1a2b3"
    copy.mkdir(parents=True)
    shutil.copy(project / "params.yaml", copy / "params.yaml")
    shutil.copytree(project / "data", copy / "data")
    stderr = _finish(_stage(copy))
    assert "activation cache complete" in stderr, stderr[-3000:]
    assert f"{project / CACHE / 'xception'}" in stderr
    assert not (copy / CACHE).exists()
    assert results_of(copy) == results_of(reference)


def test_a_run_waits_while_another_holds_the_activation_cache(
        tmp_path: Path, clean_dir: Path, reference: Path) -> None:
    """Two queued experiments run at once (`dvc queue start -j 2`) share the cache: the second
    waits for the first's lock before it builds or opens it, then goes on."""
    work = _workdir(tmp_path / "w", clean_dir)
    folder = work / CACHE / "xception"
    lines: list[str] = []
    with cache_lock(folder):
        process = _stage(work)
        reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 600
        while not any("waiting for another run that holds the activation cache" in line
                      for line in lines):
            assert process.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the stage never waited for the lock"
            time.sleep(0.05)
        time.sleep(1)
        assert process.poll() is None and not folder.exists()
    assert process.wait(timeout=900) == 0
    reader.join(timeout=60)
    assert "activation cache complete" not in "".join(lines)  # built after the wait
    assert results_of(work) == results_of(reference)


def test_moving_average_is_validated_and_kept_while_training_goes_on_raw(
        tmp_path: Path, clean_dir: Path, reference: Path) -> None:
    """`finetune.ema_momentum`: the same training steps as without it (the same losses, epoch
    by epoch, as the reference run), each epoch's validation scores the moving average (other
    AUCs), and the weights the stage keeps are the best epoch's average: their head scores
    what validation recorded for that epoch. The average is in the optimizer's saved state: a
    run killed in its second epoch resumes to the same weights and AUCs."""
    works = []
    for name in ("whole", "killed"):
        work = tmp_path / name
        work.mkdir()
        write_params(work, PARAMS + "  ema_momentum: 0.9\n")
        shutil.copytree(clean_dir, work / "data" / "clean")
        shutil.copytree(reference / CACHE, work / CACHE)  # the same cache: training alone
        works.append(work)
    whole, killed = works
    _finish(_stage(whole))
    ours, theirs = results_of(whole), results_of(reference)
    assert ours["loss"] == theirs["loss"]
    assert ours["val"] != theirs["val"]
    head = [a for a in json.loads((whole / "metrics/finetune.json").read_text()
                                  )["head"]["val"].values() if a is not None]
    assert np.mean(head) == pytest.approx(ours["val"][ours["best_epoch"] - 1], abs=1e-4)
    process = _stage(killed)
    _kill_when(process, lambda: (killed / STATE / "progress.json").exists())
    assert "resuming training after epoch 1" in _finish(_stage(killed))
    assert results_of(killed) == ours
    resumed = weights_of(killed / OUT)
    for name, array in weights_of(whole / OUT).items():
        np.testing.assert_array_equal(resumed[name], array)


def test_features_read_the_finetuned_weights(tmp_path: Path, reference: Path) -> None:
    """`features.weights: finetuned` runs the adapted backbone and records its sha256."""
    import pandas as pd

    work = tmp_path
    files = sorted((SAMPLE / "images").iterdir())[:4]
    pd.DataFrame({"uid": [int(f.name.split("_")[0]) for f in files],
                  "image_id": [f.name.removesuffix(".dcm.jpg") for f in files],
                  "path": [str(f) for f in files], "exists": True}
                 ).to_parquet(work / "images.parquet")
    weights = reference / OUT
    for name, setting in (("finetuned", "finetuned"), ("path", str(weights)), ("none", "none")):
        write_params(work, f"features:\n  weights: {setting}\n  image_size: 71\n")
        run_stage("features.py", "--images", "images.parquet", "--out", f"{name}.h5",
                  "--metrics", f"{name}.json", "--finetuned", str(weights), cwd=work)
    pooled = {}
    for name in ("finetuned", "path", "none"):
        with h5py.File(work / f"{name}.h5", "r") as h5:
            pooled[name] = h5["pooled"][...]
            if name != "none":
                assert h5.attrs["weights_sha256"] == sha256_of(weights)
    np.testing.assert_array_equal(pooled["finetuned"], pooled["path"])
    # Relative: with random weights and 71-pixel images the pooled values are about 1e-5.
    assert not np.allclose(pooled["finetuned"], pooled["none"], rtol=1e-2, atol=0)
    write_params(work, "features:\n  weights: finetuned\n  image_size: 71\n")
    result = run_stage("features.py", "--images", "images.parquet", "--out", "x.h5",
                       "--metrics", "x.json", "--finetuned", "nope.weights.h5", cwd=work,
                       check=False, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 2
    assert not re.search(r"\| tensorflow$", result.stderr, re.M)  # stops before it loads
    assert result.stderr.strip().splitlines()[-1] == (
        "error: nope.weights.h5: fine-tuned xception weights not found "
        "(features.weights: finetuned; run `dvc repro finetune`)")


@pytest.mark.parametrize("extra, message", [
    ("  epochs: 0\n", "error: params.yaml: finetune.epochs must be >= 1, got 0"),
    ("  train_from: middle\n", "error: params.yaml: finetune.train_from must be one of 'top', "
                               "'all', got 'middle'"),
    ("  ema_momentum: 1.5\n", "error: params.yaml: finetune.ema_momentum must be <= 0.9999, "
                              "got 1.5"),
    ("  anchor_decay: 20000\n", "error: params.yaml: finetune.anchor_decay x "
                                "finetune.learning_rate must be at most 1 (the share of the "
                                "distance to the starting weights taken back per step), got "
                                "20000.0 x 0.0002 = 4"),
    ("  anchor_decay: -1\n", "error: params.yaml: finetune.anchor_decay must be >= 0.0, "
                             "got -1.0"),
    ("  precision: float16\n", "error: params.yaml: finetune.precision must be one of "
                               "'float32', 'bfloat16', got 'float16'"),
    ("  schedule: step\n", "error: params.yaml: finetune.schedule must be one of 'constant', "
                          "'cosine', got 'step'"),
    ("  cut: nope\n", "error: finetune.cut: xception has no layer 'nope'"),
    ("  unit: study\n  train_from: all\n",
     "error: params.yaml: finetune.unit: study needs finetune.train_from: top (the cached "
     "activations); with train_from: all, use unit: image"),
    ("  unit: scan\n", "error: params.yaml: finetune.unit must be one of 'image', 'study', "
                       "got 'scan'"),
    ("  mixup: -0.2\n", "error: params.yaml: finetune.mixup must be >= 0.0, got -0.2"),
    ("  head_init: zeros\n", "error: params.yaml: finetune.head_init must be one of 'random', "
                            "'probe', got 'zeros'"),
    ("  cut: block13_sepconv2_act\n", "error: finetune.cut: the layers above "
                                      "'block13_sepconv2_act' also read tensors from below it; "
                                      "name the first layer of a block"),
])
def test_bad_params_are_one_line(tmp_path: Path, clean_dir: Path, extra: str,
                                 message: str) -> None:
    work = _workdir(tmp_path / "w", clean_dir)
    key = extra.split(":")[0]
    # A key given twice is an error of its own (YAML 1.2, as DVC reads it): replace it.
    text = "".join(line for line in PARAMS.splitlines(keepends=True)
                   if not line.startswith(key + ":"))
    write_params(work, text + extra)
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "finetune.py"), "--clean", "data/clean",
         "--out", OUT, "--cache", str(CACHE), "--metrics", "m.json"],
        cwd=work, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr


def test_activation_shift_translates_each_map_with_zero_fill() -> None:
    batch = np.arange(2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3) + 1
    shifted = shift_activations(batch, 2, np.random.default_rng(3))
    again = shift_activations(batch, 2, np.random.default_rng(3))
    np.testing.assert_array_equal(shifted, again)  # the seed decides: a resumed epoch redraws
    moves = np.random.default_rng(3).integers(-2, 3, size=(2, 2))
    for i, (dy, dx) in enumerate(moves):
        # Every value that stays on the grid moved by exactly (dy, dx); the rest are zeros.
        expected = np.roll(batch[i], (dy, dx), axis=(0, 1))
        rows = np.arange(5)[:, None] - dy
        cols = np.arange(5)[None, :] - dx
        inside = (rows >= 0) & (rows < 5) & (cols >= 0) & (cols < 5)
        np.testing.assert_array_equal(shifted[i][inside], expected[inside])
        assert not shifted[i][~inside].any()
    np.testing.assert_array_equal(shift_activations(batch, 0, np.random.default_rng(0)), batch)


def test_mixup_mixes_each_example_with_a_partner_of_its_batch() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 3, 2)).astype(np.float32)  # 3 studies of two views each
    y = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    mixed_x, mixed_y = mix_examples(x, y, 0.4, np.random.default_rng(5), views=2)
    again = mix_examples(x, y, 0.4, np.random.default_rng(5), views=2)
    np.testing.assert_array_equal(mixed_x, again[0])  # the seed decides: a resumed epoch redraws
    draw = np.random.default_rng(5)
    share, partner = draw.beta(0.4, 0.4, size=3).astype(np.float32), draw.permutation(3)
    assert share.min() > 0 and share.max() < 1 and (partner != np.arange(3)).any()
    for study in range(3):
        # A study's two views are mixed with the same partner study's two views, by one weight,
        # and its targets by that weight too.
        for view in range(2):
            np.testing.assert_allclose(
                mixed_x[2 * study + view],
                share[study] * x[2 * study + view]
                + (1 - share[study]) * x[2 * partner[study] + view], rtol=1e-6)
        np.testing.assert_allclose(mixed_y[study], share[study] * y[study]
                                   + (1 - share[study]) * y[partner[study]], rtol=1e-6)
    assert mixed_x.dtype == mixed_y.dtype == np.float32
    # One view per example: the rows are the examples.
    single_x, single_y = mix_examples(x, np.vstack([y, y]), 0.4, np.random.default_rng(1))
    assert single_x.shape == x.shape and single_y.shape == (6, 2)
    assert ((single_y >= 0) & (single_y <= 1)).all()


def test_auxiliary_headings_come_from_training_studies_and_are_never_scored() -> None:
    import pandas as pd

    examples = pd.DataFrame({
        "uid": [1, 2, 3, 4, 5, 6],
        "split": ["train", "train", "train", "val", "val", "test"],
        "mesh": ["Calcinosis/lung/hilum/right;Aorta/tortuous", "calcinosis;Cardiomegaly/mild",
                 "Aorta, Thoracic/tortuous;Calcinosis/multiple;normal", "Scoliosis/mild",
                 "Scoliosis;Aorta", None],
        "text": ["a ."] * 6})
    # Calcinosis is on 3 training studies, aorta and aorta, thoracic on 1 each; scoliosis only
    # on validation studies; cardiomegaly and normal decide scored targets.
    assert auxiliary_headings(examples, 1) == ["calcinosis", "aorta", "aorta, thoracic"]
    assert auxiliary_headings(examples, 2) == ["calcinosis"]
    assert auxiliary_headings(examples, 0) == []
    images = pd.DataFrame({"uid": [1, 2, 3, 4, 5, 6], "image_id": [f"i{u}" for u in range(6)],
                           "path": [f"p{u}" for u in range(6)], "view": ["frontal"] * 6})
    data = labelled_images(examples, images, "mesh", 1)
    assert data.auxiliary_names == ["calcinosis", "aorta", "aorta, thoracic"]
    # Validation's "aorta" is a label too (never scored), read the same way.
    np.testing.assert_array_equal(data.auxiliary, [[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0],
                                                   [0, 1, 0], [0, 0, 0]])
    assert data.training_targets.shape == (6, len(TARGETS) + 3)
    np.testing.assert_array_equal(data.training_targets[:, :len(TARGETS)], data.labels)
    assert labelled_images(examples, images, "mesh").auxiliary.shape == (6, 0)


def test_auxiliary_text_trains_the_labellers_reading_beside_the_mesh_targets() -> None:
    import pandas as pd

    from cxr_impressions.config import build_section
    from cxr_impressions.settings.finetune import FinetuneParams

    examples = pd.DataFrame({
        "uid": [1, 2, 3], "split": ["train", "val", "test"],
        # Study 1's MeSH codes say normal and its text a cardiomegaly; study 2 the reverse.
        "mesh": ["normal", "Cardiomegaly/mild", "Cardiomegaly"],
        "text": ["the heart is enlarged .", "no acute cardiopulmonary abnormality .",
                 "cardiomegaly ."]})
    images = pd.DataFrame({"uid": [1, 2, 3], "image_id": ["a", "b", "c"],
                           "path": ["pa", "pb", "pc"], "view": ["frontal"] * 3})
    data = labelled_images(examples, images, "mesh", 0, auxiliary_text=True)
    assert data.auxiliary_names == [f"text:{t}" for t in TARGETS]
    cardiomegaly = TARGETS.index("cardiomegaly")
    # Scored: the MeSH codes; trained besides: the text's reading, row for row.
    np.testing.assert_array_equal(data.labels[:, cardiomegaly], [0, 1, 1])
    np.testing.assert_array_equal(data.auxiliary[:, cardiomegaly], [1, 0, 1])
    np.testing.assert_array_equal(data.auxiliary[:, TARGETS.index("abnormal")], [1, 0, 1])
    assert data.training_targets.shape == (3, 2 * len(TARGETS))
    with pytest.raises(InputError, match="finetune.auxiliary_text needs finetune.labels: mesh"):
        build_section("finetune", FinetuneParams, {"labels": "text", "auxiliary_text": True})


def test_positive_weights_follow_each_targets_training_odds() -> None:
    labels = np.array([[1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]], np.float32)
    # Odds of negatives to positives: 3, none (no positive), none (no negative), 3.
    np.testing.assert_allclose(positive_weights(labels, 1.0), [3.0, 1.0, 1.0, 3.0])
    np.testing.assert_allclose(positive_weights(labels, 0.5), [3 ** 0.5, 1.0, 1.0, 3 ** 0.5],
                               rtol=1e-6)
    np.testing.assert_array_equal(positive_weights(labels, 0.0), np.ones(4))


def test_weighted_step_pulls_a_rare_positive_harder() -> None:
    """The weighted loss's gradient on a positive grows with its weight; on a negative it
    does not change (the same zero logits, one step of SGD on a one-layer head; its bias,
    whose gradient is the loss's gradient in the logits, is compared)."""
    import keras

    def one_step(weight: np.ndarray | None) -> np.ndarray:
        inputs = keras.Input((1,))
        logits = keras.layers.Dense(2, kernel_initializer="zeros", name="head")(inputs)
        model = keras.Model(inputs, {"logits": logits})
        step = make_train_step(model, keras.optimizers.SGD(1.0), weight)
        step(np.ones((1, 1), np.float32), np.array([[1.0, 0.0]], np.float32))
        return model.get_layer("head").bias.numpy()

    plain, weighted = one_step(None), one_step(np.array([4.0, 4.0], np.float32))
    np.testing.assert_allclose(weighted[0], 4 * plain[0], rtol=1e-5)  # the positive
    np.testing.assert_allclose(weighted[1], plain[1], rtol=1e-5)  # the negative


def test_anchor_decay_pulls_the_backbone_back_toward_its_start() -> None:
    """`finetune.anchor_decay`: after a step, each backbone weight has moved (1 - lr x decay)
    times as far from its start as without it (the optimizer's own step is the same), the
    head as far as without it; at lr x decay = 1 the backbone stays where it started. Over
    several steps the anchors stay the starting values, not the last step's."""
    import keras

    def steps(decay: float, learning_rate: float = 0.1, n: int = 1
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        body = keras.Sequential([keras.layers.Dense(4, name="body")], name="net")
        logits = keras.layers.Dense(2, name="head")(body(inputs))
        model = keras.Model(inputs, {"logits": logits})
        start = body.get_layer("body").kernel.numpy()
        anchors = backbone_anchors(Adapter(model, body, body))
        assert len(anchors) == 2  # the body's kernel and bias, not the head's
        step = make_train_step(model, keras.optimizers.Adam(learning_rate), None, 1, anchors,
                               decay)
        x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
        y = np.tile(np.array([[1.0, 0.0]], np.float32), (8, 1))
        for _ in range(n):
            step(x, y)
        return start, body.get_layer("body").kernel.numpy(), model.get_layer("head").bias.numpy()

    start, plain, plain_head = steps(0.0)
    _, pulled, pulled_head = steps(2.5)  # lr x decay = 0.25
    np.testing.assert_allclose(pulled - start, 0.75 * (plain - start), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(pulled_head, plain_head, rtol=1e-6)
    assert np.abs(plain - start).min() > 1e-3  # Adam moved every weight
    _, held, held_head = steps(10.0, n=3)  # lr x decay = 1
    np.testing.assert_allclose(held, start, atol=1e-6)
    assert np.abs(held_head).min() > 1e-3  # the head still trains (its bias starts at 0)
    # Over three steps at lr x decay = 0.25 the body is nearer its start than without.
    _, far, _ = steps(0.0, n=3)
    _, near, _ = steps(2.5, n=3)
    assert np.abs(near - start).sum() < 0.9 * np.abs(far - start).sum()


def test_a_study_step_trains_on_the_mean_of_its_views_logits() -> None:
    """`unit: study`: a step on a study's two images (logits a and b through a linear head)
    is the step on one image whose logit is (a + b) / 2, for every target's label."""
    import keras

    def one_step(x: np.ndarray, y: np.ndarray, views: int) -> np.ndarray:
        inputs = keras.Input((1,))
        logits = keras.layers.Dense(2, kernel_initializer="ones", name="head")(inputs)
        model = keras.Model(inputs, {"logits": logits})
        make_train_step(model, keras.optimizers.SGD(1.0), views=views)(x, y)
        return model.get_layer("head").bias.numpy()

    labels = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # two studies
    pairs = np.array([[2.0], [-4.0], [0.5], [3.5]], np.float32)  # their views: means -1 and 2
    means = np.array([[-1.0], [2.0]], np.float32)
    np.testing.assert_allclose(one_step(pairs, labels, 2), one_step(means, labels, 1),
                               rtol=1e-6)
    # Not the mean of the views' losses: that moves the bias otherwise.
    assert not np.allclose(one_step(pairs, np.repeat(labels, 2, axis=0), 1),
                           one_step(means, labels, 1), rtol=1e-3)


def test_a_study_reads_its_frontal_twice_where_the_lateral_is_missing_or_unreadable() -> None:
    import pandas as pd

    from cxr_impressions.settings.features import FeaturesParams

    images = pd.DataFrame({"uid": [1, 1, 2, 3, 3], "image_id": ["1a", "1b", "2a", "3a", "3b"],
                           "path": ["p"] * 5, "view": ["frontal", "lateral", "frontal",
                                                       "frontal", "lateral"]})
    examples = pd.DataFrame({"uid": [1, 2, 3], "split": "train", "mesh": "normal",
                             "text": "x"})
    data = labelled_images(examples, images, "mesh")
    pairs = view_rows(data, "train")
    np.testing.assert_array_equal(pairs, [[0, 1], [2, 2], [3, 4]])
    # Image 3b has no cached activation (unreadable), nor has 2a, so study 2 has no input.
    cache = (np.array([0, 1, 3]), np.zeros((3, 1, 1, 1), np.float16))
    feed = Feed(data, FeaturesParams(), cache)
    np.testing.assert_array_equal(feed.available_pairs(pairs), [[0, 1], [3, 3]])


def test_stage_trains_on_studies(tmp_path: Path, clean_dir: Path, reference: Path) -> None:
    """`unit: study` on the reference's cache: other training steps, and the head's study
    scores at the end are what validation measured for the kept epoch (the same mean
    logit in both)."""
    work = tmp_path / "study"
    work.mkdir()
    write_params(work, PARAMS + "  unit: study\n")
    shutil.copytree(clean_dir, work / "data" / "clean")
    shutil.copytree(reference / CACHE, work / CACHE)
    _finish(_stage(work))
    ours, theirs = results_of(work), results_of(reference)
    assert ours["loss"] != theirs["loss"] and ours["probes"]["frozen"] == theirs["probes"][
        "frozen"]
    metrics = json.loads((work / "metrics/finetune.json").read_text())
    assert metrics["unit"] == "study"
    head = [a for a in metrics["head"]["val"].values() if a is not None]
    assert np.mean(head) == pytest.approx(ours["val"][ours["best_epoch"] - 1], abs=1e-4)


def test_stage_with_a_random_head_takes_other_steps(
        tmp_path: Path, clean_dir: Path, reference: Path) -> None:
    """`head_init: random` on the reference's cache (which started from the probes): the same
    frozen backbone and probes, other training steps. (Which start loses less is the data's
    to say: on the full data the probes' start did (0.231 against 0.249 in the first epoch),
    on the sample's random backbone, where a study's two views share little, it did not.)"""
    work = tmp_path / "random"
    work.mkdir()
    write_params(work, PARAMS.replace("  head_init: probe\n", "  head_init: random\n"))
    shutil.copytree(clean_dir, work / "data" / "clean")
    shutil.copytree(reference / CACHE, work / CACHE)
    _finish(_stage(work))
    ours, theirs = results_of(work), results_of(reference)
    assert ours["probes"]["frozen"] == theirs["probes"]["frozen"]
    assert ours["loss"][0] != theirs["loss"][0]


def test_probe_head_scores_raw_vectors_as_the_probes_score_studies() -> None:
    """The head `head_init: probe` starts from: on a study's views it gives the scores of the
    probe `fit_probes` fits (the same validation AUCs), for the auxiliary targets too; a target
    with one class in training gets zero weights."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n, d = 240, 12
    study = rng.normal(size=(n, d))
    pooled = np.repeat(study, 2, axis=0) + 0.2 * rng.normal(size=(2 * n, d))  # two views
    labels = np.zeros((n, len(TARGETS)), np.float32)
    labels[:, 0] = study[:, 0] + 0.3 * rng.normal(size=n) > 0
    labels[:, 1:-1] = rng.random((n, len(TARGETS) - 2)) < 0.3  # the last: no positive
    auxiliary = (study[:, 1] > 0.5).astype(np.float32)[:, None]
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    ids = [f"{u}{v}" for u in range(n) for v in "fl"]
    slots = pd.DataFrame({"uid": range(n), "split": split, "frontal": ids[0::2],
                          "lateral": ids[1::2]})
    images = LabelledImages(ids, ids, np.repeat(np.arange(n), 2), np.repeat(split, 2),
                            np.repeat(labels, 2, axis=0), slots,
                            np.repeat(auxiliary, 2, axis=0), ["a heading"])
    kernel, bias = probe_head(pooled.astype(np.float32), images)
    assert kernel.shape == (d, len(TARGETS) + 1) and bias.shape == (len(TARGETS) + 1,)
    assert not kernel[:, len(TARGETS) - 1].any() and bias[len(TARGETS) - 1] == 0
    probes, _ = fit_probes(*(study_vectors(pooled, images, s) for s in ("train", "val", "test")))
    vectors, _ = study_vectors(pooled, images, "val")
    scores = vectors @ kernel + bias
    for j, target in enumerate(TARGETS[:-1]):
        assert round(auc(labels[1::3, j], scores[:, j]), 4) == probes["val"][target]
    assert probes["val"]["abnormal"] > 0.85
    assert auc(auxiliary[1::3, 0], scores[:, -1]) > 0.85


def test_split_base_gives_the_full_pass() -> None:
    import keras

    base = build_base("xception", None, 71, seed=3)
    bottom, top = split_base(base, "block13_sepconv1_act")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 71, 71, 3)).astype(np.float32)
    full = base(x).numpy()
    np.testing.assert_allclose(top(bottom(x)).numpy(), full, rtol=1e-5, atol=1e-5)
    # Through the float16 cache, as the stage stores it.
    cached = bottom(x).numpy().astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(top(cached).numpy(), full, rtol=2e-2, atol=2e-2)
    add = next(layer.name for layer in base.layers if isinstance(layer, keras.layers.Add))
    with pytest.raises(InputError, match="one input"):
        split_base(base, add)  # a residual sum reads two tensors


def test_auc() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # a tie counts half
    # 0.9 beats all 3 negatives; 0.5 beats 0.1, ties 0.5 (a half), loses to 0.8: 4.5 of 6.
    assert auc(np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.5, 0.5, 0.1])) == 4.5 / 6
    assert auc(np.array([1, 1]), np.array([0.2, 0.3])) is None


def test_probes_find_a_linear_signal() -> None:
    rng = np.random.default_rng(0)
    n, d = 300, 20
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.zeros((n, len(TARGETS)), np.float32)
    y[:, 0] = x[:, 0] + 0.3 * rng.normal(size=n) > 0  # abnormal: a signal in one dimension
    y[:, 1:] = rng.random((n, len(TARGETS) - 1)) < 0.3  # the rest: noise
    parts = [(x[i::3], y[i::3]) for i in range(3)]
    out, scores = fit_probes(*parts)
    assert scores.shape == (len(parts[2][0]), len(TARGETS))
    assert round(auc(parts[2][1][:, 0], scores[:, 0]), 4) == out["test"]["abnormal"]
    assert out["test"]["abnormal"] > 0.85
    assert abs(np.mean([out["test"][t] for t in TARGETS[1:]]) - 0.5) < 0.1
    assert out == fit_probes(*parts)[0]  # deterministic


def test_probe_fits_are_converged_so_rounding_the_vectors_barely_moves_them() -> None:
    """The probes once stopped after a fixed number of Adam steps, whose per-coordinate step
    turns tiny differences into full-size moves: rounding the same vectors to float16 moved a
    probe's AUC by 0.03. A converged fit moves only as far as the optimum does."""
    rng = np.random.default_rng(1)
    n, d = 450, 200  # many dimensions per study, as 2,048 features for 2,816 studies
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    y = np.zeros((n, len(TARGETS)), np.float32)
    y[:, :] = (x[:, :len(TARGETS)] + 1.5 * rng.normal(size=(n, len(TARGETS)))) > 0.5
    parts = [(x[i::3].astype(np.float32), y[i::3]) for i in range(3)]
    rounded = [(v.astype(np.float16).astype(np.float32), t) for v, t in parts]
    (out, _), (again, _) = fit_probes(*parts), fit_probes(*rounded)
    for split in ("val", "test"):
        for target in TARGETS:
            assert abs(out[split][target] - again[split][target]) < 0.005, (split, target)
    # Converged: the gradient of the penalised loss vanishes at the solution.
    design = np.hstack([rng.normal(size=(200, 30)), np.ones((200, 1))])
    target = (design[:, 0] + rng.normal(size=200) > 0).astype(np.float64)
    w = logistic_newton(design, target, 0.01)
    p = 1.0 / (1.0 + np.exp(-(design @ w)))
    gradient = design.T @ (p - target) / len(target) + 0.01 * np.append(w[:-1], 0.0)
    assert np.max(np.abs(gradient)) < 1e-6


def test_intervals_contain_the_test_auc_and_pair_the_gain() -> None:
    from cxr_impressions.evaluation.bootstrap import finetune_intervals

    rng = np.random.default_rng(3)
    n = 300
    labels = (rng.random((n, len(TARGETS))) < 0.3).astype(np.float32)
    noise = rng.normal(size=(n, len(TARGETS)))
    scores = {"frozen": labels + 1.2 * noise, "head": labels + 2.0 * noise,
              "adapted": labels + 1.2 * noise + 0.6 * labels}  # the frozen one, plus signal
    scores["adapted"][:, -1] = np.nan  # a target the probe could not fit
    out = finetune_intervals(labels, scores, ["cardiomegaly", "pleural_effusion"], seed=0)
    for name in ("frozen", "adapted", "head"):
        low, high = out[f"{name}_abnormal_auc"]
        assert low <= auc(labels[:, 0], scores[name][:, 0]) <= high
    # Paired: the adapted scores are the frozen ones plus signal, so every resample gains.
    assert out["gain_abnormal_auc"][0] > 0 and out["gain_findings_mean_auc"][0] > 0
    gain = auc(labels[:, 0], scores["adapted"][:, 0]) - auc(labels[:, 0], scores["frozen"][:, 0])
    assert out["gain_abnormal_auc"][0] <= gain <= out["gain_abnormal_auc"][1]
    assert out == finetune_intervals(labels, scores, ["cardiomegaly", "pleural_effusion"], seed=0)
    assert finetune_intervals(labels, scores, [], seed=0)["adapted_findings_mean_auc"] is None


def test_train_from_all_adapts_the_whole_backbone(tmp_path: Path, clean_dir: Path) -> None:
    """The GPU path, tiny: no cache, every layer but BatchNorm trains, from augmented images."""
    import keras

    work = _workdir(tmp_path / "w", clean_dir)
    keep_training_studies(work / "data" / "clean", 16)  # a full backward pass is the slow part
    write_params(work, PARAMS.replace("  epochs: 2\n", "  epochs: 1\n  train_from: all\n"))
    _finish(_stage(work))
    metrics = json.loads((work / "metrics/finetune.json").read_text())
    assert metrics["train_from"] == "all" and metrics["cut"] == ""
    assert metrics["images"] == {"train": 32, "val": 20, "test": 20}
    assert "cache_seconds" not in metrics
    assert not (work / CACHE).exists()
    start = build_base("xception", None, 71, seed=0)
    adapted = build_base("xception", None, 71, seed=0)
    adapted.load_weights(work / OUT)
    changed = [a for a, b in zip(start.layers, adapted.layers, strict=True)
               if any(not np.array_equal(x.numpy(), y.numpy())
                      for x, y in zip(a.weights, b.weights, strict=True))]
    assert "block1_conv1" in {layer.name for layer in changed}  # the very first layer trained
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in changed)


def test_bfloat16_adapter_computes_in_bf16_and_keeps_float32_weights_head_and_outputs() -> None:
    import keras
    import tensorflow as tf

    from cxr_impressions.features.finetune import build_adapter, make_train_step
    from cxr_impressions.settings.features import FeaturesParams
    from cxr_impressions.settings.finetune import FinetuneParams

    params, features = FinetuneParams(weights="none"), FeaturesParams(weights="none",
                                                                      image_size=71)
    built = {p: build_adapter(params, features, None, "block12_sepconv1_act", p)
             for p in ("float32", "bfloat16")}
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back
    adapter, bottom = built["bfloat16"]
    convs = [layer for layer in adapter.net.layers
             if isinstance(layer, keras.layers.SeparableConv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    assert all(w.dtype == "float32" for w in adapter.model.weights)  # saved as float32
    assert bottom.layers[-1].compute_dtype == "bfloat16"

    x = np.random.default_rng(0).normal(size=(4, *bottom.output.shape[1:])).astype(np.float32)
    out = adapter.forward(x)
    assert out["pooled"].dtype == tf.float32 and out["logits"].dtype == tf.float32
    # The same random net (same seeds) in float32: bf16 rounding only.
    reference = built["float32"][0].forward(x)["pooled"].numpy()
    pooled = out["pooled"].numpy()
    cosine = (pooled * reference).sum(1) / (np.linalg.norm(pooled, axis=1)
                                           * np.linalg.norm(reference, axis=1))
    assert cosine.min() > 0.99, cosine
    assert not np.array_equal(pooled, reference)  # it did run in bf16

    step = make_train_step(adapter.model, keras.optimizers.Adam(1e-3))
    before = [w.numpy().copy() for w in adapter.model.trainable_weights]
    loss = float(step(tf.constant(x), tf.constant(np.ones((4, len(TARGETS)), np.float32))))
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, w.numpy())
               for a, w in zip(before, adapter.model.trainable_weights, strict=True))
    assert all(w.dtype == "float32" for w in adapter.model.trainable_weights)


def test_stage_at_bfloat16_runs_where_the_cpu_has_it_else_says_so(tmp_path: Path,
                                                                  clean_dir: Path) -> None:
    from cxr_impressions.features.backbones import bf16_support

    work = _workdir(tmp_path / "w", clean_dir)
    keep_training_studies(work / "data" / "clean", 8)
    write_params(work, PARAMS.replace("  epochs: 2\n", "  epochs: 1\n  precision: bfloat16\n"))
    stderr = _finish(_stage(work))
    metrics = json.loads((work / "metrics/finetune.json").read_text())
    if bf16_support() is None:
        assert metrics["precision"] == "float32"
        assert "precision bfloat16: this CPU has neither AVX512_BF16 nor AMX" in stderr
    else:
        assert metrics["precision"] == "bfloat16"
    adapted = build_base("xception", None, 71, seed=0)
    adapted.load_weights(work / OUT)  # float32 weights, as `features` loads them
    assert all(w.dtype == "float32" for w in adapted.weights)
    assert len(metrics["epochs"]) == 1 and np.isfinite(metrics["epochs"][0]["loss"])
