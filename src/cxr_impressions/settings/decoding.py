"""How a trained model decodes: the settings models/decoding.json holds, apart from the
selection stage's params (`decode` section, `DecodeParams`, which extends this class).

A module of its own, below `settings/decode.py`, because the decoder and the model bundle need
only these settings: the train stage runs them (greedy validation decoding, the bundle's
loader), so a new field of the selection's params reruns selection and what follows it, never
training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, get_args

from .fields import at_least

LabelMode = Literal["independent", "consistent"]
BeamChoice = Literal["score", "mbr"]
NormalText = Literal["decoder", "template", "template_written", "template_read"]
FindingText = Literal["decoder", "appended", "phrased"]


@dataclasses.dataclass(frozen=True)
class DecodingSettings:
    """The settings one decodes with (models/decoding.json, `decode` in params.yaml)."""

    method: Literal["greedy", "beam"] = "beam"
    beam_size: int = at_least(1, 3)
    length_penalty: float = at_least(0.0, 0.7, at_most=3.0)  # score / length ** length_penalty
    no_repeat_ngram: int = at_least(0, 3)  # 0: no blocking
    # How a conditioned model's predicted labels become the decoder's condition: `independent`,
    # each label on where its probability passes its threshold; `consistent`, then made
    # consistent the way the training labels are (abnormal on exactly when some finding is on).
    labels: LabelMode = "independent"
    # Which of the beam's finished hypotheses becomes the caption: `score`, the best by
    # sum(log p) / length ** length_penalty; `mbr` (minimum Bayes risk), the one with the
    # highest ROUGE-L against the others, expected under the model's probabilities of them
    # (length_penalty then plays no part). Greedy decoding has one hypothesis.
    beam_choice: BeamChoice = "score"
    # How a study a conditioned model predicts normal (every label off) is worded: `decoder`, as
    # the decoder writes it; `template`, as the normal impression of its exam title's reporting
    # template (captioning/templates.py); `template_written`, that too, and so is a study whose
    # caption the decoder wrote as a normal impression (word for word one of the training
    # split's normal impressions), whatever its labels; `template_read`, that of `template`, and
    # so is a study whose caption the labeller reads as normal (no finding), whatever its labels.
    normal_text: NormalText = "decoder"
    # How the findings a conditioned model's labels turn on are worded: `decoder`, as the
    # decoder writes them (it drops some it is prompted with); `appended`, the caption gets,
    # for each finding turned on that it does not name at all (negated or not), that finding's
    # phrase (captioning/templates.py) appended; `phrased`, a caption whose labels turn on a
    # finding with a phrase is replaced by its exam title's normal template followed by the
    # phrase of every finding on (the decoder's words kept where none is). Applied before
    # `normal_text`.
    finding_text: FindingText = "decoder"

    LABEL_MODES: ClassVar[tuple[str, ...]] = get_args(LabelMode)
    BEAM_CHOICES: ClassVar[tuple[str, ...]] = get_args(BeamChoice)
    NORMAL_TEXTS: ClassVar[tuple[str, ...]] = get_args(NormalText)
    FINDING_TEXTS: ClassVar[tuple[str, ...]] = get_args(FindingText)

    def settings(self) -> dict[str, Any]:
        """These settings alone (also of a subclass): what models/decoding.json holds."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(DecodingSettings)}

    def decoding(self) -> DecodingSettings:
        """These settings alone, as a `DecodingSettings` (also of a subclass)."""
        return DecodingSettings(**self.settings())
