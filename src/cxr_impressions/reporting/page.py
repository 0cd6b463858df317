"""The static HTML report: the headline table, the plots, and a gallery of every test study
with its images, reference, prediction, 1-NN impression, scores, labels and attention.

The page is one `index.html` plus a `thumbs/` folder of JPEG thumbnails beside it; it opens from
disk with no server and no network. Images load lazily, off-screen cards are not laid out
(`content-visibility`), and heat-maps are drawn on demand, so 500 studies open quickly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..evaluation.baselines import BASELINES
from .assets import ramp_anchors, read_static
from .charts import PALETTE, bar_chart, line_chart
from .heatmaps import grid_side

SYSTEMS = {"model": "model", "constant": "constant", "closest_constant": "closest constant",
           "title_constant": "title constant", "nearest_neighbour": "1-NN"}
TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "distinct")
NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
         "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr",
         "distinct": "distinct impressions"}
THUMBNAIL = 224


def load_curves(directory: str | os.PathLike[str]) -> dict[str, dict[str, list]]:
    """DVCLive's per-epoch TSVs as {metric: {"train"|"eval": [(step, value), ...]}}."""
    curves: dict[str, dict[str, list]] = {}
    root = Path(directory)
    for path in sorted(root.glob("*/*.tsv")):
        frame = pd.read_csv(path, sep="\t")
        if {"step", path.stem} <= set(frame.columns):
            curves.setdefault(path.stem, {})[path.parent.name] = list(
                zip(frame["step"] + 1, frame[path.stem], strict=True))
    return curves


def _value(scores: dict, system: str, metric: str) -> float | None:
    entry = scores.get(system, {})
    if metric in TEXT_METRICS:
        return entry.get(metric)
    clinical = entry.get("clinical", {})
    if metric.startswith("abnormal_"):
        return clinical.get("abnormal", {}).get(metric.removeprefix("abnormal_"))
    return clinical.get(metric)


HEADLINE = [(m, NAMES[m]) for m in TEXT_METRICS] + [
    ("abnormal_precision", "abnormal precision"), ("abnormal_recall", "abnormal recall"),
    ("abnormal_f1", "abnormal F1"), ("findings_macro_f1", "findings macro-F1")]


DIFFERENCES = {b: f"model − {SYSTEMS[b]}" for b in BASELINES}
BETTER, WORSE = "▲", "▼"  # the paired interval lies above (below) 0: the model wins (loses)


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if metric == "distinct" else f"{value:.3f}"


def _interval(scores: dict, system: str, metric: str) -> tuple[float, float] | None:
    """The system's 95% bootstrap interval for `metric`; None without one (older files)."""
    bounds = scores.get(system, {}).get("ci95", {})
    low, high = bounds.get(f"{metric}_low"), bounds.get(f"{metric}_high")
    return None if low is None or high is None else (low, high)


def _paired(scores: dict, baseline: str, metric: str) -> dict | None:
    """{"diff", "low", "high"}: model minus `baseline`, paired bootstrap; None without one."""
    entry = scores.get(f"model_vs_{baseline}", {}).get(metric)
    return entry if isinstance(entry, dict) and {"diff", "low", "high"} <= set(entry) else None


def _mark(entry: dict | None) -> str:
    if entry is None:
        return ""
    return BETTER if entry["low"] > 0 else WORSE if entry["high"] < 0 else ""


def _value_text(scores: dict, system: str, metric: str) -> str:
    value = _value(scores, system, metric)
    interval = _interval(scores, system, metric)
    if value is None or interval is None:
        return _cell(metric, value)
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _difference(scores: dict, baseline: str, metric: str) -> tuple[str, str]:
    """(text, mark) of model minus `baseline`: with its interval where there is one; the plain
    difference of the counts for `distinct`."""
    entry = _paired(scores, baseline, metric)
    if entry is not None:
        return (f"{entry['diff']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]",
                _mark(entry))
    model, other = _value(scores, "model", metric), _value(scores, baseline, metric)
    if metric == "distinct" and model is not None and other is not None:
        return f"{model - other:+.0f}", ""
    return "–", ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_scores(scores: object, source: str) -> dict:
    """`scores` if it has the shape of evaluate's metrics (the systems' metrics, intervals and
    paired differences, numbers where present), else a one-line `InputError` naming `source` and
    the first fault. Older files, without intervals, pass."""
    def fault(what: str) -> InputError:
        return InputError(f"{source}: {what}")

    if not isinstance(scores, dict) or not isinstance(scores.get("model"), dict):
        raise fault("not evaluate's scores (expected a JSON object with a 'model' object of "
                    "metrics)")
    for system in SYSTEMS:
        entry = scores.get(system, {})
        clinical = entry.get("clinical", {}) if isinstance(entry, dict) else None
        if not isinstance(clinical, dict) or not isinstance(clinical.get("abnormal", {}), dict):
            raise fault(f"'{system}' must be an object of metrics, with 'clinical' and "
                        "'clinical.abnormal' objects")
        if not isinstance(entry.get("ci95", {}), dict):
            raise fault(f"{system}.ci95 must be an object of interval bounds")
        for metric, _label in HEADLINE:
            value = _value(scores, system, metric)
            if value is not None and not _is_number(value):
                raise fault(f"{system} {metric} must be a number, got {value!r}")
            for bound in ("low", "high"):
                value = entry.get("ci95", {}).get(f"{metric}_{bound}")
                if value is not None and not _is_number(value):
                    raise fault(f"{system}.ci95.{metric}_{bound} must be a number, got {value!r}")
    for baseline in BASELINES:
        name = f"model_vs_{baseline}"
        if not isinstance(scores.get(name, {}), dict):
            raise fault(f"{name} must be an object of paired differences")
        for metric, _label in HEADLINE:
            entry = _paired(scores, baseline, metric)
            if entry is not None and not all(_is_number(entry[k]) for k in ("diff", "low", "high")):
                raise fault(f"{name}.{metric} must hold numbers diff, low and high")
    settings = scores.get("bootstrap")
    if isinstance(settings, dict) and not _is_number(settings.get("level", 0.95)):
        raise fault(f"bootstrap.level must be a number, got {settings['level']!r}")
    return scores


def score_rows(scores: dict) -> list[tuple[str, ...]]:
    """The headline table as text rows: a header, then a metric per row; each system's value
    [95% interval], then model minus each baseline [95% paired interval] and its mark."""
    rows = [("metric", *SYSTEMS.values(), *DIFFERENCES.values())]
    for metric, label in HEADLINE:
        differences = [_difference(scores, b, metric) for b in BASELINES]
        rows.append((label, *(_value_text(scores, s, metric) for s in SYSTEMS),
                     *(f"{text} {mark or ' '}" for text, mark in differences)))
    return rows


def verdict(scores: dict, baseline: str) -> str | None:
    """One line: where the model is significantly better or worse than `baseline`, and where
    the difference is within noise. None without paired intervals."""
    better, worse, tied = [], [], []
    for metric, label in HEADLINE:
        entry = _paired(scores, baseline, metric)
        if entry is not None:
            {BETTER: better, WORSE: worse, "": tied}[_mark(entry)].append(label)
    if not better + worse + tied:
        return None
    parts = [f"better on {', '.join(better) or 'nothing'}",
             f"worse on {', '.join(worse) or 'nothing'}"]
    if tied:
        parts.append(f"within noise on {', '.join(tied)}")
    return f"Model vs {SYSTEMS[baseline]}: " + "; ".join(parts) + "."


def bootstrap_note(scores: dict) -> str | None:
    """How the intervals were made, from the metrics file; None without intervals."""
    settings = scores.get("bootstrap")
    if not isinstance(settings, dict):
        return None
    return (f"{settings.get('level', 0.95):.0%} intervals: {settings.get('resamples', '?')} "
            f"bootstrap resamples of the {scores.get('test_studies', '?')} test studies (seed "
            f"{settings.get('seed', '?')}); model − baseline is paired (the same resamples). "
            f"{BETTER}/{WORSE}: the model is significantly better/worse (the interval excludes "
            "0).")


def headline_table(scores: dict) -> str:
    """Every metric for the model and each baseline with 95% intervals (the best value of each
    row in bold), then the model minus each baseline with its paired interval, the cell green
    (▲) where the model is significantly better and red (▼) where it is worse."""
    rows = [("text", None), *HEADLINE[:len(TEXT_METRICS)],
            ("clinical (labeller on reference vs generated)", None),
            *HEADLINE[len(TEXT_METRICS):]]
    columns = [*SYSTEMS.values(), *DIFFERENCES.values()]
    header = "".join(f"<th>{escape(label)}</th>" for label in columns)
    body = []
    for metric, label in rows:
        if label is None:
            body.append(f'<tr class="group"><td colspan="{len(columns) + 1}">{escape(metric)}'
                        "</td></tr>")
            continue
        values = {s: _value(scores, s, metric) for s in SYSTEMS}
        known = [v for v in values.values() if v is not None]
        best = max(known) if known else None
        cells = []
        for system, value in values.items():
            interval = _interval(scores, system, metric)
            shown = _cell(metric, value) + (
                "" if value is None or interval is None else
                f' <span class="ci">[{interval[0]:.3f}, {interval[1]:.3f}]</span>')
            cells.append(f'<td class="{"best" if value is not None and value == best else ""}">'
                         f"{shown}</td>")
        for baseline in BASELINES:
            text, mark = _difference(scores, baseline, metric)
            value, _, interval = text.partition(" ")
            kind = {BETTER: "win", WORSE: "loss"}.get(mark, "")
            cells.append(f'<td class="diff {kind}" data-baseline="{baseline}">{value}'
                         + (f' <span class="mark">{mark}</span>' if mark else "")
                         + (f' <span class="ci">{interval}</span>' if interval else "") + "</td>")
        body.append(f'<tr data-metric="{metric}"><td>{escape(label)}</td>{"".join(cells)}</tr>')
    note = bootstrap_note(scores)
    caption = f"<caption>{escape(note)}</caption>" if note else ""
    # A narrow window scrolls the table, never the page.
    return (f'<div class="table-scroll"><table class="scores" id="headline">{caption}<thead><tr>'
            f'<th>metric</th>{header}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def labeller_table(labeller: dict) -> str:
    abnormal = labeller.get("abnormal", {})
    rows = [("reports checked", f'{labeller.get("reports", 0)}'),
            ("abnormal accuracy", f'{labeller.get("abnormal_accuracy", 0):.3f}'),
            ("abnormal Cohen's kappa", f'{labeller.get("abnormal_kappa", 0):.3f}'),
            ("abnormal F1", f'{abnormal.get("f1", 0):.3f}'),
            ("findings macro-F1", f'{labeller.get("findings_macro_f1_vs_mesh", 0):.3f}')]
    body = "".join(f"<tr><td>{escape(a)}</td><td>{b}</td></tr>" for a, b in rows)
    return (f'<table class="scores" id="labeller"><thead><tr><th>labeller vs MeSH codes</th>'
            f"<th></th></tr></thead><tbody>{body}</tbody></table>")


def confusion_html(table: pd.DataFrame, system: str = "model") -> str:
    """Normal/abnormal by the labeller: reference (rows) against generated (columns)."""
    actual = table["reference_abnormal"].astype(bool)
    predicted = table[f"{system}_abnormal"].astype(bool)
    cells = {(a, p): int(((actual == a) & (predicted == p)).sum())
             for a in (False, True) for p in (False, True)}
    name = {False: "normal", True: "abnormal"}
    peak = max(cells.values()) or 1
    rows = "".join(
        f"<tr><th>{name[a]}</th>" + "".join(
            f'<td style="background: rgba(31,119,180,{0.1 + 0.8 * cells[(a, p)] / peak:.2f})">'
            f"{cells[(a, p)]}</td>" for p in (False, True)) + "</tr>"
        for a in (False, True))
    return ('<table class="confusion" id="confusion"><caption>normal / abnormal: reference '
            "(rows) vs generated (columns)</caption><tr><th></th><th>normal</th>"
            f"<th>abnormal</th></tr>{rows}</table>")


def impression_counts(texts: Sequence[str], top: int) -> list[tuple[str, float]]:
    counts = pd.Series(list(texts)).value_counts().head(top)
    return [(str(text), float(n)) for text, n in counts.items()]


def make_thumbnail(source: Path, target: Path, size: int = THUMBNAIL) -> bool:
    """A greyscale JPEG thumbnail (from PNG, JPEG or DICOM); False (and no file) when the source
    can't be read."""
    from PIL import Image

    from ..data.images import thumbnail

    try:
        pixels = thumbnail(source, size)
    except (InputError, OSError):
        return False
    tmp = target.with_name(target.name + ".tmp")
    Image.fromarray(pixels).save(tmp, format="JPEG", quality=82)
    tmp.replace(target)
    return True


def _view_html(thumb: str | None, label: str, uid: str) -> str:
    if thumb is None:
        return (f'<div class="view"><canvas width="{THUMBNAIL}" height="{THUMBNAIL}" '
                f'data-empty="1"></canvas><span class="caption">{label}: none</span></div>')
    return (f'<div class="view"><img loading="lazy" decoding="async" src="{escape(thumb)}" '
            f'alt="{label} view of study {escape(uid)}" width="{THUMBNAIL}" height="{THUMBNAIL}">'
            f'<canvas width="{THUMBNAIL}" height="{THUMBNAIL}"></canvas>'
            f'<span class="caption">{label}</span></div>')


def _words_html(text: str, with_attention: bool) -> str:
    if not with_attention:
        return escape(text)
    return " ".join(f'<span class="word" data-row="{i}">{escape(w)}</span>'
                    for i, w in enumerate(text.split()))


def study_card(row: pd.Series, thumbs: tuple[str | None, str | None],
               with_attention: bool) -> str:
    uid = str(row["uid"])
    reference = "abnormal" if row["reference_abnormal"] else "normal"
    generated = "abnormal" if row["model_abnormal"] else "normal"
    label = "correct" if reference == generated else "incorrect"
    probability = row.get("model_abnormal_probability")
    shown_probability = "" if probability is None or pd.isna(probability) else (
        f"<span>P(abnormal) {float(probability):.2f}</span>")
    views = _view_html(thumbs[0], "frontal", uid) + _view_html(thumbs[1], "lateral", uid)
    hint = ('<div class="hint">Heat-map: where the model looked, averaged over the words; '
            "point at or click a word to see its own.</div>") if with_attention else ""
    return f"""
<article class="study {'good' if label == 'correct' else 'bad'}" id="study-{escape(uid)}"
 data-uid="{escape(uid)}" data-reference="{reference}" data-label="{label}"
 data-bleu="{row['model_bleu4']:.4f}" data-rouge="{row['model_rouge_l']:.4f}"
 data-nn="{row['nearest_neighbour_rouge_l']:.4f}">
 <div><div class="views">{views}</div>{hint}</div>
 <div>
  <div class="labels"><span>study {escape(uid)}</span>
   <span>reference <b class="tag {reference}">{reference}</b></span>
   <span>generated <b class="tag {generated}">{generated}</b> ({label})</span>{shown_probability}
   <span>BLEU-4 {row['model_bleu4']:.3f}</span><span>ROUGE-L {row['model_rouge_l']:.3f}</span>
   <span>1-NN ROUGE-L {row['nearest_neighbour_rouge_l']:.3f}</span></div>
  <dl class="texts">
   <dt>reference</dt><dd class="reference">{escape(str(row['reference']))}</dd>
   <dt>generated</dt><dd class="generated">{_words_html(str(row['model']), with_attention)}</dd>
   <dt>1-NN baseline</dt><dd class="nearest">{escape(str(row['nearest_neighbour']))}</dd>
  </dl>
 </div>
</article>"""


def attention_payload(attention: dict[str, np.ndarray]) -> dict[str, dict]:
    """{uid: {"side": s, "maps": [[2 * s * s weights] per word]}} for the page's script."""
    payload = {}
    for uid, maps in attention.items():
        side = grid_side(maps.shape[1] // 2)
        if side is None:
            continue  # not a square grid: nothing to draw
        payload[uid] = {"side": side,
                        "maps": np.round(maps.astype(np.float64), 4).tolist()}
    return payload


def _training(summary: dict) -> str:
    """Which epochs were kept: the model's, or each member's of a `model.ensemble`."""
    members = summary.get("member")
    if isinstance(members, dict) and members:
        kept = ", ".join(f"{m.get('best_epoch', '?')} of {m.get('epochs_run', '?')}"
                         for m in members.values())
        return f"an ensemble of {len(members)}, best epochs {kept}"
    return f"best epoch {summary.get('best_epoch', '?')} of {summary.get('epochs_run', '?')}"


def build_report(out_dir: str | os.PathLike[str], scores: dict, train_summary: dict,
                 table: pd.DataFrame, curves: dict[str, dict[str, list]],
                 by_length: pd.DataFrame, image_paths: dict[str, tuple[Path | None, Path | None]],
                 attention: dict[str, np.ndarray], top: int = 15) -> dict[str, int]:
    """Write the report into `out_dir` (replaced as a whole, never left half-written)."""
    from tqdm import tqdm

    out = Path(out_dir)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "thumbs").mkdir(parents=True)
    counts = {"studies": len(table), "thumbnails": 0, "unreadable_images": 0}
    cards = []
    for _, row in tqdm(table.iterrows(), total=len(table), desc="report", unit="study",
                       mininterval=5):
        uid = str(row["uid"])
        thumbs: list[str | None] = []
        for path in image_paths.get(uid, (None, None)):
            if path is None:
                thumbs.append(None)
                continue
            name = f"thumbs/{Path(path).name.split('.')[0]}.jpg"
            if make_thumbnail(Path(path), staging / name):
                counts["thumbnails"] += 1
                thumbs.append(name)
            else:
                counts["unreadable_images"] += 1
                thumbs.append(None)
        cards.append(study_card(row, (thumbs[0], thumbs[1]), uid in attention))

    charts = []
    loss = curves.get("loss", {})
    if loss:
        charts.append(line_chart(loss, "Training curves: loss", "epoch", "loss"))
    for metric, title in (("bleu4", "Validation BLEU-4 (greedy)"),
                          ("distinct", "Validation distinct impressions"),
                          ("labels_auc", "Label head: AUC (validation, all labels)")):
        if metric in curves:
            charts.append(line_chart(curves[metric], title, "epoch", metric))
    systems = [s for s in SYSTEMS if s in by_length.columns]
    charts.append(line_chart(
        {SYSTEMS[s]: list(enumerate(by_length[s].tolist(), start=1)) for s in systems},
        "ROUGE-L by reference length (bucket: " + ", ".join(by_length["reference_words"]) + ")",
        "reference length bucket", "mean ROUGE-L"))
    charts.append(bar_chart(impression_counts(table["reference"], top),
                            f"Top {top} reference impressions"))
    charts.append(bar_chart(impression_counts(table["model"], top),
                            f"Top {top} generated impressions", colour=PALETTE[1]))

    model = scores.get("model", {})
    decode = scores.get("decode", {})
    summary = (f"{scores.get('kind', '?')} model, {scores.get('test_studies', len(table))} test "
               f"studies, {decode.get('method', '?')} decoding (beam {decode.get('beam_size')}), "
               f"{_training(train_summary)} (selected on validation "
               f"{train_summary.get('monitor', '?')}). Model BLEU-4 {model.get('bleu4', 0):.3f}, "
               f"ROUGE-L {model.get('rouge_l', 0):.3f}, CIDEr {model.get('cider', 0):.3f}, "
               f"abnormal F1 {_value(scores, 'model', 'abnormal_f1') or 0:.3f}, "
               f"{model.get('distinct', 0)} distinct impressions.")
    verdicts = "".join(
        f'<p class="verdict" data-baseline="{b}">{escape(line)}</p>'
        for b in BASELINES if (line := verdict(scores, b)) is not None)
    # "</" would end the script element early: JSON allows escaping its slash.
    payload = json.dumps(attention_payload(attention), separators=(",", ":")).replace(
        "</", "<\\/")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cxr-impressions report</title><style>{read_static('report.css')}</style></head>
<body>
<h1>cxr-impressions: test-split report</h1>
<p class="summary" id="summary">{escape(summary)}</p>
{verdicts}
<p><a href="#" data-preset="rouge:asc">worst studies first</a> ·
 <a href="#" data-preset="rouge:desc">best studies first</a> · <a href="#plots">plots</a> ·
 <a href="#gallery-section">gallery</a></p>
<h2>Model against the baselines</h2>
<div class="charts">{headline_table(scores)}{labeller_table(scores.get("labeller", {}))}</div>
<h2 id="plots">Plots</h2>
<div class="charts">{"".join(charts)}{confusion_html(table)}</div>
<h2 id="gallery-section">Gallery (<span id="shown-count">{len(table)}</span> studies shown)</h2>
<div class="controls">
 <label>reference <select id="filter-reference"><option value="all">all</option>
  <option value="normal">normal</option><option value="abnormal">abnormal</option></select></label>
 <label>label <select id="filter-label"><option value="all">all</option>
  <option value="correct">correct</option><option value="incorrect">incorrect</option>
  </select></label>
 <label>sort <select id="sort">
  <option value="rouge:asc">ROUGE-L, worst first</option>
  <option value="rouge:desc">ROUGE-L, best first</option>
  <option value="bleu:asc">BLEU-4, worst first</option>
  <option value="bleu:desc">BLEU-4, best first</option>
  <option value="uid:asc">study id</option></select></label>
</div>
<section class="gallery" id="gallery">{"".join(cards)}</section>
<script type="application/json" id="attention-data">{payload}</script>
<script type="application/json" id="ramp-data">{json.dumps(ramp_anchors())}</script>
<script>{read_static('heatmap.js')}</script>
<script>{read_static('report.js')}</script>
</body></html>
"""
    (staging / "index.html").write_text(page, encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return counts
