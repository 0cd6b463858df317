"""Report text normalisation.

Rules, in order: lower case; split into sentences at `.`, `!` and `?` (not inside numbers like
`2.5`); drop every word that holds the `XXXX` de-identification token or a digit; turn `-` and `/`
into spaces (`well-expanded` -> `well expanded`); drop all other punctuation; keep words of
letters only; drop sentences left empty.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<!\d)[.!?]+|[.!?]+(?!\d)")
_SPLIT_WORD = re.compile(r"[-/]")
_NOT_LETTER = re.compile(r"[^a-z]")


def sentences(text: str) -> list[list[str]]:
    """Normalised sentences of `text`, each a list of words."""
    result = []
    for sentence in _SENTENCE_END.split(text.lower()):
        words = []
        for raw in sentence.split():
            if "xxxx" in raw or any(ch.isdigit() for ch in raw):
                continue
            for part in _SPLIT_WORD.split(raw):
                word = _NOT_LETTER.sub("", part)
                if word:
                    words.append(word)
        if words:
            result.append(words)
    return result


def normalise(text: str, sentence_token: str = ".") -> str:
    """Normalised text as one space-separated string; sentences end with `sentence_token`."""
    parts = sentences(text)
    if not sentence_token:
        return " ".join(w for s in parts for w in s)
    return " ".join(" ".join([*s, sentence_token]) for s in parts)
