"""ImageNet CNN backbones (Keras applications), their weights, and their preprocessing.

Each backbone model takes float images in [0, 255] (as `images.decode_and_resize` makes them),
applies its own preprocessing inside the graph, and returns the global-average-pooled vector and
the spatial grid. `split_base` cuts a backbone in two at a layer, for the finetune stage.

Weights: `imagenet` (the standard Keras file), `none` (random, seeded: for tests), `finetuned`
(the finetune stage's output, `<model dir>/finetuned/<backbone>.weights.h5`) or a file path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import project_path
from ..errors import InputError

if TYPE_CHECKING:  # keras (TensorFlow) loads when a model is built: a Ray driver never does
    import keras

log = logging.getLogger(__name__)

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    application: str  # the constructor's name in keras.applications (imported when building)
    weights_file: str  # the standard Keras file name of the no-top ImageNet weights
    url_path: str
    native_size: int
    mode: str  # "tf": scale to [-1, 1]; "torch": ImageNet mean/std
    # finetune's default cut: the first layer above it (the cached activations are its input).
    # Xception: block 12's first layer, whose input is block 11's 19x19x728 output (`add_9`);
    # chosen over block 13 on validation (README, Results).
    default_cut: str = ""


BACKBONES = {
    "xception": BackboneSpec(
        "xception", "Xception",
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "xception", 299, "tf",
        "block12_sepconv1_act"),
    "inceptionv3": BackboneSpec(
        "inceptionv3", "InceptionV3",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "inception_v3", 299, "tf"),
    "densenet121": BackboneSpec(
        "densenet121", "DenseNet121",
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "densenet", 224, "torch",
        "pool4_bn"),
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


FINETUNED = "finetuned"


def finetuned_path(model_dir: str | os.PathLike[str], backbone: str) -> Path:
    """Where the finetune stage writes the adapted backbone, inside the caption model's folder
    so that the folder alone runs `cxr predict`."""
    return Path(model_dir) / "finetuned" / f"{backbone}.weights.h5"


def resolve_weights(spec: BackboneSpec, weights: str, weights_dir: str,
                    allow_download: bool, weights_dir_setting: str = "machine.weights_dir",
                    download_setting: str | None = "machine.allow_download",
                    finetuned: str | os.PathLike[str] | None = None) -> str | None:
    """The weights file to load, or None for random weights (`weights: none`).

    `imagenet` looks for the standard Keras file in `weights_dir`, then in Keras' own cache, and
    only then (with `allow_download`) downloads it. The error message names where the user sets
    `weights_dir` and `allow_download` (params, or the CLI's options). `finetuned` is the file
    `weights: finetuned` loads. Relative paths are the project's (`config.project_path`), also
    when a stage runs in a queued experiment's copy of the repo.
    """
    if weights == "none":
        return None
    if weights == FINETUNED:
        if finetuned is None or not Path(finetuned).is_file():
            raise InputError(f"{finetuned}: fine-tuned {spec.name} weights not found "
                             "(features.weights: finetuned; run `dvc repro finetune`)")
        return os.fspath(finetuned)
    if weights != "imagenet":
        path = project_path(weights)
        if not path.is_file():
            raise InputError(f"{weights}: weights file not found (features.weights)")
        return str(path)
    local = project_path(weights_dir) / spec.weights_file
    if local.is_file():
        return str(local)
    import keras

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


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is absent."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_support() -> str | None:
    """What runs bf16 fast here (a GPU, or the CPU flag), or None where nothing does."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "GPU"
    found = sorted(BF16_CPU_FLAGS & cpu_flags())
    return f"CPU {'/'.join(found)}" if found else None


def resolve_precision(requested: str) -> str:
    """The precision the backbone will run at: `bfloat16` only where the hardware has it.

    Without AVX512_BF16/AMX (or a GPU), bf16 matrix products are emulated and slower than
    float32, so the fallback is float32, said in one line rather than silently."""
    if requested not in ("float32", "bfloat16"):
        raise InputError(f"precision must be float32 or bfloat16, got {requested!r}")
    if requested == "float32":
        return "float32"
    support = bf16_support()
    if support is None:
        log.warning("precision bfloat16: this CPU has neither AVX512_BF16 nor AMX and there is "
                    "no GPU; running the backbone in float32")
        return "float32"
    log.info("precision bfloat16: the backbone runs under mixed_bfloat16 (%s)", support)
    return "bfloat16"


def preprocess(name: str, images: keras.KerasTensor) -> keras.KerasTensor:
    """The backbone's own input scaling, as layers, from [0, 255] images."""
    import keras

    if get_spec(name).mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(images)
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(images)
    return keras.layers.Normalization(mean=_IMAGENET_MEAN,
                                      variance=[s * s for s in _IMAGENET_STD],
                                      name="preprocess")(x)


def build_base(name: str, weights_path: str | None, input_size: int,
               seed: int = 0) -> keras.Model:
    """The Keras application itself (preprocessed images in, feature map out), weights loaded."""
    import keras

    spec = get_spec(name)
    keras.utils.set_random_seed(seed)  # `weights: none` gives the same random net every run
    try:
        application = getattr(keras.applications, spec.application)
        base = application(include_top=False, weights=None, input_tensor=None,
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
    return base


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Build Keras layers under `mixed_bfloat16` (bf16 compute, float32 weights) or float32;
    the policy is global, so the previous one is put back for later models."""
    import keras

    if precision not in ("float32", "bfloat16"):
        raise InputError(f"precision must be float32 or bfloat16, got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_backbone(name: str, weights_path: str | None, input_size: int, seed: int = 0,
                   grid: bool = True, precision: str = "float32") -> keras.Model:
    """A model from [0, 255] images to `pooled` (and `grid` when asked) float32 features.

    `precision: bfloat16` builds the CNN under Keras' `mixed_bfloat16` policy (bf16 compute,
    float32 weights); the pooling runs in float32, so the stored vectors are float32 either
    way. Callers pass the result of `resolve_precision`, which checks the hardware."""
    import keras

    with dtype_policy(precision):
        base = build_base(name, weights_path, input_size, seed)
        inputs = keras.Input((input_size, input_size, 3), name="image")
        feature_map = base(preprocess(name, inputs))
        # float32 layers cast their bf16 input up: the mean of 100 bf16 values is taken in fp32.
        pooled = keras.layers.GlobalAveragePooling2D(name="pooled", dtype="float32")(feature_map)
        outputs = {"pooled": pooled}
        if grid:
            outputs["grid"] = keras.layers.Identity(name="grid", dtype="float32")(feature_map)
        return keras.Model(inputs, outputs, name=f"{name}_features")


def stored_arrays(outputs: dict, grid: bool) -> dict[str, np.ndarray]:
    """A backbone's outputs as the features file stores them: pooled float32, grid float16."""
    arrays = {"pooled": np.asarray(outputs["pooled"]).astype(np.float32)}
    if grid:
        arrays["grid"] = np.asarray(outputs["grid"]).astype(np.float16)
    return arrays


def split_base(base: keras.Model, cut: str) -> tuple[keras.Model, keras.Model]:
    """(bottom, top) of `base` at the input of layer `cut`: `top(bottom(x)) == base(x)`.

    Both share `base`'s layers, so training `top` adapts `base` in place.
    """
    import keras

    try:
        tensor = base.get_layer(cut).input
    except ValueError:
        raise InputError(f"finetune.cut: {base.name} has no layer {cut!r}") from None
    if isinstance(tensor, list | tuple):
        raise InputError(f"finetune.cut: layer {cut!r} reads {len(tensor)} tensors; name a "
                         "layer with one input (the first layer of a block)")
    try:
        top = keras.Model(tensor, base.output, name=f"{base.name}_top")
    except ValueError:
        raise InputError(f"finetune.cut: the layers above {cut!r} also read tensors from below "
                         "it; name the first layer of a block") from None
    bottom = keras.Model(base.input, tensor, name=f"{base.name}_bottom")
    return bottom, top
