"""Embeddings stage speed and memory on a GloVe file of the full 6B.300d shape.

Builds a synthetic file of 400,000 words x 300 dimensions (about 1 GB; the vocabulary's words
are among them), then times, in one run:
  (a) the embeddings stage script, end to end in a subprocess (its peak resident memory too);
  (b) the earlier notebooks' way: read every line into a dict of word -> numpy vector, then
      look the vocabulary up in it.

    python benchmarks/embeddings.py [--rows 400000] [--dim 300] [--clean data/clean]
Run `bash scripts/repro.sh embeddings` first so that data/clean exists.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_synthetic_glove(path: Path, words: list[str], rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    # 997 distinct vector strings, reused: realistic line lengths without formatting 120M floats.
    pool = [" ".join(f"{x:.6f}" for x in rng.normal(0, 0.4, dim)) for _ in range(997)]
    names = list(dict.fromkeys(words)) + [f"w{i}" for i in range(rows)]
    with open(path, "w", encoding="utf-8") as fh:
        for i, word in enumerate(names[:rows]):
            fh.write(f"{word} {pool[i % len(pool)]}\n")


def peak_rss_mb_of(command: list[str], cwd: Path) -> tuple[float, float]:
    began = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True)
    elapsed = time.perf_counter() - began
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


NOTEBOOK = """
import sys, numpy as np, json
index = {}
with open(sys.argv[1], encoding="utf-8") as fh:
    for line in fh:
        values = line.split()
        index[values[0]] = np.asarray(values[1:], dtype="float32")
words = json.load(open(sys.argv[2]))["words"]
matrix = np.zeros((len(words), len(next(iter(index.values())))), dtype="float32")
for i, word in enumerate(words):
    if word in index:
        matrix[i] = index[word]
"""


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--rows", type=int, default=400_000)
    cli.add_argument("--dim", type=int, default=300)
    cli.add_argument("--clean", default=str(REPO / "data" / "clean"))
    args = cli.parse_args()
    clean = Path(args.clean).resolve()
    vocab = json.loads((clean / "vocab.json").read_text())["words"]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        glove = work / f"glove.synthetic.{args.dim}d.txt"
        began = time.perf_counter()
        write_synthetic_glove(glove, vocab[4:], args.rows, args.dim)
        size_gb = glove.stat().st_size / 1e9
        print(f"synthetic GloVe: {args.rows:,} x {args.dim}, {size_gb:.2f} GB, "
              f"written in {time.perf_counter() - began:.1f} s")
        (work / "params.yaml").write_text(yaml.safe_dump(
            {"embeddings": {"glove": str(glove), "dim": args.dim}}))
        stage_s, stage_mb = peak_rss_mb_of(
            [sys.executable, str(REPO / "stages" / "embeddings.py"), "--clean", str(clean),
             "--out", "matrix.npy", "--metrics", "m.json", "--oov", "oov.csv"], work)
        notebook_s, notebook_mb = peak_rss_mb_of(
            [sys.executable, "-c", NOTEBOOK, str(glove), str(clean / "vocab.json")], work)
    # RUSAGE_CHILDREN is the largest child so far: the stage ran first, so its figure is its own.
    print(f"\n{'path':42} {'seconds':>8} {'peak MB':>8}")
    print(f"{'(a) embeddings stage (subprocess)':42} {stage_s:8.1f} {stage_mb:8.0f}")
    print(f"{'(b) notebooks: dict of every vector':42} {notebook_s:8.1f} {notebook_mb:8.0f}")
    print(f"\n(b)/(a) time = {notebook_s / stage_s:.2f}x   stage goal: < 20 s and < 1000 MB "
          f"-> {'met' if stage_s < 20 and stage_mb < 1000 else 'NOT met'}")
    if notebook_mb <= stage_mb:
        print("(the notebook's peak is at most the stage's: RUSAGE_CHILDREN keeps the maximum)")


if __name__ == "__main__":
    main()
