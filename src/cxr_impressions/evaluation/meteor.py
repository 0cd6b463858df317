"""METEOR's Java process (Meteor 1.5, the jar pycocoevalcap ships), fed the paraphrase table cut
to the words of the texts scored (`paraphrase.py`). The score itself, from the per-study
statistics, is `scoring.meteor_score`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .paraphrase import ParaphraseIndex, meteor_directory, paraphrase_index, plain_words
from .scoring import meteor_score, summable_statistics

JAVA_MISSING = ("java not found: METEOR needs a Java runtime (Debian/Ubuntu: "
                "`sudo apt-get install default-jre-headless`)")


def require_java() -> None:
    """Stop with one line before any work if METEOR's Java is missing (else a raw traceback
    from pycocoevalcap at the very end of evaluate)."""
    if shutil.which("java") is None:
        raise InputError(JAVA_MISSING)


class MeteorScorer:
    """One Meteor 1.5 Java process (pycocoevalcap's jar, its English defaults and `-norm`),
    reused for every system scored in a run.

    Java starts at the first call, with the paraphrase table cut down to the words of the texts
    it is given (`paraphrase.py`: the same statistics, a ~1 s start instead of ~11 s). A later
    call with new words restarts it with a table that covers those too. `full_table=True`
    always loads the whole table, as pycocoevalcap does.
    """

    def __init__(self, full_table: bool = False) -> None:
        require_java()
        self.full_table = full_table
        self.starts = 0  # Java processes started (tests check the restarts)
        self._process: subprocess.Popen | None = None
        self._words: set[str] = set()
        self._index: ParaphraseIndex | None = None  # loaded at the first start, kept for restarts
        self._folder = tempfile.TemporaryDirectory(prefix="cxr-meteor-")

    def _ensure_covers(self, texts: Sequence[str]) -> None:
        words = None if self.full_table else plain_words(texts)
        if self._process is not None and (self.full_table or (words is not None
                                                              and words <= self._words)):
            return
        self.close()
        command = ["java", "-jar", "-Xmx2G", str(meteor_directory() / "meteor-1.5.jar"),
                   "-", "-", "-stdio", "-l", "en", "-norm"]
        if words is None:
            self.full_table = True  # odd tokens: the whole table from now on
        else:
            self._words |= words
            table = Path(self._folder.name) / f"paraphrase-{self.starts}.gz"
            self._index = self._index or paraphrase_index()
            self._index.write_table(self._index.pairs_within(self._words), table)
            command += ["-a", str(table)]
        self._process = subprocess.Popen(command, cwd=meteor_directory(), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.starts += 1

    def _statistics_line(self, reference: str, hypothesis: str) -> str:
        hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
        process = self._process
        process.stdin.write(f"SCORE ||| {reference} ||| {hypothesis}\n".encode())
        process.stdin.flush()
        line = process.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"METEOR's Java process ended (exit code {process.poll()})")
        return line

    def statistics(self, references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        """Per study, METEOR's 23 sufficient statistics (studies, 23); `meteor_score` of their
        sum is the corpus METEOR that pycocoevalcap's `compute_score` returns."""
        hypotheses = [hypothesis or "empty" for hypothesis in hypotheses]
        self._ensure_covers([*references, *hypotheses])
        rows = [[float(x) for x in self._statistics_line(reference, hypothesis).split()]
                for reference, hypothesis in zip(references, hypotheses, strict=True)]
        return summable_statistics(np.array(rows, dtype=np.float64))

    def score(self, references: Sequence[str], hypotheses: Sequence[str]) -> float:
        """Corpus METEOR of these studies."""
        return float(meteor_score(self.statistics(references, hypotheses).sum(axis=0)))

    def close(self) -> None:
        """End the Java process now rather than whenever the object is collected."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.stdin.close()
            process.kill()
            process.wait()
