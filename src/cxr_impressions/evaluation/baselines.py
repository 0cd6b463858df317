"""Baselines scored beside every model, on the same split: the constant, the closest constant, the
constant by exam title, and 1-NN retrieval.

Not imported by the train stage: a new baseline reruns evaluate and report, never training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from ..data.titles import UNKNOWN, TitleVocabulary
from .bootstrap import bleu_scores, bleu_statistics

# The baselines evaluate scores the model against, in the order tables show them.
BASELINES = ("constant", "closest_constant", "title_constant", "nearest_neighbour")

# A closest text is one at least this many training studies share, so that no one radiologist's
# idiosyncratic report wins on a few overlaps.
CLOSEST_MIN_COUNT = 3


def constant_baseline(train_texts: Sequence[str], n: int) -> list[str]:
    """The most frequent training text, for every one of `n` studies."""
    most_common, _ = Counter(train_texts).most_common(1)[0]
    return [most_common] * n


def closest_text(references: Sequence[str], counts: Mapping[str, int],
                 min_count: int = CLOSEST_MIN_COUNT) -> str | None:
    """Of the texts written at least `min_count` times (`counts`: text -> times written), the
    one whose corpus BLEU-4, said for every one of `references`, is highest: the text that
    shares most with all of them. Ties go to the more frequent text, then the first in sort
    order; None where no text is written that often."""
    candidates = sorted(text for text, n in counts.items() if n >= min_count)
    if not candidates:
        return None
    # Each distinct reference once, weighted by how often it occurs: the same sums, faster.
    distinct = Counter(references)
    weights = np.array(list(distinct.values()), dtype=np.float64)[:, None]
    bleu4 = {text: float(bleu_scores(
        (bleu_statistics(list(distinct), [text] * len(distinct)) * weights).sum(axis=0))[3])
        for text in candidates}
    return min(candidates, key=lambda t: (-bleu4[t], -counts[t], t))


def closest_constant_baseline(train_texts: Sequence[str], n: int) -> list[str]:
    """The training text (written at least `CLOSEST_MIN_COUNT` times) with the highest corpus
    BLEU-4 said for every training study, for every one of `n` studies: the constant a
    text-overlap metric favours most, chosen on the training split, blind to the image. The
    most frequent text where none is written that often."""
    text = closest_text(train_texts, Counter(train_texts))
    return [text] * n if text is not None else constant_baseline(train_texts, n)


def title_constant_baseline(train_titles: Sequence[str], train_texts: Sequence[str],
                            titles: Sequence[str], min_count: int) -> list[str]:
    """Per study, the most frequent training text among the training studies with its exam
    title (titles of at least `min_count` training studies, as `model.exam_title` knows them;
    ties go to the text first in sort order); the constant for any other study. Blind to the
    image: what the reporting template alone predicts."""
    vocabulary = TitleVocabulary.from_titles(train_titles, min_count)
    texts_by_title: dict[int, Counter] = {}
    for title_id, text in zip(vocabulary.encode(train_titles)[:, 0], train_texts, strict=True):
        texts_by_title.setdefault(int(title_id), Counter())[text] += 1
    constant = constant_baseline(train_texts, 1)[0]
    chosen = {title_id: min(counts, key=lambda text, c=counts: (-c[text], text))
              for title_id, counts in texts_by_title.items() if title_id != UNKNOWN}
    return [chosen.get(int(title_id), constant) for title_id in vocabulary.encode(titles)[:, 0]]


def nearest_neighbour_baseline(train_vectors: np.ndarray, train_texts: Sequence[str],
                               query_vectors: np.ndarray) -> list[str]:
    """The text of the most cosine-similar training study, for each query study (vectors as
    `captioning.retrieval.study_vectors` makes them)."""
    similarity = query_vectors @ train_vectors.T
    return [train_texts[i] for i in similarity.argmax(axis=1)]
