"""Read features from a features HDF5 file by image id, without loading the whole file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import h5py
import numpy as np
import pandas as pd

from ..errors import InputError


class FeatureStore:
    """Random access to `features/<backbone>.h5`. Use as a context manager, or call `close`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (FileNotFoundError, OSError) as exc:
            raise InputError(f"{self.path}: cannot open features file ({exc})") from None
        self.ids = self._file["ids"].asstr()[...]
        self._row = {image_id: i for i, image_id in enumerate(self.ids)}
        self.attrs = {k: (v.item() if hasattr(v, "item") else v)
                      for k, v in self._file.attrs.items()}

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._row

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self._file["pooled"].shape[1])

    @property
    def has_grid(self) -> bool:
        return "grid" in self._file

    @property
    def skipped_ids(self) -> list[str]:
        return json.loads(self.attrs.get("skipped_ids", "[]"))

    def _rows(self, ids: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self._row[i] for i in ids], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"{self.path}: no features for image {exc.args[0]}") from None

    def _read(self, name: str, ids: Sequence[str]) -> np.ndarray:
        rows = self._rows(ids)
        if len(rows) == 0:
            return np.zeros((0, *self._file[name].shape[1:]), self._file[name].dtype)
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._file[name][unique][inverse]  # h5py reads need increasing indices

    def pooled(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids), D) float32 pooled vectors, in the order of `ids`."""
        return self._read("pooled", ids)

    def grid(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids), H, W, D) float16 spatial grids, in the order of `ids`."""
        if not self.has_grid:
            raise InputError(f"{self.path}: no spatial grid stored (set features.grid: true)")
        return self._read("grid", ids)

    def report_views(self, images: pd.DataFrame, uid: int) -> dict[str, np.ndarray]:
        """The pooled vector of each view of report `uid` (first image of each view)."""
        rows = images[(images["uid"] == uid) & images["image_id"].isin(self._row)]
        first = rows.drop_duplicates("view")
        vectors = self.pooled(first["image_id"].tolist())
        return dict(zip(first["view"], vectors, strict=True))
