"""The exam title (`model.exam_title`): its vocabulary, the decoder input, training's title
dropout, the bundle, and the image-blind baseline it is measured against."""

from pathlib import Path

import numpy as np
import pytest

from cxr_impressions.captioning.bundle import bundle_config, load_bundle, save_bundle
from cxr_impressions.captioning.decoding import Decoder
from cxr_impressions.captioning.retrieval import empty_bank
from cxr_impressions.captioning.training import make_dataset
from cxr_impressions.config import build_section
from cxr_impressions.data.titles import UNKNOWN, TitleVocabulary, hide_titles, title_key
from cxr_impressions.errors import InputError
from cxr_impressions.evaluation.baselines import title_constant_baseline
from cxr_impressions.settings.model import ModelParams

from .tiny_models import random_studies, study_inputs, tiny

TITLES = (["Xray Chest PA and Lateral"] * 4 + ["CHEST 2V FRONTAL/LATERAL 12/3/2009"] * 3
          + ["PA and lateral chest x-XXXX."] * 2 + ["a one-off title"])


def test_title_keys_join_the_spellings_of_one_template() -> None:
    assert title_key("  CHEST 2V  FRONTAL/LATERAL 12/3/2009. ") == "chest 0v frontal/lateral 0/0/0"
    assert title_key("Chest 2V frontal/lateral 1/30/2010") == title_key(
        "CHEST 2V FRONTAL/LATERAL 12/3/2009.")
    assert title_key(None) == title_key("") == ""


def test_the_vocabulary_keeps_frequent_titles_and_maps_the_rest_to_unknown() -> None:
    vocabulary = TitleVocabulary.from_titles(TITLES, min_count=2)
    # Most frequent first; id 0 is the unknown title.
    assert vocabulary.keys == ["xray chest pa and lateral", "chest 0v frontal/lateral 0/0/0",
                               "pa and lateral chest x-xxxx"]
    assert len(vocabulary) == 4
    ids = vocabulary.encode(["XRAY CHEST PA AND LATERAL.", "Chest 2V frontal/lateral 1/2/2011",
                             "a one-off title", "", None, "never seen"])
    assert ids.shape == (6, 1) and ids.dtype == np.int32
    assert ids[:, 0].tolist() == [1, 2, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN]
    assert TitleVocabulary.from_titles(TITLES, min_count=4).keys == ["xray chest pa and lateral"]
    assert len(TitleVocabulary.from_titles(["", None], min_count=1)) == 1


def test_title_dropout_hides_about_its_share_and_is_seeded() -> None:
    ids = np.arange(1, 10001, dtype=np.int32).reshape(-1, 1)
    hidden = hide_titles(ids, 0.2, np.random.default_rng(0))
    assert hidden.dtype == np.int32
    share = float(np.mean(hidden == UNKNOWN))
    assert 0.18 < share < 0.22
    kept = hidden != UNKNOWN
    np.testing.assert_array_equal(hidden[kept], ids[kept])  # the rest untouched
    np.testing.assert_array_equal(hide_titles(ids, 0.2, np.random.default_rng(0)), hidden)
    np.testing.assert_array_equal(hide_titles(ids, 0.0, np.random.default_rng(0)), ids)


def _studies(n: int, seed: int = 0):
    return random_studies(n, seed, first_uid=0)


def test_the_title_is_decoder_memory_that_changes_the_words() -> None:
    model, vocab = tiny("transformer", exam_title=True, exam_titles=4)
    assert model.decoder.input["exam_title"].shape == (None, 1)
    assert "exam_title" in model.train_model.input
    inputs = study_inputs(1, seed=3)
    memory = Decoder(model, vocab).encode({**inputs, "exam_title": np.array([[1]], np.int32)})
    tokens = np.full((1, 5), 4, np.int32)
    logits = {title: model.decoder({**{k: v for k, v in memory.items()
                                       if k in model.decoder.input},
                                    "exam_title": np.array([[title]], np.int32),
                                    "tokens": tokens})["logits"].numpy()
              for title in range(4)}
    # Each title, the unknown one included, has a vector of its own.
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(logits[a] - logits[b]).max() > 1e-4


def test_training_batches_hide_titles_seeded_by_epoch() -> None:
    model, _ = tiny("transformer", exam_title=True, exam_titles=4)
    studies = _studies(400)
    studies.exam_title = np.random.default_rng(1).integers(1, 4, size=(400, 1)).astype(np.int32)

    def seen(shuffle: bool, epoch: int = 0, dropout: float = 0.25) -> np.ndarray:
        data = make_dataset(studies, model, 400, shuffle, seed=0, first_epoch=epoch,
                            title_dropout=dropout)
        return next(iter(data))[0]["exam_title"].numpy()

    share = float(np.mean(seen(True) == UNKNOWN))
    assert 0.18 < share < 0.32
    np.testing.assert_array_equal(seen(True), seen(True))  # seeded by (seed, epoch)
    assert not np.array_equal(seen(True, 0) == UNKNOWN, seen(True, 1) == UNKNOWN)
    # Without dropout (validation, as `train` builds it) every title is seen.
    np.testing.assert_array_equal(seen(False, dropout=0.0), studies.exam_title)


def test_the_bundle_carries_the_title_vocabulary(tmp_path: Path) -> None:
    titles = TitleVocabulary.from_titles(TITLES, min_count=2)
    model, vocab = tiny("transformer", exam_title=True, exam_titles=len(titles))
    params = ModelParams(kind="transformer", units=16, dropout=0.0, heads=2, layers=1,
                         condition="abnormal", exam_title=True, exam_title_min_count=2)
    config = bundle_config(params, {}, 8, 3, 4, vocab, titles)
    assert config["exam_titles"] == titles.keys
    save_bundle(tmp_path, model, vocab, config, empty_bank(8, 5))
    bundle = load_bundle(tmp_path)
    assert bundle.titles.keys == titles.keys
    images = study_inputs(3, seed=5)
    given = bundle.model_inputs(images, ["Xray chest PA and lateral", "", "never seen"])
    assert given["exam_title"][:, 0].tolist() == [1, UNKNOWN, UNKNOWN]
    assert bundle.model_inputs(images)["exam_title"][:, 0].tolist() == [UNKNOWN] * 3
    loaded = Decoder(bundle.model, bundle.vocab).greedy(given)
    original = Decoder(model, vocab).greedy(given)
    assert [d.ids for d in loaded] == [d.ids for d in original]
    with pytest.raises(ValueError, match="2 exam titles for 3 studies"):
        bundle.model_inputs(images, ["a", "b"])
    # A config whose title list is damaged is a one-line error.
    import json

    broken = {**config, "exam_titles": "xray"}
    (tmp_path / "config.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match="exam_titles must be a list of strings"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("kind", ["merge", "bilstm_attention"])
def test_the_lstm_models_read_the_title_too(kind: str) -> None:
    model, vocab = tiny(kind, exam_title=True, exam_titles=3)
    assert model.decoder.input["exam_title"].shape == (None, 1)
    memory = Decoder(model, vocab).encode(study_inputs(1, seed=2))
    tokens = np.full((1, 5), 4, np.int32)
    logits = [model.decoder({**{k: v for k, v in memory.items() if k in model.decoder.input},
                             "exam_title": np.array([[title]], np.int32),
                             "tokens": tokens})["logits"].numpy() for title in range(3)]
    assert np.abs(logits[0] - logits[1]).max() > 1e-4
    assert np.abs(logits[1] - logits[2]).max() > 1e-4
    with pytest.raises(InputError, match="exam_title_min_count"):
        build_section("model", ModelParams, {"exam_title_min_count": 0})


def test_the_title_constant_is_each_templates_commonest_text() -> None:
    train_texts = (["no acute disease ."] * 3 + ["cardiomegaly ."]  # xray chest pa and lateral
                   + ["negative chest ."] * 2 + ["no acute disease ."]  # chest 2v ...
                   + ["normal chest ."] * 2 + ["clear lungs ."])
    test_titles = ["XRAY chest PA and lateral", "Chest 2V frontal/lateral 1/1/2001",
                   "PA and lateral chest x-XXXX", "a one-off title", ""]
    chosen = title_constant_baseline(TITLES, train_texts, test_titles, min_count=3)
    # The third template has 2 training studies, under min_count: it gets the constant, as do
    # an unknown title and none.
    assert chosen == ["no acute disease .", "negative chest .", "no acute disease .",
                      "no acute disease .", "no acute disease ."]
    # With min_count 2 the third template counts; its tie-free commonest text wins.
    assert title_constant_baseline(TITLES, train_texts, test_titles, 2)[2] == "normal chest ."


def test_predict_reads_each_studys_title(tmp_path: Path, capsys) -> None:
    """`cxr predict` gives a title model each study's exam title: one study's from
    --exam-title, a batch's from the reports CSV's `image` column."""
    import pandas as pd

    from cxr_impressions.captioning.predict import Predictor, Study
    from cxr_impressions.cli import main

    from .helpers import SAMPLE
    from .tiny_models import serving_bundle

    reports = pd.read_csv(SAMPLE / "indiana_reports.csv", dtype=str, keep_default_na=False)
    known = tuple(reports["image"].head(3))
    directory = serving_bundle(tmp_path / "models", exam_titles=known)
    predictor = Predictor(directory, "unused: weights none")
    assert predictor.bundle.titles is not None
    frontal = next(SAMPLE.glob("images/*.jpg"))
    images = [predictor.load(Study("a", frontal))] * 2
    inputs = predictor.inputs(images, [known[0], "a title never seen"])
    assert inputs["exam_title"][0, 0] == predictor.bundle.titles.encode([known[0]])[0, 0] != 0
    assert inputs["exam_title"][1, 0] == 0
    assert predictor.inputs(images)["exam_title"].tolist() == [[0], [0]]

    out = tmp_path / "predictions.csv"
    main(["predict", "--projections", str(SAMPLE / "indiana_projections.csv"), "--images",
          str(SAMPLE / "images"), "--model", str(directory), "--out", str(out), "--reports",
          str(SAMPLE / "indiana_reports.csv")])
    batch = pd.read_csv(out, dtype={"uid": str}).set_index("uid")["impression"]
    # The batch's impressions are those of each study decoded alone with its own title.
    from cxr_impressions.captioning.predict import studies_from_projections

    studies, _ = studies_from_projections(SAMPLE / "indiana_projections.csv", SAMPLE / "images",
                                          dict(zip(reports["uid"], reports["image"],
                                                   strict=True)))
    for study in studies[:3]:
        assert study.exam_title
        assert predictor.predict([study])[0] == batch[study.uid]
    assert "writes as for an unknown one" not in capsys.readouterr().err


def test_attach_memory_takes_the_title_vocabulary_from_the_training_split() -> None:
    from cxr_impressions.captioning.training import attach_memory

    train, val = _studies(10), _studies(3, seed=1)
    train.titles = list(TITLES)
    val.titles = ["Xray Chest PA and Lateral", "a title only validation has", ""]
    bank, titles = attach_memory({"train": train, "val": val},
                                 ModelParams(exam_title=True, exam_title_min_count=2,
                                             retrieval_k=2))
    assert titles.keys == TitleVocabulary.from_titles(TITLES, 2).keys
    assert train.exam_title[:, 0].tolist() == [1] * 4 + [2] * 3 + [3] * 2 + [UNKNOWN]
    assert val.exam_title[:, 0].tolist() == [1, UNKNOWN, UNKNOWN]
    assert len(bank) == 10 and train.retrieved.shape == (10, 2, 5)
    assert attach_memory({"train": _studies(4)}, ModelParams(exam_title=False)) == (None, None)


def test_a_bundle_from_before_exam_titles_still_loads(tmp_path: Path) -> None:
    """A bundle saved before `model.exam_title` existed (no such key in its config) loads as
    a model without titles, although titles are on by default now."""
    import json

    model, vocab = tiny("transformer")
    params = ModelParams(kind="transformer", units=16, dropout=0.0, heads=2, layers=1,
                         condition="abnormal", exam_title=False)
    config = bundle_config(params, {}, 8, 3, 4, vocab)
    for key in ("exam_title", "exam_title_min_count"):
        del config["model"][key]
    save_bundle(tmp_path, model, vocab, config, empty_bank(8, 5))
    assert "exam_title" not in json.loads((tmp_path / "config.json").read_text())["model"]
    assert ModelParams().exam_title  # the default
    bundle = load_bundle(tmp_path)
    assert bundle.titles is None and not bundle.params.exam_title
    inputs = bundle.model_inputs(study_inputs(2, seed=4), ["Xray Chest PA and Lateral", ""])
    assert "exam_title" not in inputs
    loaded = Decoder(bundle.model, bundle.vocab).greedy(inputs)
    assert [d.ids for d in loaded] == [d.ids for d in Decoder(model, vocab).greedy(inputs)]
