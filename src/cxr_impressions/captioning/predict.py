"""Impressions for new studies straight from image files: the backbone, then the caption model.

Needs no DVC and no network: the model directory holds everything, and the backbone's weights
come from the same setting as the features stage: ImageNet's looked up in `weights_dir`, the
finetune stage's in `<model dir>/finetuned/`. The bundle records the weights' sha256, and a
different file is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..data.images import load_image
from ..data.layout import (
    PROJECTION_COLUMNS,
    REPORT_TITLE_COLUMN,
    canonical_image_id,
    index_images,
)
from ..data.parse import read_csv_checked
from ..errors import InputError
from ..features.backbones import (
    build_backbone,
    finetuned_path,
    get_spec,
    resolve_precision,
    resolve_weights,
    sha256_of,
)
from .bundle import Bundle, load_bundle
from .studies import pool_grid


@dataclass
class Study:
    uid: str
    frontal: Path
    lateral: Path | None = None
    exam_title: str = ""  # the report's exam title, for a `model.exam_title` model ("": none)

    @property
    def paths(self) -> list[Path]:
        return [self.frontal] + ([self.lateral] if self.lateral else [])


@dataclass
class Prediction:
    """One study's result: the impression, the abnormal probability of a conditioned model,
    and with `explain` the attention maps, (words + 1, regions), the last row the end token's;
    `template`, whether the impression is its exam title's normal template
    (`decode.normal_text: template | template_written | template_read`) rather than the
    decoder's words; `appended`, the findings whose phrases `decode.finding_text: appended`
    added after the decoder's words."""

    text: str
    abnormal: float | None
    maps: np.ndarray | None = None
    template: bool = False
    appended: tuple[str, ...] = ()


class Predictor:
    def __init__(self, model_dir: str | Path, weights_dir: str,
                 beam_size: int | None = None, precision: str | None = None,
                 backbone_batch: int = 2) -> None:
        """`precision` overrides the bundle's `features.precision` (float32 for older bundles);
        bfloat16 falls back to float32, in one logged line, where the hardware lacks it.
        `backbone_batch`: images per backbone call. The caption decoder takes all studies at
        once, but on a cache-bound CPU the backbone is fastest in small calls (2 CPU cores:
        0.93 s an image in calls of 2, 1.2 s in calls of 8, 1.27 s in calls of 16)."""
        import tensorflow as tf

        if beam_size is not None and beam_size < 1:
            raise InputError(f"--beam must be at least 1, got {beam_size}")
        self.bundle: Bundle = load_bundle(model_dir)
        settings = self.bundle.config["features"]
        self.kind = self.bundle.model.kind
        self.image_size = settings["image_size"]
        self.resize = settings["resize"]
        self.precision = resolve_precision(precision or settings.get("precision", "float32"))
        weights = resolve_weights(get_spec(settings["backbone"]), settings["weights"],
                                  weights_dir, allow_download=False,
                                  weights_dir_setting="--weights-dir", download_setting=None,
                                  finetuned=finetuned_path(model_dir, settings["backbone"]))
        expected = settings.get("weights_sha256", "")
        if weights and expected and sha256_of(weights) != expected:
            raise InputError(f"{weights}: not the backbone weights the model was trained on "
                             f"(sha256 {expected[:12]}... in {Path(model_dir) / 'config.json'})")
        backbone = build_backbone(settings["backbone"], weights, self.image_size,
                                  grid=self.bundle.params.needs_grid, precision=self.precision)
        self._backbone = tf.function(lambda x: backbone(x, training=False),
                                     reduce_retracing=True)
        self.backbone_batch = backbone_batch
        self.decoder = self.bundle.decoder()
        self.decode_params = self.bundle.decode
        if beam_size is not None:
            self.decode_params = replace(self.decode_params, beam_size=beam_size,
                                         method="beam" if beam_size > 1 else "greedy")

    def load(self, study: Study) -> list:
        """The study's decoded images; an unreadable one raises a one-line `InputError`."""
        return [load_image(p, self.image_size, policy=self.resize) for p in study.paths]

    def inputs(self, images: Sequence[list], exam_titles: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
        """Model inputs for studies given as lists of decoded images (one or two each) and,
        for a model that reads it, each study's exam title (None or "": no title)."""
        import tensorflow as tf

        stacked = tf.stack([image for study in images for image in study])
        chunks = [self._backbone(stacked[i:i + self.backbone_batch])
                  for i in range(0, len(stacked), self.backbone_batch)]
        pooled_all = np.concatenate([c["pooled"].numpy() for c in chunks])
        regions = None
        if "grid" in chunks[0]:
            pool = self.bundle.config["model"]["grid_pool"]
            grid = np.concatenate([c["grid"].numpy().astype(np.float16) for c in chunks])
            regions = pool_grid(grid, pool)
        n = len(images)
        inputs = {"pooled": np.zeros((n, 2, pooled_all.shape[1]), np.float32),
                  "views": np.zeros((n, 2), np.float32)}
        if regions is not None:
            inputs["grid"] = np.zeros((n, 2, *regions.shape[1:]), np.float16)
        row = 0
        for i, study in enumerate(images):
            count = len(study)
            inputs["pooled"][i, 0] = pooled_all[row]
            inputs["pooled"][i, 1] = pooled_all[row + count - 1]  # one image fills both slots
            inputs["views"][i, :count] = 1.0  # ... but the attention model masks the empty one
            if regions is not None:
                inputs["grid"][i, :count] = regions[row:row + count]
            row += count
        return self.bundle.model_inputs(inputs, exam_titles)

    @property
    def explains(self) -> bool:
        """Whether the model has spatial attention to show (the transformer)."""
        return "attention" in self.bundle.model.decoder.output

    def run(self, images: Sequence[list], explain: Sequence[bool] | bool = False,
            exam_titles: Sequence[str] | None = None) -> list[Prediction]:
        """Decode studies given as lists of decoded images (one or two each), in one backbone
        call and one batched beam search; `explain` (per study, or for all) adds the maps;
        `exam_titles`, one per study, for a model that reads them."""
        inputs = self.inputs(images, exam_titles)
        decoded = self.decoder.decode(inputs, self.decode_params)
        texts = self.decoder.texts(decoded)
        wanted = [explain] * len(images) if isinstance(explain, bool) else list(explain)
        maps: list[np.ndarray | None] = [None] * len(images)
        rows = [i for i, flag in enumerate(wanted) if flag]
        if rows:
            if not self.explains:
                raise InputError(f"explaining needs a model with spatial attention (model.kind: "
                                 f"transformer); {self.kind} has none")
            subset = {k: v[rows] for k, v in inputs.items()}
            for i, row_maps in zip(rows, self.decoder.explain(subset, [decoded[i] for i in rows]),
                                   strict=True):
                maps[i] = row_maps
        return [Prediction(text, d.abnormal, m, d.template, d.appended)
                for text, d, m in zip(texts, decoded, maps, strict=True)]

    def explain(self, study: Study) -> tuple[str, list, np.ndarray]:
        """The study's impression, its images (PIL) and where each word looked: one row of
        region weights per generated word, plus the end token's."""
        from PIL import Image

        if not self.explains:
            raise InputError(f"--explain needs a model with spatial attention (model.kind: "
                             f"transformer); {self.kind} has none")
        images = self.load(study)
        result = self.run([images], explain=True, exam_titles=[study.exam_title])[0]
        shown = [Image.fromarray(np.clip(image.numpy(), 0, 255).astype(np.uint8))
                 for image in images]
        return result.text, shown, result.maps

    def predict(self, studies: Sequence[Study]) -> list[str]:
        """Impressions for `studies`; raises `InputError` on the first unreadable image."""
        return [r.text for r in self.run([self.load(s) for s in studies],
                                         exam_titles=[s.exam_title for s in studies])]


def exam_titles_from_reports(reports: str | Path) -> dict[str, str]:
    """uid -> exam title, from a Kaggle-layout reports CSV (its `image` column)."""
    frame = read_csv_checked(Path(reports), ("uid", REPORT_TITLE_COLUMN))
    return dict(zip(frame["uid"].astype(str), frame[REPORT_TITLE_COLUMN].fillna("").astype(str),
                    strict=True))


def studies_from_projections(projections: str | Path, image_dir: str | Path,
                             exam_titles: dict[str, str] | None = None
                             ) -> tuple[list[Study], list[str]]:
    """Studies from a Kaggle-layout projections CSV and an image folder (images matched by id,
    whatever their extension), and one error line per study with no image file; `exam_titles`
    (uid -> title, `exam_titles_from_reports`) gives each study its title."""
    exam_titles = exam_titles or {}
    frame = read_csv_checked(Path(projections), PROJECTION_COLUMNS)
    index = index_images(image_dir)
    studies, errors = [], []
    for uid, group in frame.groupby("uid", sort=True):
        files = {}
        for row in group.itertuples():
            path = index.get(canonical_image_id(row.filename) or "")
            if path is not None:
                files.setdefault(row.projection.strip().lower(), path)
                files.setdefault("any", path)
        if not files:
            errors.append(f"uid {uid}: no image file in {image_dir} for "
                          f"{', '.join(group['filename'])}")
            continue
        frontal = files.get("frontal", files["any"])
        lateral = files.get("lateral")
        studies.append(Study(str(uid), frontal, lateral if lateral != frontal else None,
                             exam_titles.get(str(uid), "")))
    return studies, errors


def predict_batch(predictor: Predictor, studies: Sequence[Study], chunk: int = 8,
                  progress: bool = True) -> tuple[list[tuple[str, str]], list[str]]:
    """(uid, impression) rows, and one error line per study whose images could not be read.

    With `progress`, a tqdm bar on stderr counts the studies (stdout stays clean)."""
    import sys

    from tqdm import tqdm

    rows, errors = [], []
    bar = tqdm(total=len(studies), desc="predict", unit="study", file=sys.stderr,
               disable=not progress)
    for start in range(0, len(studies), chunk):
        good, images = [], []
        for study in studies[start:start + chunk]:
            try:
                images.append(predictor.load(study))
                good.append(study)
            except InputError as exc:
                errors.append(f"uid {study.uid}: {exc}")
        if good:
            texts = [r.text for r in predictor.run(images,
                                                   exam_titles=[s.exam_title for s in good])]
            rows.extend(zip([s.uid for s in good], texts, strict=True))
        bar.update(len(studies[start:start + chunk]))
    bar.close()
    return rows, errors
