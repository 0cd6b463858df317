"""Normal templates (`decode.normal_text: template | template_written | template_read`): which
impression each exam title's normal studies get, how the decoder words a study it predicts
normal (and one it wrote normal), the selection's candidates, and the bundle that keeps the
templates. Finding phrases (`decode.finding_text: appended`) alike."""

import json
from dataclasses import replace

import numpy as np
import pytest

from cxr_impressions.captioning.bundle import load_bundle, save_decoding
from cxr_impressions.captioning.decoding import Decoder
from cxr_impressions.captioning.selection import decoding_candidates, select_decoding
from cxr_impressions.captioning.template_rules import templates_by_rule
from cxr_impressions.captioning.templates import (
    NO_TITLE,
    finding_phrases,
    normal_impressions,
    normal_templates,
    template_ids,
)
from cxr_impressions.data.labeller import label_text
from cxr_impressions.data.titles import TitleVocabulary
from cxr_impressions.data.tokenizer import Vocabulary
from cxr_impressions.errors import InputError
from cxr_impressions.settings.decode import DecodeParams
from cxr_impressions.settings.decoding import DecodingSettings

from .tiny_models import WORDS, study_inputs, tiny, tiny_bundle

TITLES = ["Xray Chest PA and Lateral"] * 5 + ["CHEST 2V 1/2/2009"] * 4 + ["rare title", ""]
TEXTS = ["no effusion .", "no effusion .", "effusion .", "effusion .", "effusion .",
         "no .", "no .", "no effusion .", "no pneumothorax .", "no .", "no ."]
NORMAL = np.array([1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1], bool)


def test_each_title_gets_its_commonest_normal_impression_the_decoder_can_write() -> None:
    vocab = Vocabulary(WORDS, "startseq", "endseq", 6)
    known = TitleVocabulary.from_titles(TITLES, min_count=2)
    templates = normal_templates(TITLES, TEXTS, NORMAL, known, vocab)
    # "effusion ." is the first title's commonest impression, but never of a normal study; and
    # "no pneumothorax ." has a word outside the vocabulary, so it is never a template.
    assert templates == {NO_TITLE: "no .", "xray chest pa and lateral": "no effusion .",
                         "chest 0v 0/0/0": "no ."}
    ids = template_ids(templates, known, vocab)
    assert [vocab.decode(i) for i in ids] == ["no .", "no effusion .", "no ."]
    # A model that reads no title: one template, of every normal study.
    assert normal_templates(None, TEXTS, NORMAL, None, vocab) == {NO_TITLE: "no ."}
    assert template_ids({NO_TITLE: "no ."}, None, vocab) == [vocab.word_ids("no .")]
    # Too long for the decoder's max_len: not writable either.
    short = Vocabulary(WORDS, "startseq", "endseq", 4)
    assert normal_templates(None, TEXTS, NORMAL, None, short) == {NO_TITLE: "no ."}
    with pytest.raises(ValueError, match="no training study has a normal impression"):
        normal_templates(None, TEXTS, np.zeros(len(TEXTS), bool), None, vocab)
    # Every writable normal impression, once: what template_written rewords.
    assert normal_impressions(TEXTS, NORMAL, vocab) == ["no .", "no effusion ."]
    assert normal_impressions(TEXTS, NORMAL, short) == ["no ."]


LONG_WORDS = ("<pad>", "<unk>", "startseq", "endseq", "heart", "normal", "lungs", "clear", "no",
              "effusion", "bones", "intact", ".")


def test_the_closest_template_is_the_frequent_normal_text_nearest_the_others() -> None:
    vocab = Vocabulary(LONG_WORDS, "startseq", "endseq", 16)
    texts = (["heart normal ."] * 4 + ["heart normal . lungs clear . no effusion ."] * 3
             + ["lungs clear . bones intact ."] * 3 + ["effusion ."] * 5  # the last abnormal
             + ["lungs clear ."] * 2 + ["heart normal . lungs clear ."])
    normal = np.array([True] * 10 + [False] * 5 + [True] * 3)
    titles = ["chest pa"] * 15 + ["chest ap"] * 3
    known = TitleVocabulary.from_titles(titles, min_count=2)
    # The commonest normal text is a short one; the closest names what the others name too
    # (corpus BLEU-4 0.52 against every normal reference, where the short one scores ~0 for
    # its brevity). The second title's texts are each written fewer than three times: there
    # the closest is its commonest.
    assert templates_by_rule("commonest", titles, texts, normal, known, vocab) == {
        NO_TITLE: "heart normal .", "chest pa": "heart normal .", "chest ap": "lungs clear ."}
    assert templates_by_rule("closest", titles, texts, normal, known, vocab) == {
        NO_TITLE: "heart normal . lungs clear . no effusion .",
        "chest pa": "heart normal . lungs clear . no effusion .", "chest ap": "lungs clear ."}
    # A text the decoder cannot write is never a template, however close.
    short = Vocabulary(LONG_WORDS, "startseq", "endseq", 8)
    assert templates_by_rule("closest", None, texts, normal, None, short) == {
        NO_TITLE: "lungs clear . bones intact ."}
    with pytest.raises(ValueError, match="unknown template rule 'longest'"):
        templates_by_rule("longest", None, texts, normal, None, vocab)


def test_template_rules_are_candidates_where_a_template_words_the_caption() -> None:
    decoder, vocab, inputs = _templated_decoder(1.01)  # every study predicted normal
    closest = Decoder(decoder.model, vocab, 1.01,
                      template_ids({NO_TITLE: "no effusion ."}, TitleVocabulary(["chest"]), vocab))
    worders = {"commonest": decoder, "closest": closest}
    references = ["no effusion ."] * 4
    params = DecodeParams(beam_sizes=(1,), label_modes=("independent",),
                          normal_texts=("decoder", "template"), finding_texts=("decoder",),
                          template_rules=("commonest", "closest"), select_metric="bleu1",
                          select_ties="best")
    chosen, rows, row = select_decoding(decoder, inputs, references, params, worders)
    # The decoder's own words do not depend on a template: no row of them per rule.
    assert [(r["normal_text"], r["template_rule"]) for r in rows] == [
        ("decoder", "commonest"), ("template", "commonest"), ("template", "closest")]
    assert row["template_rule"] == "closest" and row["bleu1"] == 1.0
    assert chosen.normal_text == "template"
    # Studies without a known title get "no ." under the commonest rule, as scored.
    assert [r["bleu1"] < 1.0 for r in rows[1:]] == [True, False]
    assert closest.texts(closest.decode(inputs, chosen)) == references
    with pytest.raises(InputError, match=r"decode.template_rules must be a non-empty list of "
                                         r"commonest \| closest, got \['longest'\]"):
        DecodeParams(template_rules=("longest",)).validate("params.yaml")


def _templated_decoder(thresholds: float, normal_captions: tuple = ()
                       ) -> tuple[Decoder, Vocabulary, dict]:
    model, vocab = tiny("transformer", max_len=6, condition="findings")
    templates = {NO_TITLE: "no .", "chest": "no effusion ."}
    known = TitleVocabulary(["chest"])
    decoder = Decoder(model, vocab, thresholds, template_ids(templates, known, vocab),
                      normal_captions)
    return decoder, vocab, {
        **study_inputs(4, seed=2), "exam_title": np.array([[1], [0], [1], [0]], np.int32)}


def test_a_study_predicted_normal_is_worded_as_its_titles_template() -> None:
    # Thresholds above 1: no label is ever on, every study is predicted normal.
    decoder, vocab, inputs = _templated_decoder(1.01)
    own = decoder.decode(inputs, DecodingSettings(beam_size=2))
    worded = decoder.decode(inputs, DecodingSettings(beam_size=2, normal_text="template"))
    assert decoder.texts(worded) == ["no effusion .", "no .", "no effusion .", "no ."]
    assert all(d.template for d in worded) and not any(d.template for d in own)
    # The labels and the abnormal probability are the model's, as decoded.
    for a, b in zip(own, worded, strict=True):
        assert a.abnormal == b.abnormal and (a.condition == b.condition).all()
    # explain() attends along the template's words.
    maps = decoder.explain(inputs, worded)
    assert [m.shape[0] for m in maps] == [len(d.ids) + 1 for d in worded]
    # Thresholds of 0: every label on, nothing normal, nothing templated.
    decoder, _, inputs = _templated_decoder(0.0)
    own = decoder.decode(inputs, DecodingSettings(beam_size=2))
    worded = decoder.decode(inputs, DecodingSettings(beam_size=2, normal_text="template"))
    assert [d.ids for d in worded] == [d.ids for d in own]
    assert not any(d.template for d in worded)


def test_a_caption_written_as_a_normal_impression_is_worded_as_its_titles_template() -> None:
    # Thresholds of 0: every label on, so `template` rewords nothing; `template_written` rewords
    # the studies whose caption is one of the normal impressions, here those of studies 0 and 1.
    decoder, vocab, inputs = _templated_decoder(0.0)
    own = decoder.decode(inputs, DecodingSettings(beam_size=2))
    normal = {tuple(own[0].ids), tuple(own[1].ids)}
    assert all(d.condition.all() for d in own)
    decoder, _, _ = _templated_decoder(0.0, tuple(normal))
    worded = decoder.decode(inputs, DecodingSettings(beam_size=2, normal_text="template_written"))
    expected = [("no effusion ." if tuple(d.ids) in normal and title else
                 "no ." if tuple(d.ids) in normal else vocab.decode(d.ids))
                for d, title in zip(own, [1, 0, 1, 0], strict=True)]
    assert decoder.texts(worded) == expected
    assert [d.template for d in worded] == [tuple(d.ids) in normal for d in own]
    assert decoder.texts(decoder.decode(inputs, DecodingSettings(
        beam_size=2, normal_text="template"))) == decoder.texts(own)
    # Without normal impressions it cannot: one line.
    decoder, _, _ = _templated_decoder(0.0)
    with pytest.raises(InputError, match="decode.normal_text: template_written, but the model "
                                         "has no normal impressions"):
        decoder.decode(inputs, DecodingSettings(beam_size=2, normal_text="template_written"))


def test_a_caption_the_labeller_reads_as_normal_is_worded_as_its_titles_template() -> None:
    # Every label on (thresholds of 0), so `template` rewords nothing. Of the captions below the
    # labeller reads a negated finding, and no finding at all, as normal: `template_read`
    # rewords those two as their title's template and keeps the effusions as written.
    decoder, vocab, inputs = _templated_decoder(0.0)  # titles 1 ("chest"), 0, 1, 0
    own = decoder.decode(inputs, DecodingSettings(beam_size=2))
    assert all(d.condition.all() for d in own)
    written = ["no .", "effusion .", "no .", "effusion effusion ."]
    decoded = [replace(d, ids=vocab.word_ids(text))
               for d, text in zip(own, written, strict=True)]
    worded = decoder.worded(decoded, inputs, "template_read")
    assert decoder.texts(worded) == ["no effusion .", "effusion .", "no effusion .",
                                     "effusion effusion ."]
    assert [d.template for d in worded] == [True, False, True, False]
    untitled = {**inputs, "exam_title": np.zeros((4, 1), np.int32)}
    assert decoder.texts(decoder.worded(decoded, untitled, "template_read")) == written
    # The other rules leave these captions alone: every label is on.
    for rule in ("decoder", "template"):
        assert decoder.texts(decoder.worded(decoded, inputs, rule)) == written
    # Through decode(): the same rule on the decoder's own captions.
    read = decoder.decode(inputs, DecodingSettings(beam_size=2, normal_text="template_read"))
    assert [d.template for d in read] == [not label_text(vocab.decode(d.ids))["abnormal"]
                                          for d in own]


def test_a_model_without_labels_or_templates_is_not_templated() -> None:
    model, vocab = tiny("merge", max_len=6, condition="none")
    decoder = Decoder(model, vocab)
    inputs = study_inputs(3)
    settings = DecodingSettings(method="greedy", normal_text="template")
    assert ([d.ids for d in decoder.decode(inputs, settings)]
            == [d.ids for d in decoder.greedy(inputs)])
    conditioned, vocab = tiny("merge", max_len=6)
    with pytest.raises(InputError, match="decode.normal_text: template, but the model has no "
                                         "normal templates"):
        Decoder(conditioned, vocab, 1.01).decode(inputs, settings)


def test_template_candidates_are_selected_on_validation_and_decode_as_scored() -> None:
    decoder, vocab, inputs = _templated_decoder(1.01)
    references = ["no effusion .", "no .", "no effusion .", "no ."]
    params = DecodeParams(beam_sizes=(1, 2), length_penalties=(0.0,), label_modes=("independent",),
                          normal_texts=("decoder", "template"), select_metric="bleu1",
                          select_ties="best")
    chosen, rows, row = select_decoding(decoder, inputs, references, params)
    assert [(r["beam_size"], r["normal_text"]) for r in rows] == [
        (1, "decoder"), (1, "template"), (2, "decoder"), (2, "template")]
    # The templates are the references word for word: a template row wins on validation.
    assert row["normal_text"] == "template" and row["bleu1"] == 1.0
    assert chosen.normal_text == "template"
    assert decoder.texts(decoder.decode(inputs, chosen)) == references
    only = replace(params, normal_texts=("template",))
    assert [r["normal_text"] for r in select_decoding(decoder, inputs, references, only)[1]] == [
        "template", "template"]
    # Unconditioned: the decoder words every study, whatever the candidates.
    model, vocab = tiny("merge", max_len=6, condition="none")
    _, rows, _ = select_decoding(Decoder(model, vocab), study_inputs(4), references, params)
    assert {r["normal_text"] for r in rows} == {"decoder"}
    with pytest.raises(InputError, match=r"decode.normal_texts must be a non-empty list of "
                                         r"decoder \| template \| template_written \| "
                                         r"template_read, "
                                         r"got \['title'\]"):
        DecodeParams(normal_texts=("title",)).validate("params.yaml")
    # A third candidate per search with template_written, from the same captions.
    decoder, _, _ = _templated_decoder(1.01, ((vocab.word_ids("no .")),))
    written = replace(params, normal_texts=("decoder", "template", "template_written"))
    _, rows, _ = select_decoding(decoder, inputs, references, written)
    assert [(r["beam_size"], r["normal_text"]) for r in rows] == [
        (b, t) for b in (1, 2) for t in ("decoder", "template", "template_written")]
    # And template_read, from the same captions again: a study predicted normal is templated
    # under both template rules alike.
    read = replace(params, normal_texts=("template", "template_read"))
    _, rows, _ = select_decoding(decoder, inputs, references, read)
    assert [(r["beam_size"], r["normal_text"]) for r in rows] == [
        (b, t) for b in (1, 2) for t in ("template", "template_read")]
    assert all(r["bleu1"] == 1.0 for r in rows)


def test_the_bundle_keeps_the_templates_and_decodes_with_them(tmp_path) -> None:
    tiny_bundle(tmp_path)  # conditioned on abnormal, reads no title
    never = {"abnormal": 1.01}  # every study predicted normal
    save_decoding(tmp_path, DecodingSettings(method="greedy", normal_text="template"), never,
                  {NO_TITLE: "no effusion ."})
    bundle = load_bundle(tmp_path)
    assert bundle.normal_templates == {NO_TITLE: "no effusion ."}
    decoder = bundle.decoder()
    texts = decoder.texts(decoder.decode(study_inputs(3), bundle.decode))
    assert texts == ["no effusion ."] * 3
    # A decoding.json that asks for templates but has none, or a bad one: one line naming it.
    path = tmp_path / "decoding.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "normal_templates"}))
    with pytest.raises(InputError, match=r"decoding.json: normal_text is template, but the file "
                                         r"has no normal_templates"):
        load_bundle(tmp_path)
    for bad in ({"chest": "no ."}, {NO_TITLE: ""}, {NO_TITLE: 3}, ["no ."]):
        path.write_text(json.dumps({**saved, "normal_templates": bad}))
        with pytest.raises(InputError, match=r"decoding.json: normal_templates must map exam "
                                             r"titles to non-empty texts"):
            load_bundle(tmp_path)
    # template_written also keeps the normal impressions, and needs them.
    save_decoding(tmp_path, DecodingSettings(method="greedy", normal_text="template_written"),
                  never, {NO_TITLE: "no effusion ."}, ["no .", "no effusion ."])
    assert load_bundle(tmp_path).normal_impressions == ("no .", "no effusion .")
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "normal_impressions"}))
    with pytest.raises(InputError, match=r"decoding.json: normal_text is template_written, but "
                                         r"the file has no normal_impressions"):
        load_bundle(tmp_path)
    for bad in ("no .", ["no .", ""], [3]):
        path.write_text(json.dumps({**saved, "normal_impressions": bad}))
        with pytest.raises(InputError, match=r"decoding.json: normal_impressions must be a list "
                                             r"of non-empty texts"):
            load_bundle(tmp_path)


def test_cxr_predict_words_a_normal_study_as_its_titles_template(tmp_path) -> None:
    """The same templates through `cxr predict`'s Predictor: real images through the backbone,
    the title from the study, and the prediction says that its impression is the template."""
    from cxr_impressions.captioning.predict import Predictor, Study

    from .helpers import SAMPLE
    from .tiny_models import serving_bundle

    directory = serving_bundle(tmp_path / "models", exam_titles=("Chest PA and lateral",))
    templates = {NO_TITLE: "no acute disease .", "chest pa and lateral": "lungs clear ."}
    save_decoding(directory, DecodingSettings(normal_text="template"), {"abnormal": 1.01},
                  templates)
    predictor = Predictor(directory, "unused: weights none")
    frontal = next(SAMPLE.glob("images/*.jpg"))
    titled, untitled = (predictor.run([predictor.load(Study("a", frontal))],
                                      exam_titles=[title])[0]
                        for title in ("CHEST PA and lateral.", ""))
    assert (titled.text, titled.template) == ("lungs clear .", True)
    assert (untitled.text, untitled.template) == ("no acute disease .", True)
    # Every study abnormal: the decoder's own words, not a template.
    save_decoding(directory, DecodingSettings(normal_text="template"), {"abnormal": 0.0},
                  templates)
    result = Predictor(directory, "unused: weights none").predict([Study("a", frontal)])[0]
    assert result not in templates.values()


# Finding phrases (`decode.finding_text: appended`).
PHRASE_WORDS = (*WORDS, "small", "left", "mild", "stable", "cardiomegaly", "nodule", "low",
                "lung", "volumes")


def test_each_findings_phrase_is_the_commonest_sentence_ending_that_states_it_alone() -> None:
    vocab = Vocabulary(PHRASE_WORDS, "startseq", "endseq", 8)
    texts = ["mild cardiomegaly .", "mild cardiomegaly .", "stable cardiomegaly . no effusion .",
             "small left effusion .", "no effusion .", "nodule zzz ."]
    # cardiomegaly ends 3 sentences (mild cardiomegaly 2); the effusion's three endings tie
    # once each (a negated one does not state it) and the shortest wins; the nodule's sentence
    # ends in a word the decoder cannot write, so nothing is appended for a nodule.
    assert finding_phrases(texts, vocab) == {"cardiomegaly": "cardiomegaly .",
                                             "pleural_effusion": "effusion ."}
    # A finding whose last word alone states nothing needs more of the sentence, up to
    # `max_words` words; a vocabulary without full stops (`clean.sentence_token: ""`) gets
    # phrases without them.
    assert finding_phrases(["mild low lung volumes ."], vocab) == {
        "low_lung_volumes": "low lung volumes ."}
    assert finding_phrases(["mild low lung volumes ."], vocab, max_words=2) == {}
    no_stop = Vocabulary(tuple(w for w in PHRASE_WORDS if w != "."), "startseq", "endseq", 8)
    assert finding_phrases(["mild cardiomegaly", "cardiomegaly"], no_stop) == {
        "cardiomegaly": "cardiomegaly"}


def _phrased_decoder(thresholds: float) -> tuple[Decoder, Vocabulary, dict]:
    decoder, vocab, inputs = _templated_decoder(thresholds)
    decoder.finding_phrases = {"pleural_effusion": vocab.word_ids("effusion .")}
    return decoder, vocab, inputs


def test_a_finding_turned_on_that_the_caption_does_not_name_gets_its_phrase_appended() -> None:
    decoder, vocab, inputs = _phrased_decoder(0.0)  # every label on; titles 1, 0, 1, 0
    own = decoder.decode(inputs, DecodingSettings(beam_size=2))
    written = ["no .", "effusion .", "no effusion .", "no no ."]
    decoded = [replace(d, ids=vocab.word_ids(text))
               for d, text in zip(own, written, strict=True)]
    appended = decoder.worded(decoded, inputs, "decoder", "appended")
    # A caption that names the effusion keeps its word, negated or not: never "no effusion .
    # effusion .".
    assert decoder.texts(appended) == ["no . effusion .", "effusion .", "no effusion .",
                                       "no no . effusion ."]
    assert [d.appended for d in appended] == [("pleural_effusion",), (), (),
                                              ("pleural_effusion",)]
    assert decoder.texts(decoder.worded(decoded, inputs, "decoder", "decoder")) == written
    # Appended first, then the normal wording reads the caption with its phrase: only the
    # caption that negates the effusion still reads normal, and gets its title's template.
    assert decoder.texts(decoder.worded(decoded, inputs, "template_read", "appended")) == [
        "no . effusion .", "effusion .", "no effusion .", "no no . effusion ."]
    assert [d.template for d in decoder.worded(decoded, inputs, "template_read", "appended")
            ] == [False, False, True, False]
    # Through decode(): every caption then names the effusion.
    for d in decoder.decode(inputs, DecodingSettings(beam_size=2, finding_text="appended")):
        assert "effusion" in vocab.decode(d.ids).split()
    # No label on: nothing to append, and every study gets its template.
    off = [replace(d, condition=np.zeros_like(d.condition)) for d in decoded]
    worded = decoder.worded(off, inputs, "template", "appended")
    assert decoder.texts(worded) == ["no effusion .", "no .", "no effusion .", "no ."]
    assert not any(d.appended for d in worded)
    # A decoder without phrases cannot: one line.
    decoder, _, _ = _templated_decoder(0.0)
    with pytest.raises(InputError, match=r"decode.finding_text: appended, but the model has no "
                                         r"finding phrases"):
        decoder.worded(decoded, inputs, "decoder", "appended")


def test_a_study_with_a_finding_on_is_phrased_as_its_titles_template_and_the_phrases() -> None:
    """`finding_text: phrased`: a caption whose labels turn on a finding with a phrase becomes
    its exam title's normal template followed by the phrases, whatever the decoder wrote; a
    caption with no such finding on keeps the decoder's words (then the normal wording)."""
    decoder, vocab, inputs = _phrased_decoder(0.0)  # every label on; titles 1, 0, 1, 0
    own = decoder.decode(inputs, DecodingSettings(beam_size=2))
    decoded = [replace(d, ids=vocab.word_ids(text))
               for d, text in zip(own, ["no .", "effusion .", "no effusion .", "no no ."],
                                  strict=True)]
    phrased = decoder.worded(decoded, inputs, "decoder", "phrased")
    assert decoder.texts(phrased) == ["no effusion . effusion .", "no . effusion .",
                                      "no effusion . effusion .", "no . effusion ."]
    assert all(d.appended == ("pleural_effusion",) and d.attention is None and not d.template
               for d in phrased)
    # Only the abnormal label on (no finding with a phrase): the decoder's words, and under
    # template_read the one the labeller reads as normal gets its title's template.
    names = list(decoder.model.labels)
    only_abnormal = np.array([name == "abnormal" for name in names])
    bare = [replace(d, condition=only_abnormal.copy()) for d in decoded]
    assert decoder.texts(decoder.worded(bare, inputs, "decoder", "phrased")) == [
        "no .", "effusion .", "no effusion .", "no no ."]
    assert decoder.texts(decoder.worded(bare, inputs, "template_read", "phrased")) == [
        "no effusion .", "effusion .", "no effusion .", "no ."]
    # Through decode(): the same captions, whatever the decoder wrote.
    assert decoder.texts(decoder.decode(inputs, DecodingSettings(
        beam_size=2, finding_text="phrased"))) == decoder.texts(phrased)
    # Phrases without templates cannot: one line.
    decoder.templates = None
    with pytest.raises(InputError, match=r"decode.finding_text: phrased, but the model has no "
                                         r"normal templates"):
        decoder.worded(decoded, inputs, "decoder", "phrased")


def test_finding_text_candidates_are_selected_on_validation_and_decode_as_scored() -> None:
    decoder, vocab, inputs = _phrased_decoder(0.0)
    references = ["no . effusion ."] * 4
    params = DecodeParams(beam_sizes=(1, 2), length_penalties=(0.0,), label_modes=("independent",),
                          normal_texts=("decoder",), finding_texts=("decoder", "appended"),
                          select_metric="findings_macro_f1", select_ties="best")
    rows, _, captions = decoding_candidates(decoder, inputs, references, params)
    assert [(r["beam_size"], r["finding_text"]) for r in rows] == [
        (1, "decoder"), (1, "appended"), (2, "decoder"), (2, "appended")]
    # Every reference states the effusion, and every appended caption names it: the decoder's
    # own (or negated, never contradicted), or appended, which can only help here.
    for plain, appended, texts in zip(rows[::2], rows[1::2], captions[1::2], strict=True):
        assert all("effusion" in text.split() for text in texts)
        assert appended["findings_macro_f1"] >= plain["findings_macro_f1"]
    chosen, _, row = select_decoding(decoder, inputs, references, params)
    assert chosen.finding_text == row["finding_text"]
    index = rows.index(next(r for r in rows if all(r[k] == row[k] for k in (
        "beam_size", "finding_text"))))
    assert decoder.texts(decoder.decode(inputs, chosen)) == captions[index]
    # A decoder without phrases (a model not conditioned on findings): the decoder's words only.
    decoder, _, _ = _templated_decoder(0.0)
    _, rows, _ = select_decoding(decoder, inputs, references, params)
    assert {r["finding_text"] for r in rows} == {"decoder"}
    with pytest.raises(InputError, match=r"decode.finding_texts must be a non-empty list of "
                                         r"decoder \| appended \| phrased, got "
                                         r"\['always'\]"):
        DecodeParams(finding_texts=("always",)).validate("params.yaml")


def test_the_bundle_keeps_the_finding_phrases(tmp_path) -> None:
    tiny_bundle(tmp_path)  # conditioned on abnormal: no finding to append, and nothing appended
    settings = DecodingSettings(method="greedy", finding_text="appended")
    save_decoding(tmp_path, settings, {"abnormal": 0.0}, finding_phrases={
        "pleural_effusion": "effusion ."})
    bundle = load_bundle(tmp_path)
    assert bundle.finding_phrases == {"pleural_effusion": "effusion ."}
    assert bundle.decoder().finding_phrases == {"pleural_effusion": [5, 6]}
    decoder = bundle.decoder()
    assert not any(d.appended for d in decoder.decode(study_inputs(3), bundle.decode))
    path = tmp_path / "decoding.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "finding_phrases"}))
    with pytest.raises(InputError, match=r"decoding.json: finding_text is appended, but the file "
                                         r"has no finding_phrases"):
        load_bundle(tmp_path)
    for bad in ({"effusions": "effusion ."}, {"pleural_effusion": ""}, ["effusion ."]):
        path.write_text(json.dumps({**saved, "finding_phrases": bad}))
        with pytest.raises(InputError, match=r"decoding.json: finding_phrases must map findings "
                                             r"\(cardiomegaly, "):
            load_bundle(tmp_path)
