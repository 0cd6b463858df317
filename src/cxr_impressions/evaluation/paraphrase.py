"""METEOR's English paraphrase table, cut down to the words of the texts being scored.

Meteor 1.5 spends about 10 of its 11 seconds of start-up parsing `paraphrase-en.gz` (5.3
million phrase pairs). A paraphrase pair can only match when every word of both phrases occurs
in the texts scored, so a table holding just those pairs gives the same statistics, and Java
starts in about a second. Picking those pairs quickly needs an index of the table (its words as
integer ids); it is built once per machine, in about half a minute, and kept in the cache folder
(`CXR_CACHE_DIR`, else `$XDG_CACHE_HOME/cxr-impressions`, else `~/.cache/cxr-impressions`).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import logging
import os
import re
import shutil
import tempfile
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

log = logging.getLogger(__name__)

CACHE_ENV = "CXR_CACHE_DIR"
INDEX_VERSION = 3
# Texts made only of these tokens pass Meteor's `-norm` unchanged (the clean stage writes
# nothing else), so their words are exactly the words Meteor matches on. Any other token and
# the full table is used: correct whatever Meteor's normaliser does to it.
PLAIN_TOKEN = re.compile(r"[a-z0-9]+|\.")


def meteor_directory() -> Path:
    """pycocoevalcap's folder holding `meteor-1.5.jar` and `data/paraphrase-en.gz`."""
    import pycocoevalcap.meteor.meteor as meteor

    return Path(meteor.__file__).resolve().parent


def cache_directory() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cxr-impressions"


def plain_words(texts: Iterable[str]) -> set[str] | None:
    """The words of `texts`, or None when some token is not plain (then the full table)."""
    words: set[str] = set()
    for text in texts:
        words.update(text.split())
    if all(PLAIN_TOKEN.fullmatch(word) for word in words):
        return words
    return None


def _gather(flat: np.ndarray, starts: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """The slices `flat[starts[p]:starts[p + 1]]` of `pairs`, concatenated, and their lengths."""
    begins = starts[pairs]
    counts = starts[pairs + 1] - begins
    offsets = begins - np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.asarray(flat[np.arange(counts.sum()) + np.repeat(offsets, counts)]), counts


class ParaphraseIndex:
    """The table as arrays, grouped for quick lookup.

    Words are numbered from the most to the least frequent in the table, and the pairs are
    sorted by their rarest word (their highest number). A pair can only match if its rarest word
    is among the texts' words, so the candidates for a set of words are a few contiguous slices;
    only those are checked word by word.
    """

    FILES = ("word_ids", "lengths", "probabilities", "group_starts", "pair_starts")

    def __init__(self, vocabulary: list[str], word_ids: np.ndarray, lengths: np.ndarray,
                 probabilities: np.ndarray, group_starts: np.ndarray,
                 pair_starts: np.ndarray | None = None) -> None:
        self.vocabulary = vocabulary
        self.word_ids = word_ids          # every pair's two phrases, concatenated, pair by pair
        self.lengths = lengths            # (pairs, 2): words in the first and second phrase
        self.probabilities = probabilities
        self.group_starts = group_starts  # pairs whose rarest word is w: [starts[w], starts[w+1])
        if pair_starts is None:           # where each pair's words begin in word_ids, and the end
            pair_starts = np.concatenate([[0], np.cumsum(lengths.sum(axis=1, dtype=np.int64))])
        self.pair_starts = pair_starts.astype(np.int64, copy=False)
        self.position = {word: i for i, word in enumerate(vocabulary)}

    @classmethod
    def build(cls, table: Path) -> ParaphraseIndex:
        """Read Meteor's table: three lines per pair (probability, phrase, phrase)."""
        ids: dict[str, int] = {}
        word_ids, lengths, probabilities = array("I"), array("B"), array("d")
        with gzip.open(table, "rt", encoding="utf-8") as lines:
            for probability in lines:
                probabilities.append(float(probability))
                for _ in range(2):
                    words = next(lines).split()
                    lengths.append(len(words))
                    word_ids.extend(ids.setdefault(word, len(ids)) for word in words)
        first_seen = np.frombuffer(word_ids, dtype=np.uint32)
        by_frequency = np.argsort(-np.bincount(first_seen, minlength=len(ids)), kind="stable")
        rank = np.empty_like(by_frequency)
        rank[by_frequency] = np.arange(len(ids))
        narrow = np.uint16 if len(ids) <= 1 << 16 else np.uint32  # 43,139 words in English
        ranked = rank[first_seen].astype(narrow)
        pair_lengths = np.frombuffer(lengths, dtype=np.uint8).reshape(-1, 2)
        starts = np.concatenate([[0], np.cumsum(pair_lengths.sum(axis=1, dtype=np.int64))])
        rarest = np.maximum.reduceat(ranked, starts[:-1])
        order = np.argsort(rarest, kind="stable")
        reordered, _ = _gather(ranked, starts, order)  # the pairs' words in the new order
        group_starts = np.searchsorted(rarest[order], np.arange(len(ids) + 1)).astype(np.int64)
        vocabulary = [word for word, _ in sorted(ids.items(), key=lambda item: rank[item[1]])]
        return cls(vocabulary, reordered, pair_lengths[order],
                   np.frombuffer(probabilities, dtype=np.float64)[order], group_starts)

    def save(self, folder: Path) -> None:
        """Into a new folder, renamed into place whole."""
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            (tmp / "vocabulary.txt").write_text("\n".join(self.vocabulary), encoding="utf-8")
            for name in self.FILES:
                np.save(tmp / f"{name}.npy", getattr(self, name))
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> ParaphraseIndex:
        vocabulary = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r") for name in cls.FILES]
        return cls(vocabulary, *arrays)

    def _words_of(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The word ids of these pairs, concatenated, and each pair's number of words."""
        word_ids, counts = _gather(self.word_ids, self.pair_starts, pairs)
        return word_ids.astype(np.int64), counts

    def pairs_within(self, words: set[str]) -> np.ndarray:
        """The indices of the pairs whose every word is in `words`, in table order."""
        ids = np.array(sorted(self.position[w] for w in words if w in self.position), np.int64)
        known = np.zeros(len(self.vocabulary), dtype=bool)
        known[ids] = True
        candidates = np.concatenate(
            [np.arange(self.group_starts[i], self.group_starts[i + 1]) for i in ids]
            or [np.zeros(0, np.int64)])
        if not len(candidates):
            return candidates
        word_ids, counts = self._words_of(candidates)
        found = np.add.reduceat(known[word_ids], np.concatenate([[0], np.cumsum(counts)[:-1]]),
                                dtype=np.int64)
        return candidates[found == counts]

    def write_table(self, pairs: np.ndarray, path: Path) -> None:
        """These pairs in Meteor's format (`repr` keeps each probability's exact double)."""
        word_ids, _ = self._words_of(pairs)
        words = iter(np.asarray(self.vocabulary, dtype=object)[word_ids].tolist())
        lines = []
        for probability, (first, second) in zip(np.asarray(self.probabilities[pairs]).tolist(),
                                                np.asarray(self.lengths[pairs]).tolist(),
                                                strict=True):
            lines.append(repr(probability))
            lines.append(" ".join(next(words) for _ in range(first)))
            lines.append(" ".join(next(words) for _ in range(second)))
        with atomic_path(path, suffix=".gz") as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))


def _fingerprint(path: Path) -> str:
    """Names the index after the table's path, size and time (hashing 62 MB would take longer
    than the lookup it serves)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def index_location(table: Path | None = None) -> Path:
    """Where the index of `table` (default: Meteor's English one) is kept on this machine."""
    table = table or meteor_directory() / "data" / "paraphrase-en.gz"
    return cache_directory() / f"meteor-paraphrase-{_fingerprint(table)}-v{INDEX_VERSION}"


def paraphrase_index(table: Path | None = None) -> ParaphraseIndex:
    """The index of `table` (default: Meteor's English one), built on first use and cached under
    a lock, so that processes starting together build it once."""
    table = table or meteor_directory() / "data" / "paraphrase-en.gz"
    path = index_location(table)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{path.name}.lock", "w")  # noqa: SIM115 (closed below)
    except OSError as error:  # a read-only home, say: this run only, without a cache
        log.warning("METEOR's paraphrase index can't be kept in %s (%s; set %s): building it "
                    "for this run only", folder, error, CACHE_ENV)
        return ParaphraseIndex.build(table)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                return ParaphraseIndex.load(path)
            except (OSError, ValueError) as error:  # damaged: build it again
                log.warning("rebuilding the METEOR paraphrase index %s (%s)", path, error)
                shutil.rmtree(path)
        log.info("indexing METEOR's paraphrase table once for this machine (%s)", path)
        index = ParaphraseIndex.build(table)
        index.save(path)
        return ParaphraseIndex.load(path)
