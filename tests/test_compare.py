"""`cxr compare`: two runs' per-study outputs, paired study by study (the README's "Comparing
branches" runs it on revisions, in test_team.py)."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_impressions.errors import InputError
from cxr_impressions.evaluation.compare import compare_runs, read_run

from .repos import DVC, git, sh
from .test_cli import cxr, one_error

CONSTANT = "no acute cardiopulmonary abnormality ."
FINDINGS = ["heart size is enlarged .", "small left pleural effusion .",
            "right lower lobe opacity , consistent with pneumonia .",
            "calcified granuloma in the right upper lobe .",
            "degenerative changes of the thoracic spine .", "low lung volumes with atelectasis ."]


def references(n: int = 60) -> list[str]:
    """Half normal, half with one finding each: like the test split's impressions."""
    return [CONSTANT if i % 2 else FINDINGS[(i // 2) % len(FINDINGS)] for i in range(n)]


def write_run(path: Path, texts: list[str], refs: list[str] | None = None,
              uids: list[int] | None = None) -> Path:
    refs = refs or references(len(texts))
    uids = uids or list(range(1, len(texts) + 1))
    table = pd.DataFrame({"uid": uids, "reference": refs, "model": texts,
                          "model_bleu4": 0.0})
    table.to_csv(path, index=False)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """`constant.csv` says the normal sentence for every study; `reader.csv` writes the
    reference's finding for two thirds of the abnormal studies and the normal sentence else."""
    refs = references()
    reader = [r if i % 2 == 0 and i % 3 else CONSTANT for i, r in enumerate(refs)]
    return (write_run(tmp_path / "constant.csv", [CONSTANT] * len(refs)),
            write_run(tmp_path / "reader.csv", reader))


def test_a_run_against_itself_differs_by_nothing(runs: tuple[Path, Path]) -> None:
    run = read_run(str(runs[1]))
    result = compare_runs(run, run, None, 200, 0)
    for metric, entry in result.items():
        assert entry["old"] == entry["new"] and entry["diff"] == 0, metric
        if entry["low"] is not None:
            assert entry["low"] == entry["high"] == 0, metric


def test_the_better_run_wins_and_swapping_mirrors_the_intervals(runs: tuple[Path, Path]
                                                                ) -> None:
    constant, reader = (read_run(str(p)) for p in runs)
    forward = compare_runs(reader, constant, None, 500, 0)
    backward = compare_runs(constant, reader, None, 500, 0)
    for metric in ("bleu4", "rouge_l", "cider", "abnormal_f1", "findings_macro_f1"):
        entry = forward[metric]
        assert entry["low"] > 0, (metric, entry)  # significantly better
        assert entry["low"] <= entry["diff"] <= entry["high"]
        assert backward[metric]["diff"] == pytest.approx(-entry["diff"], abs=1e-4)
        assert backward[metric]["low"] == pytest.approx(-entry["high"], abs=1e-4)
    assert forward["distinct"] == {"old": 1.0, "new": 5.0, "diff": 4.0, "low": None,
                                   "high": None}
    assert forward["top_share"]["old"] == 1.0 and forward["top_share"]["new"] < 1.0
    # The same seed, the same intervals: in another order on disk, the same studies pair up.
    shuffled = pd.read_csv(runs[1]).sample(frac=1.0, random_state=3)
    shuffled.to_csv(runs[1].with_name("shuffled.csv"), index=False)
    again = compare_runs(read_run(str(runs[1].with_name("shuffled.csv"))), constant, None, 500, 0)
    assert again == forward


def test_the_command_prints_the_table_and_the_verdict(capsys, runs: tuple[Path, Path]) -> None:
    status, out, err = cxr(capsys, "compare", runs[0], runs[1], "--resamples", "300",
                           "--no-meteor")
    assert status == 0, err
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "▲" in rows["BLEU-4"] and "▲" in rows["findings macro-F1"]
    assert "300 paired bootstrap resamples (seed 0)" in " ".join(out.split())
    assert "new vs old: better on BLEU-1" in " ".join(out.split())
    status, out, _ = cxr(capsys, "compare", runs[0], runs[1], "--md", "--no-meteor")
    assert status == 0 and "| metric | old | new | new − old |" in out
    assert np.any(["| BLEU-4 |" in line and line.endswith("▲ |") for line in out.splitlines()])


@pytest.mark.parametrize("change, fault", [
    (lambda t: t.iloc[:-1], "different test studies (60 and 59, 59 in common)"),
    (lambda t: t.assign(reference=t["reference"].where(t["uid"] != 5, "other text .")),
     "study 5 has different references"),
], ids=["fewer-studies", "other-reference"])
def test_runs_on_other_studies_are_refused(tmp_path: Path, runs: tuple[Path, Path],
                                           change, fault: str) -> None:
    other = tmp_path / "other.csv"
    change(pd.read_csv(runs[1])).to_csv(other, index=False)
    with pytest.raises(InputError, match=re.escape(fault)):
        compare_runs(read_run(str(other)), read_run(str(runs[0])), None, 100, 0)


@pytest.mark.parametrize("content, fault", [
    ("uid,reference\n1,a .\n", "not a per-study table of the evaluate stage (no column 'model')"),
    ("uid,reference,model\n", "no studies"),
    ("uid,reference,model\n1,a .,b .\n1,a .,c .\n", "study 1 appears twice"),
    ("", "not a per-study CSV"),
], ids=["no-model", "empty", "twice", "blank"])
def test_bad_tables_are_one_line(capsys, tmp_path: Path, runs: tuple[Path, Path], content: str,
                                 fault: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    status, _, err = cxr(capsys, "compare", bad, runs[1], "--no-meteor")
    assert one_error(status, err).startswith(f"{bad}: {fault}")


def test_neither_a_file_nor_a_revision_is_one_line(capsys, tmp_path: Path,
                                                   runs: tuple[Path, Path]) -> None:
    status, _, err = cxr(capsys, "compare", "no-such-branch", runs[1], "--no-meteor")
    assert one_error(status, err) == ("no-such-branch: neither a file nor a git revision here "
                                      "(a branch, tag, commit or DVC experiment)")
    status, _, err = cxr(capsys, "compare", tmp_path, runs[1], "--no-meteor")
    assert one_error(status, err).startswith(f"{tmp_path}: a folder")
    status, _, err = cxr(capsys, "compare", runs[0], runs[1], "--resamples", "0")
    assert one_error(status, err) == "--resamples must be >= 1 and --seed >= 0"


def test_folds_pool_into_the_whole_run(tmp_path: Path, runs: tuple[Path, Path]) -> None:
    """The folds of a k-fold run, each tested on its own studies, compare as the one run made of
    all of them: the same pairs, the same resamples, the same intervals."""
    parts = {}
    for path in runs:
        table = pd.read_csv(path)
        parts[path.stem] = []
        for fold, rows in enumerate((table.iloc[::3], table.iloc[1::3], table.iloc[2::3])):
            parts[path.stem].append(str(tmp_path / f"{path.stem}{fold}.csv"))
            rows.to_csv(parts[path.stem][-1], index=False)
    whole = compare_runs(read_run(str(runs[1])), read_run(str(runs[0])), None, 300, 0)
    pooled_reader = read_run(",".join(parts["reader"]))
    assert list(pooled_reader.uids) == [str(u) for u in range(1, 61)]
    pooled = compare_runs(pooled_reader, read_run(" , ".join(parts["constant"])), None, 300, 0)
    assert pooled == whole
    # Two folds of one run can't share a study, and a list can't have a hole.
    with pytest.raises(InputError, match=re.escape(
            f"{parts['reader'][0]} and {runs[1]}: study 1 is in both")):
        read_run(f"{parts['reader'][0]},{runs[1]}")
    with pytest.raises(InputError, match="an empty name in the comma-separated list"):
        read_run(f"{parts['reader'][0]},,{parts['reader'][1]}")


def test_a_baseline_of_the_table_takes_the_place_of_the_model(capsys, tmp_path: Path,
                                                              runs: tuple[Path, Path]) -> None:
    """`--old-system constant`: the reader's run against the constant its own table holds, as
    against a separate run of the constant."""
    both = pd.read_csv(runs[1]).assign(constant=CONSTANT, constant_bleu4=0.0)
    both.to_csv(tmp_path / "both.csv", index=False)
    inside = compare_runs(read_run(str(tmp_path / "both.csv")),
                          read_run(str(tmp_path / "both.csv"), "constant"), None, 300, 0)
    assert inside == compare_runs(read_run(str(runs[1])), read_run(str(runs[0])), None, 300, 0)
    status, out, err = cxr(capsys, "compare", "--old-system", "constant", tmp_path / "both.csv",
                           tmp_path / "both.csv", "--resamples", "300", "--no-meteor")
    assert status == 0, err
    assert "new vs old: better on BLEU-1" in " ".join(out.split())
    assert f"old ({tmp_path / 'both.csv'} constant)" in " ".join(out.split())
    status, _, err = cxr(capsys, "compare", "--new-system", "reference", runs[0], runs[1],
                         "--no-meteor")
    assert one_error(status, err) == (f"{runs[1]}: no system 'reference' in this table (it has "
                                      "model)")


def test_a_dvc_experiment_is_named_as_dvc_names_it(tmp_path: Path, runs: tuple[Path, Path]) -> None:
    """Git does not resolve a DVC experiment's name (`dvc exp show` lists them, as the k folds of
    a queued `clean.fold` sweep); `cxr compare` does, and reads its table from the cache."""
    repo = tmp_path / "repo"
    (repo / "tables").mkdir(parents=True)
    for path in runs:
        (repo / "tables" / path.name).write_bytes(path.read_bytes())
    (repo / "params.yaml").write_text("table: constant\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: mkdir -p metrics/eval && cp tables/${table}.csv "
        "metrics/eval/per_study.csv\n    deps: [tables]\n    params: [table]\n"
        "    outs: [metrics/eval/per_study.csv]\n")
    git("init", "-q", cwd=repo)
    sh(DVC, "init", "-q", cwd=repo)
    sh(DVC, "repro", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "the constant", cwd=repo)
    sh(DVC, "exp", "run", "-q", "-n", "fold-reader", "-S", "table=reader", cwd=repo)
    reader = read_run("fold-reader", repo=repo)
    assert reader.texts == read_run(str(runs[1])).texts
    assert read_run("HEAD", repo=repo).texts == read_run(str(runs[0])).texts
    with pytest.raises(InputError, match="fold-writer: neither a file nor a git revision here"):
        read_run("fold-writer", repo=repo)
