"""A rule-based labeller of report text, in the spirit of the CheXpert labeller and NegEx.

`label_text` maps normalised report text to `abnormal` and to FINDINGS. A finding is positive
when one of its phrases occurs in a sentence and no negation trigger precedes it in the same
sentence within NEGATION_WINDOW words, unless a scope breaker ("but", "however", ...) lies
between them. A trigger inside a pseudo-negation ("no change in the nodule", NegEx's term)
negates nothing. Uncertain mentions ("may represent", "possible") count as positive, as CheXpert's
U-Ones policy does. A report is abnormal when any finding is positive.

`mesh_labels` gives the same labels from the data set's MeSH codes, to validate the labeller.
"""

from __future__ import annotations

import re

# finding -> phrases in normalised text (word-boundary regexes)
FINDINGS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (r"cardiomegaly", r"(heart|cardiac silhouette|cardiac) (size )?(is |are )?"
                     r"(mildly |moderately |markedly )?(enlarged|enlargement)",
                     r"enlarged (heart|cardiac)", r"cardiac enlargement"),
    "pleural_effusion": (r"(pleural )?effusions?",),
    "opacity": (r"opacit(y|ies)", r"infiltrates?", r"airspace disease"),
    "atelectasis": (r"atelecta(sis|tic)", r"collapse"),
    "granuloma": (r"granulomas?", r"granulomatous"),
    "nodule": (r"nodules?", r"nodular", r"mass(es)?"),
    "emphysema": (r"emphysema(tous)?", r"copd", r"chronic obstructive", r"hyperinflat(ed|ion)",
                  r"hyperexpan(ded|sion)"),
    "low_lung_volumes": (r"low lung volumes?", r"hypoinflat(ed|ion)", r"low volumes?"),
    "degenerative_spine": (r"degenerative", r"spondylosis", r"osteophytes?"),
    "scarring": (r"scar(ring)?", r"fibrosis", r"fibrotic", r"cicatri(x|cial)"),
    "pneumothorax": (r"pneumothora(x|ces)",),
    "consolidation": (r"consolidations?", r"pneumonia"),
    "edema": (r"edema", r"vascular congestion", r"chf", r"heart failure"),
}

NEGATIONS = (r"no", r"not", r"without", r"negative for", r"free of", r"clear of", r"resolved",
             r"resolution of", r"no evidence of", r"absence of", r"rule out", r"ruled out",
             r"neither", r"nor", r"removed", r"never")
# A negation cue that states no absence: "no interval change in the opacities" reports them.
PSEUDO_NEGATIONS = (r"no (interval |significant |appreciable )?change",
                    r"(no|without) (prior )?comparisons?")
SCOPE_BREAKERS = (r"but", r"however", r"although", r"though", r"which", r"except", r"with")
# Twelve: normalised text has lost its commas, so one negation covers a whole list ("without
# evidence of focal airspace disease pleural effusion or pneumothorax": pneumothorax is the 9th
# word after "without"). Chosen on the training splits' agreement with the MeSH codes:
# docs/results.md "The labeller's negation window".
NEGATION_WINDOW = 12

_PHRASES = {f: re.compile(r"\b(" + "|".join(p) + r")\b") for f, p in FINDINGS.items()}
_NEGATION = re.compile(r"\b(" + "|".join(NEGATIONS) + r")\b")
_PSEUDO = re.compile(r"\b(" + "|".join(PSEUDO_NEGATIONS) + r")\b")
_BREAKER = re.compile(r"\b(" + "|".join(SCOPE_BREAKERS) + r")\b")

# MeSH heads (the part before "/") that code each finding
MESH_TERMS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly",),
    "pleural_effusion": ("pleural effusion",),
    "opacity": ("opacity", "infiltrate", "airspace disease"),
    "atelectasis": ("pulmonary atelectasis", "atelectasis"),
    "granuloma": ("calcified granuloma", "granulomatous disease", "granuloma"),
    "nodule": ("nodule", "mass", "lung/nodule"),
    "emphysema": ("emphysema", "pulmonary emphysema", "pulmonary disease, chronic obstructive",
                  "lung/hyperdistention"),
    "low_lung_volumes": ("lung/hypoinflation",),
    "degenerative_spine": ("spine/degenerative", "thoracic vertebrae/degenerative",
                           "spondylosis", "osteophyte"),
    "scarring": ("cicatrix", "pulmonary fibrosis", "fibrosis"),
    "pneumothorax": ("pneumothorax",),
    "consolidation": ("consolidation", "pneumonia"),
    "edema": ("pulmonary edema", "edema", "pulmonary congestion"),
}
NORMAL_MESH = {"normal"}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"\s\.\s?|\.$", text) if s.strip()]


def mentions(text: str) -> dict[str, bool]:
    """For each finding: positive (True) if mentioned without negation in some sentence."""
    found = dict.fromkeys(FINDINGS, False)
    for sentence in _sentences(text):
        for finding, pattern in _PHRASES.items():
            if found[finding]:
                continue
            for match in pattern.finditer(sentence):
                if not _negated(sentence, match.start()):
                    found[finding] = True
                    break
    return found


def _negated(sentence: str, position: int) -> bool:
    before = sentence[:position].split()
    window = " ".join(before[-NEGATION_WINDOW:])
    pseudo = [m.span() for m in _PSEUDO.finditer(window)]
    negations = [m for m in _NEGATION.finditer(window)
                 if not any(start <= m.start() < end for start, end in pseudo)]
    if not negations:
        return False
    after_negation = window[negations[-1].end():]
    return _BREAKER.search(after_negation) is None


def label_text(text: str) -> dict[str, bool]:
    """`abnormal` and each finding, from normalised report text."""
    found = mentions(text)
    return {"abnormal": any(found.values()), **found}


def mesh_labels(mesh: str) -> dict[str, bool]:
    """`abnormal` and each finding, from a report's `;`-joined MeSH major terms."""
    terms = [t.strip().lower() for t in mesh.split(";") if t.strip()]
    labels = dict.fromkeys(FINDINGS, False)
    for term in terms:
        head = term.split("/")[0]
        for finding, codes in MESH_TERMS.items():
            if term in codes or head in codes or any(term.startswith(c) for c in codes
                                                     if "/" in c):
                labels[finding] = True
    abnormal = bool(terms) and not set(terms) <= NORMAL_MESH
    return {"abnormal": abnormal, **labels}
