"""What a `model.exam_title` model writes without the titles: a diagnostic on one split.

Decodes the split twice with the model's chosen decoding (`models/decoding.json`): with each
study's exam title, as evaluate does, and with every title hidden (the "no title" id, as
`cxr predict` without `--exam-title` and `cxr serve` without the form field decode). Prints
the text scores and the labeller's clinical scores of both, beside the constant.

    python scripts/title_ablation.py [--root .] [--split val] [--features features/xception.h5]

The validation split by default; `--split test` measures (never chooses) on the test split.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from cxr_impressions.data.labeller import label_text
from cxr_impressions.errors import InputError
from cxr_impressions.evaluation.baselines import constant_baseline
from cxr_impressions.evaluation.scoring import clinical_scores, text_metrics
from cxr_impressions.stage import run_stage


def row(tag: str, texts: list[str], references: list[str]) -> str:
    """One line of scores of `texts` against `references`."""
    text = text_metrics(references, texts)
    clinical = clinical_scores([label_text(r) for r in references],
                               [label_text(t) for t in texts])
    top = Counter(texts).most_common(1)[0][1] / len(texts)
    return (f"{tag:<14} BLEU-4 {text['bleu4']:.3f}  ROUGE-L {text['rouge_l']:.3f}  "
            f"CIDEr {text['cider']:.3f}  abnormal F1 {clinical['abnormal']['f1']:.3f}  "
            f"findings macro-F1 {clinical['findings_macro_f1']:.3f}  "
            f"distinct {len(set(texts))}  top share {top:.1%}")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--root", type=Path, default=Path("."), help="the pipeline's workspace")
    cli.add_argument("--split", choices=("val", "test"), default="val")
    cli.add_argument("--features", default="features/xception.h5", help="under --root")
    args = cli.parse_args()
    # TensorFlow loads here, after run_stage has quietened its logs.
    from cxr_impressions.captioning.bundle import load_bundle
    from cxr_impressions.captioning.studies import load_split
    from cxr_impressions.features.store import FeatureStore

    bundle = load_bundle(args.root / "models")
    if bundle.titles is None:
        raise InputError(f"{args.root / 'models'}: the model does not read exam titles "
                         "(model.exam_title: false); nothing to compare")
    grid_pool = bundle.params.grid_pool if bundle.params.needs_grid else None
    clean = args.root / "data" / "clean"
    with FeatureStore(args.root / args.features) as store:
        studies = load_split(clean, args.split, store, bundle.vocab, grid_pool)
        train = load_split(clean, "train", store, bundle.vocab)
    decoder = bundle.decoder()
    known = float((bundle.titles.encode(studies.titles) != 0).mean())
    print(f"{args.split}: {len(studies)} studies, {known:.1%} with a title the model knows; "
          f"decoding {bundle.decode.settings()}")
    for tag, titles in (("with titles", studies.titles), ("titles hidden", None)):
        inputs = bundle.model_inputs(studies.inputs(), titles)
        texts = decoder.texts(decoder.decode(inputs, bundle.decode))
        print(row(tag, texts, studies.texts))
    print(row("constant", constant_baseline(train.texts, len(studies)), studies.texts))


if __name__ == "__main__":
    run_stage(main)
