"""The clean stage's logic: normalised target text, a report-level split, the vocabulary."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import project_path
from ..errors import InputError
from ..settings.clean import CleanParams
from .layout import uid_of_image
from .text import normalise
from .tokenizer import Vocabulary

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class CleanResult:
    examples: pd.DataFrame  # uid, split, text, n_words, mesh, problems, ...
    images: pd.DataFrame  # the kept reports' found images (no split column: features depend on it)
    vocab: Vocabulary
    counts: dict[str, object]


def random_split(uids: np.ndarray, fractions: tuple[float, float, float], seed: int) -> pd.Series:
    """Assign each report uid (or patient id) to train/val/test, seeded and independent of input
    order."""
    uids = np.sort(np.asarray(uids))
    order = np.random.default_rng(seed).permutation(len(uids))
    n_train = int(round(fractions[0] * len(uids)))
    n_val = int(round(fractions[1] * len(uids)))
    labels = np.empty(len(uids), dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train:n_train + n_val]] = "val"
    labels[order[n_train + n_val:]] = "test"
    return pd.Series(labels, index=uids, name="split")


def kfold_split(ids: np.ndarray, folds: int, fold: int, seed: int) -> pd.Series:
    """Fold `fold` of k-fold cross-validation: the ids (report uids or patient ids), shuffled by
    `seed` and dealt into `folds` folds of near-equal size; fold `fold` is test, the next one
    (after the last, the first) val, the others train. So over fold = 0 .. folds-1 every id is
    tested once and validated once, and the runs' test outputs pool into one set of every
    study (`cxr compare`)."""
    ids = np.sort(np.asarray(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    member = np.empty(len(ids), dtype=int)
    member[order] = np.arange(len(ids)) % folds
    labels = np.where(member == fold, "test",
                      np.where(member == (fold + 1) % folds, "val", "train")).astype(object)
    return pd.Series(labels, index=ids, name="split")


def seeded_split(ids: np.ndarray, params: CleanParams) -> pd.Series:
    """`clean.split: random` or `kfold` of these ids, seeded by `clean.seed`."""
    if params.split == "kfold":
        return kfold_split(ids, params.folds, params.fold, params.seed)
    return random_split(ids, params.fractions, params.seed)


def r2gen_split(annotation: str | Path) -> pd.Series:
    """R2Gen's fixed split: report uid -> train/val/test (study `CXR2384_IM-0942` is uid 2384)."""
    path = Path(annotation)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: R2Gen annotation not found (clean.r2gen_annotation)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno})") from None
    rows = {}
    for split in SPLITS:
        if split not in data:
            raise InputError(f"{path}: no '{split}' key")
        for study in data[split]:
            uid = uid_of_image(str(study["id"]).removeprefix("CXR"))
            rows[uid] = split
    return pd.Series(rows, name="split").sort_index()


def clean_reports(reports: pd.DataFrame, images: pd.DataFrame, params: CleanParams) -> CleanResult:
    found = images[images["exists"]]
    n_images = found.groupby("uid").size()
    frame = reports.copy()
    frame["text"] = frame[params.target].fillna("").map(
        lambda t: normalise(t, params.sentence_token))
    frame["n_images"] = frame["uid"].map(n_images).fillna(0).astype(int)

    no_text = frame["text"] == ""
    no_images = (frame["n_images"] == 0) & ~no_text
    dropped = {f"no_{params.target}": int(no_text.sum()), "no_images": int(no_images.sum())}
    for reason, mask in (("no target text", no_text), ("no image found", no_images)):
        if mask.any():
            log.info("dropped %d reports with %s", int(mask.sum()), reason)
    frame = frame[~no_text & ~no_images]

    if params.split == "r2gen":
        split = r2gen_split(project_path(params.r2gen_annotation))
        outside = ~frame["uid"].isin(split.index)
        dropped["not_in_r2gen_split"] = int(outside.sum())
        frame = frame[~outside]
        frame["split"] = frame["uid"].map(split)
    elif params.split == "official":
        if "official_split" not in frame.columns:
            raise InputError("clean.split: official needs MIMIC-CXR input with its split file "
                             "(mimic-cxr-2.0.0-split.csv(.gz) beside the metadata CSV)")
        outside = frame["official_split"] == ""
        dropped["not_in_official_split"] = int(outside.sum())
        frame = frame[~outside]
        frame["split"] = frame["official_split"]
    elif "subject_id" in frame.columns:
        # MIMIC-CXR has several studies per patient: split by patient, so that no patient's
        # studies are in two splits.
        by_subject = seeded_split(frame["subject_id"].unique(), params)
        frame["split"] = frame["subject_id"].map(by_subject)
    else:
        frame["split"] = frame["uid"].map(seeded_split(frame["uid"].to_numpy(), params))
    frame = frame.sort_values("uid").reset_index(drop=True)
    frame["n_words"] = frame["text"].str.split().str.len()

    train_text = frame.loc[frame["split"] == "train", "text"]
    if train_text.empty:
        raise InputError("clean: the training split is empty (too few reports for "
                         "clean.fractions, or no reports left after dropping)")
    max_len = params.max_len or int(np.ceil(
        np.percentile(train_text.str.split().str.len() + 2, params.max_len_percentile)))
    vocab = Vocabulary.build(train_text, params.min_count, params.start_token, params.end_token,
                             max_len)
    kept_images = found.loc[found["uid"].isin(frame["uid"]), ["uid", "image_id", "view", "path"]]
    kept_images = kept_images.sort_values(["uid", "image_id"]).reset_index(drop=True)
    image_split = kept_images["uid"].map(frame.set_index("uid")["split"])

    train_words = [w for t in train_text for w in t.split()]
    known = vocab.index
    counts = {
        "target": params.target,
        "split_kind": params.split,
        **({"fold": params.fold, "folds": params.folds} if params.split == "kfold" else {}),
        "reports_in": int(len(reports)),
        "reports_kept": int(len(frame)),
        "dropped": dropped,
        "reports": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "images": {s: int((image_split == s).sum()) for s in SPLITS},
        "vocab_size": len(vocab),
        "max_len": max_len,
        "train_unk_rate": round(sum(w not in known for w in train_words)
                                / max(len(train_words), 1), 4),
        "truncated_share": round(float((frame["n_words"] + 2 > max_len).mean()), 4),
    }
    return CleanResult(frame, kept_images, vocab, counts)
