"""Greedy and beam-search decoding, batched over studies.

Every hypothesis carries its own token prefix, and the decoder recomputes from that prefix at
each step, so no beam shares recurrent or attention state with another (the earlier notebook's
bug). Beams sum log-probabilities; finished hypotheses are ranked by
`sum_logprob / length ** length_penalty`; `no_repeat_ngram` bans any token that would repeat an
n-gram already in the hypothesis. With `beam_choice: mbr` the caption is instead the finished
hypothesis of highest expected ROUGE-L against the others (minimum Bayes risk).

A conditioned model (`model.condition: abnormal | findings`) first predicts the study's labels;
the decoder then writes under them, each label on where `probability >= its threshold` (the
thresholds chosen on the validation split by the train stage and kept in the model bundle).
With `decode.labels: consistent` those labels are then made consistent the way the training
labels always are (`abnormal` is on exactly when some finding is; see `consistent_condition`):
thresholded independently, a study can be abnormal with no finding, a combination the decoder
never saw in training, and under which it falls back to the most frequent normal impression.
With `decode.normal_text: template`, a study decoded under no label on is then worded as its
exam title's normal template instead (templates.py); with `template_written`, so is any study
whose caption is word for word a normal training impression; with `template_read`, any study
whose caption the labeller reads as normal (no finding), whatever its labels. With
`decode.finding_text: appended`, a finding turned on that the caption does not name gets its
phrase appended; with `phrased`, a study with a finding turned on is worded as its exam
title's normal template followed by the phrases of its findings, as a radiologist's
"No acute cardiopulmonary abnormality. Cardiomegaly." (templates.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..data.labeller import label_text
from ..data.tokenizer import UNKNOWN_ID, Vocabulary
from ..errors import InputError
from ..settings.decoding import DecodingSettings
from .models import CaptionModel
from .templates import named

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    ids: list[int]  # generated word ids, end token excluded
    score: float
    attention: np.ndarray | None = None  # (steps, regions) for the transformer
    abnormal: float | None = None  # the predicted probability that the study is abnormal
    # Beam search: every finished hypothesis as (sum of log-probabilities, ids), so that another
    # length penalty can re-rank them without searching again (the search does not depend on it).
    hypotheses: list[tuple[float, list[int]]] | None = None
    condition: np.ndarray | None = None  # the 0/1 labels it was written under (conditioned)
    # `ids` are its exam title's normal template (decode.normal_text: template), not the
    # decoder's caption (whose `score` it keeps).
    template: bool = False
    # The findings whose phrases `decode.finding_text: appended` added after the decoder's
    # caption (`phrased`: after the exam title's template), in the order of the model's labels.
    appended: tuple[str, ...] = ()


def has_consistency_rule(names: Sequence[str]) -> bool:
    """Whether labels `names` hold both `abnormal` and a finding (what `consistent` relates)."""
    return "abnormal" in names and len(names) > 1


def consistent_condition(condition: np.ndarray, probabilities: np.ndarray,
                         thresholds: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Thresholded labels (N, L) made consistent as in training, where `abnormal` is on exactly
    when some finding is (the labeller's definition): the abnormal label decides; an abnormal
    study with no finding on gets the finding likeliest relative to its threshold, and a normal
    study has every finding off. Without both an `abnormal` label and a finding, unchanged."""
    if not has_consistency_rule(names):
        return condition
    out = condition.copy()
    abnormal = list(names).index("abnormal")
    findings = np.array([j for j in range(len(names)) if j != abnormal])
    on = out[:, abnormal] > 0
    out[np.ix_(~on, findings)] = 0.0
    missing = on & ~(out[:, findings] > 0).any(axis=1)
    if missing.any():
        ratio = probabilities[np.ix_(missing, findings)] / np.maximum(thresholds[findings], 1e-6)
        out[np.flatnonzero(missing), findings[ratio.argmax(axis=1)]] = 1.0
    return out


def _normalised(hypothesis: tuple[float, list[int]], length_penalty: float) -> float:
    total, ids = hypothesis
    return total / (len(ids) + 1) ** length_penalty


def rerank(decoded: Sequence[Decoded], length_penalty: float) -> list[Decoded]:
    """Beam search's results as under another `length_penalty`: each study's best finished
    hypothesis by `sum(log p) / length ** length_penalty` (exactly what the beam would give)."""
    out = []
    for d in decoded:
        if not d.hypotheses:
            out.append(d)
            continue
        best = max(d.hypotheses, key=lambda h: _normalised(h, length_penalty))
        out.append(replace(d, ids=best[1], score=float(_normalised(best, length_penalty))))
    return out


# pycocoevalcap's ROUGE-L weighs recall beta^2 times as much as precision.
ROUGE_BETA = 1.2


def rouge_l(hypothesis: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L of two word sequences as pycocoevalcap scores one reference: the F-measure of
    the longest common subsequence's precision and recall, recall weighted by ROUGE_BETA."""
    if not hypothesis or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for word in hypothesis:
        current = [0]
        for j, other in enumerate(reference):
            current.append(previous[j] + 1 if word == other
                           else max(previous[j + 1], current[j]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(hypothesis), common / len(reference)
    return ((1 + ROUGE_BETA ** 2) * precision * recall
            / (recall + ROUGE_BETA ** 2 * precision))


def minimum_bayes_risk(decoded: Sequence[Decoded]) -> list[Decoded]:
    """Beam search's results with, for each study, the finished hypothesis whose ROUGE-L
    against the others (itself included) is highest in expectation, each weighted by the
    model's probability of it renormalised over the finished ones; its `score` is that
    expectation. A consensus of the beam rather than its single likeliest caption, the choice
    that the expected ROUGE-L against an unseen reference favours. Ties go to the likelier."""
    out = []
    for d in decoded:
        if not d.hypotheses:
            out.append(d)
            continue
        totals = np.array([total for total, _ in d.hypotheses])
        weights = np.exp(totals - totals.max())
        weights /= weights.sum()
        ids = [hypothesis for _, hypothesis in d.hypotheses]
        expected = np.array([[rouge_l(a, b) for b in ids] for a in ids]) @ weights
        best = max(range(len(ids)), key=lambda i: (expected[i], totals[i]))
        out.append(replace(d, ids=ids[best], score=float(expected[best])))
    return out


class Decoder:
    """Decodes studies with one model, through its inference functions (traced once)."""

    def __init__(self, model: CaptionModel, vocab: Vocabulary,
                 thresholds: float | Sequence[float] = 0.5,
                 templates: Sequence[list[int]] | None = None,
                 normal_captions: Iterable[Sequence[int]] = (),
                 finding_phrases: dict[str, list[int]] | None = None) -> None:
        """`templates`: the normal templates' word ids by exam-title id (templates.py), for
        `decode.normal_text: template`; `normal_captions`: the word ids of the normal training
        impressions, which `template_written` also rewords; `finding_phrases`: by finding, the
        word ids of its phrase (templates.py), for `decode.finding_text: appended`."""
        self.model = model
        self.vocab = vocab
        self.templates = templates
        self.normal_captions = frozenset(tuple(ids) for ids in normal_captions)
        self.finding_phrases = finding_phrases
        # One threshold per label of the condition (a single number: the same for all).
        self.thresholds = np.broadcast_to(np.asarray(thresholds, np.float64),
                                          (len(model.labels),)).copy()
        self.length = vocab.max_len - 1  # token positions the decoder takes
        self._encode = model.inference_function("encoder")
        self._decode = model.inference_function("decoder")

    def encode(self, inputs: dict[str, np.ndarray],
               labels: str = "independent") -> dict[str, np.ndarray]:
        """The decoder's memory; for a conditioned model also `condition` (the thresholded
        labels, made consistent with `labels="consistent"`), `probabilities` (of every label)
        and `abnormal` (the probability of the abnormal label), which the decoder does not
        take."""
        memory = {k: v.numpy() for k, v in self._encode(_taken(inputs, self.model.encoder)).items()}
        for name in self.model.decoder.input:  # what the decoder takes as given (retrieval)
            if name in inputs and name not in memory:
                memory[name] = np.asarray(inputs[name])
        if "labels" in memory:
            probability = 1.0 / (1.0 + np.exp(-memory.pop("labels").astype(np.float64)))
            memory["probabilities"] = probability
            memory["condition"] = (probability >= self.thresholds).astype(np.float32)
            if labels == "consistent":
                memory["condition"] = consistent_condition(
                    memory["condition"], probability, self.thresholds, self.model.labels)
            if "abnormal" in self.model.labels:
                memory["abnormal"] = probability[:, self.model.labels.index("abnormal")]
        return memory

    @staticmethod
    def _probabilities(memory: dict[str, np.ndarray], n: int) -> list[float | None]:
        if "abnormal" not in memory:
            return [None] * n
        return [float(p) for p in memory["abnormal"]]

    @staticmethod
    def _conditions(memory: dict[str, np.ndarray], n: int) -> list[np.ndarray | None]:
        if "condition" not in memory:
            return [None] * n
        return list(memory["condition"])

    def step(self, memory: dict[str, np.ndarray], tokens: np.ndarray,
             t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Log-probabilities of the word after each prefix `tokens[:, :t]`, and attention."""
        out = self._decode(_taken({**memory, "tokens": tokens}, self.model.decoder))
        logits = out["logits"].numpy()
        if not self.model.prefix_training:
            logits = logits[:, t - 1]
        logits = logits.astype(np.float64)
        # Never pad, restart, or write the unknown word (it reads as nothing).
        logits[:, [0, UNKNOWN_ID, self.vocab.start_id]] = -np.inf
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        attention = out["attention"].numpy()[:, t - 1] if "attention" in out else None
        return logp, attention

    def greedy(self, inputs: dict[str, np.ndarray],
               labels: str = "independent") -> list[Decoded]:
        memory = self.encode(inputs, labels)
        n = len(next(iter(memory.values())))
        tokens = np.zeros((n, self.length), dtype=np.int32)
        tokens[:, 0] = self.vocab.start_id
        done = np.zeros(n, dtype=bool)
        scores = np.zeros(n)
        attention: list[np.ndarray] = []
        for t in range(1, self.length + 1):
            logp, att = self.step(memory, tokens, t)
            # With no room left, the caption ends here.
            choice = np.full(n, self.vocab.end_id) if t == self.length else logp.argmax(axis=1)
            scores += np.where(done, 0.0, logp[np.arange(n), choice])
            if att is not None:
                attention.append(att)
            ended = choice == self.vocab.end_id
            if t < self.length:
                tokens[:, t] = np.where(done | ended, 0, choice)
            done |= ended
            if done.all():
                break
        results = []
        probabilities = self._probabilities(memory, n)
        conditions = self._conditions(memory, n)
        for i in range(n):
            ids = [int(x) for x in tokens[i, 1:] if x != 0]
            att = np.stack([a[i] for a in attention[: len(ids) + 1]]) if attention else None
            results.append(Decoded(ids, float(scores[i]), att, probabilities[i],
                                   condition=conditions[i]))
        return results

    def beam(self, inputs: dict[str, np.ndarray], params: DecodingSettings) -> list[Decoded]:
        memory = self.encode(inputs, params.labels)
        n = len(next(iter(memory.values())))
        k = params.beam_size
        tiled = {name: np.repeat(v, k, axis=0) for name, v in memory.items()}
        tokens = np.zeros((n, k, self.length), dtype=np.int32)
        tokens[:, :, 0] = self.vocab.start_id
        scores = np.full((n, k), -np.inf)
        scores[:, 0] = 0.0  # the first step expands one beam, not k copies of it
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        active = np.ones(n, dtype=bool)
        vocab_size = len(self.vocab)
        for t in range(1, self.length + 1):
            logp, _ = self.step(tiled, tokens.reshape(n * k, self.length), t)
            logp = logp.reshape(n, k, vocab_size)
            if params.no_repeat_ngram:
                _block_repeats(logp, tokens[:, :, 1:t], params.no_repeat_ngram)
            if t == self.length:  # out of room: every live beam must end now
                forced = np.full_like(logp, -np.inf)
                forced[:, :, self.vocab.end_id] = logp[:, :, self.vocab.end_id]
                logp = forced
            total = (scores[:, :, None] + logp).reshape(n, k * vocab_size)
            top = np.argsort(-total, axis=1)[:, : 2 * k]
            new_tokens = tokens.copy()
            new_scores = np.full((n, k), -np.inf)
            for i in np.flatnonzero(active):
                kept = 0
                for flat in top[i]:
                    score = total[i, flat]
                    if not np.isfinite(score):
                        break
                    beam, word = divmod(int(flat), vocab_size)
                    if word == self.vocab.end_id:
                        finished[i].append((float(score),
                                            [int(x) for x in tokens[i, beam, 1:t]]))
                        continue
                    new_tokens[i, kept, :t] = tokens[i, beam, :t]
                    if t < self.length:
                        new_tokens[i, kept, t] = word
                    new_scores[i, kept] = score
                    kept += 1
                    if kept == k:
                        break
                best_live = new_scores[i].max()
                if len(finished[i]) >= k or not np.isfinite(best_live):
                    active[i] = False
            tokens, scores = new_tokens, new_scores
            if not active.any():
                break
        results = []
        probabilities = self._probabilities(memory, n)
        conditions = self._conditions(memory, n)
        for i in range(n):
            results.append(Decoded([], 0.0, abnormal=probabilities[i], hypotheses=finished[i],
                                   condition=conditions[i]))
        if params.beam_choice == "mbr":
            return minimum_bayes_risk(results)
        return rerank(results, params.length_penalty)

    def explain(self, inputs: dict[str, np.ndarray], decoded: Sequence[Decoded],
                batch_size: int = 64) -> list[np.ndarray]:
        """Where each word of each decoded caption looked: (words + 1, regions) per study, the
        last row for the end token. One teacher-forced pass over the final captions; with a
        causal decoder this equals the attention at each decoding step."""
        if "attention" not in self.model.decoder.output:
            raise ValueError(f"the {self.model.kind} model has no spatial attention")
        n = len(decoded)
        maps: list[np.ndarray] = []
        for start in range(0, n, batch_size):
            chunk = decoded[start:start + batch_size]
            memory = self.encode({k: v[start:start + batch_size] for k, v in inputs.items()})
            if "condition" in memory and all(d.condition is not None for d in chunk):
                # the labels each caption was written under (`decode.labels` may have changed them)
                memory["condition"] = np.stack([d.condition for d in chunk])
            tokens = np.zeros((len(chunk), self.length), dtype=np.int32)
            tokens[:, 0] = self.vocab.start_id
            for i, d in enumerate(chunk):
                ids = d.ids[: self.length - 1]
                tokens[i, 1:1 + len(ids)] = ids
            attention = self._decode(_taken({**memory, "tokens": tokens},
                                            self.model.decoder))["attention"]
            attention = attention.numpy()
            for i, d in enumerate(chunk):
                maps.append(attention[i, : min(len(d.ids) + 1, self.length)])
        return maps

    def decode(self, inputs: dict[str, np.ndarray], params: DecodingSettings,
               batch_size: int = 64, progress: str | None = None) -> list[Decoded]:
        """Decode every study of `inputs` by `params.method`, `batch_size` studies at a time.
        With `progress`, a tqdm bar of that description counts the studies on stderr."""
        n = len(next(iter(inputs.values())))
        results: list[Decoded] = []
        bar = None
        if progress is not None:
            from tqdm import tqdm  # here: serving imports this module and never shows a bar

            bar = tqdm(total=n, desc=progress, unit="study", file=sys.stderr)
        for start in range(0, n, batch_size):
            chunk = {name: v[start:start + batch_size] for name, v in inputs.items()}
            if params.method == "greedy" or params.beam_size == 1:
                results.extend(self.greedy(chunk, params.labels))
            else:
                results.extend(self.beam(chunk, params))
            if bar is not None:
                bar.update(min(batch_size, n - start))
        if bar is not None:
            bar.close()
        return self.worded(results, inputs, params.normal_text, params.finding_text)

    def worded(self, decoded: Sequence[Decoded], inputs: dict[str, np.ndarray],
               normal_text: str, finding_text: str = "decoder") -> list[Decoded]:
        """`decoded` with its findings worded by `finding_text` (`decode.finding_text`), then
        its normal studies by `normal_text`."""
        return self.worded_normal(self.worded_findings(decoded, finding_text, inputs),
                                  inputs, normal_text)

    def worded_findings(self, decoded: Sequence[Decoded], finding_text: str,
                        inputs: dict[str, np.ndarray]) -> list[Decoded]:
        """`decoded` with, under `finding_text: appended`, each finding its labels turn on but
        its caption does not name (templates.py `named`) stated by that finding's phrase
        after the caption; under `phrased`, each caption whose labels turn on a finding with a
        phrase replaced by its exam title's normal template (`inputs["exam_title"]`) and the
        phrases of those findings, in the labels' order; under `decoder`, or for a model not
        conditioned on findings, as it is."""
        if finding_text == "decoder" or not self.model.conditioned:
            return list(decoded)
        if self.finding_phrases is None:
            raise InputError(f"decode.finding_text: {finding_text}, but the model has no finding "
                             "phrases (models/decoding.json: rerun the selection stage)")
        if finding_text == "phrased":
            return self._phrased(decoded, inputs)
        labels = self.model.labels
        out = []
        for d in decoded:
            text = self.vocab.decode(d.ids)
            said = named(text)
            missing = tuple(name for name, on in zip(labels, d.condition, strict=True)
                            if on and name in self.finding_phrases and name not in said)
            out.append(replace(d, ids=[*d.ids, *(i for name in missing
                                               for i in self.finding_phrases[name])],
                               hypotheses=None, appended=missing) if missing else d)
        return out

    def _phrased(self, decoded: Sequence[Decoded], inputs: dict[str, np.ndarray]
                 ) -> list[Decoded]:
        if self.templates is None:
            raise InputError("decode.finding_text: phrased, but the model has no normal "
                             "templates (models/decoding.json: rerun the selection stage)")
        out = []
        for d, title in zip(decoded, self._title_ids(inputs, len(decoded)), strict=True):
            found = tuple(name for name, on in zip(self.model.labels, d.condition, strict=True)
                          if on and name in self.finding_phrases)
            out.append(replace(d, ids=[*self.templates[int(title)],
                                       *(i for name in found for i in self.finding_phrases[name])],
                               attention=None, hypotheses=None, appended=found)
                       if found else d)
        return out

    @staticmethod
    def _title_ids(inputs: dict[str, np.ndarray], studies: int) -> np.ndarray:
        """Each study's exam-title id (0, no title, for a model without titles)."""
        return (np.asarray(inputs["exam_title"]).reshape(-1) if "exam_title" in inputs
                else np.zeros(studies, np.int64))

    def worded_normal(self, decoded: Sequence[Decoded], inputs: dict[str, np.ndarray],
                      normal_text: str) -> list[Decoded]:
        """`decoded` with its normal studies worded by `normal_text` (`decode.normal_text`):
        under `template`, every study written under no label on (predicted normal) gets its
        exam title's normal template (`inputs["exam_title"]`; without titles, the template of no
        title); under `template_written`, so does every study whose caption is a normal
        training impression; under `template_read`, every study whose caption the labeller
        reads as normal (data/labeller.py: no finding). A model without labels predicts nothing
        normal, and `decoded` is returned as it is, as it is under `decoder`."""
        if normal_text == "decoder" or not self.model.conditioned:
            return list(decoded)
        if self.templates is None:
            raise InputError(f"decode.normal_text: {normal_text}, but the model has no normal "
                             "templates (models/decoding.json: rerun the selection stage)")
        written = normal_text == "template_written"
        read = normal_text == "template_read"
        if written and not self.normal_captions:
            raise InputError("decode.normal_text: template_written, but the model has no "
                             "normal impressions (models/decoding.json: rerun the selection "
                             "stage)")
        title_ids = self._title_ids(inputs, len(decoded))

        def normal(d: Decoded) -> bool:
            if d.condition is not None and not d.condition.any():
                return True
            if written:
                return tuple(d.ids) in self.normal_captions
            return read and not label_text(self.vocab.decode(d.ids))["abnormal"]

        return [replace(d, ids=list(self.templates[int(title)]), attention=None,
                        hypotheses=None, template=True) if normal(d) else d
                for d, title in zip(decoded, title_ids, strict=True)]

    def texts(self, decoded: Sequence[Decoded]) -> list[str]:
        return [self.vocab.decode(d.ids) for d in decoded]


def _taken(values: dict[str, np.ndarray], network) -> dict[str, np.ndarray]:
    """The arrays `network` takes, in the dtypes of its inputs (its signature's)."""
    return {name: np.asarray(values[name], dtype=t.dtype) for name, t in network.input.items()}


def _block_repeats(logp: np.ndarray, prefixes: np.ndarray, n: int) -> None:
    """Set to -inf every next word that would repeat an n-gram already in its prefix."""
    for i in range(prefixes.shape[0]):
        for b in range(prefixes.shape[1]):
            prefix = [int(x) for x in prefixes[i, b] if x != 0]
            if len(prefix) < n - 1:
                continue
            key = tuple(prefix[len(prefix) - n + 1:]) if n > 1 else ()
            banned = {prefix[j + n - 1] for j in range(len(prefix) - n + 1)
                      if tuple(prefix[j:j + n - 1]) == key}
            if banned:
                logp[i, b, list(banned)] = -np.inf
