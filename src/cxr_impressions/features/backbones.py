"""ImageNet CNN backbones (Keras applications), their weights, and their preprocessing.

Each backbone model takes float images in [0, 255] (as `images.decode_and_resize` makes them),
applies its own preprocessing inside the graph, and returns the global-average-pooled vector and
the spatial grid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from ..errors import InputError

log = logging.getLogger(__name__)

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[..., keras.Model]
    weights_file: str  # the standard Keras file name of the no-top ImageNet weights
    url_path: str
    native_size: int
    mode: str  # "tf": scale to [-1, 1]; "torch": ImageNet mean/std


BACKBONES = {
    "xception": BackboneSpec(
        "xception", keras.applications.Xception,
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "xception", 299, "tf"),
    "inceptionv3": BackboneSpec(
        "inceptionv3", keras.applications.InceptionV3,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "inception_v3", 299, "tf"),
    "densenet121": BackboneSpec(
        "densenet121", keras.applications.DenseNet121,
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet", 224, "torch"),
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(spec: BackboneSpec, weights: str, weights_dir: str,
                    allow_download: bool, weights_dir_setting: str = "machine.weights_dir",
                    download_setting: str | None = "machine.allow_download") -> str | None:
    """The weights file to load, or None for random weights (`weights: none`).

    `imagenet` looks for the standard Keras file in `weights_dir`, then in Keras' own cache, and
    only then (with `allow_download`) downloads it. The error message names where the user sets
    `weights_dir` and `allow_download` (params, or the CLI's options).
    """
    if weights == "none":
        return None
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise InputError(f"{weights}: weights file not found (features.weights)")
        return weights
    local = Path(weights_dir) / spec.weights_file
    if local.is_file():
        return str(local)
    cached = Path(keras.config.keras_home() if hasattr(keras.config, "keras_home")
                  else Path.home() / ".keras") / "models" / spec.weights_file
    if cached.is_file():
        return str(cached)
    url = f"{KERAS_WEIGHTS_URL}/{spec.url_path}/{spec.weights_file}"
    where = f"put {spec.weights_file} in {weights_dir} ({weights_dir_setting}); get it from {url}"
    if not allow_download:
        download = f", or set {download_setting}: true" if download_setting else ""
        raise InputError(f"{spec.name} ImageNet weights not found: {where}{download}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        return keras.utils.get_file(spec.weights_file, url, cache_subdir="models")
    except Exception as exc:  # any network failure ends in the same advice
        raise InputError(f"{spec.name} ImageNet weights could not be downloaded ({exc}): "
                         f"{where}") from None
    finally:
        socket.setdefaulttimeout(previous)


def build_backbone(name: str, weights_path: str | None, input_size: int, seed: int = 0,
                   grid: bool = True) -> keras.Model:
    """A model from [0, 255] images to `pooled` (and `grid` when asked) features."""
    spec = get_spec(name)
    keras.utils.set_random_seed(seed)  # `weights: none` gives the same random net every run
    inputs = keras.Input((input_size, input_size, 3), name="image")
    if spec.mode == "tf":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs)
    else:
        x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
        x = keras.layers.Normalization(mean=_IMAGENET_MEAN,
                                       variance=[s * s for s in _IMAGENET_STD],
                                       name="preprocess")(x)
    try:
        base = spec.build(include_top=False, weights=None, input_tensor=None,
                          input_shape=(input_size, input_size, 3))
    except ValueError as exc:
        raise InputError(f"features.image_size {input_size} is too small for {name} "
                         f"({str(exc).splitlines()[0]})") from None
    if weights_path is not None:
        try:
            base.load_weights(weights_path)
        except (ValueError, OSError) as exc:
            raise InputError(f"{weights_path}: cannot load {name} weights "
                             f"({str(exc).splitlines()[0][:200]})") from None
    feature_map = base(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(feature_map)
    outputs = {"pooled": pooled}
    if grid:
        outputs["grid"] = keras.layers.Identity(name="grid")(feature_map)
    return keras.Model(inputs, outputs, name=f"{name}_features")
