"""Captioning metrics and clinical scores for generated impressions.

Tokenisation: every metric sees the normalised text of the clean stage, split on spaces, with
the sentence token `.` kept as a word (as R2Gen's evaluation does) and without the start and
end tokens. BLEU is nltk's `corpus_bleu` (one reference per study, no smoothing); METEOR,
ROUGE-L and CIDEr come from pycocoevalcap (METEOR runs Java), fed the same tokens.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Sequence

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from ..data.labeller import FINDINGS, label_text
from ..errors import InputError

log = logging.getLogger(__name__)

# A hypothesis with no 4-gram overlap scores 0: correct, and not worth a warning per study.
warnings.filterwarnings("ignore", message=r"(?s).*counts of .-gram overlaps")

BLEU_WEIGHTS = [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (1 / 3, 1 / 3, 1 / 3, 0), (0.25,) * 4]


JAVA_MISSING = ("java not found: METEOR needs a Java runtime (Debian/Ubuntu: "
                "`sudo apt-get install default-jre-headless`)")


def require_java() -> None:
    """Stop with one line before any work if METEOR's Java is missing (else a raw traceback
    from pycocoevalcap at the very end of evaluate)."""
    if shutil.which("java") is None:
        raise InputError(JAVA_MISSING)


class MeteorScorer:
    """One METEOR Java process, reused for every system scored in a run."""

    def __init__(self) -> None:
        from pycocoevalcap.meteor.meteor import Meteor

        require_java()

        self._meteor = Meteor()

    def score(self, references: Sequence[str], hypotheses: Sequence[str]) -> float:
        gts = {i: [r] for i, r in enumerate(references)}
        res = {i: [h or "empty"] for i, h in enumerate(hypotheses)}
        return float(self._meteor.compute_score(gts, res)[0])

    def close(self) -> None:
        """End the Java process now rather than whenever the object is collected."""
        process = self._meteor.meteor_p
        if process.poll() is None:
            process.stdin.close()
            process.kill()
            process.wait()


def text_metrics(references: Sequence[str], hypotheses: Sequence[str],
                 meteor: MeteorScorer | None = None) -> dict[str, float]:
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs = [[r.split()] for r in references]
    hyps = [h.split() for h in hypotheses]
    scores = {f"bleu{n + 1}": float(corpus_bleu(refs, hyps, weights=w))
              for n, w in enumerate(BLEU_WEIGHTS)}
    gts = {i: [r] for i, r in enumerate(references)}
    res = {i: [h or "empty"] for i, h in enumerate(hypotheses)}
    if meteor is not None:
        scores["meteor"] = meteor.score(references, hypotheses)
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    scores["distinct"] = len(set(hypotheses))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def per_study_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, list]:
    """Sentence BLEU-4 (smoothed) and ROUGE-L per study, for error analysis."""
    from pycocoevalcap.rouge.rouge import Rouge

    smooth = SmoothingFunction().method1
    bleu = [float(sentence_bleu([r.split()], h.split(), smoothing_function=smooth))
            for r, h in zip(references, hypotheses, strict=True)]
    rouge = Rouge()
    rouge_l = [float(rouge.calc_score([h or "empty"], [r]))
               for r, h in zip(references, hypotheses, strict=True)]
    return {"bleu4": bleu, "rouge_l": rouge_l}


def _prf(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    tp = float((truth & predicted).sum())
    precision = tp / predicted.sum() if predicted.sum() else 0.0
    recall = tp / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def clinical_scores(reference_labels: Sequence[dict[str, bool]],
                    predicted_labels: Sequence[dict[str, bool]]) -> dict[str, object]:
    """Abnormal precision/recall/F1, and per-finding and macro F1 over findings present."""
    truth = {k: np.array([r[k] for r in reference_labels]) for k in ("abnormal", *FINDINGS)}
    pred = {k: np.array([p[k] for p in predicted_labels]) for k in ("abnormal", *FINDINGS)}
    per_finding = {f: _prf(truth[f], pred[f])["f1"] for f in FINDINGS if truth[f].any()}
    return {
        "abnormal": _prf(truth["abnormal"], pred["abnormal"]),
        "abnormal_predicted_share": round(float(pred["abnormal"].mean()), 4),
        "findings_macro_f1": round(float(np.mean(list(per_finding.values()))), 4)
        if per_finding else 0.0,
        "findings_f1": per_finding,
    }


def labeller_agreement(texts: Sequence[str], mesh_labels: Sequence[dict[str, bool]]
                       ) -> dict[str, object]:
    """How well the labeller on report text reproduces the MeSH-coded labels."""
    predicted = [label_text(t) for t in texts]
    truth = np.array([m["abnormal"] for m in mesh_labels])
    guess = np.array([p["abnormal"] for p in predicted])
    accuracy = float((truth == guess).mean())
    chance = truth.mean() * guess.mean() + (1 - truth.mean()) * (1 - guess.mean())
    kappa = (accuracy - chance) / (1 - chance) if chance < 1 else 0.0
    per_finding = {}
    for finding in FINDINGS:
        t = np.array([m[finding] for m in mesh_labels])
        if t.sum() >= 5:
            per_finding[finding] = _prf(t, np.array([p[finding] for p in predicted]))["f1"]
    return {"reports": len(texts), "abnormal_accuracy": round(accuracy, 4),
            "abnormal_kappa": round(float(kappa), 4),
            "abnormal": _prf(truth, guess),
            "findings_f1_vs_mesh": per_finding,
            "findings_macro_f1_vs_mesh": round(float(np.mean(list(per_finding.values()))), 4)
            if per_finding else 0.0}
