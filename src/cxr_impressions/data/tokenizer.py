"""The vocabulary: words <-> ids, with padding at 0. Saved as JSON, loadable without DVC."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..atomic import write_json
from ..errors import InputError

PAD = "<pad>"
UNK = "<unk>"
UNKNOWN_ID = 1  # the id of UNK in every vocabulary


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # index = id; words[0] is PAD, words[1] is UNK
    start_token: str
    end_token: str
    max_len: int  # longest id sequence, start and end tokens included

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_count: int,
        start_token: str,
        end_token: str,
        max_len: int,
    ) -> Vocabulary:
        counts = Counter(w for t in texts for w in t.split())
        kept = sorted((w for w, c in counts.items() if c >= min_count),
                      key=lambda w: (-counts[w], w))
        specials = [PAD, UNK, start_token, end_token]
        words = specials + [w for w in kept if w not in specials]
        return cls(tuple(words), start_token, end_token, max_len)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @property
    def start_id(self) -> int:
        return 2

    @property
    def end_id(self) -> int:
        return 3

    def encode(self, text: str) -> list[int]:
        """Ids of `startseq text endseq`, cut to max_len with the end token kept."""
        index = self.index
        ids = [index.get(w, 1) for w in text.split()][: self.max_len - 2]
        return [self.start_id, *ids, self.end_id]

    def word_ids(self, text: str) -> list[int]:
        """Ids of the words of `text` alone (no start or end token), cut as `encode` cuts them:
        what the decoder writes or appends for that text."""
        return self.encode(text)[1:-1]

    def decode(self, ids: Sequence[int]) -> str:
        """Words for `ids`, stopping at the end token and skipping padding and the start token."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (0, self.start_id):
                continue
            words.append(self.words[i])
        return " ".join(words)

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, {"start_token": self.start_token, "end_token": self.end_token,
                          "max_len": self.max_len, "words": list(self.words)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            return cls(tuple(data["words"]), data["start_token"], data["end_token"],
                       int(data["max_len"]))
        except FileNotFoundError:
            raise InputError(f"{path}: vocabulary not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a vocabulary file ({exc})") from None
