"""The DVC pipeline end to end, in a throwaway copy of this repo (a real git + DVC repo)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cxr_impressions.captioning.training import backed_up_epochs
from cxr_impressions.data.labeller import FINDINGS, label_text
from cxr_impressions.features.backbones import bf16_support

from .helpers import CHART_LAYOUT_FAULTS, CHROMIUM, SHARED, launch_chromium, needs_shared
from .repos import DVC, copy_repo, env, run, set_params, sh

# The first test here may run the session's one pipeline run (tests/conftest.py), which on a
# loaded CPU can pass the default timeout.
pytestmark = pytest.mark.timeout(2400)

# A line of the project's own logging (the stage runner's format), as against TensorFlow's.
OWN_LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR) cxr_impressions(\.\w+)*: ")


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, finished_pipeline: Path) -> Path:
    """A copy of the session's one pipeline run, that these tests may change."""
    return copy_repo(finished_pipeline, tmp_path_factory.mktemp("pipeline") / "repo")


@needs_shared(SHARED)
def test_repro_builds_every_stage(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    for output in ("data/parsed/reports.parquet", "data/clean/vocab.json",
                   "models/finetuned/xception.weights.h5", "metrics/finetune.json",
                   "features/xception.h5", "data/embeddings/matrix.npy",
                   "models/model.weights.h5", "models/decoding.json", "models/retrieval.npz",
                   "metrics/eval/per_study.csv"):
        assert (repo / output).is_file(), output
    train = json.loads((repo / "metrics/train.json").read_text())
    assert {"kind", "parameters", "best_epoch", "monitor"} <= set(train)
    assert not {"val_label_f1", "val_bleu4"} & set(train)  # the selection stage's
    chosen_scores = json.loads((repo / "metrics/select.json").read_text())
    assert set(chosen_scores) == {"val_label_f1", "val_bleu4"}
    selection = json.loads((repo / "metrics/selection.json").read_text())
    thresholds = selection["label_thresholds"]  # decode.thresholds: prevalence (the default)
    assert len(thresholds["labels"]) == 14  # condition: findings
    assert thresholds["rule"] == "prevalence" and "abnormal_multiplier" not in thresholds
    # decode.prevalence_multipliers: [1.25], one candidate: every label at 1.25 times its
    # training prevalence of the validation studies
    assert thresholds["multiplier"] == 1.25
    assert set(thresholds["candidates_mean_val_f1"]) == {"1.25"}
    # (greedy + 1 beam x 2 penalties) x 2 label modes (independent, consistent), each with its
    # studies predicted normal, or written as the labeller reads normal, templated; each once
    # as the decoder words its findings, once with the phrases of those it left out, and once
    # with its title's template and the phrases of its findings; and all of those once per
    # template rule (decode.template_rules: [commonest, closest])
    candidates = selection["decoding"]["candidates"]
    assert [(c["beam_size"], c["length_penalty"], c["labels"], c["normal_text"],
             c["finding_text"], c["template_rule"]) for c in candidates] == [
        (beam, penalty, mode, "template_read", finding, rule)
        for mode in ("independent", "consistent")
        for searched in (((1, 0.7),), ((2, 0.0), (2, 0.7)))
        for rule in ("commonest", "closest")
        for finding in ("decoder", "appended", "phrased") for beam, penalty in searched]
    chosen = selection["decoding"]["chosen"]  # selected on validation, used by evaluate
    decoding = json.loads((repo / "models/decoding.json").read_text())
    label_thresholds = decoding.pop("label_thresholds")
    # The normal templates, from the training split: one per known exam title, and one for none.
    templates = decoding.pop("normal_templates")
    assert templates == selection["normal_templates"] and "" in templates
    # And every normal training impression the decoder can write (template_written), sorted.
    impressions = decoding.pop("normal_impressions")
    assert impressions == sorted(set(impressions)) and set(templates.values()) <= set(impressions)
    assert len(impressions) == selection["normal_impressions"]
    # And a phrase per finding that some training impression states alone at a sentence's end.
    phrases = decoding.pop("finding_phrases")
    assert phrases == selection["finding_phrases"] and phrases
    assert all(label_text(phrase)[name] and sum(label_text(phrase).values()) == 2
               for name, phrase in phrases.items())  # that finding and abnormal, nothing else
    assert decoding == chosen
    assert {name: round(value, 4) for name, value in label_thresholds.items()} == {
        name: row["threshold"] for name, row in thresholds["labels"].items()}
    assert "label_thresholds" not in json.loads((repo / "models/config.json").read_text())
    assert json.loads((repo / "metrics/evaluate.json").read_text())["decode"] == chosen
    parse = json.loads((repo / "metrics/parse.json").read_text())
    assert parse["reports"] == 100 and parse["images_found"] == 200
    assert "up to date" in sh(DVC, "status", cwd=repo)


@needs_shared(SHARED)
def test_repro_output_has_no_tensorflow_chatter(finished_pipeline: Path) -> None:
    """`dvc repro` shows DVC's lines, the stages' own messages and progress bars, and no
    TensorFlow/absl/oneDNN log lines or Python warnings (CXR_VERBOSE=1 brings them back)."""
    shown = (finished_pipeline.parent / "repro.log").read_text()
    for expected in ("Running stage 'features'", "features xception: 100%", "Epoch 2/2",
                     "report: 100%"):
        assert expected in shown, expected
    lines = shown.splitlines()  # also splits at the progress bars' \r
    own = [line for line in lines if OWN_LOG_LINE.match(line)]
    chatter = [line for line in lines if not OWN_LOG_LINE.match(line) and any(
        marker in line for marker in ("oneDNN", "absl", "tensorflow/", "cuda", "Warning:",
                                      "WARNING", "I0000", "W0000", "E0000", "deprecated"))]
    assert not chatter, chatter
    # The project's own notices stay: finetune asks for bfloat16, and a CPU without it says so
    # once, in one line (features and evaluate run float32).
    fallback = [line for line in own if "running the backbone in float32" in line]
    assert len(fallback) == (0 if bf16_support() else 1), own


@needs_shared(SHARED)
def test_dag_and_metrics_show(pipeline_repo: Path) -> None:
    dag = sh(DVC, "dag", "--dot", cwd=pipeline_repo)
    for edge in ('"parse" -> "clean"', '"parse" -> "features"', '"clean" -> "embeddings"',
                 '"clean" -> "finetune"', '"finetune" -> "features"', '"train" -> "selection"',
                 '"selection" -> "evaluate"', '"evaluate" -> "report"'):
        assert edge in dag
    shown = sh(DVC, "metrics", "show", "--json", cwd=pipeline_repo)
    workspace = next(iter(json.loads(shown).values()))["data"]
    # Well-named files: the headline scores, the training summary and the validation scores of
    # what the selection stage chose, no timings.
    assert set(workspace) == {"metrics/scores.json", "metrics/train.json",
                              "metrics/select.json"}, set(workspace)
    scores = workspace["metrics/scores.json"]["data"]
    assert set(scores) == {"model", "constant", "closest_constant", "title_constant",
                           "nearest_neighbour"}
    assert {"bleu4", "rouge_l", "cider", "abnormal_f1"} <= set(scores["model"])
    assert "seconds" not in json.dumps(workspace)
    table = sh(DVC, "metrics", "show", cwd=pipeline_repo)
    # A header and a row per file, each short: no file holds a number per label or candidate.
    assert len(table) < 2600 and max(map(len, table.splitlines())) < 800, table
    # The data stages' counts are still in git, for reading.
    parse = json.loads((pipeline_repo / "metrics/parse.json").read_text())
    assert parse["reports"] == 100
    assert json.loads((pipeline_repo / "metrics/clean.json").read_text())["reports"]["train"] == 80
    timings = json.loads((pipeline_repo / "timings/features.json").read_text())
    assert timings["seconds"] > 0 and "seconds" not in (pipeline_repo / "metrics/features.json"
                                                        ).read_text()
    assert "timings" in sh("git", "check-ignore", "timings/features.json", cwd=pipeline_repo)


@needs_shared(SHARED)
def test_plots_show_offline_each_plot_once(pipeline_repo: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    sh(DVC, "plots", "show", "-o", str(tmp_path / "plots"), cwd=pipeline_repo)
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Report length after normalisation", "Images per report",
                  "The 20 most frequent impressions", "ROUGE-L by reference length"):
        assert html.count(f'"{title}') == 1, title  # declared once, drawn once
    assert "<script src=" not in html  # the vendored template: Vega inlined, no CDN
    plots = html.count("vegaEmbed('#")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto((tmp_path / "plots" / "index.html").as_uri())
            page.wait_for_function(f"document.querySelectorAll('.vega-embed').length == {plots}",
                                   timeout=30000)
            page.wait_for_function("Array.from(document.querySelectorAll('.vega-embed')).every("
                                   "e => e.querySelector('canvas, svg'))", timeout=30000)
            assert not [url for url in requests if not url.startswith("file:")], requests
        finally:
            browser.close()


@needs_shared(SHARED)
def test_only_affected_stages_rerun(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    set_params(repo, machine={"threads": 1, "weights_dir": "/elsewhere"})  # untracked
    assert "up to date" in sh(DVC, "status", cwd=repo)
    # A typo in a tracked section is a change DVC sees, and the stage stops on it in one line.
    params = (repo / "params.yaml").read_text()
    # finetune tracks the features section too, so the typo stops it first and DVC removes its
    # outputs as well; `dvc checkout` restores them from the cache below.
    set_params(repo, features={"batchsize": 4})
    assert re.search(r"modified:\s+features\n", sh(DVC, "status", "features", cwd=repo))
    typo = run(DVC, "repro", "features", cwd=repo)
    assert typo.returncode != 0
    assert "error: params.yaml: unknown param features.batchsize" in typo.stderr + typo.stdout
    (repo / "params.yaml").write_text(params)
    sh(DVC, "checkout", cwd=repo)  # DVC removed the stage's outputs before running it
    assert "up to date" in sh(DVC, "status", cwd=repo)
    # A clean param: clean and embeddings run for real (the vocabulary changes); then `--dry`,
    # which decides from the real hashes, shows what the new clean outputs make stale: train
    # (and, below it, evaluate and report), never finetune or the features. (`--dry` alone
    # could not tell: without running clean it cannot know which of its outputs change.)
    set_params(repo, clean={"min_count": 1})
    out = sh(DVC, "repro", "embeddings", cwd=repo)
    assert "Running stage 'clean'" in out and "Running stage 'embeddings'" in out
    assert "Running stage 'parse'" not in out
    out = sh(DVC, "repro", "--dry", cwd=repo)
    assert "Running stage 'train'" in out
    for stage in ("parse", "clean", "finetune", "features", "embeddings"):
        assert f"Stage '{stage}' didn't change, skipping" in out, (stage, out)
    (repo / "params.yaml").write_text(params)
    out = sh(DVC, "repro", cwd=repo)  # back: clean and embeddings come from the run-cache
    assert "Running stage" not in out, out
    # A features param: what DVC would run (`--dry`, without the minutes of finetune, features
    # and everything below them).
    set_params(repo, features={"resize": "pad"})
    out = sh(DVC, "repro", "--dry", cwd=repo)
    assert "Running stage 'features'" in out and "Running stage 'clean'" not in out
    assert "Running stage 'parse'" not in out
    (repo / "params.yaml").write_text(params)  # or the later tests would rerun finetune
    assert "up to date" in sh(DVC, "status", cwd=repo)


@needs_shared(SHARED)
def test_a_decode_param_reruns_the_selection_never_train(pipeline_repo: Path) -> None:
    """Why selection is a stage of its own: a decode experiment reruns it (and what its new
    outputs make stale), on the saved model, which stays as it is: never a retraining."""
    repo = pipeline_repo
    params = (repo / "params.yaml").read_text()
    weights = repo / "models/model.weights.h5"
    before = (weights.read_bytes(), weights.stat().st_mtime_ns)
    set_params(repo, decode={"select_ties": "best", "abnormal_multiplier": "own",
                             "template_rules": ["commonest", "closest"]})
    status = sh(DVC, "status", cwd=repo)
    assert re.search(r"^selection:\n\s+changed deps:\n\s+params.yaml:\n\s+modified:\s+decode",
                     status, re.MULTILINE), status
    assert set(re.findall(r"^(\w+):$", status, re.MULTILINE)) == {"selection"}, status
    out = sh(DVC, "repro", cwd=repo)
    assert "Running stage 'selection'" in out and "Stage 'train' didn't change" in out, out
    assert "Running stage 'train'" not in out
    assert (weights.read_bytes(), weights.stat().st_mtime_ns) == before
    selection = json.loads((repo / "metrics/selection.json").read_text())
    chosen = selection["decoding"]
    assert chosen["ties"] == "best"
    # The abnormal label's own multiplier, its best validation F1, beside the findings' one.
    thresholds = selection["label_thresholds"]
    candidates = thresholds["abnormal_candidates_val_f1"]
    best = max(candidates.values())
    assert str(thresholds["abnormal_multiplier"]) == next(
        m for m, f1 in candidates.items() if f1 == best)  # ties: the earlier
    assert thresholds["labels"]["abnormal"]["val_f1"] == best
    assert json.loads((repo / "metrics/evaluate.json").read_text())["decode"] == chosen["chosen"]
    # Both template rules weighed: every templated candidate once per rule, the chosen rule's
    # templates kept in the bundle.
    rules = [(r["normal_text"], r["template_rule"]) for r in chosen["candidates"]]
    assert rules.count(("template_read", "closest")) == rules.count(
        ("template_read", "commonest")) > 0
    by_rule = selection["normal_templates_by_rule"]
    assert set(by_rule) == {"commonest", "closest"}
    assert selection["normal_templates"] == by_rule[chosen["template_rule"]]
    decoding = json.loads((repo / "models/decoding.json").read_text())
    assert decoding["normal_templates"] == by_rule[chosen["template_rule"]]
    assert "up to date" in sh(DVC, "status", cwd=repo)
    (repo / "params.yaml").write_text(params)
    out = sh(DVC, "repro", cwd=repo)  # back: from the run-cache, the model still untouched
    assert "Running stage" not in out, out
    assert (weights.read_bytes(), weights.stat().st_mtime_ns) == before
    assert "up to date" in sh(DVC, "status", cwd=repo)
    # A new decode field is a change to settings/decode.py: that too reruns the selection
    # alone (the decoder, the bundle and training take only settings/decoding.py).
    module = repo / "src/cxr_impressions/settings/decode.py"
    code = module.read_text()
    module.write_text(code + "# a new field of the selection's params\n")
    status = sh(DVC, "status", cwd=repo)
    assert set(re.findall(r"^(\w+):$", status, re.MULTILINE)) == {"selection"}, status
    module.write_text(code)
    assert "up to date" in sh(DVC, "status", cwd=repo)


@needs_shared(SHARED)
def test_evaluate_scores_model_and_baselines(pipeline_repo: Path) -> None:
    scores = json.loads((pipeline_repo / "metrics/evaluate.json").read_text())
    for system in ("model", "constant", "closest_constant", "title_constant",
                   "nearest_neighbour"):
        for metric in ("bleu1", "bleu4", "meteor", "rouge_l", "cider", "distinct"):
            assert metric in scores[system], (system, metric)
        assert set(scores[system]["clinical"]["abnormal"]) == {"precision", "recall", "f1"}
    assert scores["constant"]["distinct"] == scores["closest_constant"]["distinct"] == 1
    assert scores["test_studies"] == 10
    # Bootstrap intervals around every reported score, METEOR included; paired differences.
    assert scores["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}
    for system in ("model", "constant", "closest_constant", "title_constant",
                   "nearest_neighbour"):
        bounds = scores[system]["ci95"]
        for metric in ("bleu1", "bleu4", "meteor", "rouge_l", "cider"):
            low, high = bounds[f"{metric}_low"], bounds[f"{metric}_high"]
            assert low <= scores[system][metric] <= high, (system, metric)
        assert (bounds["abnormal_f1_low"] <= scores[system]["clinical"]["abnormal"]["f1"]
                <= bounds["abnormal_f1_high"])
    for baseline in ("constant", "closest_constant", "title_constant", "nearest_neighbour"):
        paired = scores[f"model_vs_{baseline}"]
        assert {"bleu4", "meteor", "cider", "abnormal_f1", "findings_macro_f1"} <= set(paired)
        assert all(e["low"] <= e["diff"] <= e["high"] for e in paired.values()), paired
    assert 0 <= scores["labeller"]["abnormal_accuracy"] <= 1
    import pandas as pd

    table = pd.read_csv(pipeline_repo / "metrics/eval/per_study.csv")
    assert len(table) == 10
    assert {"model", "constant", "closest_constant", "title_constant",
            "nearest_neighbour"} <= set(table)
    curves = pipeline_repo / "metrics/train/plots/metrics"
    assert (curves / "train" / "loss.tsv").exists() and (curves / "eval" / "bleu4.tsv").exists()


def test_compare_against_a_baseline_reproduces_evaluates_paired_differences(
        pipeline_repo: Path) -> None:
    """`cxr compare --old-system constant` on the evaluate stage's own table is the stage's
    `model_vs_constant`, interval for interval: the pooled k-fold comparison (several tables in
    the place of one) rests on the same bootstrap."""
    from cxr_impressions.evaluation.compare import compare_runs, read_run
    from cxr_impressions.evaluation.meteor import MeteorScorer

    scores = json.loads((pipeline_repo / "metrics/evaluate.json").read_text())
    table = str(pipeline_repo / "metrics/eval/per_study.csv")
    meteor = MeteorScorer()
    try:
        result = compare_runs(read_run(table), read_run(table, "constant"), meteor.statistics,
                              scores["bootstrap"]["resamples"], scores["bootstrap"]["seed"])
    finally:
        meteor.close()
    paired = scores["model_vs_constant"]
    assert set(paired) <= set(result)
    for metric, entry in paired.items():
        assert {k: round(result[metric][k], 4) for k in ("diff", "low", "high")} == entry, metric


@needs_shared(SHARED)
def test_evaluate_reproduces_its_metrics_exactly(pipeline_repo: Path) -> None:
    # A fresh process reloads the saved model: any weight not saved (a position table built at
    # model-build time, say) would change the captions and so the scores.
    before = (pipeline_repo / "metrics/evaluate.json").read_text()
    per_study = (pipeline_repo / "metrics/eval/per_study.csv").read_text()
    sh(DVC, "repro", "-f", "-s", "evaluate", cwd=pipeline_repo)
    assert (pipeline_repo / "metrics/evaluate.json").read_text() == before
    assert (pipeline_repo / "metrics/eval/per_study.csv").read_text() == per_study


@needs_shared(SHARED)
def test_report_renders_in_headless_chromium(pipeline_repo: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report = pipeline_repo / "reports" / "test"
    assert len(list((report / "thumbs").glob("*.jpg"))) == 20  # 10 test studies, 2 views each
    counts = json.loads((pipeline_repo / "metrics/report.json").read_text())
    assert counts == {"studies": 10, "thumbnails": 20, "unreadable_images": 0}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto((report / "index.html").as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            # The headline table: every metric row, with the model and the four baselines.
            header = page.locator("#headline thead th").all_inner_texts()
            assert header == ["metric", "model", "constant", "closest constant",
                              "title constant", "1-NN", "model − constant",
                              "model − closest constant", "model − title constant",
                              "model − 1-NN"]
            for metric in ("bleu4", "meteor", "rouge_l", "cider", "distinct", "abnormal_f1",
                           "findings_macro_f1"):
                cells = page.locator(f"#headline tr[data-metric='{metric}'] td")
                assert cells.count() == 10 and "–" not in cells.all_inner_texts()[1:], metric
            # Intervals beside the values; paired differences with theirs.
            bleu4 = page.locator("#headline tr[data-metric='bleu4'] td").all_inner_texts()
            assert all("[" in cell for cell in bleu4[1:]), bleu4
            assert page.locator("p.verdict").count() == 4  # one per baseline
            # The page never scrolls sideways, the headline table being its widest part.
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280
            assert page.locator("#labeller").count() == 1
            assert page.locator("svg.chart").count() >= 5  # curves, by length, top impressions
            faults = page.evaluate(CHART_LAYOUT_FAULTS)  # no text clipped or over the lines
            assert not faults, faults
            assert page.locator("#confusion td").count() == 4
            # The gallery: one card per test study, its images loaded once scrolled to.
            cards = page.locator("article.study")
            assert cards.count() == 10
            first = cards.first
            first.scroll_into_view_if_needed()
            page.wait_for_function(
                "c => Array.from(c.querySelectorAll('img')).every("
                "i => i.complete && i.naturalWidth > 0)", arg=first.element_handle(),
                timeout=30000)
            assert first.locator(".reference").inner_text().strip()
            assert first.locator(".generated").inner_text().strip()
            assert first.locator(".nearest").inner_text().strip()
            # The transformer's heat-map is drawn, and changes with the word pointed at.
            heat = ("c => { const x = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
                    ".data; let s = 0; for (let i = 3; i < x.length; i += 4) s += x[i] * (i % 97);"
                    " return s; }")
            canvas = first.locator("canvas").first
            page.wait_for_function(f"c => ({heat})(c) > 0", arg=canvas.element_handle())
            mean_map = canvas.evaluate(heat)
            words = first.locator(".word")
            assert words.count() >= 1
            words.first.click()
            assert canvas.evaluate(heat) != mean_map or words.count() == 1
            # Filters and sort.
            page.select_option("#filter-reference", "abnormal")
            shown = page.locator("article.study:visible")
            expected = page.locator("article.study[data-reference='abnormal']").count()
            assert shown.count() == expected
            assert page.inner_text("#shown-count") == str(expected)
            page.select_option("#filter-reference", "all")
            page.select_option("#sort", "rouge:asc")
            rouge = [float(v) for v in page.eval_on_selector_all(
                "article.study", "cs => cs.map(c => c.dataset.rouge)")]
            assert rouge == sorted(rouge)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
            assert (tmp_path / "report.png").stat().st_size > 10_000
            assert not failed, failed
        finally:
            browser.close()


def test_prompt_oracle_decodes_validation_under_both_conditions(pipeline_repo: Path) -> None:
    """scripts/prompt_oracle.py on the findings-conditioned sample model."""
    out = sh(sys.executable, "scripts/prompt_oracle.py", cwd=pipeline_repo)
    lines = [line for line in out.splitlines() if "macro-F1" in line]
    assert [line.split(":")[0] for line in lines] == [
        "predicted labels (consistent), greedy", "reference labels (oracle), greedy",
        "the label head alone (independent thresholds)"], out
    for line in lines[:2]:
        abnormal_f1 = float(re.search(r"abnormal F1 (\S+),", line).group(1))
        assert 0.0 <= abnormal_f1 <= 1.0 and re.search(r"\b\d+ distinct", line), line
    # One fidelity row per label of the model, in its order.
    rows = re.findall(r"^  (\w+): prompted (\d+), written when prompted (\S+), when not (\S+)$",
                      out, flags=re.MULTILINE)
    assert [r[0] for r in rows] == [*FINDINGS, "abnormal"], out


def test_threshold_rules_compare_on_validation_halves(pipeline_repo: Path) -> None:
    """scripts/threshold_rules.py on the sample model: each rule scored on held-out halves;
    with --captions, the decoding selection rerun under each rule, which under the params' own
    rule (prevalence, one multiplier shared by every label) finds what the selection stage
    chose; with --fixed, the chosen decoding's captions under each multiplier, of which the
    selection's own multiplier gives the selection's validation score, and the fixed rule's
    captions against the shared rule's on held-out halves."""
    out = sh(sys.executable, "scripts/threshold_rules.py", "--repeats", "5", "--captions",
             "--fixed", "1", cwd=pipeline_repo)
    rules = r"(f1|prevalence/own|prevalence/shared|0\.5|prevalence/1)"
    rows = dict(re.findall(rf"^{rules} +(\d\.\d{{3}} +\d\.\d{{3}})$", out, re.MULTILINE))
    assert set(rows) == {"f1", "prevalence/own", "prevalence/shared", "0.5", "prevalence/1"}, out
    assert all(0.0 <= float(v) <= 1.0 for values in rows.values() for v in values.split()), out
    assert re.search(r"prevalence/shared - f1, findings macro-F1: [+-]\d\.\d{3}", out), out
    assert re.search(r"prevalence/own - prevalence/shared, abnormal F1: [+-]\d\.\d{3}", out), out
    chosen = dict(re.findall(rf"^{rules} +beam \d, lp \S+, \w+ +(\d\.\d{{4}}) ", out,
                             re.MULTILINE))
    assert set(chosen) == {"f1", "prevalence/own", "prevalence/shared"}, out
    selected = json.loads((pipeline_repo / "metrics/select.json").read_text())
    assert float(chosen["prevalence/shared"]) == pytest.approx(selected["val_bleu4"],
                                                                abs=1e-4), out
    by_multiplier = {float(m): float(bleu4) for m, bleu4 in re.findall(
        r"^ *(\d+(?:\.\d+)?) +\d+\.\d% +(\d\.\d{4}) +\d\.\d{4} ", out, re.MULTILINE)}
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())["decode"]
    assert set(by_multiplier) == {*params["prevalence_multipliers"], 1.0}, out
    selection = json.loads((pipeline_repo / "metrics/selection.json").read_text())
    assert by_multiplier[selection["label_thresholds"]["multiplier"]] == pytest.approx(
        selected["val_bleu4"], abs=1e-4), out
    for metric in ("bleu4", "rouge_l", "cider", "abnormal_f1", "findings_macro_f1"):
        assert re.search(rf"^  {metric}: [+-]\d+\.\d{{4}} \(middle 95%", out, re.MULTILINE), out
    # Several workspaces: each compared, then a row of differences per workspace and their
    # mean, here of the same workspace twice (so each row and the mean agree); --fixed adds
    # the captions' two columns.
    out = sh(sys.executable, "scripts/threshold_rules.py", "--root", ".", str(pipeline_repo),
             "--repeats", "3", "--fixed", "1", cwd=pipeline_repo)
    value = r" +([+-]\d+\.\d{3})"
    rows = re.findall(rf"^(\S+){value * 4}$", out, re.MULTILINE)
    assert [r[0] for r in rows] == [".", str(pipeline_repo), "mean"], out
    assert rows[0][1:] == rows[1][1:] == rows[2][1:], out
    assert re.search(r"^above 0 on( +[0-2]/2){4}$", out, re.MULTILINE), out
    assert "captions rouge_l, prevalence/1 - shared" in out, out
    bad = subprocess.run([sys.executable, "scripts/threshold_rules.py", "--fixed", "0"],
                         cwd=pipeline_repo, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "--fixed must be a multiplier above 0, got 0.0" in bad.stderr.splitlines()[-1]
    # --multipliers replaces the params' candidates: the shared rule and the captions' table
    # take these, not params.yaml's.
    out = sh(sys.executable, "scripts/threshold_rules.py", "--repeats", "3", "--fixed", "1.5",
             "--multipliers", "1", "2", cwd=pipeline_repo)
    tabled = {float(m) for m in re.findall(r"^ *(\d+(?:\.\d+)?) +\d+\.\d% +\d\.\d{4} +\d\.\d{4} ",
                                           out, re.MULTILINE)}
    assert tabled == {1.0, 2.0, 1.5}, out
    bad = subprocess.run([sys.executable, "scripts/threshold_rules.py", "--multipliers", "2",
                          "0"], cwd=pipeline_repo, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.splitlines()[-1].endswith(
        "--multipliers: decode.prevalence_multipliers must be a non-empty list of numbers in "
        "(0, 100], got [2.0, 0.0]"), bad.stderr


def test_decoding_candidates_compare_on_validation_halves(pipeline_repo: Path) -> None:
    """scripts/decoding_candidates.py on the sample model: under the params' own candidates
    and tie rule (`template_read`, `varied`) it picks what the selection stage chose, a
    choice narrowed to one length penalty picks greedy or a beam at that penalty, one narrowed
    to appended finding phrases picks appended captions, and it scores every choice on
    held-out halves."""
    out = sh(sys.executable, "scripts/decoding_candidates.py", "--repeats", "3", "--compare",
             "decoder,template", "template_read", "decoder,template,template_read@best",
             "normal_text=template_read;length_penalty=0.0",
             "normal_text=template_read;finding_text=appended",
             "normal_text=template_read;template_rule=commonest,closest", "@varied:leader",
             cwd=pipeline_repo)
    rows = {choice: (chosen, float(bleu4)) for choice, chosen, bleu4 in re.findall(
        r"^((?:decoder,)?template\S*) +(\S.*?\S) +(\d\.\d{4}) ", out.split("\nsplit-half")[0],
        re.MULTILINE)}
    assert set(rows) == {"decoder,template", "template_read",
                         "decoder,template,template_read@best"}, out
    selected = json.loads((pipeline_repo / "metrics/select.json").read_text())
    decoding = json.loads((pipeline_repo / "models/decoding.json").read_text())
    assert decoding["normal_text"] == "template_read"
    assert rows["template_read"][1] == pytest.approx(selected["val_bleu4"], abs=1e-4), out
    assert rows["template_read"][0].endswith(
        ", template_read" + ("" if decoding["finding_text"] == "decoder"
                             else f", {decoding['finding_text']}")), out
    assert rows["decoder,template"][0].endswith((", decoder", ", template", ", appended",
                                                 ", phrased")), out
    assert re.search(r"^normal_text=template_read;finding_text=appended +(greedy|beam \d, "
                     r"lp \S+), \w+, template_read, appended ", out, re.MULTILINE), out
    # Both template rules weighed: the pick is worded by one of them.
    assert re.search(r"^normal_text=template_read;template_rule=commonest,closest +(greedy|beam "
                     r"\d, lp \S+), \w+, template_read(, \w+)?(, closest template)? ", out,
                     re.MULTILINE), out
    # The workspace's grid, the guards against the tied leader (decode.select_guard_reference).
    assert re.search(r"^@varied:leader +(greedy|beam \d, lp \S+), \w+, ", out, re.MULTILINE), out
    narrowed = re.search(r"^normal_text=template_read;length_penalty=0\.0 +(greedy|beam \d, "
                         r"lp (\S+)),", out, re.MULTILINE)
    assert narrowed and narrowed[2] in (None, "0.0"), out
    for choice in ("template_read", "decoder,template,template_read@best"):
        assert re.search(rf"^{choice} - baseline \(paired, 95%\): bleu4 [+-]\d\.\d{{4}} \[",
                         out, re.MULTILINE), out
        assert re.search(rf"^{choice} - baseline, held-out half: bleu4 [+-]\d\.\d{{4}}", out,
                         re.MULTILINE), out
    assert re.search(r"^split-half: 3 random halvings", out, re.MULTILINE), out
    # A choice it cannot read: one line, no traceback.
    for choice, message in (("title@varied", "'title@varied': expected normal_text values"),
                            ("finding_text=always", "expected finding_text values"),
                            ("template_rule=longest", "expected template_rule values"),
                            ("length_penalty=long", "length_penalty takes float values"),
                            ("beams=3", "expected KEY=VALUES parts"),
                            ("@varied:ahead", "the guard reference must be best, leader or twin"),
                            ("length_penalty=0.7,5", "error: --compare: decode.length_penalties "
                                                     "must be a non-empty list of numbers in "
                                                     "[0, 3], got [")):
        bad = subprocess.run([sys.executable, "scripts/decoding_candidates.py", "--compare",
                              "decoder", choice], cwd=pipeline_repo, capture_output=True,
                             text=True)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert message in bad.stderr.splitlines()[-1], bad.stderr


@needs_shared(SHARED)
def test_predict_command(pipeline_repo: Path, tmp_path: Path) -> None:
    images = pipeline_repo / "data/sample/images"
    figure = tmp_path / "explain.png"
    out = sh(sys.executable, "-m", "cxr_impressions.cli", "predict",
             str(images / "1_IM-0001-4001.dcm.jpg"), str(images / "1_IM-0001-3001.dcm.jpg"),
             "--model", "models", "--explain", str(figure), cwd=pipeline_repo)
    impression = out.strip().splitlines()[0]
    assert impression.strip()
    from PIL import Image

    with Image.open(figure) as image:
        words = len(impression.split())
        assert image.format == "PNG" and image.height > (words + 1) * 192  # a row per word
    folder = tmp_path / "new"
    folder.mkdir()
    for name in ("1_IM-0001-4001", "1_IM-0001-3001", "2_IM-0652-1001"):
        shutil.copy(images / f"{name}.dcm.jpg", folder / f"{name}.dcm.jpg")
    (folder / "2_IM-0652-1001.dcm.jpg").write_bytes(b"not an image")
    projections = tmp_path / "projections.csv"
    projections.write_text("uid,filename,projection\n1,1_IM-0001-4001.dcm.png,Frontal\n"
                           "1,1_IM-0001-3001.dcm.png,Lateral\n2,2_IM-0652-1001.dcm.png,Frontal\n")
    result = subprocess.run(
        [sys.executable, "-m", "cxr_impressions.cli", "predict", "--projections",
         str(projections), "--images", str(folder), "--model", "models", "--out",
         str(tmp_path / "predictions.csv")], cwd=pipeline_repo, capture_output=True, text=True,
        timeout=600, env=env())
    assert result.returncode == 0, result.stderr
    assert "error: uid 2:" in result.stderr
    assert "predict: 100%" in result.stderr  # the tqdm bar, on stderr
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "uid,impression" and lines[1].startswith("1,") and len(lines) == 2


@needs_shared(SHARED)
def test_training_is_seeded_and_resumes(pipeline_repo: Path) -> None:
    """Train again from the same params and data, killed (kill -9) after its first epoch's
    backup, then once more: it resumes there and ends with the finished pipeline's weights bit
    for bit, so a rerun is seeded and a resume exact (the dropout's random state included)."""
    repo = pipeline_repo
    first = json.loads((repo / "metrics/train.json").read_text())
    weights = (repo / "models/model.weights.h5").read_bytes()
    assert first["epochs_run"] == 2 and not first["resumed"]
    process = subprocess.Popen([DVC, "repro", "-f", "-s", "train"], cwd=repo, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    state = repo / "models" / ".train-state"
    deadline = time.monotonic() + 600
    while not backed_up_epochs(state / "backup"):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert backed_up_epochs(state / "backup") == 1  # killed in the second of two epochs
    out = sh(DVC, "repro", "-f", "-s", "train", cwd=repo)  # DVC deletes the DVCLive folder first
    assert "resuming after epoch 1" in out
    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["resumed"] is True and summary["epochs_run"] == 2
    assert summary["best_value"] == first["best_value"]
    assert summary["best_epoch"] == first["best_epoch"]
    assert (repo / "models/model.weights.h5").read_bytes() == weights  # bit for bit
    assert not state.exists()
    # The curves continue: every epoch once, none lost or logged twice.
    for curve in ("train/loss.tsv", "eval/loss.tsv"):
        rows = (repo / "metrics/train/plots/metrics" / curve).read_text().splitlines()[1:]
        assert [int(r.split("\t")[0]) for r in rows] == [0, 1], curve


@needs_shared(SHARED)
def test_model_artifact_is_fetched_by_name(finished_pipeline: Path, tmp_path: Path) -> None:
    """dvc.yaml's `artifacts:` names the model; with a version registered (a GTO git tag),
    `dvc artifacts get REPO impression-writer` fetches the folder `cxr predict` loads."""
    from .repos import git

    repo = copy_repo(finished_pipeline, tmp_path / "registry")
    artifact = yaml.safe_load((repo / "dvc.yaml").read_text())["artifacts"]["impression-writer"]
    assert artifact["type"] == "model" and artifact["path"] == "models"
    assert artifact["desc"] and "chest-x-ray" in artifact["labels"]
    git("tag", "-a", "impression-writer@v0.1.0", "-m", "Registering impression-writer v0.1.0",
        cwd=repo)
    out = tmp_path / "fetched"
    sh(DVC, "artifacts", "get", str(repo), "impression-writer", "-o", str(out), cwd=tmp_path)
    for name in ("model.weights.h5", "config.json", "vocab.json", "decoding.json"):
        assert (out / name).read_bytes() == (repo / "models" / name).read_bytes(), name
