"""Studies as model inputs: each report's two view slots, its features and its token ids.

Slot 0 holds the frontal image and slot 1 the lateral (the first of each; with no frontal, the
first image stands in). A study with one image has `views = [1, 0]`: the attention models mask
the empty slot, and the pooled-vector models use the one image for both slots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.labeller import FINDINGS, label_text
from ..data.layout import view_slots
from ..data.tokenizer import Vocabulary
from ..features.store import FeatureStore

# The columns of `Studies.labels`: the labeller's findings, then normal/abnormal.
LABELS: tuple[str, ...] = (*FINDINGS, "abnormal")


@dataclass
class Studies:
    uids: np.ndarray  # (N,)
    image_ids: np.ndarray  # (N, 2) str, "" for an empty slot
    pooled: np.ndarray  # (N, 2, D) float32; an empty slot repeats the other view
    views: np.ndarray  # (N, 2) float32, 1 where the slot has an image
    tokens: np.ndarray  # (N, max_len) int32, startseq ... endseq, 0-padded
    texts: list[str]  # the normalised reference text
    labels: np.ndarray  # (N, len(LABELS)) float32: the labeller's reading of the reference
    grid: np.ndarray | None = None  # (N, 2, R, D) float16
    retrieved: np.ndarray | None = None  # (N, k, T) int32: retrieval memory (retrieval.py)
    titles: list[str] | None = None  # each report's exam title as written ("" if none)
    exam_title: np.ndarray | None = None  # (N, 1) int32: the titles' ids (titles.py)

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def abnormal(self) -> np.ndarray:
        """(N,) float32, 1 where the labeller reads the reference as abnormal."""
        return self.labels[:, LABELS.index("abnormal")]

    def label_matrix(self, names: tuple[str, ...]) -> np.ndarray:
        """(N, len(names)) float32: the columns of `labels` for `names`, in that order."""
        return self.labels[:, [LABELS.index(n) for n in names]]

    def inputs(self, index: np.ndarray | slice | None = None) -> dict[str, np.ndarray]:
        index = slice(None) if index is None else index
        out = {"pooled": self.pooled[index], "views": self.views[index]}
        if self.grid is not None:
            out["grid"] = self.grid[index]
        if self.retrieved is not None:
            out["retrieved"] = self.retrieved[index]
        if self.exam_title is not None:
            out["exam_title"] = self.exam_title[index]
        return out


# What `pool_grid` does, recorded in every bundle (bundle.py): bumped when it changes, so that a
# model trained on regions pooled one way is never fed regions pooled another.
GRID_POOLING = "every_cell"


def pool_bins(size: int, factor: int) -> list[tuple[int, int]]:
    """The cells [start, end) of each of the `size // factor` (at least 1) bins along one side.

    Where `factor` divides `size` these are the plain blocks of `factor` cells; otherwise
    neighbouring bins share a cell, so that every cell is read (10 by 3: cells 0-3, 3-6 and 6-9),
    as adaptive average pooling does.
    """
    bins = max(1, size // factor)
    return [(i * size // bins, -(-(i + 1) * size // bins)) for i in range(bins)]


def pool_grid(grid: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool (N, H, W, D) grids by `factor`, then flatten to (N, R, D) regions."""
    n, h, w, d = grid.shape
    if factor == 1:
        return grid.reshape(n, h * w, d)
    grid = grid.astype(np.float32)
    # `pool_bins` would give the same blocks here; the reshape is faster and sums in the order
    # that models trained before the bins were, so their regions stay bit-identical.
    if h % factor == 0 and w % factor == 0:
        h, w = h // factor, w // factor
        pooled = grid.reshape(n, h, factor, w, factor, d).mean(axis=(2, 4))
    else:
        rows, cols = pool_bins(h, factor), pool_bins(w, factor)
        pooled = np.stack([np.stack([grid[:, r0:r1, c0:c1].mean(axis=(1, 2))
                                     for c0, c1 in cols], axis=1) for r0, r1 in rows], axis=1)
        h, w = len(rows), len(cols)
    return pooled.astype(np.float16).reshape(n, h * w, d)


def load_studies(examples: pd.DataFrame, images: pd.DataFrame, store: FeatureStore,
                 vocab: Vocabulary, with_grid: bool = False, grid_pool: int = 1) -> Studies:
    """Studies of `examples` whose images have features (reports with none are left out)."""
    available = images[images["image_id"].isin(set(store.ids))]
    columns = ["uid", "text"] + (["caption"] if "caption" in examples else [])
    slots = view_slots(available).merge(examples[columns], on="uid")
    frontal = slots["frontal"].to_numpy()
    lateral = slots["lateral"].to_numpy()
    has_lateral = lateral != ""
    pooled_f = store.pooled(list(frontal))
    pooled_l = pooled_f.copy()
    if has_lateral.any():
        pooled_l[has_lateral] = store.pooled(list(lateral[has_lateral]))
    grid = None
    if with_grid:
        grid_f = pool_grid(store.grid(list(frontal)), grid_pool)
        grid_l = np.zeros_like(grid_f)
        if has_lateral.any():
            grid_l[has_lateral] = pool_grid(store.grid(list(lateral[has_lateral])), grid_pool)
        grid = np.stack([grid_f, grid_l], axis=1)
    tokens = np.zeros((len(slots), vocab.max_len), dtype=np.int32)
    for i, text in enumerate(slots["text"]):
        ids = vocab.encode(text)
        tokens[i, : len(ids)] = ids
    return Studies(
        uids=slots["uid"].to_numpy(),
        image_ids=np.stack([frontal, lateral], axis=1),
        pooled=np.stack([pooled_f, pooled_l], axis=1).astype(np.float32),
        views=np.stack([np.ones(len(slots)), has_lateral], axis=1).astype(np.float32),
        tokens=tokens,
        texts=slots["text"].tolist(),
        labels=reference_labels(slots["text"]),
        grid=grid,
        titles=(slots["caption"].fillna("").astype(str).tolist() if "caption" in slots
                else [""] * len(slots)),
    )


def reference_labels(texts: pd.Series | list[str]) -> np.ndarray:
    """(N, len(LABELS)) float32: the labeller's reading of each text."""
    read = [label_text(t) for t in texts]
    return np.array([[r[name] for name in LABELS] for r in read], dtype=np.float32).reshape(
        len(read), len(LABELS))


def load_split(clean_dir: str | os.PathLike[str], split: str, store: FeatureStore,
               vocab: Vocabulary, grid_pool: int | None = None) -> Studies:
    """The studies of one split of the clean stage's output; `grid_pool` (None: no grid) pools
    the spatial grid for the models that read it."""
    clean_dir = Path(clean_dir)
    examples = pd.read_parquet(clean_dir / "examples.parquet")
    images = pd.read_parquet(clean_dir / "images.parquet")
    return load_studies(examples[examples["split"] == split], images, store, vocab,
                        with_grid=grid_pool is not None, grid_pool=grid_pool or 1)
