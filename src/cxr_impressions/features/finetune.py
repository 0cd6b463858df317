"""The backbone adapted to chest X-rays: multi-label findings from MeSH, selected on validation.

Targets: `abnormal` and the labeller's 13 findings, per study, from its MeSH codes
(`labeller.mesh_labels`) or from the labeller's reading of the target text; with
`auxiliary_mesh: N`, also every other MeSH heading on at least N training studies, and with
`auxiliary_text`, the labeller's reading of the text beside the MeSH targets, both trained but
never scored (`auxiliary_headings`). Every image of a training-split study is one training
example with its study's labels; the epoch with the best mean validation AUC (the head's
probabilities averaged over the study's views) is kept.
BatchNorm layers stay frozen (inference mode, moving statistics kept): batches of 32 X-rays
would otherwise overwrite the ImageNet statistics with noisy ones.

`train_from: top` (CPU): the backbone below `finetune.cut` is run once over every image of the
clean split and its activations cached (see `ActivationCache`); the layers above the cut plus a
sigmoid head train on the cache. `train_from: all` (GPU): the whole backbone trains from the
images, with light augmentation (small shifts, zoom, rotation, contrast; no flips, which would
move the heart to the right).

`anchor_decay` pulls the trained backbone weights back toward their starting values after
every step (a decoupled L2-SP: Li et al., 2018, "Explicit inductive bias for transfer
learning"), by the learning rate times it, of the difference.

`head_init: probe` starts the head from the frozen backbone's linear probes (`probe_head`)
rather than at random, so that the first steps adapt the backbone toward the targets instead of
pushing a random head's errors into it (LP-FT: Kumar et al., 2022).

Measured in the same run, as linear probes (logistic regression on the pooled vectors, the
study's views averaged, fitted on the training split, L2 strength chosen per target on
validation): the frozen starting backbone and the adapted one, AUC per target on val and test.

Resume: the cache is built in shards (features/shards.py), and training saves its state after
every epoch (weights, optimizer variables, history) in `state_dir`, so a run killed anywhere
continues where it stopped and ends with the same outputs as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_json
from ..data.labeller import FINDINGS, MESH_TERMS, NORMAL_MESH, label_text, mesh_labels
from ..data.layout import view_slots
from ..errors import InputError
from ..schedules import learning_rate, load_moving_average, restore_raw
from ..settings.features import FeaturesParams
from ..settings.finetune import FinetuneParams
from .shards import compute_shards, noting_interrupts, shard_files

log = logging.getLogger(__name__)

TARGETS = ("abnormal", *FINDINGS)
MIN_TEST_POSITIVES = 10  # findings with fewer test positives are left out of the summary mean
PROBE_L2 = (0.1, 1.0, 10.0, 100.0)  # L2 on the mean log-loss; one chosen per target on val


# ----------------------------------------------------------------------------- the data

@dataclass
class LabelledImages:
    """The images of the clean split, each with its study's split and labels."""

    image_ids: list[str]
    paths: list[str]
    uids: np.ndarray  # (N,)
    split: np.ndarray  # (N,) "train" | "val" | "test"
    labels: np.ndarray  # (N, len(TARGETS)) float32
    slots: pd.DataFrame  # uid, split, frontal, lateral: the views a study's vector averages
    auxiliary: np.ndarray  # (N, len(auxiliary_names)) float32: trained on, never scored
    auxiliary_names: list[str]

    @property
    def training_targets(self) -> np.ndarray:
        """What the head learns: the scored targets, then the auxiliary headings."""
        return np.hstack([self.labels, self.auxiliary])

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def study_labels(examples: pd.DataFrame, source: str) -> pd.DataFrame:
    """uid -> one 0/1 column per target, from MeSH codes or from the labeller on the text."""
    if source == "mesh":
        rows = [mesh_labels(m) for m in examples["mesh"].fillna("")]
    else:
        rows = [label_text(t) for t in examples["text"].fillna("")]
    frame = pd.DataFrame(rows, columns=list(TARGETS)).astype(np.float32)
    frame.insert(0, "uid", examples["uid"].to_numpy())
    return frame


def mesh_headings(mesh: str) -> set[str]:
    """A report's MeSH headings: each `;`-separated term's part before the first "/", lower
    case ("Calcinosis/lung/hilum/right" -> "calcinosis")."""
    return {t.split("/")[0].strip().lower() for t in mesh.split(";") if t.strip()}


# Headings that already decide a target (normal, or a finding's code), so never auxiliary.
SCORED_HEADINGS = frozenset({*NORMAL_MESH, "no indexing",
                             *(c for codes in MESH_TERMS.values() for c in codes if "/" not in c)})


def auxiliary_headings(examples: pd.DataFrame, min_studies: int) -> list[str]:
    """The MeSH headings on at least `min_studies` training studies that no scored target
    reads, most frequent first (ties by name); none for `min_studies` 0. Chosen on the
    training split alone, so validation and test play no part."""
    if min_studies <= 0:
        return []
    counts: dict[str, int] = {}
    train = examples.loc[examples["split"] == "train", "mesh"].fillna("")
    for mesh in train:
        for heading in mesh_headings(mesh) - SCORED_HEADINGS:
            counts[heading] = counts.get(heading, 0) + 1
    chosen = [h for h, n in counts.items() if n >= min_studies]
    return sorted(chosen, key=lambda h: (-counts[h], h))


def labelled_images(examples: pd.DataFrame, images: pd.DataFrame, source: str,
                    auxiliary_mesh: int = 0, auxiliary_text: bool = False) -> LabelledImages:
    """The images of the clean split with their study's targets from `source`, and the
    auxiliary targets: the MeSH headings on at least `auxiliary_mesh` training studies, then
    (`auxiliary_text`) the labeller's reading of the text, named "text:<target>"."""
    labels = study_labels(examples, source)
    names = auxiliary_headings(examples, auxiliary_mesh)
    headings = [mesh_headings(m) for m in examples["mesh"].fillna("")]
    for name in names:
        labels[f"auxiliary:{name}"] = np.array([name in h for h in headings], np.float32)
    if auxiliary_text:
        text = study_labels(examples, "text")
        for target in TARGETS:
            names.append(f"text:{target}")
            labels[f"auxiliary:text:{target}"] = text[target].to_numpy()
    table = images.merge(examples[["uid", "split"]], on="uid").merge(labels, on="uid")
    table = table.sort_values(["uid", "image_id"]).reset_index(drop=True)
    if table.empty:
        raise InputError("finetune: no image of the clean split (run the clean stage first)")
    slots = view_slots(table[["uid", "image_id", "view"]]).merge(
        examples[["uid", "split"]], on="uid")
    auxiliary = table[[f"auxiliary:{n}" for n in names]].to_numpy(np.float32).reshape(
        len(table), len(names))
    return LabelledImages(table["image_id"].tolist(), table["path"].tolist(),
                          table["uid"].to_numpy(), table["split"].to_numpy(),
                          table[list(TARGETS)].to_numpy(np.float32), slots, auxiliary, names)


# ----------------------------------------------------------------------------- the cache

@dataclass(frozen=True)
class CacheSettings:
    backbone: str
    weights_sha256: str
    seed: int  # the random weights of `weights: none`
    cut: str
    input_size: int
    resize: str
    batch_size: int
    precision: str  # what the bottom ran at (bf16 activations differ from float32 ones)

    def fingerprint(self, ids: Sequence[str], paths: Sequence[str]) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for image_id, path in zip(ids, paths, strict=True):
            digest.update(f"{image_id}\t{path}\n".encode())
        return digest.hexdigest()


class ActivationCache:
    """The backbone's activations at the cut for a list of images, float16, in `folder`.

    Built in resumable shards, then joined into `activations.npy` (read memory-mapped) and
    `index.npy` (which input rows it holds; unreadable images are absent). The folder is kept
    after the stage ends, keyed by its fingerprint, so changing only the training params
    (epochs, learning rate, ...) reuses it; other settings or images discard it.
    """

    def __init__(self, folder: str | os.PathLike[str], fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @property
    def complete(self) -> bool:
        stamp = self.folder / "fingerprint"
        return (stamp.is_file() and stamp.read_text() == self.fingerprint
                and (self.folder / "activations.npy").is_file())

    def build(self, paths: Sequence[str], settings: CacheSettings,
              make_forward: Callable[[], Callable], progress: bool) -> dict[str, object]:
        if self.complete:
            for shard in shard_files(self.folder):  # a run killed while tidying up
                shard.unlink()
            log.info("activation cache complete: %s", self.folder)
            return {"cache_seconds": 0.0, "cache_reused": True}
        run = compute_shards(self.folder, self.fingerprint, paths, settings.input_size,
                             settings.resize, settings.batch_size, make_forward, progress,
                             desc=f"cache {settings.backbone} to {settings.cut}")
        if paths and not run.shards:
            shutil.rmtree(self.folder)
            raise InputError(f"none of the {len(paths)} images could be read (first: "
                             f"{paths[0]}); paths are relative to the repo root")
        self._join(run.shards)
        for shard in run.shards:
            shard.unlink()
        return {"cache_seconds": run.seconds, "cache_reused": False,
                "cache_images_per_second": run.images_per_second}

    def _join(self, shards: list[Path]) -> None:
        indices, shape = [], None
        for shard in shards:
            with np.load(shard) as data:
                indices.append(data["indices"])
                shape = data["activations"].shape[1:]
        index = np.concatenate(indices)
        with atomic_path(self.folder / "index.npy", suffix=".npy") as tmp:
            np.save(tmp, index)
        # Written last, and renamed into place whole: its presence marks a complete cache.
        with atomic_path(self.folder / "activations.npy", suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                            shape=(len(index), *shape))
            row = 0
            for shard in shards:
                with np.load(shard) as data:
                    n = len(data["indices"])
                    out[row:row + n] = data["activations"]
                    row += n
            out.flush()
            del out

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(index of the input rows held, activations memory-mapped, in that order)."""
        return (np.load(self.folder / "index.npy"),
                np.load(self.folder / "activations.npy", mmap_mode="r"))


def cache_dir(cache_root: str | os.PathLike[str], backbone: str) -> Path:
    return Path(cache_root) / backbone


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """One run at a time builds or opens the cache in `folder`: DVC's queued experiments share
    the project's cache, and a run with other settings would discard it while another builds.
    A run that has opened the cache keeps reading it even if the next one replaces it (the
    arrays are memory-mapped). The kernel drops the lock when its holder dies, even by kill -9."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another run that holds the activation cache %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# ----------------------------------------------------------------------------- metrics

def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (ties count half); None when a class is absent."""
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def aucs(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    return {t: auc(labels[:, j], scores[:, j]) for j, t in enumerate(TARGETS)}


def mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def view_rows(images: LabelledImages, split: str) -> np.ndarray:
    """Per study of `split`, the rows of its two view slots (studies, 2): frontal, lateral; a
    study with one view has its row twice."""
    row_of = {image_id: i for i, image_id in enumerate(images.image_ids)}
    slots = images.slots[images.slots["split"] == split]
    frontal = [row_of[i] for i in slots["frontal"]]
    lateral = [row_of.get(i, row_of[f]) for i, f in
               zip(slots["lateral"], slots["frontal"], strict=True)]
    return np.array([frontal, lateral], dtype=np.int64).T.reshape(len(frontal), 2)


def study_vectors(per_image: np.ndarray, images: LabelledImages, split: str,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per study of `split`: the mean of its view slots' rows of `per_image`, and its rows of
    `labels` (per image; default the scored targets, `images.labels`)."""
    rows = view_rows(images, split)
    vectors = (per_image[rows[:, 0]].astype(np.float64) + per_image[rows[:, 1]]) / 2.0
    return vectors.astype(np.float32), (images.labels if labels is None else labels)[rows[:, 0]]


def study_scores(logits: np.ndarray, images: LabelledImages, split: str, unit: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per study of `split`: the head's probability per target, as the unit trained it (image:
    the views' probabilities averaged; study: the sigmoid of the views' mean logit), and its
    labels."""
    if unit == "study":
        mean_logits, labels = study_vectors(logits, images, split)
        return _sigmoid(mean_logits), labels
    return study_vectors(_sigmoid(logits), images, split)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)


def logistic_newton(design: np.ndarray, targets: np.ndarray, l2: float,
                    start: np.ndarray | None = None, tolerance: float = 1e-7,
                    max_steps: int = 100) -> np.ndarray:
    """The minimiser of mean log-loss + l2/2 |w|^2 (the last column of `design` is the
    intercept, not penalised), by Newton's method with backtracking: converged, so it depends
    on the data alone and not on a step count or step size."""
    n, d = design.shape
    penalty = np.full(d, l2)
    penalty[-1] = 0.0

    def objective(w: np.ndarray) -> float:
        z = design @ w
        return float(np.mean(np.logaddexp(0.0, z) - targets * z) + 0.5 * np.sum(penalty * w * w))

    single = design.astype(np.float32)  # the Hessian only steers; the gradient decides
    w = np.zeros(d) if start is None else start.copy()
    value = objective(w)
    for _ in range(max_steps):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (p - targets) / n + penalty * w
        if np.max(np.abs(gradient)) < tolerance:
            break
        hessian = ((single.T * (p * (1.0 - p) / n).astype(np.float32)) @ single).astype(float)
        hessian[np.diag_indices(d)] += penalty + 1e-12
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-8:
            candidate = w - size * step
            candidate_value = objective(candidate)
            if candidate_value <= value - 1e-4 * size * float(gradient @ step):
                break
            size /= 2.0
        w, value = candidate, candidate_value
    return w


@dataclass(frozen=True)
class ProbeSpace:
    """Where the probes are fitted: vectors standardised on the training split, in the span
    of the training vectors (where an L2-penalised solution lies; w = V a with |w| = |a|, so
    the same problem in min(n, d) coordinates), with an intercept column last."""

    mean: np.ndarray
    std: np.ndarray
    basis: np.ndarray  # (d, k)

    @classmethod
    def of(cls, train_vectors: np.ndarray) -> ProbeSpace:
        mean, std = train_vectors.mean(axis=0), train_vectors.std(axis=0) + 1e-6
        standardised = (train_vectors.astype(np.float64) - mean) / std
        _, singular, basis_t = np.linalg.svd(standardised, full_matrices=False)
        return cls(mean, std, basis_t[singular > singular[0] * 1e-10].T)

    def design(self, vectors: np.ndarray) -> np.ndarray:
        coordinates = ((vectors.astype(np.float64) - self.mean) / self.std) @ self.basis
        return np.hstack([coordinates, np.ones((len(vectors), 1))])

    def linear(self, solution: np.ndarray) -> tuple[np.ndarray, float]:
        """(kernel, bias) giving the solution's scores on the raw vectors: x @ kernel + bias."""
        direction = self.basis @ solution[:-1] / self.std
        return direction, float(solution[-1] - self.mean @ direction)


def best_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]
               ) -> tuple[float, np.ndarray] | None:
    """(L2, solution) of the logistic regression of one target on `train`'s design, with the
    L2 strength in `PROBE_L2` of the best `val` AUC (the strongest where validation has one
    class); None when training has one class."""
    design, y = train
    if y.min() == y.max():
        return None
    best: tuple[float, float, np.ndarray] | None = None
    solution = None
    for l2 in sorted(PROBE_L2, reverse=True):  # each fit starts from the stronger one's
        solution = logistic_newton(design, y.astype(np.float64), l2, solution)
        val_auc = auc(val[1], val[0] @ solution)
        if best is None or (val_auc is not None and val_auc > best[1]):
            best = (l2, -1.0 if val_auc is None else val_auc, solution)
    return best[0], best[2]


def fit_probes(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
               test: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, dict], np.ndarray]:
    """Logistic regression per target on standardised vectors, L2 strength chosen per target
    on validation AUC; the AUCs, and the test studies' scores (NaN for an unfitted target).
    Each fit is solved to convergence (Newton) in the span of the training vectors, where an
    L2-penalised solution lies: so tiny changes in the vectors (float16 rounding) move the
    AUCs only as much as they move the optimum."""
    space = ProbeSpace.of(train[0])
    design = {name: space.design(part[0]) for name, part in
              (("train", train), ("val", val), ("test", test))}
    out: dict[str, dict] = {"val": {}, "test": {}, "l2": {}}
    test_scores = np.full((len(test[0]), len(TARGETS)), np.nan)
    for j, target in enumerate(TARGETS):
        fitted = best_probe((design["train"], train[1][:, j]), (design["val"], val[1][:, j]))
        if fitted is None:  # one class in training: nothing to fit
            out["l2"][target], out["val"][target], out["test"][target] = None, None, None
            continue
        out["l2"][target], solution = fitted
        test_scores[:, j] = design["test"] @ solution
        out["val"][target] = _round(auc(val[1][:, j], design["val"] @ solution))
        out["test"][target] = _round(auc(test[1][:, j], test_scores[:, j]))
    return out, test_scores


def probe_head(pooled: np.ndarray, images: LabelledImages) -> tuple[np.ndarray, np.ndarray]:
    """The head's (kernel, bias) for every training target (the scored ones, then the
    auxiliary), each the linear probe of `pooled` that `fit_probes` would fit: on the training
    studies' vectors (views averaged), L2 chosen on validation AUC. On an image's vector it
    gives the logit the probe gives its study when the views agree. A target with one class
    in training gets zero weights."""
    vectors, targets = {}, {}
    for split in ("train", "val"):
        vectors[split], targets[split] = study_vectors(pooled, images, split,
                                                       images.training_targets)
    space = ProbeSpace.of(vectors["train"])
    design = {split: space.design(v) for split, v in vectors.items()}
    kernel = np.zeros((pooled.shape[1], targets["train"].shape[1]), np.float32)
    bias = np.zeros(targets["train"].shape[1], np.float32)
    for j in range(kernel.shape[1]):
        fitted = best_probe((design["train"], targets["train"][:, j]),
                            (design["val"], targets["val"][:, j]))
        if fitted is not None:
            kernel[:, j], bias[j] = space.linear(fitted[1])
    return kernel, bias


@dataclass(frozen=True)
class TestScores:
    """Per test study: its labels (studies, targets), and each system's scores: the `frozen`
    and `adapted` probes and the finetune `head` (NaN for a target a probe could not fit)."""

    __test__ = False  # not a pytest class
    labels: np.ndarray
    systems: dict[str, np.ndarray]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ----------------------------------------------------------------------------- training

@dataclass
class Adapter:
    """The trainable network plus its head: `model(x) -> {"pooled", "logits"}`."""

    model: object  # keras.Model
    base: object  # the backbone's Keras application, whose weights the stage saves
    net: object  # the part that trains (the top, or the whole base behind augmentation)

    def __post_init__(self) -> None:
        import tensorflow as tf

        # One traced function for every prediction pass (a new one per pass would retrace).
        self.forward = tf.function(lambda x: self.model(x, training=False),
                                   reduce_retracing=True)


def build_adapter(finetune: FinetuneParams, features: FeaturesParams, weights_path: str | None,
                  cut: str, precision: str = "float32", auxiliary: int = 0
                  ) -> tuple[Adapter, object | None]:
    """The adapter and, for `train_from: top`, the frozen bottom below the cut. Its head has
    one logit per target, then one per `auxiliary` heading.

    `precision: bfloat16` builds the backbone under Keras' `mixed_bfloat16` policy (bf16
    compute, float32 weights, so the saved weights are float32 either way); the pooling and
    the head stay float32, so the loss and the probes' vectors are float32. Callers pass the
    result of `resolve_precision`, which checks the hardware."""
    from .backbones import dtype_policy

    with dtype_policy(precision):
        return _build_adapter(finetune, features, weights_path, cut, auxiliary)


def _build_adapter(finetune: FinetuneParams, features: FeaturesParams, weights_path: str | None,
                   cut: str, auxiliary: int) -> tuple[Adapter, object | None]:
    import keras

    from .backbones import build_base, preprocess, split_base

    size = features.image_size
    base = build_base(features.backbone, weights_path, size, seed=features.seed)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    if finetune.train_from == "top":
        bottom, top = split_base(base, cut)
        inputs = keras.Input(top.input.shape[1:], name="activations")
        feature_map = top(inputs)
        net = top
    else:
        bottom = None
        inputs = keras.Input((size, size, 3), name="image")
        # Small, anatomy-preserving changes only; the seed makes them the same every run.
        x = keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant",
                                           seed=finetune.seed)(inputs)
        x = keras.layers.RandomZoom(0.1, fill_mode="constant", seed=finetune.seed + 1)(x)
        x = keras.layers.RandomRotation(0.02, fill_mode="constant", seed=finetune.seed + 2)(x)
        x = keras.layers.RandomContrast(0.1, seed=finetune.seed + 3)(x)
        feature_map = base(preprocess(features.backbone, x))
        net = base
    keras.utils.set_random_seed(finetune.seed)
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled", dtype="float32")(feature_map)
    logits = keras.layers.Dense(len(TARGETS) + auxiliary, name="findings", dtype="float32")(pooled)
    model = keras.Model(inputs, {"pooled": pooled, "logits": logits}, name="adapter")
    return Adapter(model, base, net), bottom


class Feed:
    """Batches of the adapter's inputs for rows of `LabelledImages`: cached activations
    (`top`) or decoded images (`all`)."""

    def __init__(self, images: LabelledImages, features: FeaturesParams,
                 cache: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.images = images
        self.features = features
        self.position = None
        if cache is not None:
            index, self.activations = cache
            self.position = np.full(len(images.paths), -1, np.int64)
            self.position[index] = np.arange(len(index))

    def available(self, rows: np.ndarray) -> np.ndarray:
        """The rows with an input (an unreadable image has no cached activation)."""
        return rows if self.position is None else rows[self.position[rows] >= 0]

    def available_pairs(self, pairs: np.ndarray) -> np.ndarray:
        """The (frontal, lateral) row pairs whose frontal has an input; a lateral without one
        is replaced by the frontal, as for a study with one view."""
        if self.position is None:
            return pairs
        pairs = pairs[self.position[pairs[:, 0]] >= 0].copy()
        missing = self.position[pairs[:, 1]] < 0
        pairs[missing, 1] = pairs[missing, 0]
        return pairs

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, object]]:
        if self.position is not None:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                yield chunk, self.activations[self.position[chunk]].astype(np.float32)
            return
        from ..data.images import image_dataset
        from .shards import decode_ahead

        paths = [self.images.paths[i] for i in rows]
        dataset = decode_ahead(image_dataset(paths, self.features.image_size, 3,
                                             self.features.resize, parallel=1), batch_size)
        for index, images in dataset:
            yield rows[index.numpy()], images


def shift_activations(batch: np.ndarray, most: int, rng: np.random.Generator) -> np.ndarray:
    """Each (H, W, C) map of the batch moved by up to `most` cells along each axis (drawn
    from `rng`), the cells moved in filled with zeros: the image translated, at the cut."""
    shifted = np.zeros_like(batch)
    height, width = batch.shape[1:3]
    for i, (dy, dx) in enumerate(rng.integers(-most, most + 1, size=(len(batch), 2))):
        shifted[i, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            batch[i, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return shifted


def mix_examples(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator,
                 views: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mixup: each example (of `views` consecutive rows of `x`, one row of `y`) mixed with a
    partner drawn from the batch, x = l x + (1 - l) x' and y likewise, l ~ Beta(alpha, alpha)
    per example."""
    examples = len(y)
    share = rng.beta(alpha, alpha, size=examples).astype(np.float32)
    partner = rng.permutation(examples)
    partner_rows = (partner[:, None] * views + np.arange(views)).reshape(-1)
    row_share = np.repeat(share, views).reshape((-1,) + (1,) * (x.ndim - 1))
    mixed_x = row_share * x + (1 - row_share) * x[partner_rows]
    mixed_y = share[:, None] * y + (1 - share[:, None]) * y[partner]
    return mixed_x.astype(np.float32), mixed_y.astype(np.float32)


def predict(adapter: Adapter, feed: Feed, rows: np.ndarray, batch_size: int,
            n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(pooled, the scored targets' logits) for every row of `LabelledImages` (zeros for rows
    not asked)."""
    pooled, logits = None, np.zeros((n_rows, len(TARGETS)), np.float32)
    for chunk, x in feed.batches(rows, batch_size):
        out = adapter.forward(x)
        if pooled is None:
            pooled = np.zeros((n_rows, out["pooled"].shape[-1]), np.float32)
        pooled[chunk] = out["pooled"].numpy()
        logits[chunk] = out["logits"][:, :len(TARGETS)].numpy()
    return pooled, logits


@dataclass
class TrainState:
    """What an interrupted training run resumes from, saved after every epoch."""

    folder: Path
    fingerprint: str

    def __post_init__(self) -> None:
        stamp = self.folder / "fingerprint"
        if self.folder.exists() and not (stamp.is_file() and stamp.read_text() ==
                                         self.fingerprint):
            log.info("discarding training state from other params or data: %s", self.folder)
            shutil.rmtree(self.folder)
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            stamp.write_text(self.fingerprint)

    @property
    def progress_file(self) -> Path:
        return self.folder / "progress.json"

    def progress(self) -> dict:
        if self.progress_file.is_file():
            return json.loads(self.progress_file.read_text())
        return {"epochs_done": 0, "best_epoch": 0, "best_score": None, "history": []}

    def save_array(self, name: str, array: np.ndarray) -> None:
        with atomic_path(self.folder / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, array)

    def load_array(self, name: str) -> np.ndarray | None:
        path = self.folder / f"{name}.npy"
        return np.load(path) if path.is_file() else None

    def save_best(self, model: object, epoch: int) -> None:
        """The weights that validation scored, kept as the best so far; before `save_epoch`,
        which records the epoch as done."""
        with atomic_path(self.folder / f"best{epoch}.weights.h5", suffix=".weights.h5") as tmp:
            model.save_weights(tmp)

    def save_epoch(self, model: object, optimizer: object, progress: dict) -> None:
        """The weights training goes on from and the optimizer first, progress last: a run
        killed in between redoes the epoch from the previous state, whose files the atomic
        renames left whole."""
        epoch = progress["epochs_done"]
        with atomic_path(self.folder / f"epoch{epoch}.weights.h5", suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
        with atomic_path(self.folder / f"epoch{epoch}.optimizer.npz", suffix=".npz") as tmp:
            np.savez(tmp, *[v.numpy() for v in optimizer.variables])
        write_json(self.progress_file, progress)
        for old in self.folder.glob("*.weights.h5"):  # keep only the latest and the best
            if old.name not in (f"epoch{epoch}.weights.h5",
                                f"best{progress['best_epoch']}.weights.h5"):
                old.unlink()
        for old in self.folder.glob("*.optimizer.npz"):
            if old.name != f"epoch{epoch}.optimizer.npz":
                old.unlink()

    def restore(self, model: object, optimizer: object, progress: dict) -> None:
        epoch = progress["epochs_done"]
        model.load_weights(self.folder / f"epoch{epoch}.weights.h5")
        optimizer.build(model.trainable_variables)
        with np.load(self.folder / f"epoch{epoch}.optimizer.npz") as saved:
            for variable, key in zip(optimizer.variables, saved.files, strict=True):
                variable.assign(saved[key])

    def best_weights(self, progress: dict) -> Path:
        return self.folder / f"best{progress['best_epoch']}.weights.h5"


def positive_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per target, (negatives / positives) ** power among `labels` (images x targets); a target
    without a positive or a negative weighs 1."""
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = len(labels) - positives
    odds = np.divide(negatives, positives, out=np.ones_like(positives),
                     where=(positives > 0) & (negatives > 0))
    return (odds ** power).astype(np.float32)


def make_train_step(model: object, optimizer: object,
                    positive_weight: np.ndarray | None = None, views: int = 1,
                    anchors: list[tuple[object, object]] | None = None,
                    anchor_decay: float = 0.0) -> Callable:
    """One optimizer step on a batch: binary cross-entropy over every target, each target's
    positive term weighted by `positive_weight` where given. With `views` 2, the batch's
    images come in consecutive pairs, one study each, `y` has a row per study, and a study's
    logits are the mean of its two images'. With `anchor_decay`, each (variable, start) of
    `anchors` then moves toward its start by the step's learning rate x `anchor_decay` of the
    difference."""
    import tensorflow as tf

    weight = None if positive_weight is None else tf.constant(positive_weight, tf.float32)
    anchors = anchors if anchor_decay > 0 else []

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)["logits"]
            if views > 1:
                logits = tf.reduce_mean(tf.reshape(logits, (-1, views, logits.shape[-1])), 1)
            loss = tf.nn.sigmoid_cross_entropy_with_logits(y, logits)
            if weight is not None:
                # The labels are 0 or 1, so this weighs the positive term alone.
                # tf.nn.weighted_cross_entropy_with_logits is not used: its gradient is 0 at
                # a logit of exactly 0 (abs and relu).
                loss = loss * (1.0 + (weight - 1.0) * y)
            loss = tf.reduce_mean(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        if anchors:  # read only then: one more op changes the step's numerics (its graph)
            # The rate of the step about to be taken (read before apply_gradients counts it).
            pull = tf.cast(optimizer.learning_rate, tf.float32) * anchor_decay
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        for variable, start in anchors:
            variable.assign_sub(pull * (variable - start))
        return loss
    return step


def backbone_anchors(adapter: Adapter) -> list[tuple[object, object]]:
    """Each trainable backbone variable (not the head's) with a constant copy of its value
    now, the start that `finetune.anchor_decay` pulls it back toward."""
    import tensorflow as tf

    return [(v, tf.constant(v.numpy())) for v in adapter.net.trainable_variables]


def val_score(logits: np.ndarray, images: LabelledImages, unit: str = "image"
              ) -> tuple[float | None, dict]:
    """Mean validation AUC over the targets, of the head's study scores (`study_scores`)."""
    scores, labels = study_scores(logits, images, "val", unit)
    per_target = aucs(labels, scores)
    return mean_defined(list(per_target.values())), per_target


def train_adapter(adapter: Adapter, feed: Feed, images: LabelledImages, params: FinetuneParams,
                  state: TrainState, progress_bar: bool) -> dict:
    """Train with the epoch selected on validation; leave the best epoch's weights loaded."""
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    model = adapter.model
    val_rows = feed.available(images.rows("val"))
    targets = images.training_targets
    if params.unit == "study":  # a unit is a study: its two view rows, read as one example
        units = feed.available_pairs(view_rows(images, "train"))
        per_batch, unit_targets = params.batch_size // 2, targets[units[:, 0]]
    else:
        units = feed.available(images.rows("train"))
        per_batch, unit_targets = params.batch_size, targets[units]
    steps = params.epochs * -(-len(units) // per_batch)
    optimizer = keras.optimizers.Adam(learning_rate(params.learning_rate, params.schedule, steps),
                                      use_ema=params.ema_momentum > 0,
                                      ema_momentum=params.ema_momentum or 0.99)
    # Taken before a resumed run restores its last epoch, so the start is the starting weights.
    anchors = backbone_anchors(adapter) if params.anchor_decay > 0 else None
    progress = state.progress()
    if progress["epochs_done"]:
        state.restore(model, optimizer, progress)
        log.info("resuming training after epoch %d of %d", progress["epochs_done"],
                 params.epochs)
    weights = (positive_weights(unit_targets, params.positive_weight_power)
               if params.positive_weight_power else None)
    views = 2 if params.unit == "study" else 1
    step = make_train_step(model, optimizer, weights, views, anchors, params.anchor_decay)

    seconds = []
    with noting_interrupts() as interrupted:
        for epoch in range(progress["epochs_done"] + 1, params.epochs + 1):
            began = time.perf_counter()
            # The order depends only on the seed and the epoch: a resumed run sees the same.
            order = np.random.default_rng([params.seed, epoch]).permutation(len(units))
            shifts = np.random.default_rng([params.seed, epoch, 1])
            mixes = np.random.default_rng([params.seed, epoch, 2])
            losses = []
            with tqdm(total=len(order), unit=params.unit, disable=not progress_bar,
                      desc=f"finetune epoch {epoch}/{params.epochs}") as bar:
                # Rows in unit order; a study's two rows are consecutive, so a batch of
                # per_batch * views rows holds whole studies, labelled by their first row.
                for rows, x in feed.batches(units[order].reshape(-1), per_batch * views):
                    if params.activation_shift and feed.position is not None:
                        x = shift_activations(x, params.activation_shift, shifts)
                    y = targets[rows[::views]]
                    if params.mixup:
                        x, y = mix_examples(np.asarray(x), y, params.mixup, mixes, views)
                    losses.append(float(step(x, tf.constant(y))))
                    bar.update(len(rows) // views)
            if interrupted.is_set():
                raise KeyboardInterrupt
            epoch_seconds = time.perf_counter() - began
            raw = (load_moving_average(model.trainable_variables, optimizer)
                   if params.ema_momentum > 0 else None)
            _, logits = predict(adapter, feed, val_rows, params.batch_size, len(images.paths))
            score, _ = val_score(logits, images, params.unit)
            if progress["best_score"] is None or (score or 0) > progress["best_score"]:
                state.save_best(model, epoch)
                progress["best_epoch"], progress["best_score"] = epoch, score
            if raw is not None:
                restore_raw(model.trainable_variables, raw)
            progress["epochs_done"] = epoch
            progress["history"].append({"epoch": epoch, "loss": round(float(np.mean(losses)), 5),
                                        "val_mean_auc": _round(score)})
            log.info("epoch %d: loss %.4f, val mean AUC %s", epoch, np.mean(losses), score)
            state.save_epoch(model, optimizer, progress)
            seconds.append(epoch_seconds)
    model.load_weights(state.best_weights(progress))
    return {**progress, f"train_{params.unit}s": int(len(units)), "seconds_this_run": seconds}


# ----------------------------------------------------------------------------- the stage

def finetune(examples: pd.DataFrame, images: pd.DataFrame, out_path: str | os.PathLike[str],
             cache_root: str | os.PathLike[str], params: FinetuneParams,
             features: FeaturesParams, weights_path: str | None,
             progress: bool = True) -> tuple[dict, dict[str, float], TestScores]:
    """Adapt the backbone; write its weights to `out_path`. Return the metrics, which depend
    only on the data and params, the timings (seconds, images per second, peak RSS), and the
    test studies' scores (for the stage's bootstrap intervals)."""
    import tensorflow as tf

    from .backbones import get_spec, resolve_precision, sha256_of

    began = time.perf_counter()
    spec = get_spec(features.backbone)
    cut = params.cut or spec.default_cut
    if params.train_from == "top" and not cut:
        raise InputError(f"finetune.cut: {spec.name} has no default cut; name the first layer "
                         "above the cut")
    data = labelled_images(examples, images, params.labels, params.auxiliary_mesh,
                           params.auxiliary_text)
    precision = resolve_precision(params.precision)
    adapter, bottom = build_adapter(params, features, weights_path, cut, precision,
                                    len(data.auxiliary_names))
    weights_sha = sha256_of(weights_path) if weights_path else ""

    cache_stats: dict = {}
    cache = None
    if bottom is not None:
        settings = CacheSettings(features.backbone, weights_sha, features.seed, cut,
                                 features.image_size, features.resize, params.batch_size,
                                 precision)
        store = ActivationCache(cache_dir(cache_root, features.backbone),
                                settings.fingerprint(data.image_ids, data.paths))

        def make_forward() -> Callable:
            forward = tf.function(lambda x: tf.cast(bottom(x, training=False), tf.float32),
                                  autograph=False)
            scale = _preprocess_model(features)

            def run(images: tf.Tensor) -> dict[str, np.ndarray]:
                return {"activations": forward(scale(images)).numpy().astype(np.float16)}
            return run

        with cache_lock(store.folder):
            cache_stats = store.build(data.paths, settings, make_forward, progress)
            cache = store.load()
    feed = Feed(data, features, cache)
    every = feed.available(np.arange(len(data.paths)))

    state = TrainState(Path(out_path).parent / f".{Path(out_path).name}.train-state",
                       _train_fingerprint(params, features, weights_sha, cut, precision, data))
    frozen = state.load_array("frozen_pooled")
    if frozen is None:  # the starting backbone, for the probes: before any training step
        frozen, _ = predict(adapter, feed, every, params.batch_size, len(data.paths))
        state.save_array("frozen_pooled", frozen)
    if params.head_init == "probe" and not state.progress()["epochs_done"]:
        adapter.model.get_layer("findings").set_weights(list(probe_head(frozen, data)))
    training = train_adapter(adapter, feed, data, params, state, progress)
    adapted, logits = predict(adapter, feed, every, params.batch_size, len(data.paths))

    with atomic_path(out_path, suffix=".weights.h5") as tmp:
        adapter.base.save_weights(tmp)
    metrics = {
        "backbone": features.backbone, "weights": params.weights, "train_from": params.train_from,
        "cut": cut if params.train_from == "top" else "", "labels": params.labels,
        "unit": params.unit,
        "auxiliary_targets": data.auxiliary_names,
        "precision": precision,
        "cut_shape": list(cache[1].shape[1:]) if cache is not None else None,
        "images": {s: int(len(feed.available(data.rows(s)))) for s in ("train", "val", "test")},
        "positives": _positives(data),
        "epochs": training["history"], "best_epoch": training["best_epoch"],
        "head": {split: {t: _round(a) for t, a in
                         aucs(*_swap(study_scores(logits, data, split, params.unit))).items()}
                 for split in ("val", "test")},
    }
    probe_scores = {}
    metrics["probes"] = {}
    for name, pooled in (("frozen", frozen), ("adapted", adapted)):
        metrics["probes"][name], probe_scores[name] = fit_probes(
            *(study_vectors(pooled, data, s) for s in ("train", "val", "test")))
    metrics["summary"] = summarise(metrics)
    head_scores, test_labels = study_scores(logits, data, "test", params.unit)
    test = TestScores(test_labels, {**probe_scores, "head": head_scores})
    epoch_seconds = training["seconds_this_run"]
    timings = {**{k: float(v) for k, v in cache_stats.items()},
               "epochs_this_run": float(len(epoch_seconds)),
               "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
               "finetune_seconds": time.perf_counter() - began,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    shutil.rmtree(state.folder)
    return metrics, timings, test


def _swap(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = pair
    return labels, scores


def _preprocess_model(features: FeaturesParams) -> Callable:
    import keras

    from .backbones import preprocess

    inputs = keras.Input((features.image_size, features.image_size, 3))
    return keras.Model(inputs, preprocess(features.backbone, inputs))


def _positives(data: LabelledImages) -> dict:
    out = {}
    for split in ("train", "val", "test"):
        _, labels = study_vectors(np.zeros((len(data.paths), 1), np.float32), data, split)
        out[split] = {t: int(labels[:, j].sum()) for j, t in enumerate(TARGETS)}
    return out


def summarise(metrics: dict) -> dict:
    """Test AUC for abnormal, and the mean over findings with enough test positives."""
    enough = [t for t in FINDINGS if metrics["positives"]["test"][t] >= MIN_TEST_POSITIVES]
    out: dict = {"findings_with_enough_test_positives": enough}
    for name in ("frozen", "adapted"):
        test = metrics["probes"][name]["test"]
        out[f"{name}_test_abnormal_auc"] = test["abnormal"]
        out[f"{name}_test_findings_mean_auc"] = _round(mean_defined([test[t] for t in enough]))
    for key in ("abnormal_auc", "findings_mean_auc"):
        frozen, adapted = out[f"frozen_test_{key}"], out[f"adapted_test_{key}"]
        out[f"gain_test_{key}"] = (None if frozen is None or adapted is None
                                   else round(adapted - frozen, 4))
    return out


def _train_fingerprint(params: FinetuneParams, features: FeaturesParams, weights_sha: str,
                       cut: str, precision: str, data: LabelledImages) -> str:
    content = {"finetune": asdict(params),
               "backbone": features.backbone, "image_size": features.image_size,
               "resize": features.resize, "seed": features.seed, "weights_sha256": weights_sha,
               "cut": cut, "precision": precision}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
    digest.update(json.dumps(data.auxiliary_names).encode())
    for image_id, split, labels in zip(data.image_ids, data.split, data.training_targets,
                                       strict=True):
        digest.update(f"{image_id}\t{split}\t{labels.tolist()}\n".encode())
    return digest.hexdigest()
