"""METEOR: our Java process with the paraphrase table cut to the texts' words
(evaluation/paraphrase.py) against pycocoevalcap's own, with the whole table."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_impressions.data.text import normalise
from cxr_impressions.evaluation.meteor import MeteorScorer
from cxr_impressions.evaluation.paraphrase import (
    ParaphraseIndex,
    paraphrase_index,
    plain_words,
)
from cxr_impressions.evaluation.scoring import meteor_score, summable_statistics

from .helpers import SAMPLE

REFS = ["no acute cardiopulmonary abnormality .", "mild cardiomegaly . no effusion .",
        "stable chest .", "no acute disease .", "small left pleural effusion .",
        "no evidence of pneumonia ."]
HYPS = ["no acute cardiopulmonary abnormality .", "cardiomegaly . no pleural effusion .",
        "", "no active disease .", "effusions on the left .", "no sign of pneumonia ."]
PARAPHRASE = slice(16, 20)  # the paraphrase module's four match counts


def write_table(path: Path, pairs: list[tuple[float, str, str]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for probability, first, second in pairs:
            f.write(f"{probability!r}\n{first}\n{second}\n")
    return path


def test_index_finds_exactly_the_pairs_within_the_words(tmp_path: Path) -> None:
    pairs = [(0.5, "no evidence", "no sign"), (0.25, "acute", "active"),
             (0.125, "heart", "cardiac silhouette"), (0.1, "no", "none"),
             (0.0625, "of", "from"), (1 / 3, "no evidence of", "no sign of")]
    index = ParaphraseIndex.build(write_table(tmp_path / "table.gz", pairs))
    index.save(tmp_path / "index")
    loaded = ParaphraseIndex.load(tmp_path / "index")
    for words in ({"no", "evidence", "sign", "of"}, {"acute", "active", "heart"},
                  {"heart", "cardiac", "silhouette", "no", "none"}, set(), {"unknown"}):
        expected = {p for p in pairs if set(f"{p[1]} {p[2]}".split()) <= words}
        out = tmp_path / "cut.gz"
        loaded.write_table(loaded.pairs_within(words), out)
        with gzip.open(out, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        written = {(float(lines[i]), lines[i + 1], lines[i + 2]) for i in range(0, len(lines), 3)}
        assert written == expected, words  # the probabilities' exact doubles included


def test_plain_words_or_none() -> None:
    assert plain_words(["no acute disease .", "t12 ."]) == {"no", "acute", "disease", ".", "t12"}
    assert plain_words(["no acute disease.", "x"]) is None  # Meteor's -norm would split it
    assert plain_words(["Normal chest ."]) is None


@pytest.fixture(scope="module")
def java():
    """pycocoevalcap's own METEOR process: the whole paraphrase table, as published scores use."""
    if shutil.which("java") is None:
        pytest.skip("METEOR needs Java")
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    yield meteor
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()


def reference_statistics(java, refs: list[str], hyps: list[str]) -> np.ndarray:
    return summable_statistics([[float(x) for x in java._stat(h or "empty", [r]).split()]
                                for r, h in zip(refs, hyps, strict=True)])


def test_meteor_with_the_cut_table_equals_pycocoevalcaps_java(java) -> None:
    scorer = MeteorScorer()
    try:
        stats = scorer.statistics(REFS, HYPS)
        assert scorer.score(REFS, HYPS) == pytest.approx(
            java.compute_score({i: [r] for i, r in enumerate(REFS)},
                               {i: [h or "empty"] for i, h in enumerate(HYPS)})[0], abs=1e-12)
    finally:
        scorer.close()
    expected, _ = java.compute_score({i: [r] for i, r in enumerate(REFS)},
                                     {i: [h or "empty"] for i, h in enumerate(HYPS)})
    subset, _ = java.compute_score({i: [REFS[i]] for i in (0, 1, 3)},
                                   {i: [HYPS[i]] for i in (0, 1, 3)})
    assert stats[5, PARAPHRASE].sum() > 0  # "evidence" ~ "sign": the cut table has the pair
    assert np.array_equal(stats, reference_statistics(java, REFS, HYPS))
    assert meteor_score(stats.sum(axis=0)) == pytest.approx(expected, abs=1e-12)
    assert meteor_score(stats[[0, 1, 3]].sum(axis=0)) == pytest.approx(subset, abs=1e-12)
    # Resampled: a vector of counts per study, one score per row.
    both = meteor_score(np.array([[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1]], float) @ stats)
    assert both == pytest.approx([subset, expected], abs=1e-12)


def test_new_words_restart_java_with_a_table_that_covers_them(java) -> None:
    """Sample impressions against others (paraphrase matches among them), in two calls: the
    second brings new words, so Java restarts; the statistics equal the whole table's."""
    texts = pd.read_csv(SAMPLE / "indiana_reports.csv")["impression"].dropna().astype(str)
    texts = [normalise(t) for t in texts if normalise(t)][:60]
    refs, hyps = texts[:30], texts[30:60]
    cut = MeteorScorer()
    try:
        first = cut.statistics(refs[:15], hyps[:15])
        second = cut.statistics(refs[15:], hyps[15:])
        assert cut.starts == 2
        again = cut.statistics(refs[:5], hyps[:5])  # words it covers: no restart
        assert cut.starts == 2
    finally:
        cut.close()
    expected = reference_statistics(java, refs, hyps)
    assert np.array_equal(np.concatenate([first, second]), expected)
    assert np.array_equal(again, expected[:5])
    assert expected[:, PARAPHRASE].sum() > 0


def test_the_index_is_built_once_and_reused(tmp_path: Path, monkeypatch) -> None:
    pairs = [(0.5, "no evidence", "no sign"), (0.25, "acute", "active")]
    table = write_table(tmp_path / "table.gz", pairs)
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    built = paraphrase_index(table)
    folders = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(folders) == 1 and built.vocabulary
    monkeypatch.setattr(ParaphraseIndex, "build", None)  # a second build would fail
    assert paraphrase_index(table).vocabulary == built.vocabulary
    (folders[0] / "word_ids.npy").write_bytes(b"not numpy")  # damaged: rebuilt, with a warning
    monkeypatch.undo()
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    assert paraphrase_index(table).vocabulary == built.vocabulary


def test_an_unwritable_cache_builds_the_index_for_this_run_only(tmp_path: Path, monkeypatch,
                                                                 caplog) -> None:
    table = write_table(tmp_path / "table.gz", [(0.5, "no evidence", "no sign")])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CXR_CACHE_DIR", str(blocker / "cache"))  # under a file: can't be made
    index = paraphrase_index(table)
    assert sorted(index.vocabulary) == ["evidence", "no", "sign"]
    assert "building it for this run only" in caplog.text
