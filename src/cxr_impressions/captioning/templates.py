"""Normal templates: how a study the model reads as normal is worded under
`decode.normal_text: template`.

A radiologist reports a normal study with the normal impression of the reporting template
("no acute cardiopulmonary abnormality", "no active disease", "negative chest"), and which one
is a matter of the template, named by the exam title (data/titles.py), not of the image. Asked
to write a normal study, the decoder often picks a normal sentence that is not the title's (on
the full data's test folds, over a third of its predicted-normal captions were worded otherwise
than the title's commonest impression). With `template`, a study whose labels the model
predicts all off gets the most frequent impression among the training studies with its exam
title whose reference the labeller reads as normal; a study without a known title gets the
most frequent normal training impression. The image still decides whether a study is normal
(the model's labels); the title only words it. Whether to do so is a decoding candidate
(`decode.normal_texts`), chosen on the validation split like the others.

`template_written` also rewords the studies whose labels are not all off but for which the
decoder still wrote a normal impression, word for word one of the training split's: the
caption says "normal" either way, and only its wording changes. A caption with any other
content is kept as written.

`template_read` rewords, beyond `template`, every study whose caption the labeller
(data/labeller.py) reads as normal, written word for word or not: the labeller's clinical
reading of the caption stays normal, and its wording becomes the title's. What the labeller does
not read (a tortuous aorta, an interval change) is reworded away with the rest.

Finding phrases, for `decode.finding_text: appended`: the decoder conditioned on findings
writes most of the findings it is prompted with, but drops some, the rarer and the focal ones
most (a nodule or a granuloma in a crowded prompt). Under `appended`, each finding the labels
turn on that the caption does not name at all gets a short phrase of its own appended, the
training split's commonest way to end a sentence that states that finding alone ("cardiomegaly
.", "low lung volumes ."). A caption that names the finding, even to negate it, keeps its word:
no caption says "no effusion . effusion .".

The templates, the normal impressions and the finding phrases are taken from the training split
by the selection stage and kept in `models/decoding.json` (`normal_templates`: title key to
text, "" for no known title; `normal_impressions`; `finding_phrases`: finding to text), so that
evaluate, `cxr predict` and `cxr serve` word studies alike.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..data.labeller import FINDINGS, label_text
from ..data.titles import TitleVocabulary, title_key
from ..data.tokenizer import UNKNOWN_ID, Vocabulary

NO_TITLE = ""  # the templates' key for a study without a known exam title
# Each finding's phrases as the labeller matches them, negated or not. Here, not in the
# labeller, which the finetune stage depends on: a change there would rerun the finetune.
_NAMES = {finding: re.compile(r"\b(" + "|".join(phrases) + r")\b")
          for finding, phrases in FINDINGS.items()}


def normal_templates(titles: Sequence[str | None] | None, texts: Sequence[str],
                     normal: np.ndarray, known: TitleVocabulary | None,
                     vocab: Vocabulary) -> dict[str, str]:
    """From the training split's exam `titles` (None: the model reads none), reference `texts`
    and `normal` flags (the labeller reads the reference as normal): per title the model knows
    (`known`), its most frequent normal impression, and under `NO_TITLE` the most frequent normal
    impression of all. Only impressions the decoder can write count: every word in `vocab` and
    short enough for its `max_len`. Ties go to the text first in sort order; a title without
    such an impression is left out (it gets the `NO_TITLE` one)."""
    writable = {text for text in set(texts) if _writable(text, vocab)}
    by_title: dict[str, Counter] = {NO_TITLE: Counter()}
    keys = set(known.keys) if known is not None else set()
    for i, (text, is_normal) in enumerate(zip(texts, normal, strict=True)):
        if not is_normal or text not in writable:
            continue
        by_title[NO_TITLE][text] += 1
        key = title_key(titles[i]) if titles is not None else NO_TITLE
        if key in keys:
            by_title.setdefault(key, Counter())[text] += 1
    if not by_title[NO_TITLE]:
        raise ValueError("no training study has a normal impression the decoder can write")
    return {key: min(counts, key=lambda text, c=counts: (-c[text], text))
            for key, counts in by_title.items()}


def normal_impressions(texts: Sequence[str], normal: np.ndarray,
                       vocab: Vocabulary) -> list[str]:
    """Every distinct impression of the training studies whose reference is `normal` that the
    decoder can write (as for `normal_templates`), sorted: the captions that
    `decode.normal_text: template_written` rewords as the study's template."""
    return sorted({text for text, is_normal in zip(texts, normal, strict=True)
                   if is_normal and _writable(text, vocab)})


def finding_phrases(texts: Sequence[str], vocab: Vocabulary,
                    max_words: int = 4) -> dict[str, str]:
    """Per finding (data/labeller.py), from the training split's reference `texts`: the phrase
    that ends the most sentences of the texts stating that finding, among the sentences' last 1
    to `max_words` words that the labeller reads as that finding alone and the decoder can
    write; ties go to the shorter, then to sort order. A finding no such phrase states is left
    out (nothing is appended for it)."""
    stop = " ." if _writable(".", vocab) else ""  # `clean.sentence_token: ""` writes none
    reading: dict[str, str | None] = {}  # phrase -> the one finding it states, or None
    counts: dict[str, Counter] = {finding: Counter() for finding in FINDINGS}
    for text in texts:
        stated = label_text(text)
        for sentence in text.split(" . "):
            words = sentence.removesuffix(" .").removesuffix(".").split()
            for n in range(1, min(max_words, len(words)) + 1):
                phrase = " ".join(words[len(words) - n:]) + stop
                if phrase not in reading:
                    read = label_text(phrase)
                    alone = [f for f in FINDINGS if read[f]]
                    reading[phrase] = (alone[0] if len(alone) == 1 and _writable(phrase, vocab)
                                       else None)
                finding = reading[phrase]
                if finding is not None and stated[finding]:
                    counts[finding][phrase] += 1
    return {finding: min(c, key=lambda p, c=c: (-c[p], len(p.split()), p))
            for finding, c in counts.items() if c}


def named(text: str) -> set[str]:
    """The findings `text` names at all, negated or not ("no effusion" names pleural_effusion):
    `finding_text: appended` never appends a finding the caption already speaks of."""
    return {finding for finding, pattern in _NAMES.items() if pattern.search(text)}


def phrase_ids(phrases: dict[str, str], vocab: Vocabulary) -> dict[str, list[int]] | None:
    """The finding phrases' word ids by finding, as the decoder appends them (None: no phrase)."""
    return {finding: vocab.word_ids(phrase) for finding, phrase in phrases.items()} or None


def template_ids(templates: dict[str, str], known: TitleVocabulary | None,
                 vocab: Vocabulary) -> list[list[int]]:
    """The templates' word ids by title id (data/titles.py): id 0, a study without a known
    title, gets the `NO_TITLE` template, as does a known title without one of its own."""
    keys = known.keys if known is not None else []
    texts = [templates[NO_TITLE], *(templates.get(key, templates[NO_TITLE]) for key in keys)]
    return [vocab.word_ids(text) for text in texts]


def _writable(text: str, vocab: Vocabulary) -> bool:
    ids = vocab.word_ids(text)
    return bool(ids) and UNKNOWN_ID not in ids and len(ids) == len(text.split())
