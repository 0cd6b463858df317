"""Which normal training text becomes an exam title's normal template: the rules
`decode.template_rule` names, among which the selection stage chooses on validation
(`decode.template_rules`).

`commonest` is the title's most frequent normal text the decoder can write (templates.py
`normal_templates`). `closest` is, of those written at least three times (`evaluation.baselines.
CLOSEST_MIN_COUNT`), the one whose corpus BLEU-4, said for every normal training study of the
title, is highest against their references (`closest_text`, which chooses the closest-constant
baseline among all training texts too): the normal report that shares most with the others.
Where normal reports are worded many ways, the commonest can be a short one that leaves out what
most of them name: on R2Gen's findings split it is "the heart is normal in size . the
mediastinum is unremarkable . the lungs are clear ." (15 words, where normal findings run to
30), said for every normal study without the pleura and the bones that most of them name.

A module of its own, apart from templates.py, which the train stage imports: a new rule reruns
the selection stage and what follows it, never training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..data.titles import TitleVocabulary, title_key
from ..data.tokenizer import Vocabulary
from ..evaluation.baselines import closest_text
from ..settings.decode import TEMPLATE_RULES
from .templates import NO_TITLE, normal_impressions, normal_templates


def templates_by_rule(rule: str, titles: Sequence[str | None] | None, texts: Sequence[str],
                      normal: np.ndarray, known: TitleVocabulary | None,
                      vocab: Vocabulary) -> dict[str, str]:
    """The normal templates by title key (as `normal_templates`, whose arguments these are)
    under `rule`. Under `closest`, a title none of whose writable normal texts is written
    `CLOSEST_MIN_COUNT` times keeps its commonest."""
    if rule not in TEMPLATE_RULES:
        raise ValueError(f"unknown template rule {rule!r}")
    commonest = normal_templates(titles, texts, normal, known, vocab)
    if rule == "commonest":
        return commonest
    writable = set(normal_impressions(texts, normal, vocab))
    keys = ([title_key(t) for t in titles] if titles is not None else [NO_TITLE] * len(texts))
    closest = {}
    for key, fallback in commonest.items():
        # Every normal reference of the title counts against a candidate, writable or not.
        references = [text for text, k, is_normal in zip(texts, keys, normal, strict=True)
                      if is_normal and key in (NO_TITLE, k)]
        counts = Counter(text for text in references if text in writable)
        closest[key] = closest_text(references, counts) or fallback
    return closest
