"""Does a findings-conditioned decoder follow its prompts? A diagnostic on the validation split.

Decodes the validation studies greedily twice: under the label head's predicted condition
(`consistent` labels, the thresholds chosen on validation) and under the reference labels (an
oracle). Each set of texts is read by the labeller and scored against the references' labels:
findings macro-F1 (over the findings with a positive), abnormal F1, distinct texts, top share.
Also the label head alone. High oracle scores with low predicted ones put the gap in the label
head (what the image shows), not in the decoder (how it writes what it is told). Last, per
label, under the model's own decoding settings (models/decoding.json): how many studies the
label head prompts with it, the share of those whose caption the labeller reads it in, and the
share of the others (a decoder that drops what it is told, or writes what it is not; under
`decode.finding_text: appended` the captions state every prompted finding that has a phrase,
unless they negate it).

    python scripts/prompt_oracle.py [--root .] [--features features/xception.h5]

The validation split only: the thresholds were chosen on it, so the predicted figures are
optimistic; the test figures are evaluate's.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr_impressions.data.labeller import label_text
from cxr_impressions.errors import InputError
from cxr_impressions.evaluation.scoring import clinical_scores
from cxr_impressions.stage import run_stage


def summary(tag: str, texts: list[str], references: list[str]) -> str:
    """The labeller's reading of `texts` against that of `references` (evaluate's scores)."""
    scores = clinical_scores([label_text(r) for r in references], [label_text(t) for t in texts])
    top = Counter(texts).most_common(1)[0][1] / len(texts)
    return (f"{tag}: findings macro-F1 {scores['findings_macro_f1']:.3f} over "
            f"{len(scores['findings_f1'])} findings, abnormal F1 {scores['abnormal']['f1']:.3f}, "
            f"{len(set(texts))} distinct, top share {top:.1%}")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, default=Path("."), help="the pipeline's workspace")
    cli.add_argument("--features", default="features/xception.h5", help="under --root")
    args = cli.parse_args()
    # TensorFlow loads here, after run_stage has quietened its logs.
    from cxr_impressions.captioning.bundle import load_bundle
    from cxr_impressions.captioning.decoding import Decoder, has_consistency_rule
    from cxr_impressions.captioning.studies import LABELS, load_split, reference_labels
    from cxr_impressions.features.store import FeatureStore

    class OracleDecoder(Decoder):
        """Conditions on the labels given as the input `given`, not on the label head's."""

        def encode(self, inputs: dict[str, np.ndarray],
                   labels: str = "independent") -> dict[str, np.ndarray]:
            memory = super().encode(inputs, labels)
            memory["condition"] = np.asarray(inputs["given"], np.float32)
            return memory

    bundle = load_bundle(args.root / "models")
    names = tuple(bundle.model.labels)
    if not has_consistency_rule(names):
        raise InputError(f"{args.root / 'models'}: the model is conditioned on "
                         f"{list(names) or 'nothing'}; this needs model.condition: findings")
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    with FeatureStore(args.root / args.features) as store:
        val = load_split(args.root / "data" / "clean", "val", store, bundle.vocab, grid_pool)
    inputs = bundle.model_inputs(val.inputs(), val.titles)
    # What the decoder writes under each condition: no normal template and no finding phrase
    # in these two rows.
    greedy = replace(bundle.decode, method="greedy", beam_size=1, normal_text="decoder",
                     finding_text="decoder")
    predicted = bundle.decoder()
    texts = predicted.texts(predicted.decode(inputs, replace(greedy, labels="consistent")))
    print(summary("predicted labels (consistent), greedy", texts, val.texts))
    oracle = OracleDecoder(bundle.model, bundle.vocab, bundle.thresholds, bundle.template_ids)
    given = val.label_matrix(names)
    texts = oracle.texts(oracle.decode({**inputs, "given": given}, greedy))
    print(summary("reference labels (oracle), greedy", texts, val.texts))
    head = predicted.encode(inputs)["condition"] > 0.5
    rows = [dict(zip(names, map(bool, row), strict=True)) for row in given.astype(bool)]
    scores = clinical_scores(rows, [dict(zip(names, map(bool, row), strict=True))
                                    for row in head])
    print(f"the label head alone (independent thresholds): findings macro-F1 "
          f"{scores['findings_macro_f1']:.3f}")
    decoded = predicted.decode(inputs, bundle.decode)
    prompted = np.stack([d.condition for d in decoded]) > 0.5
    columns = [LABELS.index(name) for name in names]
    written = reference_labels(predicted.texts(decoded))[:, columns] > 0.5
    print(f"per label, under the model's decoding {bundle.decode.settings()}:")
    for j, name in enumerate(names):
        on, off = prompted[:, j], ~prompted[:, j]
        when_on = f"{written[on, j].mean():.0%}" if on.any() else "-"
        when_off = f"{written[off, j].mean():.1%}" if off.any() else "-"
        print(f"  {name}: prompted {int(on.sum())}, written when prompted {when_on}, "
              f"when not {when_off}")


if __name__ == "__main__":
    run_stage(main)
