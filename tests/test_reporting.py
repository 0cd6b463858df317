"""The report's building blocks: charts, heat-maps, the headline table."""

import numpy as np
import pytest
from PIL import Image

from cxr_impressions.reporting.charts import bar_chart, line_chart
from cxr_impressions.reporting.heatmaps import colourise, explain_figure, view_maps
from cxr_impressions.reporting.page import attention_payload, headline_table, verdict


def test_heatmap_figure_has_a_row_per_word_and_marks_where_it_looked() -> None:
    images = [Image.new("L", (64, 64), 128), Image.new("L", (64, 64), 128)]
    maps = np.zeros((3, 2 * 9))
    maps[0, 0] = 1.0  # word 1: the frontal view's top-left region
    maps[1, 9 + 8] = 1.0  # word 2: the lateral view's bottom-right region
    figure = explain_figure(images, ["no", "effusion"], maps)
    assert figure.size[1] == 24 + 3 * (192 + 6)  # all words, then one row per word
    pixels = np.asarray(figure.convert("RGB"), dtype=float)
    row1 = 24 + 1 * 198
    frontal_top_left = pixels[row1 + 10, 150 + 10]
    frontal_bottom_right = pixels[row1 + 180, 150 + 180]
    assert frontal_top_left.sum() > frontal_bottom_right.sum() + 50  # hot where it looked


def test_view_maps_and_colours() -> None:
    assert view_maps(np.arange(18.0)).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="not a square grid"):
        view_maps(np.arange(10.0))
    ramp = colourise(np.array([[0.0, 1.0]]))
    assert tuple(ramp[0, 0]) == (0, 0, 4) and tuple(ramp[0, 1]) == (252, 255, 164)


def test_headline_table_marks_the_best_system() -> None:
    scores = {s: {"bleu4": v, "clinical": {"abnormal": {"f1": f}}}
              for s, v, f in (("model", 0.2, 0.6), ("constant", 0.1, 0.0),
                              ("nearest_neighbour", 0.05, 0.3))}
    html = headline_table(scores)
    row = html.split('data-metric="bleu4"')[1].split("</tr>")[0]
    assert '<td class="best">0.200</td>' in row and "0.100" in row
    assert 'data-metric="abnormal_f1"' in html
    assert "<caption>" not in html and 'class="diff win"' not in html  # no intervals: none shown


def _with_intervals() -> dict:
    """Scores as the evaluate stage writes them: BLEU-4 a significant win over the constant,
    ROUGE-L a significant loss, abnormal F1 within noise."""
    scores = {s: {"bleu4": b, "rouge_l": r, "distinct": d,
                  "clinical": {"abnormal": {"f1": f}},
                  "ci95": {"bleu4_low": b - 0.01, "bleu4_high": b + 0.01,
                           "rouge_l_low": r - 0.02, "rouge_l_high": r + 0.02,
                           "abnormal_f1_low": f - 0.1, "abnormal_f1_high": f + 0.1}}
              for s, b, r, d, f in (("model", 0.12, 0.48, 17, 0.47),
                                    ("constant", 0.10, 0.51, 1, 0.45),
                                    ("nearest_neighbour", 0.08, 0.40, 150, 0.30))}
    scores["model_vs_constant"] = {"bleu4": {"diff": 0.02, "low": 0.004, "high": 0.035},
                                   "rouge_l": {"diff": -0.03, "low": -0.05, "high": -0.01},
                                   "abnormal_f1": {"diff": 0.02, "low": -0.04, "high": 0.08}}
    scores["bootstrap"] = {"resamples": 1000, "seed": 0, "level": 0.95}
    scores["test_studies"] = 352
    return scores


def test_headline_table_shows_intervals_and_marks_wins_and_losses() -> None:
    html = headline_table(_with_intervals())
    header = html.split("<thead>")[1].split("</thead>")[0]
    assert header.count("<th>") == 10 and "model − constant" in header
    # Files without these baselines show "–" there.
    assert "model − title constant" in header and "model − closest constant" in header
    bleu = html.split('data-metric="bleu4"')[1].split("</tr>")[0]
    assert '0.120 <span class="ci">[0.110, 0.130]</span>' in bleu
    assert ('<td class="diff win" data-baseline="constant">+0.020 <span class="mark">▲</span> '
            '<span class="ci">[+0.004, +0.035]</span></td>') in bleu
    assert '<td class="diff " data-baseline="nearest_neighbour">–</td>' in bleu
    rouge = html.split('data-metric="rouge_l"')[1].split("</tr>")[0]
    assert 'class="diff loss" data-baseline="constant">-0.030' in rouge and "▼" in rouge
    f1 = html.split('data-metric="abnormal_f1"')[1].split("</tr>")[0]
    assert 'class="diff " data-baseline="constant">+0.020' in f1 and "mark" not in f1
    distinct = html.split('data-metric="distinct"')[1].split("</tr>")[0]
    assert ">+16</td>" in distinct  # a count: the plain difference, no interval
    assert "1000 bootstrap resamples of the 352 test studies" in html


def test_verdict_names_wins_losses_and_ties() -> None:
    scores = _with_intervals()
    assert verdict(scores, "constant") == (
        "Model vs constant: better on BLEU-4; worse on ROUGE-L; within noise on abnormal F1.")
    assert verdict(scores, "nearest_neighbour") is None  # no paired intervals for it


def test_attention_payload_and_charts() -> None:
    payload = attention_payload({"7": np.full((2, 8), 0.125), "8": np.ones((2, 6))})
    assert payload["7"]["side"] == 2 and len(payload["7"]["maps"]) == 2
    assert "8" not in payload  # 3 regions per view: no square grid to draw
    svg = line_chart({"train": [(1, 2.0), (2, 1.5)], "eval": [(1, 2.2), (2, 1.9)]}, "loss",
                     "epoch", "loss")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    bars = bar_chart([("no acute findings .", 10.0), ("<b>", 2.0)], "top")
    assert "&lt;b&gt;" in bars and bars.count("<rect") == 2


def test_scores_command_prints_the_table(tmp_path) -> None:
    import json
    import subprocess
    import sys

    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps({"kind": "merge", "test_studies": 3, **{
        s: {"bleu4": 0.25, "distinct": 2, "clinical": {"abnormal": {"f1": 0.5}}}
        for s in ("model", "constant", "nearest_neighbour")}}))
    out = subprocess.run([sys.executable, "-m", "cxr_impressions.cli", "scores", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert "merge model, 3 test studies" in out
    # A file without intervals (an older run, from before the closest and title constants):
    # the values, and "–" for the differences and for the baselines it lacks.
    assert [line.split()[1:] for line in out.splitlines() if line.startswith("BLEU-4")] == [
        ["0.250", "0.250", "–", "–", "0.250"], ["–", "–", "–", "–"]]
    missing = subprocess.run([sys.executable, "-m", "cxr_impressions.cli", "scores",
                              str(tmp_path / "none.json")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr

    path.write_text(json.dumps(_with_intervals()))
    out = subprocess.run([sys.executable, "-m", "cxr_impressions.cli", "scores", str(path)],
                         capture_output=True, text=True, check=True).stdout
    bleu = [line for line in out.splitlines() if line.startswith("BLEU-4")]
    assert bleu[0].split()[1:4] == ["0.120", "[0.110,", "0.130]"]
    assert bleu[1].split()[1:4] == ["+0.020", "[+0.004,", "+0.035]"] and bleu[1].split()[4] == "▲"
    rouge = [line for line in out.splitlines() if line.startswith("ROUGE-L")][1]
    assert rouge.split()[4] == "▼"
    assert "Model vs constant: better on BLEU-4; worse on ROUGE-L" in out


def test_scores_command_rejects_a_malformed_file(tmp_path) -> None:
    import subprocess
    import sys

    path = tmp_path / "evaluate.json"
    path.write_text('{"model": ')
    result = subprocess.run([sys.executable, "-m", "cxr_impressions.cli", "scores", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {path}: not a metrics JSON file")
    assert len(result.stderr.strip().splitlines()) == 1


def chart_layout_faults(html_path, screenshot) -> list[str]:
    """Open `html_path` in headless Chromium, run the layout check, save a screenshot."""
    from playwright.sync_api import sync_playwright

    from .helpers import CHART_LAYOUT_FAULTS, CHROMIUM

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(html_path.as_uri())
            page.wait_for_function("document.fonts.status == 'loaded'")
            page.screenshot(path=str(screenshot), full_page=True)
            return page.evaluate(CHART_LAYOUT_FAULTS)
        finally:
            browser.close()


def test_chart_text_is_never_clipped_or_over_the_lines(tmp_path) -> None:
    """The report's charts, with its longest titles and legends, in headless Chromium."""
    from cxr_impressions.reporting.assets import read_static

    epochs = range(1, 13)
    charts = [
        line_chart({"1-NN": [(i, 0.2 + 0.01 * i) for i in range(1, 6)],
                    "constant": [(i, 0.5 - 0.02 * i) for i in range(1, 6)],
                    "model": [(i, 0.45 + 0.01 * i) for i in range(1, 6)]},
                   "ROUGE-L by reference length (bucket: 1-2, 3-4, 5-7, 8-11, 12-19, 20+)",
                   "reference length bucket", "mean ROUGE-L"),
        line_chart({"train": [(i, 0.5 + 0.04 * i) for i in epochs],
                    "eval": [(i, 0.95 - 0.001 * i) for i in epochs]},  # ends top right
                   "Abnormal head: AUC", "epoch", "abnormal_auc"),
        line_chart({"eval": [(i, 0.001 * i) for i in epochs]}, "Validation BLEU-4 (greedy)",
                   "epoch", "bleu4"),
        line_chart({"train": [(i, 6 / i) for i in epochs], "eval": [(i, 5 / i) for i in epochs],
                    "a very long series name that cannot fit beside the plot": [(1, 1.0)]},
                   "Training curves: loss", "epoch", "loss"),
        bar_chart([("no acute cardiopulmonary abnormality . " * 3, 40.0),
                   ("WWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWW", 3.0),
                   ("normal chest .", 1234567.0)], "Top 15 generated impressions"),
    ]
    page = tmp_path / "charts.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>"
                    f"{read_static('report.css')}</style></head><body><div class='charts'>"
                    f"{''.join(charts)}</div></body></html>", encoding="utf-8")
    faults = chart_layout_faults(page, tmp_path / "charts.png")
    assert not faults, faults
    assert (tmp_path / "charts.png").stat().st_size > 5_000


def test_report_page_draws_heatmaps_and_follows_the_word(tmp_path) -> None:
    """A two-study report in headless Chromium: its heat-maps (heatmap.js, the script the
    serve page shares) are drawn over the thumbnails, change with the word pointed at, and
    leave a missing view's canvas empty."""
    import pandas as pd
    from playwright.sync_api import sync_playwright

    from cxr_impressions.reporting.page import build_report

    from .helpers import SAMPLE, launch_chromium

    images = SAMPLE / "images"
    table = pd.DataFrame({
        "uid": [1, 2], "reference": ["no acute disease .", "small left effusion ."],
        "model": ["no acute cardiopulmonary abnormality .", "left effusion ."],
        "nearest_neighbour": ["normal chest .", "no effusion ."],
        "reference_abnormal": [False, True], "model_abnormal": [False, True],
        "model_abnormal_probability": [0.2, 0.8], "model_bleu4": [0.1, 0.3],
        "model_rouge_l": [0.4, 0.6], "nearest_neighbour_rouge_l": [0.2, 0.3]})
    by_length = pd.DataFrame({"reference_words": ["1-4", "5+"], "model": [0.4, 0.6]})
    rng = np.random.default_rng(0)
    attention = {}
    for uid, words in (("1", 5), ("2", 3)):  # a row per word and the end token's
        maps = rng.random((words + 1, 2 * 9))
        attention[uid] = maps / maps.sum(axis=1, keepdims=True)
    paths = {"1": (images / "1_IM-0001-4001.dcm.jpg", images / "1_IM-0001-3001.dcm.jpg"),
             "2": (images / "2_IM-0652-1001.dcm.jpg", None)}
    build_report(tmp_path / "report", {"model": {"bleu4": 0.2}}, {}, table, {}, by_length,
                 paths, attention)
    heat = ("c => { const x = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; "
            "let s = 0; for (let i = 3; i < x.length; i += 4) s += x[i] * (i % 97); return s; }")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto((tmp_path / "report" / "index.html").as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            first = page.locator("#study-1")
            canvases = first.locator("canvas")
            mean_maps = [canvases.nth(v).evaluate(heat) for v in range(2)]
            assert all(m > 0 for m in mean_maps), mean_maps  # both views, the mean map
            first.locator(".word").nth(2).hover()
            assert [canvases.nth(v).evaluate(heat) for v in range(2)] != mean_maps
            second = page.locator("#study-2 canvas")
            assert second.nth(0).evaluate(heat) > 0 and second.nth(1).evaluate(heat) == 0
            page.screenshot(path=str(tmp_path / "report.png"))
            assert not errors, errors
        finally:
            browser.close()


def test_the_summary_line_names_each_ensemble_members_kept_epoch() -> None:
    from cxr_impressions.reporting.page import _training

    assert _training({"best_epoch": 7, "epochs_run": 10}) == "best epoch 7 of 10"
    ensemble = {"members": 2, "epochs_run": 22,
                "member": {"0": {"best_epoch": 12, "epochs_run": 12},
                           "1": {"best_epoch": 8, "epochs_run": 10}}}
    assert _training(ensemble) == "an ensemble of 2, best epochs 12 of 12, 8 of 10"
