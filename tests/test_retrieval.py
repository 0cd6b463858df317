"""Retrieval memory: the nearest training impressions, never the study's own."""

import numpy as np
import pytest

from cxr_impressions.captioning.decoding import Decoder
from cxr_impressions.captioning.retrieval import MemoryBank
from cxr_impressions.captioning.training import make_dataset
from cxr_impressions.config import build_section
from cxr_impressions.errors import InputError
from cxr_impressions.settings.decoding import DecodingSettings
from cxr_impressions.settings.model import ModelParams

from .tiny_models import random_studies, study_inputs, tiny


def _studies(n: int, seed: int = 0):
    return random_studies(n, seed, first_uid=100)


def test_a_training_study_never_retrieves_itself() -> None:
    train = _studies(12)
    bank = MemoryBank.from_studies(train)
    assert bank.tokens.shape == (12, 5)  # the start token dropped
    # Without the exclusion each study's nearest neighbour is itself ...
    assert (bank.neighbours(train.pooled, train.views, 1)[:, 0] == np.arange(12)).all()
    # ... with it, never, at any rank; the rest are in order of similarity.
    found = bank.neighbours(train.pooled, train.views, 11, uids=train.uids)
    assert found.shape == (12, 11)
    assert not (found == np.arange(12)[:, None]).any()
    similarity = bank.vectors @ bank.vectors.T
    ranked = np.take_along_axis(similarity, found, axis=1)
    assert (np.diff(ranked, axis=1) <= 1e-6).all()
    # A duplicate of a study under another uid is not the study: it may be retrieved.
    twin = _studies(12)
    twin.uids = twin.uids + 1000
    near = MemoryBank.from_studies(twin).neighbours(train.pooled, train.views, 1, train.uids)
    assert (near[:, 0] == np.arange(12)).all()
    retrieved = bank.retrieve(train.pooled, train.views, 3, uids=train.uids)
    assert retrieved.shape == (12, 3, 5) and retrieved.dtype == np.int32
    with pytest.raises(InputError, match="retrieval_k: 12 neighbours"):
        bank.neighbours(train.pooled, train.views, 12, uids=train.uids)


def test_retrieved_impressions_are_decoder_memory() -> None:
    model, vocab = tiny("transformer", max_len=6, retrieval_k=2)
    assert model.decoder.input["retrieved"].shape == (None, 2, 5)
    assert "retrieved" in model.train_model.input
    train = _studies(6)
    bank = MemoryBank.from_studies(train)
    train.retrieved = bank.retrieve(train.pooled, train.views, 2, uids=train.uids)
    inputs, _ = next(iter(make_dataset(train, model, 4, False, 0)))
    assert inputs["retrieved"].shape == (4, 2, 5)
    decoder = Decoder(model, vocab)
    query = study_inputs(2)
    query["retrieved"] = bank.retrieve(query["pooled"], query["views"], 2)
    memory = decoder.encode(query)
    np.testing.assert_array_equal(memory["retrieved"], query["retrieved"])
    tokens = np.zeros((2, decoder.length), np.int32)
    tokens[:, 0] = 2
    before, attention = decoder.step(memory, tokens, 1)
    other = {**memory, "retrieved": memory["retrieved"][:, ::-1].copy()}
    after, _ = decoder.step(other, tokens, 1)
    assert not np.allclose(before, after)  # the decoder reads the retrieved words
    # Heat-maps cover the image regions only, renormalised; padding of the memory is masked.
    assert attention.shape == (2, 6)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-3)
    # Beam search tiles the memory with the rest: one caption per study.
    assert len(decoder.decode(query, DecodingSettings(beam_size=3))) == 2


def test_retrieval_needs_the_transformer() -> None:
    with pytest.raises(InputError, match="model.retrieval_k needs model.kind: transformer"):
        build_section("model", ModelParams, {"kind": "merge", "retrieval_k": 2})
    assert build_section("model", ModelParams, {"retrieval_k": 3}).retrieval_k == 3
