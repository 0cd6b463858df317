"""The model bundle: what one process saves, any other process loads to the same numbers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cxr_impressions.captioning.bundle import bundle_config, load_bundle, save_bundle
from cxr_impressions.config import ModelParams

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
inputs = study_inputs(3, seed=7)
out = bundle.model.train_model({**inputs, "condition": np.ones((3, 1), np.float32),
                                "tokens": np.full((3, 5), 4, np.int32)})
decoder = Decoder(bundle.model, bundle.vocab, bundle.thresholds)
texts = decoder.texts(decoder.greedy(inputs))
print(json.dumps({"logits": out["logits"].numpy().tolist(), "texts": texts}))
"""


def _load_in_fresh_process(directory: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", LOAD_AND_DECODE, str(directory)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_fresh_processes_load_the_same_model(tmp_path: Path) -> None:
    model, vocab = tiny("transformer", max_len=6)
    params = ModelParams(kind="transformer", units=16, dropout=0.0, heads=2, layers=1)
    save_bundle(tmp_path, model, vocab, bundle_config(params, {}, 8, 3, 4, vocab))
    first = _load_in_fresh_process(tmp_path)
    second = _load_in_fresh_process(tmp_path)
    assert first == second  # bit-identical logits, same captions
    # ... and both equal the model that was saved: every weight, positions included, was saved.
    inputs = study_inputs(3, seed=7)
    saved = model.train_model({**inputs, "condition": np.ones((3, 1), np.float32),
                               "tokens": np.full((3, 5), 4, np.int32)})["logits"].numpy()
    np.testing.assert_allclose(np.array(first["logits"]), saved, rtol=1e-5, atol=1e-6)
    assert load_bundle(tmp_path).model.kind == "transformer"
