"""The model bundle: what one process saves, any other process loads to the same numbers."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_impressions.captioning.bundle import (
    bundle_config,
    load_bundle,
    save_bundle,
    save_decoding,
)
from cxr_impressions.captioning.decoding import Decoder
from cxr_impressions.captioning.models import ensemble
from cxr_impressions.captioning.retrieval import MemoryBank, empty_bank
from cxr_impressions.errors import InputError
from cxr_impressions.settings.decoding import DecodingSettings
from cxr_impressions.settings.model import ModelParams

from .helpers import REPO
from .tiny_models import study_inputs, tiny

# Loads the bundle in a fresh interpreter and prints the decoder's logits and greedy captions.
LOAD_AND_DECODE = """
import json, sys
import numpy as np
from cxr_impressions.captioning.bundle import load_bundle
from cxr_impressions.captioning.decoding import Decoder
from tests.tiny_models import study_inputs

bundle = load_bundle(sys.argv[1])
inputs = bundle.model_inputs(study_inputs(3, seed=7))
condition = np.ones((3, len(bundle.model.labels)), np.float32)
out = bundle.model.train_model({**inputs, "condition": condition,
                                "tokens": np.full((3, 5), 4, np.int32)})
decoder = Decoder(bundle.model, bundle.vocab, bundle.thresholds)
texts = decoder.texts(decoder.greedy(inputs))
print(json.dumps({"logits": out["logits"].numpy().tolist(), "texts": texts}))
"""

PARAMS = {"kind": "transformer", "units": 16, "dropout": 0.0, "heads": 2, "layers": 1,
          "condition": "findings", "retrieval_k": 2, "exam_title": False}


def _bank() -> MemoryBank:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(4, 8)).astype(np.float32)
    return MemoryBank(np.array(["10", "11", "12", "13"]),
                      vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                      np.array([[4, 5, 6, 3, 0], [6, 3, 0, 0, 0], [5, 5, 6, 3, 0],
                                [4, 6, 3, 0, 0]], np.int32))


def _saved(directory: Path, members: int = 1) -> tuple:
    """A tiny bundle; with `members` > 1 a `model.ensemble` of members of other seeds."""
    built = [tiny("transformer", max_len=6, seed=seed, condition="findings", retrieval_k=2)
             for seed in range(members)]
    model, vocab = ensemble([m for m, _ in built]), built[0][1]
    config = bundle_config(ModelParams(**PARAMS, ensemble=members), {}, 8, 3, 4, vocab)
    save_bundle(directory, model, vocab, config, _bank())
    save_decoding(directory, DecodingSettings(beam_size=2, labels="consistent"),
                  dict.fromkeys(model.labels, 0.4))
    return model, vocab


def _load_in_fresh_process(directory: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", LOAD_AND_DECODE, str(directory)], cwd=REPO,
                            capture_output=True, text=True, timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("members", [1, 2])
def test_two_fresh_processes_load_the_same_model(tmp_path: Path, members: int) -> None:
    model, _ = _saved(tmp_path, members)
    first = _load_in_fresh_process(tmp_path)
    second = _load_in_fresh_process(tmp_path)
    assert first == second  # bit-identical logits, same captions
    # ... and both equal the model that was saved: every weight, positions included, was saved.
    bundle = load_bundle(tmp_path)
    inputs = bundle.model_inputs(study_inputs(3, seed=7))
    saved = model.train_model({**inputs, "condition": np.ones((3, 14), np.float32),
                               "tokens": np.full((3, 5), 4, np.int32)})["logits"].numpy()
    np.testing.assert_allclose(np.array(first["logits"]), saved, rtol=1e-5, atol=1e-6)


def test_the_bundle_carries_what_predict_needs(tmp_path: Path) -> None:
    model, vocab = _saved(tmp_path)
    bundle = load_bundle(tmp_path)
    np.testing.assert_array_equal(bundle.thresholds, np.full(14, 0.4))
    np.testing.assert_array_equal(bundle.bank.tokens, _bank().tokens)
    inputs = bundle.model_inputs(study_inputs(2, seed=3))
    assert inputs["retrieved"].shape == (2, 2, 5)
    loaded = Decoder(bundle.model, bundle.vocab, bundle.thresholds).greedy(inputs)
    original = Decoder(model, vocab, 0.4).greedy(inputs)
    assert [d.ids for d in loaded] == [d.ids for d in original]
    # A retrieval model without its memory bank is a one-line error, not a traceback.
    (tmp_path / "retrieval.npz").unlink()
    with pytest.raises(InputError, match="retrieval.npz: not found"):
        load_bundle(tmp_path)


def test_a_bundle_from_before_the_selection_stage_decodes_as_it_did(tmp_path: Path) -> None:
    """A model folder saved when train chose everything: the label thresholds in config.json,
    decoding.json without them. It loads with the same thresholds and settings, and decodes
    the same captions as the same model saved today."""
    _saved(tmp_path / "new")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    decoding = json.loads((old / "decoding.json").read_text())
    config = json.loads((old / "config.json").read_text())
    config["label_thresholds"] = decoding.pop("label_thresholds")
    (old / "config.json").write_text(json.dumps(config))
    (old / "decoding.json").write_text(json.dumps(decoding))
    new, before = load_bundle(tmp_path / "new"), load_bundle(old)
    np.testing.assert_array_equal(before.thresholds, np.full(14, 0.4))
    assert before.label_thresholds == new.label_thresholds
    assert before.decode == new.decode == DecodingSettings(beam_size=2, labels="consistent")
    inputs = new.model_inputs(study_inputs(3, seed=5))
    decoded = [Decoder(b.model, b.vocab, b.thresholds).decode(inputs, b.decode)
               for b in (new, before)]
    assert [d.ids for d in decoded[0]] == [d.ids for d in decoded[1]]
    # Without decoding.json at all (older still): the default settings, the same thresholds.
    (old / "decoding.json").unlink()
    assert load_bundle(old).decode == DecodingSettings()
    assert load_bundle(old).label_thresholds == new.label_thresholds


def test_malformed_label_thresholds_are_a_one_line_error(tmp_path: Path) -> None:
    _saved(tmp_path)
    decoding = json.loads((tmp_path / "decoding.json").read_text())
    (tmp_path / "decoding.json").write_text(json.dumps({**decoding, "label_thresholds": [0.4]}))
    with pytest.raises(InputError, match=r"decoding.json: label_thresholds must map labels"):
        load_bundle(tmp_path)


def test_weights_that_do_not_fit_the_config_are_a_one_line_error(tmp_path: Path) -> None:
    model, vocab = tiny("merge")
    save_bundle(tmp_path, model, vocab, bundle_config(
        ModelParams(kind="merge", units=16, dropout=0.0, heads=2, layers=1,
                    condition="abnormal", exam_title=False), {}, 8, None, 4,
        vocab), empty_bank(8, 5))
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["condition"] = "findings"  # a head with 14 outputs, the weights have 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"model.weights.h5: does not match .*config.json"):
        load_bundle(tmp_path)


def test_an_ensembles_weights_need_its_member_count(tmp_path: Path) -> None:
    """The weights file of a two-member ensemble does not load as one model, nor the other way
    round: a one-line error each, not a model with half its weights missing."""
    _saved(tmp_path, members=2)
    config = json.loads((tmp_path / "config.json").read_text())
    for members in (1, 3):
        config["model"]["ensemble"] = members
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(InputError, match=r"model.weights.h5: does not match"):
            load_bundle(tmp_path)


def test_a_bundle_that_predates_pooling_every_cell_is_refused(tmp_path: Path) -> None:
    """Before `pool_grid` read every cell, `model.grid_pool: 3` dropped the 10x10 grid's last
    row and column: such a model, fed regions pooled the new way, would decode silently worse.
    Without a factor (`grid_pool: 1`) nothing was pooled, so it still loads."""
    _saved(tmp_path)
    assert load_bundle(tmp_path).config["grid_pooling"] == "every_cell"
    config = json.loads((tmp_path / "config.json").read_text())
    del config["grid_pooling"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config.json: records no grid_pooling, so its "
                                         r"model.grid_pool 3 may have dropped .* retrain it"):
        load_bundle(tmp_path)
    config["model"]["grid_pool"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_bundle(tmp_path).params.grid_pool == 1
