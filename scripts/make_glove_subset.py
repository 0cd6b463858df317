"""Rebuild data/glove/: the GloVe vectors of every word that IU X-Ray's normalised findings and
impressions can hold, so that the default params need no file outside the repo (queued and
temporary-directory experiments run in a copy under .dvc/tmp/exps/, where `../` points elsewhere).

Every vocabulary the clean stage can build (either target, any split, any min_count) is a subset
of these words, so the embedding matrix is the same as from the full GloVe file.

    python scripts/make_glove_subset.py --glove glove.6B.zip --member glove.6B.50d.txt \
        --reports ../shared/iuxray/indiana_reports.csv
"""

import argparse
import csv
import gzip
from pathlib import Path

from cxr_impressions.data.embeddings import open_glove
from cxr_impressions.data.text import sentences


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--glove", default="../shared/glove/glove.6B.50d.iuxray-subset.txt")
    cli.add_argument("--member", default="", help="with a .zip: the member to read")
    cli.add_argument("--reports", default="../shared/iuxray/indiana_reports.csv")
    cli.add_argument("--out", default="data/glove/glove.6B.50d.iuxray-words.txt.gz")
    args = cli.parse_args()

    words = {"."}  # the clean stage's default sentence token
    with open(args.reports, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for field in ("findings", "impression"):
                words.update(w for s in sentences(row.get(field) or "") for w in s)
    kept = 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same words give the same bytes, so git sees no change on a rebuild.
    with open_glove(args.glove, args.member) as source, \
            gzip.GzipFile(out, "wb", mtime=0) as target:
        for line in source:
            if line.split(b" ", 1)[0].decode("utf-8", "replace") in words:
                target.write(line)
                kept += 1
    print(f"{kept} of {len(words)} words -> {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
