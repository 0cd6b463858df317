import itertools

import numpy as np
import pytest
import tensorflow as tf

from cxr_impressions.config import DecodeParams, ModelParams
from cxr_impressions.decoding import Decoder
from cxr_impressions.models import MaskedAccuracy, build_model, masked_loss
from cxr_impressions.studies import Studies
from cxr_impressions.tokenizer import Vocabulary
from cxr_impressions.training import choose_threshold, make_dataset, training_pairs

WORDS = ("<pad>", "<unk>", "startseq", "endseq", "no", "effusion", ".")


def tiny(kind: str, max_len: int = 6, seed: int = 0):
    tf.keras.utils.set_random_seed(seed)
    vocab = Vocabulary(WORDS, "startseq", "endseq", max_len)
    matrix = np.random.default_rng(seed).normal(size=(len(WORDS), 4)).astype(np.float32)
    model = build_model(ModelParams(kind=kind, units=16, dropout=0.0, heads=2, layers=1),
                        matrix, 8, max_len, regions=3)
    return model, vocab


def study_inputs(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pooled": rng.normal(size=(n, 2, 8)).astype(np.float32) * 3,
            "views": np.ones((n, 2), np.float32),
            "grid": rng.normal(size=(n, 2, 3, 8)).astype(np.float16)}


def test_masked_loss_and_accuracy_ignore_padding() -> None:
    targets = np.array([[4, 5, 3, 0, 0]])
    logits = np.random.default_rng(0).normal(size=(1, 5, 7)).astype(np.float32)
    changed = logits.copy()
    changed[0, 3:] = 100.0 * np.eye(7)[[4, 4]]  # wildly different logits at the padding
    assert float(masked_loss(targets, logits)) == pytest.approx(float(masked_loss(targets,
                                                                                  changed)))
    manual = -np.mean([logits[0, i, t] - np.log(np.exp(logits[0, i]).sum())
                       for i, t in enumerate([4, 5, 3])])
    assert float(masked_loss(targets, logits)) == pytest.approx(manual, rel=1e-5)
    accuracy = MaskedAccuracy()
    perfect = 100.0 * np.eye(7)[[4, 5, 3, 1, 1]][None].astype(np.float32)
    accuracy.update_state(targets, perfect)
    assert float(accuracy.result()) == 1.0  # the wrong guesses at padding do not count


@pytest.mark.parametrize("kind", ["merge", "transformer"])
def test_causal_models_never_see_the_future(kind: str) -> None:
    model, _ = tiny(kind)
    inputs = {k: tf.constant(v) for k, v in study_inputs(1).items()
              if k in model.train_model.input}
    inputs["condition"] = tf.constant([[1.0]])
    tokens = np.array([[2, 4, 5, 6, 3]], np.int32)
    other = tokens.copy()
    other[0, 3:] = [4, 4]
    a = model.train_model({**inputs, "tokens": tf.constant(tokens)})["logits"].numpy()
    b = model.train_model({**inputs, "tokens": tf.constant(other)})["logits"].numpy()
    np.testing.assert_allclose(a[0, :3], b[0, :3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0, 3:], b[0, 3:])


def test_prefix_training_pairs_hide_the_future() -> None:
    model, vocab = tiny("bilstm_attention")
    tokens = np.array([[2, 4, 5, 3, 0, 0], [2, 6, 3, 0, 0, 0]], np.int32)
    studies = Studies(np.array([1, 2]), np.array([["a", "b"], ["c", ""]]),
                      np.zeros((2, 2, 8), np.float32), np.ones((2, 2), np.float32), tokens,
                      ["no effusion", "."], np.array([0.0, 1.0], np.float32))
    index, prefix = training_pairs(studies, True)
    assert index.tolist() == [0, 0, 0, 1, 1] and prefix.tolist() == [1, 2, 3, 1, 2]
    inputs, targets = next(iter(make_dataset(studies, model, 8, False, 0)))
    np.testing.assert_array_equal(inputs["tokens"].numpy()[:3],
                                  [[2, 0, 0, 0, 0], [2, 4, 0, 0, 0], [2, 4, 5, 0, 0]])
    assert targets["logits"].numpy().tolist() == [4, 5, 3, 6, 3]
    # The reference's label is both the decoder's condition and the abnormal head's target.
    assert inputs["condition"].numpy()[:, 0].tolist() == [0, 0, 0, 1, 1]
    assert targets["abnormal"].numpy()[:, 0].tolist() == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("kind", ["merge", "bilstm_attention", "transformer"])
def test_the_condition_steers_the_decoder(kind: str) -> None:
    model, vocab = tiny(kind)
    decoder = Decoder(model, vocab)
    memory = decoder.encode(study_inputs(1))
    assert 0.0 < memory["abnormal"][0] < 1.0
    assert memory["condition"][0, 0] == float(memory["abnormal"][0] >= 0.5)
    tokens = np.zeros((1, decoder.length), np.int32)
    tokens[0, 0] = 2
    normal, _ = decoder.step({**memory, "condition": np.zeros((1, 1), np.float32)}, tokens, 1)
    abnormal, _ = decoder.step({**memory, "condition": np.ones((1, 1), np.float32)}, tokens, 1)
    assert not np.allclose(normal, abnormal)
    # The threshold decides which label the decoder writes under.
    always = Decoder(model, vocab, threshold=0.0).encode(study_inputs(1))
    never = Decoder(model, vocab, threshold=1.01).encode(study_inputs(1))
    assert always["condition"][0, 0] == 1.0 and never["condition"][0, 0] == 0.0


def test_unconditioned_models_have_no_label_head() -> None:
    vocab = Vocabulary(WORDS, "startseq", "endseq", 6)
    matrix = np.zeros((len(WORDS), 4), np.float32)
    model = build_model(ModelParams(kind="merge", units=8, condition="none"), matrix, 8, 6)
    assert not model.conditioned and "abnormal" not in model.encoder.output
    assert Decoder(model, vocab).greedy(study_inputs(1))[0].abnormal is None


def test_threshold_is_the_best_f1_on_the_given_split() -> None:
    probabilities = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 1])
    threshold, f1 = choose_threshold(probabilities, labels)
    assert threshold == 0.35 and f1 == pytest.approx(2 * 3 / (4 + 3))


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
    params = DecodeParams(beam_size=40, length_penalty=0.7, no_repeat_ngram=0)
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
    greedy = decoder.decode(inputs, DecodeParams(method="greedy"))
    beam_one = decoder.beam(inputs, DecodeParams(beam_size=1, length_penalty=0.0,
                                                 no_repeat_ngram=0))
    assert [g.ids for g in greedy] == [b.ids for b in beam_one]
    blocked = decoder.beam(inputs, DecodeParams(beam_size=3, no_repeat_ngram=2))
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
