"""A GloVe embedding matrix aligned with the vocabulary.

Rows: 0 is `<pad>` (zeros, and masked by the models). A vocabulary word found in GloVe gets its
GloVe vector. `<unk>` gets the mean of the found vectors. `startseq`, `endseq` and words missing
from GloVe get random vectors drawn from N(0, s^2), s the standard deviation of the found vectors'
values, from a generator seeded with `embeddings.seed`.

The reader streams the file as bytes, checks every line's field count, and parses numbers only
for vocabulary words, so memory holds just the vocabulary's rows.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .tokenizer import PAD, UNK, Vocabulary


@contextlib.contextmanager
def open_glove(path: str | os.PathLike[str], member: str = "") -> Iterator[io.BufferedIOBase]:
    """A binary stream of a GloVe `.txt`, `.txt.gz`, or a member of Stanford's `.zip`.

    A corrupt, truncated or mislabelled archive fails while it is read, in the caller's loop: the
    errors the decompressors raise there become one `InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: GloVe file not found (embeddings.glove)")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".txt")]
                chosen = member or (names[0] if len(names) == 1 else "")
                if chosen not in archive.namelist():
                    raise InputError(f"{path}: choose a member with embeddings.member "
                                     f"(one of: {', '.join(names)})")
                with archive.open(chosen) as fh:
                    yield fh
        elif path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                yield fh
        else:
            with open(path, "rb", buffering=1 << 20) as fh:
                yield fh
    except (zipfile.BadZipFile, zipfile.LargeZipFile, gzip.BadGzipFile, EOFError,
            zlib.error) as exc:
        kind = "zip" if path.suffix == ".zip" else "gzip" if path.suffix == ".gz" else "text"
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError):
            reason = "truncated: the file ends before the compressed data does"
        raise InputError(f"{path}: not a readable {kind} file ({reason})") from None


@dataclass
class GloveRows:
    vectors: dict[str, np.ndarray]
    dim: int
    lines: int


def read_glove(path: str | os.PathLike[str], words: Iterable[str], member: str = "",
               expected_dim: int = 0) -> GloveRows:
    """The GloVe vectors of `words`; every line's field count is checked against the first's."""
    wanted = {w.encode("utf-8") for w in words}
    name = f"{path}:{member}" if member else os.fspath(path)
    vectors: dict[str, np.ndarray] = {}
    dim = 0
    number = 0
    with open_glove(path, member) as fh:
        for number, line in enumerate(fh, start=1):
            # Trailing spaces are dropped (some writers end every line with one), so a line that
            # lost its last number but kept its space is one field short, caught below.
            line = line.rstrip(b" \r\n")
            spaces = line.count(b" ")
            if number == 1:
                dim = spaces
                if dim < 1:
                    raise InputError(f"{name}: line 1: expected a word and numbers")
                if expected_dim and dim != expected_dim:
                    raise InputError(f"{name}: vectors have {dim} dimensions but "
                                     f"embeddings.dim is {expected_dim}")
            if spaces != dim:
                raise InputError(f"{name}: line {number}: expected {dim + 1} fields "
                                 f"(a word and {dim} numbers), found {spaces + 1}")
            word = line[: line.index(b" ")]
            if word in wanted:
                try:
                    vector = np.array(line[len(word) + 1:].split(b" "), dtype=np.float32)
                except ValueError:
                    raise InputError(f"{name}: line {number}: not a number in the vector of "
                                     f"{word.decode('utf-8', 'replace')!r}") from None
                vectors[word.decode("utf-8")] = vector
    if number == 0:
        raise InputError(f"{name}: empty GloVe file")
    return GloveRows(vectors, dim, number)


def build_matrix(vocab: Vocabulary, rows: GloveRows, seed: int) -> tuple[np.ndarray, list[str]]:
    """The (len(vocab), dim) float32 matrix, and the vocabulary words missing from GloVe."""
    found = np.stack(list(rows.vectors.values())) if rows.vectors else np.zeros((1, rows.dim))
    scale = float(found.std()) or 1.0
    rng = np.random.default_rng(seed)
    matrix = np.zeros((len(vocab), rows.dim), dtype=np.float32)
    missing = []
    for i, word in enumerate(vocab.words):
        if word == PAD:
            continue
        if word == UNK:
            matrix[i] = found.mean(axis=0)
        elif word in rows.vectors:
            matrix[i] = rows.vectors[word]
        else:
            matrix[i] = rng.normal(0.0, scale, rows.dim)
            if word not in (vocab.start_token, vocab.end_token):
                missing.append(word)
    return matrix, missing


def coverage(vocab: Vocabulary, rows: GloveRows, train_texts: Iterable[str]) -> dict[str, object]:
    """Share of vocabulary words found in GloVe, and the share of the training tokens of
    vocabulary words that get a GloVe vector (tokens outside the vocabulary are `<unk>`)."""
    specials = {PAD, UNK, vocab.start_token, vocab.end_token}
    words = [w for w in vocab.words if w not in specials]
    known = set(words)
    tokens = Counter(w for text in train_texts for w in text.split() if w in known)
    total = sum(tokens.values())
    covered = sum(c for w, c in tokens.items() if w in rows.vectors)
    return {
        "dim": rows.dim,
        "glove_lines": rows.lines,
        "vocab_words": len(words),
        "vocab_found": sum(w in rows.vectors for w in words),
        "vocab_coverage": round(sum(w in rows.vectors for w in words) / max(len(words), 1), 4),
        "train_token_coverage": round(covered / max(total, 1), 4),
    }
