"""embeddings: a GloVe embedding matrix aligned with the vocabulary, and its coverage."""

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_impressions.atomic import atomic_path, write_csv, write_json
from cxr_impressions.config import load_section, project_path
from cxr_impressions.data.embeddings import build_matrix, coverage, read_glove
from cxr_impressions.data.tokenizer import Vocabulary
from cxr_impressions.stage import run_stage


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--clean", required=True, help="input: directory of the clean outputs")
    cli.add_argument("--out", required=True, help="output: embedding matrix (.npy)")
    cli.add_argument("--metrics", required=True, help="output: coverage (JSON)")
    cli.add_argument("--oov", required=True, help="output: words missing from GloVe (CSV)")
    args = cli.parse_args()

    params = load_section("embeddings")
    vocab = Vocabulary.load(Path(args.clean) / "vocab.json")
    examples = pd.read_parquet(Path(args.clean) / "examples.parquet")
    train_texts = examples.loc[examples["split"] == "train", "text"].tolist()

    rows = read_glove(project_path(params.glove), vocab.words, params.member, params.dim)
    matrix, missing = build_matrix(vocab, rows, params.seed)
    with atomic_path(args.out, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, matrix)
    counts = Counter(w for t in train_texts for w in t.split())
    write_csv(args.oov, pd.DataFrame({"word": missing,
                                      "train_count": [counts[w] for w in missing]}))
    write_json(args.metrics, {**coverage(vocab, rows, train_texts), "oov_words": len(missing)})


if __name__ == "__main__":
    run_stage(main)
