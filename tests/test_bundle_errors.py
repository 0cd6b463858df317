"""The `models/` folder: a broken or inconsistent file is one line naming it."""

import json
from pathlib import Path

import pytest

from cxr_impressions.captioning.bundle import load_bundle
from cxr_impressions.errors import InputError

from .tiny_models import tiny_bundle


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bundle") / "models"
    tiny_bundle(directory)
    return directory


@pytest.fixture
def bundle_dir(saved: Path, tmp_path: Path) -> Path:
    """A private copy of the saved bundle, for a test to break."""
    directory = tmp_path / "models"
    directory.mkdir()
    for path in saved.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    return directory


def _one_line_error(directory: Path) -> str:
    with pytest.raises(InputError) as info:
        load_bundle(directory)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_intact_bundle_loads(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.model.kind == "transformer" and len(bundle.vocab) == 7


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["truncated", "zero-byte"])
def test_broken_weights_file_is_named(bundle_dir: Path, keep: float) -> None:
    weights = bundle_dir / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[:int(len(data) * keep)])
    message = _one_line_error(bundle_dir)
    assert message.startswith(f"{weights}: not a readable Keras weights file")


def test_empty_config_is_named(bundle_dir: Path) -> None:
    (bundle_dir / "config.json").write_text("")
    assert _one_line_error(bundle_dir).startswith(
        f"{bundle_dir / 'config.json'}: not a model config (not valid JSON")


@pytest.mark.parametrize(("change", "expected"), [
    ({"model": {"units": 32}}, "model.weights.h5: does not match {config}"),
    ({"model": {"kind": "merge"}}, "model.weights.h5: does not match {config}"),
    ({"model": {"condition": "findings"}}, "model.weights.h5: does not match {config}"),
    ({"vocab_size": 9}, "{config}: vocab_size 9 and max_len 6 do not match"),
    ({"model": {"units": "many"}}, "{config}: model.units must be an integer"),
    ({"regions": None}, "{config}: not a model config (the transformer needs the spatial grid"),
    ({"feature_dim": -1}, "{config}: not a model config (sizes must be positive integers"),
    ({"max_len": None, "model": {}}, "{config}: not a model config (sizes must be positive"),
], ids=["units", "kind", "condition", "vocab", "type", "regions", "negative", "null"])
def test_config_not_matching_the_weights_is_one_line(bundle_dir: Path, change: dict,
                                                     expected: str) -> None:
    path = bundle_dir / "config.json"
    config = json.loads(path.read_text())
    config["model"].update(change.pop("model", {}))
    config.update(change)
    path.write_text(json.dumps(config))
    assert expected.format(config=path) in _one_line_error(bundle_dir)


def test_config_missing_a_key_or_not_an_object(bundle_dir: Path) -> None:
    path = bundle_dir / "config.json"
    config = json.loads(path.read_text())
    del config["regions"]
    path.write_text(json.dumps(config))
    assert _one_line_error(bundle_dir) == f"{path}: not a model config (no 'regions')"
    path.write_text("[1, 2]")
    assert _one_line_error(bundle_dir) == f"{path}: not a model config (expected a JSON object)"
