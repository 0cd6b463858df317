"""The one config loader: `params.yaml` sections as validated dataclasses.

Every stage reads its section through `load_section`, so a wrong param (unknown key, wrong type,
value out of range) is one clear line naming the param, never a traceback from deep inside a stage.

Rules (tests/test_config.py and tests/test_architecture.py enforce them, for every section in
`SECTIONS`, so a new section only has to follow them):

- **One module per section.** Section `decode` is `DecodeParams` in `settings/decode.py`, with
  its defaults and checks; this loader imports that module only when the section is loaded. So
  a stage's DVC deps list the settings modules of the sections it loads and of the dataclasses
  its code imports, no others, and a new decode param reruns only the stage that runs
  `DecodeParams` (selection) and what its output makes stale, not every stage, as it would if
  the dataclasses lived in this module, a dep of every stage.
- **One source of defaults.** The dataclasses hold the defaults. `params.yaml` lists every
  section of `SECTIONS` and every field of each, with exactly these values, so that DVC tracks
  every value a stage uses; a new section is a module in `settings/`, an entry in `SECTIONS`
  and the same keys and values in `params.yaml`, and a changed default is changed in both at
  once. The test reads the working copy, or, where a `dvc exp run -S` left a value there, the
  committed `params.yaml`.
- **Content vs machine.** A section holds what changes a stage's outputs. Settings that change
  only how or where a stage runs on this machine (threads, local paths of read-only inputs that
  are checked by content, download permission) go to `machine`, which no stage tracks, so that
  teammates with other paths or cores share one DVC cache.
- **Whole sections.** Each stage lists whole sections under `params:` in `dvc.yaml` (never single
  keys), exactly the sections its script loads (besides `machine`): any change or typo in them
  reruns the stage, and the typo then stops it with this loader's one-line error. Only stage
  scripts call `load_section`, with a literal section name.
- **YAML as DVC reads it.** The file is read with ruamel.yaml's safe loader (YAML 1.2), the parser
  DVC itself uses, so `5e-4` is a number here as it is in `dvc params diff`, and `no` is text.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import InputError

DEFAULT_PARAMS = Path("params.yaml")

T = TypeVar("T")

# Each section's dataclass, by class name: section `decode` is `DecodeParams` in
# `settings/decode.py`. The loader imports a section's module only when that section is loaded,
# so loading one section runs no other section's module, and a stage's DVC deps need not list
# them (tests/test_architecture.py).
_SECTION_CLASSES = {
    "data": "DataParams",
    "parse": "ParseParams",
    "clean": "CleanParams",
    "finetune": "FinetuneParams",
    "features": "FeaturesParams",
    "embeddings": "EmbeddingsParams",
    "model": "ModelParams",
    "train": "TrainParams",
    "decode": "DecodeParams",
    "evaluate": "EvaluateParams",
    "report": "ReportParams",
    "machine": "MachineParams",
    "serve": "ServeParams",
}


class _Sections(Mapping[str, type]):
    """Section name -> its dataclass, its module imported when the class is first asked for."""

    def __getitem__(self, name: str) -> type:
        class_name = _SECTION_CLASSES[name]  # a KeyError for an unknown section, as a dict's
        module = importlib.import_module(f"{__package__}.settings.{name}")
        return getattr(module, class_name)

    def __contains__(self, name: object) -> bool:  # Mapping's default would import the module
        return name in _SECTION_CLASSES

    def __iter__(self) -> Iterator[str]:
        return iter(_SECTION_CLASSES)

    def __len__(self) -> int:
        return len(_SECTION_CLASSES)


SECTIONS: Mapping[str, type] = _Sections()
UNTRACKED = frozenset({"machine", "serve"})  # sections no stage lists in dvc.yaml


# DVC runs queued and `--temp` experiments in a copy of the repo at <project>/.dvc/tmp/exps/<tmp>/.
_EXPERIMENT_COPY = (".dvc", "tmp", "exps")


def origin_path(path: str | Path) -> Path:
    """A path relative to the repo root, in the project itself, also from inside a DVC
    experiment's copy: where state that every experiment shares lives (the finetune's
    activation cache). Outside a copy, and for an absolute path, the path itself."""
    path = Path(path)
    if path.is_absolute():
        return path
    here = Path.cwd().resolve().parts
    for i in range(len(here) - len(_EXPERIMENT_COPY)):
        if here[i:i + len(_EXPERIMENT_COPY)] == _EXPERIMENT_COPY:
            inside_copy = here[i + len(_EXPERIMENT_COPY) + 1:]  # cwd relative to the copy's root
            return Path(*here[:i], *inside_copy) / path
    return path


def project_path(path: str | Path) -> Path:
    """A path from params.yaml, as the project sees it, also inside a DVC experiment's copy.

    Relative paths are relative to the repo root, so `../shared/weights` lies beside the repo.
    In a queued or `--temp` experiment the stages run in a copy under `.dvc/tmp/exps/`, where
    that path would point inside `.dvc/tmp/exps/`; a relative path missing there is resolved
    against the project the copy was made from instead (`origin_path`)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    candidate = origin_path(path)
    return candidate if candidate.exists() else path


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The params file as DVC reads it (YAML 1.2: `5e-4` is a number, `no` a string)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: params file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    try:
        loaded = YAML(typ="safe").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = (exc.problem or exc.context or "").strip()
        raise InputError(f"{path}:{where} not valid YAML ({problem})") from None
    except YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
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
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_coerce(param, args[0], v, source) for v in value)
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
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )


def _plural(hint: Any) -> str:
    return {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}.get(
        hint, f"{_describe(hint)} values")


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
