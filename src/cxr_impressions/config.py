"""The one config loader: `params.yaml` sections as validated dataclasses.

Every stage reads its section through `load_section`, so a wrong param (unknown key, wrong type,
value out of range) is one clear line naming the param, never a traceback from deep inside a stage.

Rules (tests/test_config.py and tests/test_architecture.py enforce them, for every section in
`SECTIONS`, so a new section only has to follow them):

- **One source of defaults.** The dataclasses below hold the defaults. `params.yaml` lists every
  section of `SECTIONS` and every field of each, with exactly these values, so that DVC tracks
  every value a stage uses; a new section is a dataclass here, an entry in `SECTIONS` and the
  same keys and values in `params.yaml`, and a changed default is changed in both at once. The
  test reads the working copy, or, where a `dvc exp run -S` left a value there, the committed
  `params.yaml`.
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
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import InputError

DEFAULT_PARAMS = Path("params.yaml")

T = TypeVar("T")
# A learning rate over a run: constant, or cosine down to 0 at its last step (schedules.py).
Schedule = Literal["constant", "cosine"]


def at_least(low: float, default: Any, at_most: float | None = None) -> Any:
    """A dataclass field whose value must lie in [low, at_most]."""
    return dataclasses.field(default=default, metadata={"min": low, "max": at_most})


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the input lives. `root` is the one switch between the sample and the full data."""

    root: str = "data/sample"
    format: Literal["auto", "csv", "xml", "mimic"] = "auto"
    images: str = "images"  # the image folder under root; MIMIC-CXR: files


@dataclasses.dataclass(frozen=True)
class ParseParams:
    skip_bad_reports: bool = False
    measure_view_rule: bool = True


@dataclasses.dataclass(frozen=True)
class CleanParams:
    target: Literal["impression", "findings"] = "impression"
    split: Literal["random", "r2gen", "official"] = "random"
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
class FinetuneParams:
    """The backbone adapted to chest X-rays (multi-label MeSH findings), before `features`.

    The backbone, image size and resize policy are the features section's."""

    weights: str = "imagenet"  # the starting point: imagenet | none | path to a Keras weights file
    train_from: Literal["top", "all"] = "top"  # top: layers above `cut`, on cached activations
    cut: str = ""  # the first layer above the cut ("": the backbone's default; Xception: block 12)
    labels: Literal["mesh", "text"] = "mesh"  # MeSH codes, or the labeller on the target text
    epochs: int = at_least(1, 3)
    batch_size: int = at_least(1, 32)
    learning_rate: float = at_least(1e-7, 2e-4, at_most=1.0)
    # constant: `learning_rate` throughout; cosine: from `learning_rate` down to 0 at the last
    # step, along half a cosine, so the last epochs take smaller steps.
    schedule: Schedule = "constant"
    # > 0: validation scores, and the model keeps, the optimizer's exponential moving average of
    # the weights (this momentum per step) while training continues from the raw ones; 0: off.
    ema_momentum: float = at_least(0.0, 0.0, at_most=0.9999)
    seed: int = at_least(0, 0)
    # train_from top: shift each training image's cached activations by up to this many cells
    # of the cut's grid, a random translation (zero fill) drawn per epoch; 0: none.
    activation_shift: int = at_least(0, 0, at_most=8)
    # Extra targets for the head, trained and not scored: every other MeSH heading (the term
    # before "/", e.g. calcinosis, aorta, scoliosis) on at least this many training studies; 0:
    # none. More to tell apart may teach the backbone more than the 14 targets alone.
    auxiliary_mesh: int = at_least(0, 0)
    # Each target's positives weigh (training negatives / positives) ** this in the loss, so
    # rare findings are not drowned by the common negatives; 0: unweighted, 1: balanced.
    positive_weight_power: float = at_least(0.0, 0.0, at_most=1.0)
    # bfloat16: the backbone under Keras' mixed_bfloat16 policy (cache, steps and passes) where
    # the CPU (AVX512_BF16 or AMX) or a GPU supports it, else float32 with a one-line notice.
    # Chosen on validation (README "Results"): as good, and 2.4x faster steps where supported.
    precision: Literal["float32", "bfloat16"] = "bfloat16"


@dataclasses.dataclass(frozen=True)
class FeaturesParams:
    backbone: Literal["xception", "inceptionv3", "densenet121"] = "xception"
    # finetuned (finetune's output; chosen on validation AUC, README "Results") | imagenet |
    # none | path to a Keras weights file
    weights: str = "finetuned"
    image_size: int = at_least(32, 299)
    resize: Literal["squash", "pad"] = "squash"
    grid: bool = True  # also store the spatial grid (the transformer reads it)
    batch_size: int = at_least(1, 8)
    seed: int = at_least(0, 0)
    # bfloat16: the backbone under Keras' mixed_bfloat16 policy where the CPU (AVX512_BF16 or
    # AMX) or a GPU supports it, else float32 with a one-line notice; outputs stay float32.
    precision: Literal["float32", "bfloat16"] = "float32"


@dataclasses.dataclass(frozen=True)
class MachineParams:
    """How and where the stages run here; no stage tracks this section (see the module doc)."""

    threads: int = at_least(0, 0)  # TensorFlow intra-op threads; 0: all cores
    weights_dir: str = "../shared/weights"  # where `features.weights: imagenet` looks first
    allow_download: bool = False  # true: fall back to Keras' own download
    # Where the features stage runs the backbone: here, or in an actor pool on a Ray cluster.
    # Both give the same values up to float rounding, so this is not a features param.
    features_engine: Literal["local", "ray"] = "local"
    ray_address: str = ""  # "": a Ray instance on this machine; host:port of a head; "auto"
    ray_actors: int = at_least(1, 1)  # actors in the pool, one backbone each
    ray_cpus_per_actor: float = at_least(0.0, 1.0)
    ray_gpus_per_actor: float = at_least(0.0, 0.0)
    ray_connect_timeout: float = at_least(0.1, 10.0)  # seconds before an address fails
    ray_actor_start_timeout: float = at_least(1.0, 600.0)  # seconds for the pool to start
    # train.strategy: multi_worker: seconds a worker waits on a lost peer before failing
    collective_timeout: float = at_least(0.0, 600.0)


@dataclasses.dataclass(frozen=True)
class EmbeddingsParams:
    glove: str = "data/glove/glove.6B.50d.iuxray-words.txt.gz"
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
    grid_pool: int = at_least(1, 3)  # transformer: average-pool the 10x10 grid by this factor
    # Decode conditioned on predicted labels: abnormal (one), findings (13 findings + abnormal)
    condition: Literal["findings", "abnormal", "none"] = "findings"
    # transformer: attend to the impressions of this many most similar training studies (0: off)
    retrieval_k: int = at_least(0, 0)
    # Also condition on the report's exam title, the template's header line (data/titles.py);
    # titles of fewer training studies than exam_title_min_count count as unknown
    exam_title: bool = True  # chosen on validation (README "Results")
    exam_title_min_count: int = at_least(1, 5)
    # Train this many models (train seeds `member_seeds`) and decode with their average: the
    # mean of their label probabilities and of each next word's probability (models.ensemble)
    ensemble: int = at_least(1, 1)

    def validate(self, source: str) -> None:
        if self.retrieval_k and self.kind != "transformer":
            raise InputError(f"{source}: model.retrieval_k needs model.kind: transformer (the "
                             f"memory is cross-attended), got {self.kind}; set it to 0")

    def member_seeds(self, seed: int) -> list[int]:
        """The train seed of each ensemble member under `train.seed: seed`: seed x ensemble + i,
        so that the ensembles of two train seeds share no member (ensemble 1: `seed` itself)."""
        return [seed * self.ensemble + i for i in range(self.ensemble)]

    @property
    def needs_grid(self) -> bool:
        """Whether the model reads the spatial grid of regions (else the pooled vectors)."""
        return self.kind == "transformer"


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int = at_least(1, 12)
    batch_size: int = at_least(1, 64)
    learning_rate: float = at_least(1e-6, 1e-3, at_most=1.0)
    patience: int = at_least(1, 3)
    monitor: Literal["val_loss", "val_bleu4"] = "val_loss"
    # constant: `learning_rate` throughout; cosine: from `learning_rate` down to 0 at the last
    # step of `epochs` (an early stop ends the run before it).
    schedule: Schedule = "constant"
    # > 0: validation scores, and the model keeps, the optimizer's exponential moving average of
    # the weights (this momentum per step) while training continues from the raw ones; 0: off.
    ema_momentum: float = at_least(0.0, 0.0, at_most=0.9999)
    seed: int = at_least(0, 0)
    # default | mirrored (every local GPU) | multi_worker (TF_CONFIG); README "Scaling out".
    # A param, not a machine setting: replicas round the loss differently, so the model differs.
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    # model.exam_title: the share of training studies shown with no title, so that the model
    # also writes for a study whose title is missing or new
    exam_title_dropout: float = at_least(0.0, 0.2, at_most=1.0)


LabelMode = Literal["independent", "consistent"]
SelectMetric = Literal["bleu4", "cider", "rouge_l", "abnormal_f1", "findings_macro_f1"]


@dataclasses.dataclass(frozen=True)
class DecodeParams:
    """How captions are decoded. With `select: true` (the default) the train stage chooses
    method, beam_size, length_penalty and labels among the candidate lists by `select_metric`
    on the validation split and writes them to models/decoding.json, which evaluate and
    `cxr predict` use; with `select: false` it writes them as given."""

    method: Literal["greedy", "beam"] = "beam"
    beam_size: int = at_least(1, 3)
    length_penalty: float = at_least(0.0, 0.7, at_most=3.0)  # score / length ** length_penalty
    no_repeat_ngram: int = at_least(0, 3)  # 0: no blocking
    # How a conditioned model's predicted labels become the decoder's condition: `independent`,
    # each label on where its probability passes its threshold; `consistent`, then made
    # consistent the way the training labels are (abnormal on exactly when some finding is on).
    labels: LabelMode = "independent"
    select: bool = True
    beam_sizes: tuple[int, ...] = (1, 3, 5)  # candidates; 1 is greedy decoding
    length_penalties: tuple[float, ...] = (0.0, 0.7, 1.0)  # candidates for beams > 1
    label_modes: tuple[str, ...] = ("independent", "consistent")  # candidates for `labels`
    select_metric: SelectMetric = "bleu4"
    # Only candidates whose most frequent validation caption is at most this share of the
    # studies compete (1.0: every candidate); none qualifying, the lowest share wins.
    max_top_share: float = at_least(0.01, 1.0, at_most=1.0)
    # `varied`: among the candidates whose `select_metric` validation cannot tell from the
    # best's (the paired bootstrap interval of candidate minus best reaches 0), the one whose
    # commonest caption goes to the fewest studies; `best`: the best, however small its lead.
    select_ties: Literal["best", "varied"] = "varied"
    # Under `varied`, a candidate tied with the best on `select_metric` must also not be
    # significantly below that best on each of these (the same paired interval reaches 0):
    # BLEU-4 alone let ties trade ROUGE-L away for variety.
    select_guards: tuple[SelectMetric, ...] = ()
    select_resamples: int = at_least(100, 1000)  # resamples of the validation studies (ties)
    select_seed: int = at_least(0, 0)  # seeds those resamples
    # How the train stage sets a conditioned model's label thresholds on validation:
    # `prevalence`, each label positive for m times its training prevalence, one m for all
    # labels chosen among `prevalence_multipliers`; `f1`, each label its own best-F1 threshold.
    thresholds: Literal["prevalence", "f1"] = "prevalence"
    prevalence_multipliers: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)

    # What models/decoding.json holds: the settings one decodes with.
    SETTINGS = ("method", "beam_size", "length_penalty", "no_repeat_ngram", "labels")
    LABEL_MODES = get_args(LabelMode)

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.SETTINGS}

    def validate(self, source: str) -> None:
        if not self.beam_sizes or any(isinstance(b, bool) or b < 1 for b in self.beam_sizes):
            raise InputError(f"{source}: decode.beam_sizes must be a non-empty list of integers "
                             f">= 1, got {list(self.beam_sizes)}")
        if not self.length_penalties or any(not 0.0 <= a <= 3.0 for a in self.length_penalties):
            raise InputError(f"{source}: decode.length_penalties must be a non-empty list of "
                             f"numbers in [0, 3], got {list(self.length_penalties)}")
        if not self.prevalence_multipliers or any(
                isinstance(m, bool) or not 0.0 < m <= 100.0 for m in self.prevalence_multipliers):
            raise InputError(f"{source}: decode.prevalence_multipliers must be a non-empty list "
                             f"of numbers in (0, 100], got {list(self.prevalence_multipliers)}")
        if not self.label_modes or any(m not in self.LABEL_MODES for m in self.label_modes):
            raise InputError(f"{source}: decode.label_modes must be a non-empty list of "
                             f"{' | '.join(self.LABEL_MODES)}, got {list(self.label_modes)}")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    worst: int = at_least(1, 20)
    bootstrap: int = at_least(1, 1000)  # resamples of the test studies for the 95% intervals
    seed: int = at_least(0, 0)  # seeds the bootstrap resamples


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
    timeout_s: float = at_least(0.1, 60.0)  # per request, upload and queueing included: 504
    max_upload_mb: float = at_least(0.01, 20.0)  # the whole request body; beyond: 413
    max_image_side: int = at_least(32, 4096)  # pixels along either side; beyond: 413
    heap_trim_s: float = at_least(0.0, 10.0)  # free heap back to the OS this often; 0: never
    token_env: str = "CXR_API_TOKEN"  # the environment variable holding the optional API token


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "parse": ParseParams,
    "clean": CleanParams,
    "finetune": FinetuneParams,
    "features": FeaturesParams,
    "embeddings": EmbeddingsParams,
    "model": ModelParams,
    "train": TrainParams,
    "decode": DecodeParams,
    "evaluate": EvaluateParams,
    "report": ReportParams,
    "machine": MachineParams,
    "serve": ServeParams,
}
UNTRACKED = frozenset({"machine", "serve"})  # sections no stage lists in dvc.yaml


# DVC runs queued and `--temp` experiments in a copy of the repo at <project>/.dvc/tmp/exps/<tmp>/.
_EXPERIMENT_COPY = (".dvc", "tmp", "exps")


def project_path(path: str | Path) -> Path:
    """A path from params.yaml, as the project sees it, also inside a DVC experiment's copy.

    Relative paths are relative to the repo root, so `../shared/weights` lies beside the repo.
    In a queued or `--temp` experiment the stages run in a copy under `.dvc/tmp/exps/`, where
    that path would point inside `.dvc/tmp/exps/`; a relative path missing there is resolved
    against the project the copy was made from instead."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    here = Path.cwd().resolve().parts
    for i in range(len(here) - len(_EXPERIMENT_COPY)):
        if here[i:i + len(_EXPERIMENT_COPY)] == _EXPERIMENT_COPY:
            inside_copy = here[i + len(_EXPERIMENT_COPY) + 1:]  # cwd relative to the copy's root
            candidate = Path(*here[:i], *inside_copy) / path
            return candidate if candidate.exists() else path
    return path


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
