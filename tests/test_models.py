"""The caption models: masked loss, causality and the label condition."""


import numpy as np
import pytest
import tensorflow as tf

from cxr_impressions.captioning.decoding import Decoder
from cxr_impressions.captioning.models import MaskedAccuracy, build_model, ensemble, masked_loss
from cxr_impressions.captioning.studies import LABELS, pool_bins, pool_grid
from cxr_impressions.captioning.training import compile_for_training
from cxr_impressions.data.labeller import FINDINGS
from cxr_impressions.data.tokenizer import Vocabulary
from cxr_impressions.settings.decoding import DecodingSettings
from cxr_impressions.settings.model import ModelParams

from .tiny_models import WORDS, study_inputs, tiny


def test_pool_grid_reads_every_cell_of_the_grid() -> None:
    assert pool_bins(10, 2) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert pool_bins(10, 3) == [(0, 4), (3, 7), (6, 10)]
    assert pool_bins(7, 2) == [(0, 3), (2, 5), (4, 7)]
    assert pool_bins(10, 12) == [(0, 10)]
    grid = np.zeros((2, 10, 10, 4), dtype=np.float16)
    grid[:, 9, :, 0] = 1.0  # only the bottom row (the costophrenic angles) has a signal
    grid[:, :, 9, 1] = 1.0  # and only the right column
    assert pool_grid(grid, 3).shape == (2, 9, 4) and pool_grid(grid, 3).dtype == np.float16
    by3 = pool_grid(grid, 3).reshape(2, 3, 3, 4).astype(np.float32)
    np.testing.assert_allclose(by3[:, 2, :, 0], 0.25)  # the last bin row holds rows 6-9
    np.testing.assert_allclose(by3[:, :2, :, 0], 0.0)
    np.testing.assert_allclose(by3[:, :, 2, 1], 0.25)
    by2 = pool_grid(grid, 2).reshape(2, 5, 5, 4).astype(np.float32)
    np.testing.assert_allclose(by2[:, 4, :, 0], 0.5)
    np.testing.assert_allclose(by2[:, :4, :, 0], 0.0)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 10, 10, 5)).astype(np.float16)
    blocks = values.astype(np.float32).reshape(3, 5, 2, 5, 2, 5).mean(axis=(2, 4))
    np.testing.assert_array_equal(pool_grid(values, 2), blocks.astype(np.float16).reshape(3, 25, 5))
    whole = pool_grid(values, 12)
    assert whole.shape == (3, 1, 5)
    np.testing.assert_allclose(whole[:, 0].astype(np.float32),
                               values.astype(np.float32).mean(axis=(1, 2)), atol=1e-3)
    assert pool_grid(values, 1).shape == (3, 100, 5)


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
    always = Decoder(model, vocab, thresholds=0.0).encode(study_inputs(1))
    never = Decoder(model, vocab, thresholds=1.01).encode(study_inputs(1))
    assert always["condition"][0, 0] == 1.0 and never["condition"][0, 0] == 0.0


def test_unconditioned_models_have_no_label_head() -> None:
    vocab = Vocabulary(WORDS, "startseq", "endseq", 6)
    matrix = np.zeros((len(WORDS), 4), np.float32)
    model = build_model(ModelParams(kind="merge", units=8, condition="none", exam_title=False),
                        matrix, 8, 6)
    assert not model.conditioned and "abnormal" not in model.encoder.output
    assert Decoder(model, vocab).greedy(study_inputs(1))[0].abnormal is None


def test_findings_condition_has_a_multi_label_head_trained_with_bce() -> None:
    model, _ = tiny("transformer", condition="findings")
    assert model.labels == (*FINDINGS, "abnormal") == LABELS and len(model.labels) == 14
    inputs = study_inputs(4, seed=2)
    logits = model.encoder(inputs)["labels"].numpy()
    assert logits.shape == (4, 14)
    # The head's loss is the binary cross-entropy averaged over studies and labels.
    compile_for_training(model, 1e-3)
    targets = np.random.default_rng(0).integers(0, 2, size=(4, 14)).astype(np.float32)
    tokens = np.array([[2, 4, 5, 6, 3, 0]] * 4, np.int32)
    losses = model.train_model.compute_loss(
        x=None, y={"logits": tokens[:, 1:], "labels": targets},
        y_pred=model.train_model({**inputs, "condition": targets, "tokens": tokens[:, :-1]}))
    caption = float(masked_loss(tokens[:, 1:], model.train_model(
        {**inputs, "condition": targets, "tokens": tokens[:, :-1]})["logits"]))
    probability = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -np.mean(targets * np.log(probability) + (1 - targets) * np.log(1 - probability))
    assert float(losses) == pytest.approx(caption + bce, rel=1e-4)


@pytest.mark.parametrize("kind", ["merge", "bilstm_attention", "transformer"])
def test_each_finding_state_changes_the_output(kind: str) -> None:
    model, vocab = tiny(kind, condition="findings")
    decoder = Decoder(model, vocab, thresholds=np.linspace(0.1, 0.9, 14))
    memory = decoder.encode(study_inputs(1))
    assert memory["probabilities"].shape == (1, 14) and memory["condition"].shape == (1, 14)
    np.testing.assert_array_equal(memory["condition"][0],
                                  memory["probabilities"][0] >= np.linspace(0.1, 0.9, 14))
    assert memory["abnormal"][0] == memory["probabilities"][0, -1]
    tokens = np.zeros((1, decoder.length), np.int32)
    tokens[0, 0] = 2
    none = np.zeros((1, 14), np.float32)
    base, _ = decoder.step({**memory, "condition": none}, tokens, 1)
    for j in (0, 5, 13):  # cardiomegaly, nodule, abnormal: each label's state is heard
        flipped = none.copy()
        flipped[0, j] = 1.0
        changed, _ = decoder.step({**memory, "condition": flipped}, tokens, 1)
        assert not np.allclose(base, changed), model.labels[j]


def test_an_ensemble_averages_its_members_label_and_word_probabilities() -> None:
    members = [tiny("transformer", seed=seed, condition="findings")[0] for seed in (0, 1, 2)]
    vocab = tiny("transformer")[1]
    joint = ensemble(members)
    inputs = study_inputs(4)
    each = [Decoder(m, vocab).encode(inputs) for m in members]
    memory = Decoder(joint, vocab).encode(inputs)
    np.testing.assert_allclose(memory["probabilities"],
                               np.mean([e["probabilities"] for e in each], axis=0), rtol=1e-5)
    assert not np.allclose(each[0]["probabilities"], each[1]["probabilities"])
    tokens = np.tile(np.array([[2, 4, 5, 6, 3]], np.int32), (4, 1))
    condition = (memory["probabilities"] >= 0.5).astype(np.float32)
    words = [m.decoder({**{k: e[k] for k in ("regions", "region_mask")},
                        "condition": condition, "tokens": tokens})
             for m, e in zip(members, each, strict=True)]
    probabilities = [tf.nn.softmax(w["logits"]).numpy() for w in words]
    out = joint.decoder({**{k: v for k, v in memory.items() if k in joint.decoder.input},
                         "condition": condition, "tokens": tokens})
    np.testing.assert_allclose(np.exp(out["logits"].numpy()), np.mean(probabilities, axis=0),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["attention"].numpy(),
                               np.mean([w["attention"].numpy() for w in words], axis=0),
                               rtol=1e-4, atol=1e-6)
    # Every decoding method runs on it as on one model.
    decoded = Decoder(joint, vocab).decode(inputs, DecodingSettings(beam_size=2))
    assert len(decoded) == 4 and all(d.abnormal is not None for d in decoded)
    assert ensemble(members[:1]) is members[0]
