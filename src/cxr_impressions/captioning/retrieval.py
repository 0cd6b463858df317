"""Retrieval memory (`model.retrieval_k`): the impressions of the k training studies most similar
to a study, for the transformer decoder to attend to beside the image regions.

Similarity is the cosine of the views-averaged pooled features (`study_vectors`, which the 1-NN
baseline uses too). The memory bank is the training split: its studies' uids,
vectors and impression token ids. In training a study never retrieves itself (its uid is
excluded), or it would learn to copy the answer; at decode time (validation, test, `cxr predict`)
the bank is the whole training split, carried in the model bundle (`retrieval.npz`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from .studies import Studies


def study_vectors(pooled: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Each study's pooled features averaged over its views, L2-normalised."""
    weights = views[:, :, None]
    mean = (pooled * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


@dataclass
class MemoryBank:
    uids: np.ndarray  # (M,) the training studies' uids, as strings
    vectors: np.ndarray  # (M, D) float32, L2-normalised views-averaged pooled features
    tokens: np.ndarray  # (M, T) int32: each impression's words and end token, 0-padded

    def __len__(self) -> int:
        return len(self.uids)

    @classmethod
    def from_studies(cls, studies: Studies) -> MemoryBank:
        """The bank of `studies` (the training split); the start token is dropped."""
        return cls(np.asarray(studies.uids).astype(str),
                   study_vectors(studies.pooled, studies.views).astype(np.float32),
                   studies.tokens[:, 1:].astype(np.int32))

    def neighbours(self, pooled: np.ndarray, views: np.ndarray, k: int,
                   uids: np.ndarray | None = None) -> np.ndarray:
        """(N, k) bank rows of the k most similar studies, most similar first; a bank study
        with the same uid as the query (the study itself) is never among them."""
        if k > len(self) - (uids is not None):
            raise InputError(f"model.retrieval_k: {k} neighbours asked for, but the memory bank "
                             f"holds {len(self)} training studies")
        similarity = study_vectors(pooled, views).astype(np.float32) @ self.vectors.T
        if uids is not None:
            similarity[np.asarray(uids).astype(str)[:, None] == self.uids[None, :]] = -np.inf
        # Stable sort: equal similarities keep the bank's order, so ties are reproducible.
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    def retrieve(self, pooled: np.ndarray, views: np.ndarray, k: int,
                 uids: np.ndarray | None = None) -> np.ndarray:
        """(N, k, T) int32: the token ids of each study's k nearest impressions."""
        return self.tokens[self.neighbours(pooled, views, k, uids)]

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, uids=self.uids, vectors=self.vectors, tokens=self.tokens)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MemoryBank:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: not found (the retrieval memory of a model with "
                             "model.retrieval_k > 0; retrain with `dvc repro train`)")
        with np.load(path, allow_pickle=False) as data:
            return cls(data["uids"], data["vectors"], data["tokens"])


def empty_bank(feature_dim: int, length: int) -> MemoryBank:
    """The bank saved with a model that retrieves nothing (`model.retrieval_k: 0`)."""
    return MemoryBank(np.zeros(0, dtype=str), np.zeros((0, feature_dim), np.float32),
                      np.zeros((0, length), np.int32))
