"""The trained model as files under `models/`, loadable without DVC.

- `config.json`: the model params, the backbone settings of the features it was trained on and
  the shapes needed to rebuild it (the train stage writes it);
- `model.weights.h5`: the Keras weights (of every member, in order, for `model.ensemble` > 1);
  `vocab.json`: the vocabulary;
- `retrieval.npz`: the retrieval memory bank (the training studies' uids, pooled vectors and
  impression token ids; empty when `model.retrieval_k` is 0), so that evaluate and `cxr predict`
  retrieve from the same training studies as the train stage;
- `config.json` also records how the grid was pooled (`grid_pooling`, studies.py): a
  transformer without it and with `model.grid_pool` above 1 may have been trained before
  `pool_grid` read every cell, on regions pooled another way, and is refused in one line;
- `config.json` also holds, for a model with `model.exam_title`, the exam-title vocabulary
  (`exam_titles`, data/titles.py);
- `decoding.json`: the decoding settings (method, beam size, length penalty, n-gram blocking,
  label mode, normal text) and the label thresholds (`label_thresholds`, one per label of
  `model.condition`), all chosen on the validation split by the selection stage, used by evaluate
  and `cxr predict`; and, for a conditioned model, the normal templates (`normal_templates`,
  templates.py), the normal impressions (`normal_impressions`) and, for a model conditioned on
  findings, the finding phrases (`finding_phrases`, templates.py) that the selection stage
  took from the training split. A bundle saved before
  the selection stage existed has its thresholds in `config.json` instead; it loads with those.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_json
from ..config import build_section
from ..data.labeller import FINDINGS
from ..data.titles import TitleVocabulary
from ..data.tokenizer import Vocabulary
from ..errors import InputError
from ..settings.decoding import DecodingSettings
from ..settings.model import ModelParams
from .decoding import Decoder
from .models import CaptionModel, build_model, ensemble
from .retrieval import MemoryBank
from .studies import GRID_POOLING
from .templates import NO_TITLE, phrase_ids, template_ids


def worded_decoder(model: CaptionModel, vocab: Vocabulary, titles: TitleVocabulary | None,
                   thresholds: float | Sequence[float] | np.ndarray,
                   templates: dict[str, str], normal_impressions: Sequence[str],
                   phrases: dict[str, str]) -> Decoder:
    """A decoder of `model` under `thresholds` (one per label) that words its captions with
    these texts, as word ids of `vocab`: the normal templates by exam title (empty:
    none), the normal training impressions and the finding phrases by finding."""
    return Decoder(model, vocab, thresholds,
                   template_ids(templates, titles, vocab) if templates else None,
                   [vocab.word_ids(text) for text in normal_impressions],
                   phrase_ids(phrases, vocab))


@dataclass
class Bundle:
    model: CaptionModel
    vocab: Vocabulary
    config: dict
    decode: DecodingSettings
    params: ModelParams
    bank: MemoryBank | None = None  # the retrieval memory (None: the model retrieves nothing)
    sha256: str = ""  # the bundle's identity: `bundle_hash` of its files
    titles: TitleVocabulary | None = None  # model.exam_title: the titles it knows
    # By label, chosen on validation (decoding.json); a label missing decodes at 0.5.
    label_thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    # Title key to normal impression (decoding.json, templates.py); empty: none chosen.
    normal_templates: dict[str, str] = dataclasses.field(default_factory=dict)
    # The normal training impressions (decoding.json), which `template_written` rewords.
    normal_impressions: tuple[str, ...] = ()
    # Finding to phrase (decoding.json, templates.py), for `finding_text: appended`.
    finding_phrases: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def thresholds(self) -> np.ndarray:
        """The label thresholds chosen on validation, in the order of the model's labels."""
        return np.array([self.label_thresholds.get(name, 0.5) for name in self.model.labels],
                        np.float64)

    @property
    def abnormal_threshold(self) -> float:
        """The abnormal label's threshold chosen on validation (0.5 where none was chosen)."""
        return float(self.label_thresholds.get("abnormal", 0.5))

    @property
    def template_ids(self) -> list[list[int]] | None:
        """The normal templates' word ids by exam-title id (None: the bundle has none)."""
        if not self.normal_templates:
            return None
        return template_ids(self.normal_templates, self.titles, self.vocab)

    def decoder(self, thresholds: np.ndarray | None = None) -> Decoder:
        """The decoder of this model, with its normal templates and finding phrases, under its
        label thresholds (or `thresholds`, one per label)."""
        return worded_decoder(self.model, self.vocab, self.titles,
                              self.thresholds if thresholds is None else thresholds,
                              self.normal_templates, self.normal_impressions,
                              self.finding_phrases)

    def model_inputs(self, inputs: dict[str, np.ndarray],
                     exam_titles: Sequence[str | None] | None = None) -> dict[str, np.ndarray]:
        """The studies' image `inputs` plus what else the model takes: for a retrieval model,
        each study's `retrieved` training impressions (none excluded: a new study is not in the
        bank, and val/test studies never are); for an exam-title model, the ids of
        `exam_titles` (None, or a missing or unknown title: the "no title" id)."""
        n = len(inputs["views"])
        if exam_titles is not None and len(exam_titles) != n:
            raise ValueError(f"{len(exam_titles)} exam titles for {n} studies")
        out = dict(inputs)
        if self.bank is not None:
            out["retrieved"] = self.bank.retrieve(inputs["pooled"], inputs["views"],
                                                  self.params.retrieval_k)
        if self.titles is not None:
            out["exam_title"] = self.titles.encode(exam_titles or [None] * n)
        return out


def save_bundle(directory: str | os.PathLike[str], model: CaptionModel, vocab: Vocabulary,
                config: dict, bank: MemoryBank) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "model.weights.h5", suffix=".weights.h5") as tmp:
        model.train_model.save_weights(tmp)
    vocab.save(directory / "vocab.json")
    bank.save(directory / "retrieval.npz")
    write_json(directory / "config.json", config)


def save_decoding(directory: str | os.PathLike[str], decode: DecodingSettings,
                  label_thresholds: dict[str, float],
                  normal_templates: dict[str, str] | None = None,
                  normal_impressions: Sequence[str] = (),
                  finding_phrases: dict[str, str] | None = None) -> None:
    """What the selection stage chose on validation: the settings to decode with and the label
    thresholds (empty for a model without labels); and the normal templates and impressions and
    the finding phrases it took from the training split (a conditioned model)."""
    write_json(Path(directory) / "decoding.json",
               {**decode.settings(), "label_thresholds": label_thresholds,
                **({"normal_templates": normal_templates} if normal_templates else {}),
                **({"normal_impressions": list(normal_impressions)}
                   if normal_impressions else {}),
                **({"finding_phrases": finding_phrases} if finding_phrases else {})})


def bundle_config(model_params: ModelParams, features: dict, feature_dim: int,
                  regions: int | None, embedding_dim: int, vocab: Vocabulary,
                  titles: TitleVocabulary | None = None) -> dict:
    config = {"model": dataclasses.asdict(model_params), "features": features,
              "feature_dim": feature_dim, "regions": regions, "embedding_dim": embedding_dim,
              "vocab_size": len(vocab), "max_len": vocab.max_len, "grid_pooling": GRID_POOLING}
    if model_params.exam_title:
        config["exam_titles"] = list(titles.keys if titles is not None else [])
    return config


BUNDLE_FILES = ("config.json", "model.weights.h5", "vocab.json", "decoding.json", "retrieval.npz")


def bundle_hash(directory: str | os.PathLike[str]) -> str:
    """SHA-256 over the bundle's files (name and bytes, in a fixed order): two folders with
    the same hash decode alike."""
    import hashlib

    digest = hashlib.sha256()
    for name in BUNDLE_FILES:
        path = Path(directory) / name
        if path.is_file():
            digest.update(f"{name}\n{path.stat().st_size}\n".encode())
            with path.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """The model in `directory`; any missing, unreadable or inconsistent file is one
    `InputError` that names it."""
    directory = Path(directory)
    for name in ("config.json", "model.weights.h5", "vocab.json"):
        if not (directory / name).is_file():
            raise InputError(f"{directory / name}: not found (train the model with `dvc repro "
                             "train`, or pass --model DIR)")
    config_path = directory / "config.json"
    config = _read_json(config_path, "a model config")
    vocab = Vocabulary.load(directory / "vocab.json")
    try:
        model_section = config["model"]
        if isinstance(model_section, dict):
            # A bundle saved before model.exam_title existed reads no title (the default now).
            model_section = {"exam_title": False, **model_section}
        params = build_section("model", ModelParams, model_section, source=str(config_path))
        shapes = {key: config[key] for key in ("vocab_size", "embedding_dim", "feature_dim",
                                                "max_len", "regions")}
        if not all(isinstance(v, int) and v > 0 for k, v in shapes.items()
                   if not (k == "regions" and v is None)):
            raise ValueError(f"sizes must be positive integers, got {shapes}")
        if (shapes["vocab_size"], shapes["max_len"]) != (len(vocab), vocab.max_len):
            raise InputError(f"{config_path}: vocab_size {shapes['vocab_size']} and max_len "
                             f"{shapes['max_len']} do not match {directory / 'vocab.json'} "
                             f"({len(vocab)} words, max_len {vocab.max_len})")
        if (params.needs_grid and params.grid_pool > 1
                and config.get("grid_pooling") != GRID_POOLING):
            raise InputError(f"{config_path}: records no grid_pooling, so its "
                             f"model.grid_pool {params.grid_pool} may have dropped the grid's "
                             "last row and column in training (before commit 7b06554), unlike "
                             "the regions it would read now: retrain it (`dvc repro train`)")
        titles = None
        if params.exam_title:
            keys = config["exam_titles"]
            if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                raise ValueError("exam_titles must be a list of strings")
            titles = TitleVocabulary(keys)
        matrix = np.zeros((shapes["vocab_size"], shapes["embedding_dim"]), dtype=np.float32)
        model = ensemble([build_model(params, matrix, shapes["feature_dim"], shapes["max_len"],
                                      shapes["regions"], len(titles) if titles is not None else 0)
                          for _ in range(params.ensemble)])
    except KeyError as exc:
        raise InputError(f"{config_path}: not a model config (no {exc.args[0]!r})") from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"{config_path}: not a model config ({_first_line(exc)})") from None
    _load_weights(model, directory / "model.weights.h5", config_path)
    path = directory / "decoding.json"
    decode, label_thresholds, templates, impressions, phrases = _load_decoding(path, config)
    bank = MemoryBank.load(directory / "retrieval.npz") if params.retrieval_k else None
    bundle = Bundle(model, vocab, config, decode, params, bank, bundle_hash(directory), titles,
                    label_thresholds, templates, impressions, phrases)
    if decode.normal_text != "decoder" and model.conditioned and not templates:
        raise InputError(f"{path}: normal_text is {decode.normal_text}, but the file has no "
                         "normal_templates (rerun the selection stage)")
    if decode.normal_text == "template_written" and model.conditioned and not impressions:
        raise InputError(f"{path}: normal_text is template_written, but the file has no "
                         "normal_impressions (rerun the selection stage)")
    if decode.finding_text != "decoder" and model.conditioned and not phrases:
        raise InputError(f"{path}: finding_text is {decode.finding_text}, but the file has no "
                         "finding_phrases (rerun the selection stage)")
    return bundle


def _load_decoding(path: Path, config: dict
                   ) -> tuple[DecodingSettings, dict[str, float], dict[str, str],
                              tuple[str, ...], dict[str, str]]:
    """The decoding settings, label thresholds, normal templates, normal impressions and finding
    phrases of `path`
    (decoding.json). A bundle made before the selection stage kept its thresholds in
    config.json and none in decoding.json: it keeps decoding under those."""
    settings = _read_json(path, "decoding settings") if path.is_file() else {}
    label_thresholds = settings.pop("label_thresholds", config.get("label_thresholds", {}))
    if not (isinstance(label_thresholds, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool)
            for v in label_thresholds.values())):
        raise InputError(f"{path}: label_thresholds must map labels to numbers")
    templates = settings.pop("normal_templates", {})
    if not (isinstance(templates, dict) and all(
            isinstance(k, str) and isinstance(v, str) and v.strip()
            for k, v in templates.items()) and (not templates or NO_TITLE in templates)):
        raise InputError(f"{path}: normal_templates must map exam titles to non-empty texts, "
                         f"\"\" (no title) among them")
    impressions = settings.pop("normal_impressions", [])
    if not (isinstance(impressions, list)
            and all(isinstance(text, str) and text.strip() for text in impressions)):
        raise InputError(f"{path}: normal_impressions must be a list of non-empty texts")
    phrases = settings.pop("finding_phrases", {})
    if not (isinstance(phrases, dict) and all(
            k in FINDINGS and isinstance(v, str) and v.strip() for k, v in phrases.items())):
        raise InputError(f"{path}: finding_phrases must map findings ({', '.join(FINDINGS)}) "
                         "to non-empty texts")
    decode = build_section("decode", DecodingSettings, settings, source=str(path))
    return (decode, {str(k): float(v) for k, v in label_thresholds.items()}, templates,
            tuple(impressions), phrases)


def _read_json(path: Path, what: str) -> dict:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not {what} (not valid JSON: {_first_line(exc)})") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: not {what} (expected a JSON object)")
    return loaded


def _load_weights(model: CaptionModel, weights: Path, config_path: Path) -> None:
    import warnings

    # Keras warns (several lines each) about every layer it cannot fill before it raises; the
    # one-line error below says it all.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.train_model.load_weights(weights)
        except OSError as exc:  # h5py: empty, truncated or not HDF5
            raise InputError(f"{weights}: not a readable Keras weights file "
                             f"({_first_line(exc)})") from None
        except (ValueError, KeyError) as exc:  # Keras: layers or shapes differ
            raise InputError(f"{weights}: does not match {config_path} "
                             f"({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
