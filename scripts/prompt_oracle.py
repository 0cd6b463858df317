"""Does a findings-conditioned decoder follow its prompts? A diagnostic on the validation split.

Decodes the validation studies greedily twice: under the label head's predicted condition
(`consistent` labels, the thresholds chosen on validation) and under the reference labels (an
oracle). Each set of texts is read by the labeller and scored against the references' labels:
findings macro-F1 (over the findings with a positive), abnormal F1, distinct texts, top share.
Also the label head alone. High oracle scores with low predicted ones put the gap in the label
head (what the image shows), not in the decoder (how it writes what it is told).

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

from cxr_impressions.captioning.bundle import load_bundle
from cxr_impressions.captioning.decoding import Decoder
from cxr_impressions.captioning.studies import LABELS, load_split, reference_labels
from cxr_impressions.features.store import FeatureStore


class OracleDecoder(Decoder):
    """Conditions on the labels given as the input `given`, not on the label head's."""

    def encode(self, inputs: dict[str, np.ndarray],
               labels: str = "independent") -> dict[str, np.ndarray]:
        memory = super().encode(inputs, labels)
        memory["condition"] = np.asarray(inputs["given"], np.float32)
        return memory


def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp = float((truth & predicted).sum())
    wrong = float((truth ^ predicted).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def summary(tag: str, texts: list[str], references: list[str]) -> str:
    got = reference_labels(texts).astype(bool)
    truth = reference_labels(references).astype(bool)
    findings = [i for i, name in enumerate(LABELS) if name != "abnormal" and truth[:, i].any()]
    macro = np.mean([f1(truth[:, i], got[:, i]) for i in findings]) if findings else np.nan
    abnormal = LABELS.index("abnormal")
    top = Counter(texts).most_common(1)[0][1] / len(texts)
    return (f"{tag}: findings macro-F1 {macro:.3f} over {len(findings)} findings, abnormal F1 "
            f"{f1(truth[:, abnormal], got[:, abnormal]):.3f}, {len(set(texts))} distinct, "
            f"top share {top:.1%}")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, default=Path("."), help="the pipeline's workspace")
    cli.add_argument("--features", default="features/xception.h5", help="under --root")
    args = cli.parse_args()
    bundle = load_bundle(args.root / "models")
    names = tuple(bundle.model.labels)
    if "abnormal" not in names or len(names) < 2:
        raise SystemExit(f"error: the model is conditioned on {list(names) or 'nothing'}; "
                         "this needs model.condition: findings")
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    with FeatureStore(args.root / args.features) as store:
        val = load_split(args.root / "data" / "clean", "val", store, bundle.vocab, grid_pool)
    inputs = bundle.with_retrieval(val.inputs())
    greedy = replace(bundle.decode, method="greedy", beam_size=1)
    predicted = Decoder(bundle.model, bundle.vocab, bundle.thresholds)
    texts = predicted.texts(predicted.decode(inputs, replace(greedy, labels="consistent")))
    print(summary("predicted labels (consistent), greedy", texts, val.texts))
    oracle = OracleDecoder(bundle.model, bundle.vocab, bundle.thresholds)
    given = val.label_matrix(names)
    texts = oracle.texts(oracle.decode({**inputs, "given": given}, greedy))
    print(summary("reference labels (oracle), greedy", texts, val.texts))
    head = predicted.encode(inputs)["condition"] > 0.5
    truth = given.astype(bool)
    scored = [f1(truth[:, i], head[:, i]) for i, name in enumerate(names)
              if name != "abnormal" and truth[:, i].any()]
    macro = np.mean(scored) if scored else np.nan
    print(f"the label head alone (independent thresholds): findings macro-F1 {macro:.3f}")


if __name__ == "__main__":
    main()
