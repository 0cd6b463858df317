import json

import numpy as np
import pandas as pd
import pytest

from cxr_impressions.data.clean import clean_reports, kfold_split, r2gen_split, random_split
from cxr_impressions.data.layout import resolve_layout
from cxr_impressions.data.parse import parse_inputs
from cxr_impressions.data.text import normalise, sentences
from cxr_impressions.data.tokenizer import Vocabulary
from cxr_impressions.settings.clean import CleanParams

from .helpers import IUXRAY, SAMPLE, needs_shared


@pytest.fixture(scope="module")
def sample_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    result, _ = parse_inputs(resolve_layout(SAMPLE), measure_view_rule=False)
    return result.reports, result.images


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Normal chest x-XXXX.", "normal chest ."),
        ("No acute cardiopulmonary abnormality.", "no acute cardiopulmonary abnormality ."),
        ("1. Bullous emphysema. 2. Scarring, left apex.",
         "bullous emphysema . scarring left apex ."),
        ("Well-expanded lungs.Heart size 2.5 cm.", "well expanded lungs . heart size cm ."),
        ("XXXX XXXX XXXX", ""),
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_normalise_without_sentence_token() -> None:
    assert normalise("No effusion. Clear lungs!", "") == "no effusion clear lungs"
    assert sentences("No effusion. Clear lungs!") == [["no", "effusion"], ["clear", "lungs"]]


def test_random_split_is_seeded_and_order_free() -> None:
    uids = np.arange(1, 1001)
    a = random_split(uids, (0.8, 0.1, 0.1), 42)
    b = random_split(uids[::-1], (0.8, 0.1, 0.1), 42)
    c = random_split(uids, (0.8, 0.1, 0.1), 43)
    assert a.equals(b)
    assert not a.equals(c)
    assert a.value_counts().to_dict() == {"train": 800, "val": 100, "test": 100}


def test_kfold_tests_and_validates_every_study_once() -> None:
    uids = np.arange(1, 1004)
    folds = [kfold_split(uids, 10, fold, 42) for fold in range(10)]
    tested = pd.concat([f[f == "test"] for f in folds]).index
    validated = pd.concat([f[f == "val"] for f in folds]).index
    assert sorted(tested) == sorted(validated) == list(uids)
    for fold, split in enumerate(folds):
        sizes = split.value_counts().to_dict()
        assert sizes["test"] in (100, 101) and sizes["val"] in (100, 101)
        assert sizes["train"] == 1003 - sizes["test"] - sizes["val"]
        # This fold's val is the next fold's test, and the last fold's val the first's test.
        following = folds[(fold + 1) % 10]
        assert set(split[split == "val"].index) == set(following[following == "test"].index)
    assert kfold_split(uids[::-1], 10, 3, 42).equals(folds[3])
    assert not kfold_split(uids, 10, 3, 43).equals(folds[3])


def test_clean_kfold_sample(sample_tables) -> None:
    reports, images = sample_tables
    runs = [clean_reports(reports, images, CleanParams(split="kfold", folds=5, fold=fold))
            for fold in range(5)]
    assert runs[2].counts["split_kind"] == "kfold"
    assert (runs[2].counts["fold"], runs[2].counts["folds"]) == (2, 5)
    assert runs[2].counts["reports"] == {"train": 60, "val": 20, "test": 20}
    tested = [set(r.examples.loc[r.examples["split"] == "test", "uid"]) for r in runs]
    assert set().union(*tested) == set(reports["uid"]) and sum(map(len, tested)) == 100
    # Each fold's vocabulary comes from its own training studies.
    assert runs[0].vocab != runs[1].vocab


def test_clean_sample(sample_tables) -> None:
    reports, images = sample_tables
    result = clean_reports(reports, images, CleanParams())
    examples = result.examples
    kept_images = result.images.merge(examples[["uid", "split"]], on="uid")
    assert "split" not in result.images.columns
    assert len(examples) == 100
    assert examples["split"].value_counts().to_dict() == {"train": 80, "val": 10, "test": 10}
    # A report's images never straddle splits.
    assert kept_images.groupby("uid")["split"].nunique().max() == 1
    by_split = {s: set(g["image_id"]) for s, g in kept_images.groupby("split")}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    # The vocabulary comes from training text only.
    train_words = {w for t in examples.loc[examples["split"] == "train", "text"] for w in t.split()}
    assert set(result.vocab.words[4:]) <= train_words
    held_out_only = {w for t in examples.loc[examples["split"] != "train", "text"]
                     for w in t.split()} - train_words
    assert held_out_only and not held_out_only & set(result.vocab.words)
    assert result.vocab.words[:4] == ("<pad>", "<unk>", "startseq", "endseq")
    again = clean_reports(reports, images, CleanParams())
    assert again.examples.equals(examples)


def test_min_count_and_max_len(sample_tables) -> None:
    reports, images = sample_tables
    loose = clean_reports(reports, images, CleanParams(min_count=1, max_len=12))
    strict = clean_reports(reports, images, CleanParams(min_count=5))
    assert len(strict.vocab) < len(loose.vocab)
    assert loose.vocab.max_len == 12 and loose.counts["max_len"] == 12
    lengths = strict.examples.loc[strict.examples["split"] == "train", "n_words"] + 2
    assert strict.vocab.max_len == int(np.ceil(np.percentile(lengths, 95)))
    ids = loose.vocab.encode(" ".join(["lungs"] * 40))
    assert len(ids) == 12 and ids[0] == loose.vocab.start_id and ids[-1] == loose.vocab.end_id


def test_vocabulary_roundtrip(tmp_path, sample_tables) -> None:
    reports, images = sample_tables
    vocab = clean_reports(reports, images, CleanParams()).vocab
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded == vocab
    assert loaded.decode(loaded.encode("no acute disease .")) == "no acute disease ."


def test_word_ids_are_the_words_alone_cut_like_encode() -> None:
    vocab = Vocabulary.build(["lungs clear .", "lungs clear ."], 2, "startseq", "endseq", 5)
    assert vocab.word_ids("lungs clear .") == [vocab.index[w] for w in ("lungs", "clear", ".")]
    assert vocab.word_ids("lungs zebra") == [vocab.index["lungs"], 1]
    long = "lungs clear . lungs clear ."
    assert vocab.word_ids(long) == vocab.word_ids("lungs clear .") == vocab.encode(long)[1:-1]
    assert vocab.word_ids("") == []


def test_empty_target_dropped_and_counted(sample_tables) -> None:
    reports, images = sample_tables
    result = clean_reports(reports, images, CleanParams(target="findings"))
    empty = int((reports["findings"].map(normalise) == "").sum())
    assert empty > 0
    assert result.counts["dropped"]["no_findings"] == empty
    assert len(result.examples) == 100 - empty


@needs_shared(IUXRAY)
def test_r2gen_split(sample_tables) -> None:
    split = r2gen_split(IUXRAY / "r2gen_annotation.json")
    assert split.value_counts().to_dict() == {"train": 2069, "test": 590, "val": 296}
    reports, images = sample_tables
    result = clean_reports(reports, images, CleanParams(split="r2gen", target="findings"))
    expected = set(reports["uid"]) & set(split.index)
    kept = set(result.examples["uid"])
    assert kept <= expected
    assert (result.examples.set_index("uid")["split"] == split.loc[sorted(kept)]).all()
    with_findings = set(reports.loc[reports["findings"].map(normalise) != "", "uid"])
    assert kept == with_findings & set(split.index)
    outside = len(with_findings - set(split.index))
    assert result.counts["dropped"]["not_in_r2gen_split"] == outside
    assert json.dumps(result.counts)
