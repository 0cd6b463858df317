"""The one config loader: `params.yaml` sections as validated dataclasses.

Every stage reads its section through `load_section`, so a wrong param (unknown key, wrong type,
value out of range) is one clear line naming the param, never a traceback from deep inside a stage.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from .errors import InputError

DEFAULT_PARAMS = Path("params.yaml")

T = TypeVar("T")


def at_least(low: float, default: Any, at_most: float | None = None) -> Any:
    """A dataclass field whose value must lie in [low, at_most]."""
    return dataclasses.field(default=default, metadata={"min": low, "max": at_most})


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the input lives. `root` is the one switch between the sample and the full data."""

    root: str = "data/sample"
    format: Literal["auto", "csv", "xml"] = "auto"


@dataclasses.dataclass(frozen=True)
class ParseParams:
    skip_bad_reports: bool = False
    measure_view_rule: bool = True


@dataclasses.dataclass(frozen=True)
class CleanParams:
    target: Literal["impression", "findings"] = "impression"
    split: Literal["random", "r2gen"] = "random"
    r2gen_annotation: str = "../shared/iuxray/r2gen_annotation.json"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = at_least(0, 42)
    min_count: int = at_least(1, 2)
    max_len: int = at_least(0, 0)  # 0: take max_len_percentile of the training lengths
    max_len_percentile: float = at_least(1.0, 95.0, at_most=100.0)
    sentence_token: str = "."  # empty: drop sentence boundaries
    start_token: str = "startseq"
    end_token: str = "endseq"

    def validate(self, source: str) -> None:
        if any(x < 0 for x in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise InputError(
                f"{source}: clean.fractions must be three non-negative numbers summing to 1, "
                f"got {list(self.fractions)}"
            )
        if not self.start_token or not self.end_token or self.start_token == self.end_token:
            raise InputError(f"{source}: clean.start_token and clean.end_token must differ")


@dataclasses.dataclass(frozen=True)
class FeaturesParams:
    backbone: Literal["xception", "inceptionv3", "densenet121"] = "xception"
    weights: str = "imagenet"  # imagenet | none | path to a Keras weights file
    weights_dir: str = "../shared/weights"
    allow_download: bool = False
    image_size: int = at_least(32, 299)
    resize: Literal["squash", "pad"] = "squash"
    grid: bool = False
    batch_size: int = at_least(1, 8)
    threads: int = at_least(0, 0)  # 0: all cores
    seed: int = at_least(0, 0)
    # bfloat16: the backbone under Keras' mixed_bfloat16 policy where the CPU (AVX512_BF16 or
    # AMX) or a GPU supports it, else float32 with a one-line notice; outputs stay float32.
    precision: Literal["float32", "bfloat16"] = "float32"


@dataclasses.dataclass(frozen=True)
class EmbeddingsParams:
    glove: str = "../shared/glove/glove.6B.50d.iuxray-subset.txt"
    member: str = ""  # with a .zip: the member to read, e.g. glove.6B.300d.txt
    dim: int = at_least(0, 0)  # 0: take the file's dimension; else it must match
    seed: int = at_least(0, 0)


@dataclasses.dataclass(frozen=True)
class ModelParams:
    kind: Literal["merge", "bilstm_attention", "transformer"] = "transformer"
    units: int = at_least(8, 256)
    fuse: Literal["concat", "sum"] = "concat"  # bilstm_attention: how the two views combine
    freeze_embeddings: bool = False
    dropout: float = at_least(0.0, 0.3, at_most=0.9)
    heads: int = at_least(1, 4)  # transformer
    layers: int = at_least(1, 2)  # transformer decoder layers
    grid_pool: int = at_least(1, 1)  # transformer: average-pool the 10x10 grid by this factor
    condition: Literal["abnormal", "none"] = "abnormal"  # decode conditioned on a predicted label

    @property
    def needs_grid(self) -> bool:
        """Whether the model reads the spatial grid of regions (else the pooled vectors)."""
        return self.kind == "transformer"


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int = at_least(1, 30)
    batch_size: int = at_least(1, 32)
    learning_rate: float = at_least(1e-6, 1e-3, at_most=1.0)
    patience: int = at_least(1, 4)
    monitor: Literal["val_loss", "val_bleu4"] = "val_loss"
    seed: int = at_least(0, 0)


@dataclasses.dataclass(frozen=True)
class DecodeParams:
    method: Literal["greedy", "beam"] = "beam"
    beam_size: int = at_least(1, 3)
    length_penalty: float = at_least(0.0, 0.7, at_most=3.0)  # score / length ** length_penalty
    no_repeat_ngram: int = at_least(0, 3)  # 0: no blocking


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    worst: int = at_least(1, 20)


@dataclasses.dataclass(frozen=True)
class ReportParams:
    top_impressions: int = at_least(1, 15)  # the most frequent impressions charted


@dataclasses.dataclass(frozen=True)
class ServeParams:
    """`cxr serve`: where it listens, its dynamic batching and its limits (CLI flags override)."""

    host: str = "127.0.0.1"  # loopback only; anything else should set an API token
    port: int = at_least(1, 8000, at_most=65535)
    max_batch: int = at_least(1, 8)  # studies decoded together; 1 turns batching off
    backbone_batch: int = at_least(1, 2)  # images per backbone call within a batch
    max_wait_ms: float = at_least(0.0, 20.0, at_most=10_000.0)  # wait this long to fill a batch
    queue_size: int = at_least(1, 32)  # studies waiting or running; beyond: 503
    timeout_s: float = at_least(0.1, 60.0)  # per request, queueing included; beyond: 504
    max_upload_mb: float = at_least(0.01, 20.0)  # the whole request body; beyond: 413
    max_image_side: int = at_least(32, 4096)  # pixels along either side; beyond: 413
    token_env: str = "CXR_API_TOKEN"  # the environment variable holding the optional API token


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "parse": ParseParams,
    "clean": CleanParams,
    "features": FeaturesParams,
    "embeddings": EmbeddingsParams,
    "model": ModelParams,
    "train": TrainParams,
    "decode": DecodeParams,
    "evaluate": EvaluateParams,
    "report": ReportParams,
    "serve": ServeParams,
}


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise InputError(f"{path}:{where} not valid YAML") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: expected a mapping of sections at the top level")
    return loaded


def load_section(name: str, cls: type[T] | None = None, path: str | Path = DEFAULT_PARAMS) -> T:
    """Read section `name` of the params file into its dataclass, validating every key."""
    cls = cls or SECTIONS[name]
    raw = read_params(path).get(name, {}) or {}
    return build_section(name, cls, raw, source=str(path))


def build_section(name: str, cls: type[T], raw: dict[str, Any], source: str = "params") -> T:
    if not isinstance(raw, dict):
        raise InputError(f"{source}: section '{name}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise InputError(
            f"{source}: unknown param {name}.{unknown[0]} (known: {', '.join(sorted(fields))})"
        )
    values = {}
    for key, value in raw.items():
        values[key] = _coerce(f"{name}.{key}", hints[key], value, source)
    section = cls(**values)
    _check_ranges(name, section, source)
    return section


def _coerce(param: str, hint: Any, value: Any, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    bad = InputError(f"{source}: {param} must be {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(param, arg, value, source)
            except InputError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        return tuple(_coerce(param, a, v, source) for a, v in zip(args, value, strict=True))
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(param, args[0], v, source) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} {_describe(args[0])}s"
    if origin is list:
        return f"a list of {_describe(args[0])}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _check_ranges(name: str, section: Any, source: str) -> None:
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if low is not None and value < low:
            raise InputError(f"{source}: {name}.{f.name} must be >= {low}, got {value!r}")
        if high is not None and value > high:
            raise InputError(f"{source}: {name}.{f.name} must be <= {high}, got {value!r}")
    validate = getattr(section, "validate", None)
    if validate is not None:
        validate(source)
