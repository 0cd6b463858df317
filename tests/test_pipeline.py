"""The DVC pipeline end to end, in a throwaway copy of this repo (a real git + DVC repo)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import GLOVE, REPO, SHARED, needs_shared

DVC = str(Path(sys.executable).parent / "dvc")


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=1800,
                            env=_env())
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def copy_working_tree(target: Path) -> None:
    """The working tree as git sees it (tracked and untracked-not-ignored), committed anew."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())


def set_params(repo: Path, **sections: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    copy_working_tree(repo)
    # Small random-weight features keep this test fast; real weights are tested elsewhere.
    set_params(repo, features={"weights": "none", "image_size": 71, "batch_size": 16},
               embeddings={"glove": str(GLOVE)},
               model={"units": 32, "layers": 1}, train={"epochs": 2, "batch_size": 16})
    sh("git", "init", "-q", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=repo)
    sh(DVC, "repro", cwd=repo)
    return repo


@needs_shared(SHARED)
def test_repro_builds_every_stage(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    for output in ("data/parsed/reports.parquet", "data/clean/vocab.json",
                   "features/xception.h5", "data/embeddings/matrix.npy",
                   "models/model.weights.h5", "models/decoding.json",
                   "metrics/eval/per_study.csv"):
        assert (repo / output).is_file(), output
    parse = json.loads((repo / "metrics/parse.json").read_text())
    assert parse["reports"] == 100 and parse["images_found"] == 200
    assert "up to date" in sh(DVC, "status", cwd=repo)


@needs_shared(SHARED)
def test_dag_and_metrics_show(pipeline_repo: Path) -> None:
    dag = sh(DVC, "dag", "--dot", cwd=pipeline_repo)
    for edge in ('"parse" -> "clean"', '"parse" -> "features"', '"clean" -> "embeddings"'):
        assert edge in dag
    shown = sh(DVC, "metrics", "show", "--json", cwd=pipeline_repo)
    metrics = json.loads(shown)
    workspace = next(iter(metrics.values()))["data"]
    assert workspace["metrics/parse.json"]["data"]["reports"] == 100
    assert workspace["metrics/clean.json"]["data"]["reports"]["train"] == 80


@needs_shared(SHARED)
def test_plots_show_renders_eda(pipeline_repo: Path, tmp_path: Path) -> None:
    sh(DVC, "plots", "show", "-o", str(tmp_path / "plots"), cwd=pipeline_repo)
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Report length after normalisation", "Images per report",
                  "The 20 most frequent impressions"):
        assert title in html


@needs_shared(SHARED)
def test_only_affected_stages_rerun(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    set_params(repo, features={"threads": 1})  # a speed knob: changes nothing downstream
    assert "up to date" in sh(DVC, "status", cwd=repo)
    set_params(repo, clean={"min_count": 1})
    out = sh(DVC, "repro", cwd=repo)
    assert "Running stage 'clean'" in out and "Running stage 'embeddings'" in out
    assert "Running stage 'parse'" not in out
    assert "Running stage 'features'" not in out  # clean params never touch the features
    set_params(repo, features={"resize": "pad"})
    out = sh(DVC, "repro", cwd=repo)
    assert "Running stage 'features'" in out and "Running stage 'clean'" not in out


@needs_shared(SHARED)
def test_evaluate_scores_model_and_baselines(pipeline_repo: Path) -> None:
    scores = json.loads((pipeline_repo / "metrics/evaluate.json").read_text())
    for system in ("model", "constant", "nearest_neighbour"):
        for metric in ("bleu1", "bleu4", "meteor", "rouge_l", "cider", "distinct"):
            assert metric in scores[system], (system, metric)
        assert set(scores[system]["clinical"]["abnormal"]) == {"precision", "recall", "f1"}
    assert scores["constant"]["distinct"] == 1
    assert scores["test_studies"] == 10
    assert 0 <= scores["labeller"]["abnormal_accuracy"] <= 1
    import pandas as pd

    table = pd.read_csv(pipeline_repo / "metrics/eval/per_study.csv")
    assert len(table) == 10 and {"model", "constant", "nearest_neighbour"} <= set(table)
    curves = pipeline_repo / "metrics/train/plots/metrics"
    assert (curves / "train" / "loss.tsv").exists() and (curves / "eval" / "bleu4.tsv").exists()


@needs_shared(SHARED)
def test_predict_command(pipeline_repo: Path, tmp_path: Path) -> None:
    images = pipeline_repo / "data/sample/images"
    out = sh(sys.executable, "-m", "cxr_impressions.cli", "predict",
             str(images / "1_IM-0001-4001.dcm.jpg"), str(images / "1_IM-0001-3001.dcm.jpg"),
             "--model", "models", cwd=pipeline_repo)
    assert out.strip().splitlines()[-1].strip()
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
        timeout=600, env=_env())
    assert result.returncode == 0, result.stderr
    assert "error: uid 2:" in result.stderr
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "uid,impression" and lines[1].startswith("1,") and len(lines) == 2


@needs_shared(SHARED)
def test_training_is_seeded_and_resumes(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    first = json.loads((repo / "metrics/train.json").read_text())
    weights = (repo / "models/model.weights.h5").read_bytes()
    sh(DVC, "repro", "-f", "-s", "train", cwd=repo)  # retrain alone, from the same inputs
    again = json.loads((repo / "metrics/train.json").read_text())
    assert again["best_value"] == first["best_value"]
    assert again["best_epoch"] == first["best_epoch"]
    assert (repo / "models/model.weights.h5").read_bytes() == weights  # bit for bit

    set_params(repo, train={"epochs": 4})
    process = subprocess.Popen([DVC, "repro", "train"], cwd=repo, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    state = repo / "models" / ".train-state" / "selection.json"
    deadline = time.monotonic() + 600
    while not state.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads(state.read_text())["epochs_done"] >= 1
    sh(DVC, "repro", "train", cwd=repo)
    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["resumed"] is True and summary["epochs_run"] == 4
    assert not state.parent.exists()
