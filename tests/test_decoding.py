"""Greedy and beam decoding, and the attention the decoder exposes."""

import itertools
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from cxr_impressions.captioning.decoding import (
    Decoder,
    consistent_condition,
    minimum_bayes_risk,
    rerank,
    rouge_l,
)
from cxr_impressions.captioning.selection import choose, select_decoding
from cxr_impressions.errors import InputError
from cxr_impressions.settings.decode import DecodeParams
from cxr_impressions.settings.decoding import DecodingSettings

from .tiny_models import WORDS, study_inputs, tiny


def _all_hypotheses(decoder: Decoder, inputs: dict, alpha: float) -> tuple[float, list[int]]:
    """Brute force: score every possible caption exactly, the way beam search ranks them."""
    memory = decoder.encode({k: v[:1] for k, v in inputs.items()})
    words = list(range(4, len(WORDS)))
    best = (-np.inf, [])
    for length in range(0, decoder.length):
        for body in itertools.product(words, repeat=length):
            tokens = np.zeros((1, decoder.length), np.int32)
            tokens[0, 0] = 2
            tokens[0, 1:1 + length] = body
            total = 0.0
            for t, word in enumerate([*body, 3], start=1):
                logp, _ = decoder.step(memory, tokens, t)
                total += logp[0, word]
            score = total / (length + 1) ** alpha
            best = max(best, (score, list(body)), key=lambda h: h[0])
    return best


@pytest.mark.parametrize("kind", ["merge", "bilstm_attention", "transformer"])
def test_wide_beam_finds_the_exact_best_caption(kind: str) -> None:
    model, vocab = tiny(kind, max_len=5)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(2)
    params = DecodingSettings(beam_size=40, length_penalty=0.7, no_repeat_ngram=0)
    beam = decoder.beam(inputs, params)
    best_score, best_ids = _all_hypotheses(decoder, inputs, 0.7)
    assert beam[0].ids == best_ids
    assert beam[0].score == pytest.approx(best_score, rel=1e-6)
    # Batching studies together changes nothing: no state is shared across studies or beams.
    alone = decoder.beam({k: v[1:] for k, v in inputs.items()}, params)
    assert alone[0].ids == beam[1].ids


def test_greedy_equals_beam_of_one_and_blocking_works() -> None:
    model, vocab = tiny("merge", max_len=8)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(4, seed=3)
    greedy = decoder.decode(inputs, DecodingSettings(method="greedy"))
    beam_one = decoder.beam(inputs, DecodingSettings(beam_size=1, length_penalty=0.0,
                                                 no_repeat_ngram=0))
    assert [g.ids for g in greedy] == [b.ids for b in beam_one]
    blocked = decoder.beam(inputs, DecodingSettings(beam_size=3, no_repeat_ngram=2))
    for hypothesis in blocked:
        bigrams = list(zip(hypothesis.ids, hypothesis.ids[1:], strict=False))
        assert len(bigrams) == len(set(bigrams))
        assert len(hypothesis.ids) <= vocab.max_len - 2


def test_transformer_attention_is_retrievable_and_masks_missing_view() -> None:
    model, vocab = tiny("transformer", max_len=6)
    inputs = study_inputs(1)
    inputs["views"][0, 1] = 0.0  # a study with one image
    decoded = Decoder(model, vocab).greedy(inputs)[0]
    assert decoded.attention is not None
    assert decoded.attention.shape == (len(decoded.ids) + 1, 6)
    np.testing.assert_allclose(decoded.attention.sum(axis=1), 1.0, rtol=1e-3)
    assert np.abs(decoded.attention[:, 3:]).max() < 1e-6  # the missing view gets no attention


def test_explain_matches_the_attention_seen_while_decoding() -> None:
    model, vocab = tiny("transformer", max_len=6)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(3, seed=5)
    greedy = decoder.greedy(inputs)
    explained = decoder.explain(inputs, greedy)
    for decoded, maps in zip(greedy, explained, strict=True):
        np.testing.assert_allclose(maps, decoded.attention, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no spatial attention"):
        Decoder(*tiny("merge")).explain(inputs, greedy)


def test_inference_functions_are_traced_once_per_model() -> None:
    # The cause of the "tf.function retracing" warning in training: a tf.function per Decoder
    # (and per input shape) retraced every epoch. Now every batch size, beam width and decoder
    # of one model share one trace of each function.
    model, vocab = tiny("transformer", max_len=6, condition="findings")
    for n in (5, 2, 7):
        Decoder(model, vocab).decode(study_inputs(n, seed=n), DecodingSettings(method="greedy"))
        Decoder(model, vocab).decode(study_inputs(n, seed=n), DecodingSettings(beam_size=3),
                                     batch_size=4)
    for part in ("encoder", "decoder"):
        assert model.inference_function(part).experimental_get_tracing_count() == 1, part


def test_length_penalty_reranks_without_a_new_search() -> None:
    model, vocab = tiny("transformer", max_len=6)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(4, seed=9)
    searched = decoder.beam(inputs, DecodingSettings(beam_size=4, length_penalty=0.0))
    for alpha in (0.7, 2.0):
        direct = decoder.beam(inputs, DecodingSettings(beam_size=4, length_penalty=alpha))
        assert [d.ids for d in rerank(searched, alpha)] == [d.ids for d in direct]


def test_rouge_l_on_word_ids_is_the_scorers() -> None:
    from cxr_impressions.evaluation.scoring import rouge_l_per_study

    rng = np.random.default_rng(3)
    words = ["no", "acute", "effusion", "heart", "normal", "size", "."]
    pairs = [([int(w) for w in rng.integers(0, len(words), rng.integers(1, 9))],
              [int(w) for w in rng.integers(0, len(words), rng.integers(1, 9))])
             for _ in range(40)]
    ours = [rouge_l(h, r) for h, r in pairs]
    scorer = rouge_l_per_study([" ".join(words[w] for w in r) for _, r in pairs],
                               [" ".join(words[w] for w in h) for h, _ in pairs])
    np.testing.assert_allclose(ours, scorer, atol=1e-12)
    assert rouge_l([], [1, 2]) == rouge_l([1, 2], []) == 0.0


def test_minimum_bayes_risk_takes_the_beams_consensus_not_its_likeliest() -> None:
    from cxr_impressions.captioning.decoding import Decoded

    # The likeliest hypothesis alone says something else; the two a little less likely agree
    # with each other, and their mass together outweighs it.
    hypotheses = [(-0.9, [9, 9]), (-1.0, [5, 6, 7]), (-1.1, [5, 6, 8])]
    study = Decoded([], 0.0, hypotheses=hypotheses)
    assert rerank([study], 0.0)[0].ids == [9, 9]
    chosen = minimum_bayes_risk([study])[0]
    assert chosen.ids == [5, 6, 7]
    weights = np.exp([-0.9, -1.0, -1.1]) / np.exp([-0.9, -1.0, -1.1]).sum()
    assert chosen.score == pytest.approx(weights[1] * 1.0 + weights[2] * rouge_l([5, 6, 7],
                                                                                [5, 6, 8]))
    # A likelier outlier wins back once it carries most of the mass.
    lopsided = Decoded([], 0.0, hypotheses=[(-0.1, [9, 9]), *hypotheses[1:]])
    assert minimum_bayes_risk([lopsided])[0].ids == [9, 9]
    # The beam's own `beam_choice: mbr` is that choice among its finished hypotheses.
    model, vocab = tiny("transformer", max_len=6)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(4, seed=9)
    searched = decoder.beam(inputs, DecodingSettings(beam_size=4))
    direct = decoder.beam(inputs, DecodingSettings(beam_size=4, beam_choice="mbr"))
    assert [d.ids for d in minimum_bayes_risk(searched)] == [d.ids for d in direct]


def test_mbr_is_a_candidate_of_each_beam_size_from_the_same_search() -> None:
    model, vocab = tiny("transformer", max_len=6)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(6, seed=4)
    references = ["no effusion .", ".", "no .", "effusion .", "no effusion .", "effusion"]
    params = DecodeParams(beam_sizes=(1, 3), length_penalties=(0.7,),
                          beam_choices=("score", "mbr"), select_ties="best")
    chosen, rows, _ = select_decoding(decoder, inputs, references, params)
    assert [(r["beam_size"], r["beam_choice"]) for r in rows] == [
        (1, "score"), (3, "score"), (3, "mbr")]
    mbr = decoder.decode(inputs, DecodingSettings(beam_size=3, beam_choice="mbr"))
    from cxr_impressions.evaluation.scoring import text_metrics

    assert text_metrics(references, decoder.texts(mbr))["bleu4"] == rows[2]["bleu4"]
    only_mbr = replace(params, beam_choices=("mbr",))
    _, rows, _ = select_decoding(decoder, inputs, references, only_mbr)
    assert [(r["beam_size"], r["beam_choice"]) for r in rows] == [(1, "score"), (3, "mbr")]
    with pytest.raises(InputError, match=r"decode.beam_choices must be a non-empty list of "
                                         r"score \| mbr, got \['best'\]"):
        DecodeParams(beam_choices=("best",)).validate("params.yaml")


def test_decoding_settings_are_selected_on_the_given_split(capsys) -> None:
    model, vocab = tiny("merge", max_len=6)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(6, seed=11)
    references = ["no effusion .", ".", "no .", "effusion .", "no effusion .", "effusion"]
    params = DecodeParams(beam_sizes=(1, 3), length_penalties=(0.0, 2.0),
                          select_metric="rouge_l", select_ties="best")
    chosen, rows, row = select_decoding(decoder, inputs, references, params)
    # Minutes per search on the full data: a bar on stderr counts the searches, stdout stays clean.
    shown = capsys.readouterr()
    assert "select decoding on val" in shown.err and "2/2" in shown.err and shown.out == ""
    # An unconditioned model: only independent labels (there are none to make consistent).
    assert [(r["method"], r["beam_size"], r["length_penalty"], r["labels"]) for r in rows] == [
        ("greedy", 1, 0.7, "independent"), ("beam", 3, 0.0, "independent"),
        ("beam", 3, 2.0, "independent")]
    best = max(r["rouge_l"] for r in rows)
    first_best = next(r for r in rows if r["rouge_l"] == best)  # ties: the earlier candidate
    assert row is first_best
    assert (chosen.method, chosen.beam_size, chosen.length_penalty) == (
        first_best["method"], first_best["beam_size"], first_best["length_penalty"])
    # The chosen settings decode to exactly the captions that were scored.
    again = decoder.texts(decoder.decode(inputs, chosen))
    from cxr_impressions.evaluation.scoring import text_metrics

    assert text_metrics(references, again)["rouge_l"] == best
    assert chosen.settings() == {"method": chosen.method, "beam_size": chosen.beam_size,
                                 "length_penalty": chosen.length_penalty, "no_repeat_ngram": 3,
                                 "labels": "independent", "beam_choice": "score",
                                 "normal_text": "decoder", "finding_text": "decoder"}


def test_selection_on_a_clinical_metric_scores_the_labellers_reading() -> None:
    from collections import Counter

    from cxr_impressions.data.labeller import label_text
    from cxr_impressions.evaluation.scoring import clinical_scores

    model, vocab = tiny("merge", max_len=6)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(6, seed=5)
    references = ["no effusion .", "effusion .", "effusion .", "no .", "effusion", "."]
    params = DecodeParams(beam_sizes=(1, 3), length_penalties=(0.0, 2.0),
                          select_metric="findings_macro_f1", select_ties="best")
    chosen, rows, row = select_decoding(decoder, inputs, references, params)
    assert row["findings_macro_f1"] == max(r["findings_macro_f1"] for r in rows)
    for r in rows:  # each row's clinical figures are the labeller's, on that row's captions
        settings = DecodingSettings(method=r["method"], beam_size=r["beam_size"],
                                length_penalty=r["length_penalty"], labels=r["labels"])
        texts = decoder.texts(decoder.decode(inputs, settings))
        clinical = clinical_scores([label_text(t) for t in references],
                                   [label_text(t) for t in texts])
        assert r["findings_macro_f1"] == clinical["findings_macro_f1"]
        assert r["abnormal_f1"] == clinical["abnormal"]["f1"]
        assert r["top_share"] == round(Counter(texts).most_common(1)[0][1] / len(texts), 4)
    assert chosen.beam_size == row["beam_size"]


def test_consistent_labels_follow_the_training_labels_definition() -> None:
    names = ("cardiomegaly", "effusion", "abnormal")
    thresholds = np.array([0.4, 0.1, 0.3])
    probabilities = np.array([
        [0.30, 0.09, 0.9],   # abnormal, no finding on: effusion is nearer its threshold (0.9x)
        [0.50, 0.20, 0.1],   # normal: its findings go off
        [0.50, 0.05, 0.5],   # already consistent
        [0.10, 0.01, 0.1],   # normal, nothing on
    ])
    condition = (probabilities >= thresholds).astype(np.float32)
    made = consistent_condition(condition, probabilities, thresholds, names)
    assert made.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0]]
    assert condition.tolist()[0] == [0, 0, 1]  # the input is left as it was
    # Every row now satisfies the labeller's rule: abnormal exactly when some finding is on.
    assert (made[:, 2] == made[:, :2].max(axis=1)).all()
    only_abnormal = np.array([[0.0], [1.0]])
    assert consistent_condition(only_abnormal, only_abnormal, np.array([0.5]),
                                ("abnormal",)) is only_abnormal


def test_label_modes_are_candidates_and_each_caption_keeps_its_labels() -> None:
    model, vocab = tiny("transformer", max_len=6, condition="findings")
    # Thresholds that make every study abnormal with no finding: the inconsistent case.
    labels = model.labels
    thresholds = [0.0 if name == "abnormal" else 1.01 for name in labels]
    decoder = Decoder(model, vocab, thresholds)
    inputs = study_inputs(4, seed=3)
    independent = decoder.greedy(inputs)
    consistent = decoder.greedy(inputs, "consistent")
    abnormal = labels.index("abnormal")
    for d in independent:
        assert d.condition[abnormal] == 1 and d.condition.sum() == 1
    for d in consistent:
        assert d.condition[abnormal] == 1 and d.condition.sum() == 2
    # explain() attends under the labels each caption was written under.
    maps = decoder.explain(inputs, consistent)
    assert [m.shape[0] for m in maps] == [min(len(d.ids) + 1, decoder.length) for d in consistent]
    params = DecodeParams(beam_sizes=(1, 2), length_penalties=(0.0,), select_metric="bleu1")
    _, rows, _ = select_decoding(decoder, inputs, ["no effusion ."] * 4, params)
    assert [(r["beam_size"], r["labels"]) for r in rows] == [
        (1, "independent"), (2, "independent"), (1, "consistent"), (2, "consistent")]


def test_several_models_in_one_process_do_not_warn_of_retracing(caplog) -> None:
    import logging

    caplog.set_level(logging.WARNING)
    for seed in range(4):
        model, vocab = tiny("merge", seed=seed)
        Decoder(model, vocab).decode(study_inputs(3), DecodingSettings(method="greedy"))
    assert "retracing" not in caplog.text


def twelve_study_selection(**params: object) -> tuple[Decoder, dict, list[str], DecodeParams]:
    """A tiny model's decoder, 12 studies, their references, and five candidates on BLEU-1."""
    model, vocab = tiny("merge", max_len=6)
    return (Decoder(model, vocab), study_inputs(12, seed=3),
            ["no effusion .", "effusion .", "no ."] * 4,
            DecodeParams(beam_sizes=(1, 2, 3), length_penalties=(0.0, 3.0),
                         select_metric="bleu1", **params))


def test_max_top_share_lets_only_candidates_under_it_compete() -> None:
    decoder, inputs, references, params = twelve_study_selection(select_ties="best")
    _, rows, free = select_decoding(decoder, inputs, references, params)
    shares = sorted({r["top_share"] for r in rows})
    assert len(shares) > 1, shares  # otherwise the cap could not change the choice
    best = max(r["bleu1"] for r in rows)
    assert free is next(r for r in rows if r["bleu1"] == best)
    for cap in shares:
        _, _, row = select_decoding(decoder, inputs, references, replace(params, max_top_share=cap))
        under = [r for r in rows if r["top_share"] <= cap]
        assert row["top_share"] <= cap
        assert row["bleu1"] == max(r["bleu1"] for r in under)
    # None under the cap: the lowest share wins (then the metric).
    _, _, row = select_decoding(decoder, inputs, references, replace(params, max_top_share=0.01))
    lowest = [r for r in rows if r["top_share"] == shares[0]]
    assert row["top_share"] == shares[0]
    assert row["bleu1"] == max(r["bleu1"] for r in lowest)


def test_decoding_shows_a_bar_only_when_asked(capsys) -> None:
    model, vocab = tiny("merge", max_len=6)
    decoder = Decoder(model, vocab)
    inputs = study_inputs(5, seed=12)
    quiet = decoder.decode(inputs, DecodingSettings(beam_size=2), batch_size=2)
    assert capsys.readouterr().err == ""
    # evaluate decodes the whole test split (minutes on the full data): the bar counts studies.
    shown = decoder.decode(inputs, DecodingSettings(beam_size=2), batch_size=2,
                           progress="decode test")
    bar = capsys.readouterr()
    assert "decode test" in bar.err and "5/5" in bar.err and bar.out == ""
    assert [d.ids for d in shown] == [d.ids for d in quiet]


def test_serving_does_not_import_tqdm() -> None:
    # The server imports decoding; its bars are for the batch commands only.
    code = ("import sys; import cxr_impressions.serving.app; "
            "sys.exit('tqdm' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_varied_ties_take_the_least_uniform_candidate_validation_cannot_tell_apart() -> None:
    from collections import Counter

    from cxr_impressions.evaluation.bootstrap import metric_values, study_statistics

    normal = "no acute cardiopulmonary abnormality ."
    references = [normal] * 45 + [f"small left pleural effusion number {i} ." for i in range(15)]
    uniform = [normal] * 60  # the constant: the best BLEU-4 here
    nearly = ["heart size is normal ."] * 2 + [normal] * 58  # two normal studies worded apart
    garbled = [f"lungs {i} clear ." for i in range(60)]  # every caption its own, all wrong
    candidates = {"uniform": uniform, "nearly": nearly, "garbled": garbled}
    statistics = [study_statistics(references, texts) for texts in candidates.values()]
    metrics = [metric_values(s, np.ones((1, len(references))))["bleu4"][0] for s in statistics]

    def rows() -> list[dict]:
        return [{"bleu4": float(b), "top_share": Counter(t).most_common(1)[0][1] / len(t)}
                for b, t in zip(metrics, candidates.values(), strict=True)]

    assert metrics[0] > metrics[1] > metrics[2]
    assert choose(rows(), statistics, DecodeParams(select_metric="bleu4",
                                                   select_ties="best")) == 0
    varied = rows()
    chosen = choose(varied, statistics, DecodeParams(select_metric="bleu4",
                                                     select_ties="varied"))
    # "nearly" is within noise of the best and less uniform; "garbled" is the least uniform but
    # significantly worse, so it is not tied with the best.
    assert chosen == 1
    assert varied[0]["vs_best_low"] == varied[0]["vs_best_high"] == 0
    assert varied[1]["vs_best_low"] < 0 <= varied[1]["vs_best_high"]
    assert varied[2]["vs_best_high"] < 0
    # The cap comes first: with only "garbled" under it, it wins whatever the ties.
    assert choose(rows(), statistics, DecodeParams(select_metric="bleu4", select_ties="varied",
                                                   max_top_share=0.5)) == 2


def test_a_guard_metric_unties_a_candidate_significantly_below_the_best_on_it() -> None:
    from collections import Counter

    from cxr_impressions.evaluation.bootstrap import metric_values, study_statistics

    normal = "no acute cardiopulmonary abnormality ."
    effusion = "small left pleural effusion number ."
    references = [normal] * 45 + [f"{effusion[:-2]} {i} ." for i in range(15)]
    candidates = {
        "template": [normal] * 45 + [effusion] * 15,  # the best BLEU-4
        "reworded": ["heart size is normal ."] * 2 + [normal] * 43 + [effusion] * 15,
        # Within noise of the best on BLEU-4, the least uniform, and significantly below it on
        # ROUGE-L: 12 normal studies with their words out of order.
        "reordered": (["cardiopulmonary abnormality no acute ."] * 12 + [normal] * 33
                      + references[45:]),
    }
    statistics = [study_statistics(references, texts) for texts in candidates.values()]

    def rows() -> list[dict]:
        return [{**{m: float(metric_values(s, np.ones((1, 60)))[m][0])
                    for m in ("bleu4", "rouge_l")},
                 "top_share": Counter(t).most_common(1)[0][1] / len(t)}
                for s, t in zip(statistics, candidates.values(), strict=True)]

    assert max(range(3), key=lambda i: rows()[i]["bleu4"]) == 0
    assert choose(rows(), statistics, DecodeParams(select_ties="varied", select_guards=())) == 2
    guarded = rows()
    assert choose(guarded, statistics, DecodeParams(select_ties="varied",
                                                    select_guards=("rouge_l",))) == 1
    assert guarded[2]["vs_best_low"] < 0 <= guarded[2]["vs_best_high"]  # tied on BLEU-4
    assert guarded[2]["vs_best_rouge_l_high"] < 0  # but below on ROUGE-L
    assert guarded[1]["vs_best_rouge_l_high"] >= 0
    assert guarded[0]["vs_best_rouge_l_low"] == guarded[0]["vs_best_rouge_l_high"] == 0
    # A guard on the select metric itself adds nothing, and no second interval.
    same = rows()
    assert choose(same, statistics, DecodeParams(select_ties="varied",
                                                 select_guards=("bleu4",))) == 2
    assert "vs_best_bleu4_low" not in same[0]


def test_selection_with_varied_ties_reports_each_candidates_interval() -> None:
    decoder, inputs, references, params = twelve_study_selection(select_ties="varied",
                                                                 select_resamples=200)
    _, rows, row = select_decoding(decoder, inputs, references, params)
    best = max(r["bleu1"] for r in rows)
    tied = [r for r in rows if r["vs_best_high"] >= 0]
    assert all(r["vs_best_low"] <= r["vs_best_high"] for r in rows)
    assert row in tied and row["top_share"] == min(r["top_share"] for r in tied)
    assert any(r["bleu1"] == best and r["vs_best_low"] == r["vs_best_high"] == 0 for r in rows)
    # The same rows under `best` carry no interval and choose the best.
    _, plain, chosen = select_decoding(decoder, inputs, references,
                                       replace(params, select_ties="best"))
    assert chosen["bleu1"] == best and "vs_best_low" not in chosen
    assert [r["bleu1"] for r in plain] == [r["bleu1"] for r in rows]


def test_guards_against_the_leader_untie_the_best_where_a_tied_candidate_beats_it() -> None:
    from cxr_impressions.evaluation.bootstrap import metric_values, study_statistics

    short, long = "no acute disease .", "the heart is normal . the lungs are clear ."
    references = [short] * 180 + [long] * 120
    # "long" wins corpus BLEU-4 through the brevity penalty, within noise of "short"; "short"
    # words more of the studies exactly, so it is well ahead on ROUGE-L (the closest template
    # against the commonest on impressions, in small).
    candidates = {"long": [long] * 300, "short": [short] * 300}
    statistics = [study_statistics(references, texts) for texts in candidates.values()]

    def rows() -> list[dict]:
        return [{**{m: float(metric_values(s, np.ones((1, 300)))[m][0])
                    for m in ("bleu4", "rouge_l")}, "top_share": 1.0} for s in statistics]

    assert rows()[0]["bleu4"] > rows()[1]["bleu4"] and rows()[0]["rouge_l"] < rows()[1]["rouge_l"]
    against_best = rows()
    assert choose(against_best, statistics, DecodeParams(select_ties="varied",
                                                         select_guards=("rouge_l",))) == 0
    assert against_best[1]["vs_best_low"] < 0 <= against_best[1]["vs_best_high"]  # tied
    assert against_best[1]["vs_best_rouge_l_low"] > 0  # and above the best on the guard
    against_leader = rows()
    assert choose(against_leader, statistics,
                  DecodeParams(select_ties="varied", select_guards=("rouge_l",),
                               select_guard_reference="leader")) == 1
    assert against_leader[0]["vs_leader_rouge_l_high"] < 0
    assert against_leader[1]["vs_leader_rouge_l_low"] == 0
    assert "vs_best_rouge_l_low" not in against_leader[0]
    # Without a guard the reference changes nothing.
    assert choose(rows(), statistics, DecodeParams(select_ties="varied", select_guards=(),
                                                   select_guard_reference="leader")) == 0


def test_twin_guards_compare_only_the_same_captions_worded_by_another_template_rule() -> None:
    from cxr_impressions.evaluation.bootstrap import metric_values, study_statistics

    short, long = "no acute disease .", "the heart is normal . the lungs are clear ."
    references = [short] * 180 + [long] * 120
    greedy = {"method": "greedy", "beam_size": 1, "length_penalty": 0.7, "labels": "consistent",
              "beam_choice": "score", "normal_text": "template_read", "finding_text": "phrased"}
    beam = {**greedy, "method": "beam", "beam_size": 3}
    # Greedy captions worded by the closest (long) and the commonest (short) template, and a
    # beam search whose captions happen to be the long ones too.
    candidates = [({**greedy, "template_rule": "closest"}, [long] * 300),
                  ({**greedy, "template_rule": "commonest"}, [short] * 300),
                  ({**beam, "template_rule": "closest"}, [long] * 300)]
    statistics = [study_statistics(references, texts) for _, texts in candidates]

    def rows() -> list[dict]:
        return [{**settings, "top_share": 1.0,
                 **{m: float(metric_values(s, np.ones((1, 300)))[m][0])
                    for m in ("bleu4", "rouge_l")}}
                for (settings, _), s in zip(candidates, statistics, strict=True)]

    def chosen(reference: str, scored: list[dict] | None = None) -> int:
        return choose(rows() if scored is None else scored, statistics,
                      DecodeParams(select_ties="varied", select_guards=("rouge_l",),
                                   select_guard_reference=reference))

    assert chosen("best") == 0  # the BLEU-4 best, never guarded
    assert chosen("leader") == 1  # every long-worded row is below the short one on ROUGE-L
    twin = rows()
    # Only greedy's closest wording meets its commonest twin; the beam's has no twin.
    assert chosen("twin", twin) == 2
    assert twin[0]["vs_twin_rouge_l_high"] < 0 and twin[1]["vs_twin_rouge_l_low"] == 0
    assert "vs_twin_rouge_l_low" not in twin[2]
    assert twin[2]["vs_best_low"] == twin[2]["vs_best_high"] == 0  # identical to the best
