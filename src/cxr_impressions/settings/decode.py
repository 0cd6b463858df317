"""The `decode` section: how captions are decoded, and how select chooses among candidates."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from ..errors import InputError
from .decoding import DecodingSettings
from .fields import at_least

SelectMetric = Literal["bleu4", "cider", "rouge_l", "abnormal_f1", "findings_macro_f1"]
# Which normal training text is an exam title's template (captioning/template_rules.py). Here,
# not in settings/decoding.py, which the train stage imports: the rule is the selection's.
TemplateRule = Literal["commonest", "closest"]
TEMPLATE_RULES: tuple[str, ...] = get_args(TemplateRule)
# What the selection's guards compare a tied candidate with (`select_guard_reference`).
GuardReference = Literal["best", "leader", "twin"]
GUARD_REFERENCES: tuple[str, ...] = get_args(GuardReference)


@dataclasses.dataclass(frozen=True)
class DecodeParams(DecodingSettings):
    """How captions are decoded (the `DecodingSettings` fields) and how the selection stage
    chooses them. With `select: true` (the default) the selection stage chooses method,
    beam_size, length_penalty and labels among the candidate lists by `select_metric` on the
    validation split and writes them to models/decoding.json, which evaluate and `cxr predict`
    use; with `select: false` it writes them as given."""

    select: bool = True
    beam_sizes: tuple[int, ...] = (1, 3, 5)  # candidates; 1 is greedy decoding
    # Candidates for beams > 1; 1.5 and 2.0 added on validation over four runs (docs/results.md,
    # "Longer length penalties"): the best beams sat at the grid's edge, 1.0.
    length_penalties: tuple[float, ...] = (0.0, 0.7, 1.0, 1.5, 2.0)
    label_modes: tuple[str, ...] = ("independent", "consistent")  # candidates for `labels`
    beam_choices: tuple[str, ...] = ("score",)  # candidates for `beam_choice` (beams > 1)
    # Candidates for `normal_text` (a conditioned model; unconditioned, only `decoder`).
    normal_texts: tuple[str, ...] = ("template_read",)
    # Candidates for `finding_text` (a model conditioned on findings; otherwise only `decoder`);
    # `appended`, then `phrased`, added on held-out validation halves over seven runs each
    # (docs/results.md, "Finding phrases" and "Phrased findings").
    finding_texts: tuple[str, ...] = ("decoder", "appended", "phrased")
    # Which normal training text is a title's template, what `normal_text` and `phrased` word
    # with: `commonest`, its most frequent; `closest`, of those written often enough, the one
    # with the best corpus BLEU-4 against all of them. Used as given with `select: false`; the
    # selection stage keeps the chosen rule's templates in models/decoding.json.
    template_rule: TemplateRule = "commonest"
    # Candidates for `template_rule` (a model with normal templates; otherwise it changes
    # nothing). `closest` added by a rule written before its held-out validation halves on
    # the impression target (BLEU-4 +0.012, both F1s unchanged; ROUGE-L -0.018 and CIDEr
    # -0.25 against it) and on R2Gen's findings (BLEU-4 +0.021): docs/results.md.
    template_rules: tuple[str, ...] = ("commonest", "closest")
    select_metric: SelectMetric = "bleu4"
    # Only candidates whose most frequent validation caption is at most this share of the
    # studies compete (1.0: every candidate); none qualifying, the lowest share wins.
    max_top_share: float = at_least(0.01, 1.0, at_most=1.0)
    # `varied`: among the candidates whose `select_metric` validation cannot tell from the
    # best's (the paired bootstrap interval of candidate minus best reaches 0), the one whose
    # commonest caption goes to the fewest studies; `best`: the best, however small its lead.
    select_ties: Literal["best", "varied"] = "varied"
    # Under `varied`, a candidate tied with the best on `select_metric` must also not be
    # significantly below that best on each of these (the same paired interval reaches 0):
    # BLEU-4 alone let ties trade ROUGE-L away for variety.
    select_guards: tuple[SelectMetric, ...] = ("rouge_l",)
    # What a tied candidate must not fall significantly below on each guard: `best`, the best
    # on `select_metric` (the best itself is never guarded); `leader`, of the candidates still
    # tied, the one highest on that guard (guards in turn), so that the best too is dropped
    # where a candidate validation cannot tell from it on `select_metric` beats it on a guard
    # (lost abnormal F1 on held-out validation halves: not adopted); `twin`, as `best`, and
    # then also its twins still tied, the same captions worded by another template rule
    # (adopted on held-out validation halves: ROUGE-L +0.009 on impressions at two seeds, F1s
    # unchanged, R2Gen's split unchanged; docs/results.md).
    select_guard_reference: GuardReference = "twin"
    select_resamples: int = at_least(100, 1000)  # resamples of the validation studies (ties)
    select_seed: int = at_least(0, 0)  # seeds those resamples
    # How the selection stage sets a conditioned model's label thresholds on validation:
    # `prevalence`, each label positive for m times its training prevalence, one m for all
    # labels chosen among `prevalence_multipliers`; `f1`, each label its own best-F1 threshold.
    thresholds: Literal["prevalence", "f1"] = "prevalence"
    # One candidate, so m is fixed: the m with the best mean validation label F1 called weak
    # labels often, which cost the captions' text overlap; 1.25 beat that choice on the
    # captions of held-out validation halves (docs/results.md, "Every label at 1.25 times").
    prevalence_multipliers: tuple[float, ...] = (1.25,)
    # Under `prevalence`: `shared`, one m for all the labels; `own`, the `abnormal` label
    # (which splits the captions into normal and abnormal) gets its own m, its best validation
    # F1, and the findings share theirs. `own` fell short of its rule on validation halves
    # over seven folds (docs/results.md, "The abnormal label's own multiplier").
    abnormal_multiplier: Literal["shared", "own"] = "shared"

    def validate(self, source: str) -> None:
        if not self.beam_sizes or any(isinstance(b, bool) or b < 1 for b in self.beam_sizes):
            raise InputError(f"{source}: decode.beam_sizes must be a non-empty list of integers "
                             f">= 1, got {list(self.beam_sizes)}")
        if not self.length_penalties or any(not 0.0 <= a <= 3.0 for a in self.length_penalties):
            raise InputError(f"{source}: decode.length_penalties must be a non-empty list of "
                             f"numbers in [0, 3], got {list(self.length_penalties)}")
        if not self.prevalence_multipliers or any(
                isinstance(m, bool) or not 0.0 < m <= 100.0 for m in self.prevalence_multipliers):
            raise InputError(f"{source}: decode.prevalence_multipliers must be a non-empty list "
                             f"of numbers in (0, 100], got {list(self.prevalence_multipliers)}")
        if not self.label_modes or any(m not in self.LABEL_MODES for m in self.label_modes):
            raise InputError(f"{source}: decode.label_modes must be a non-empty list of "
                             f"{' | '.join(self.LABEL_MODES)}, got {list(self.label_modes)}")
        if not self.beam_choices or any(c not in self.BEAM_CHOICES for c in self.beam_choices):
            raise InputError(f"{source}: decode.beam_choices must be a non-empty list of "
                             f"{' | '.join(self.BEAM_CHOICES)}, got {list(self.beam_choices)}")
        if not self.normal_texts or any(t not in self.NORMAL_TEXTS for t in self.normal_texts):
            raise InputError(f"{source}: decode.normal_texts must be a non-empty list of "
                             f"{' | '.join(self.NORMAL_TEXTS)}, got {list(self.normal_texts)}")
        if not self.finding_texts or any(t not in self.FINDING_TEXTS for t in self.finding_texts):
            raise InputError(f"{source}: decode.finding_texts must be a non-empty list of "
                             f"{' | '.join(self.FINDING_TEXTS)}, got {list(self.finding_texts)}")
        if not self.template_rules or any(r not in TEMPLATE_RULES for r in self.template_rules):
            raise InputError(f"{source}: decode.template_rules must be a non-empty list of "
                             f"{' | '.join(TEMPLATE_RULES)}, got {list(self.template_rules)}")
