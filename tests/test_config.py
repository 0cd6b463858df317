import dataclasses
import subprocess
from pathlib import Path

import pytest

from cxr_impressions.config import SECTIONS, UNTRACKED, build_section, load_section, read_params
from cxr_impressions.errors import InputError
from cxr_impressions.settings.clean import CleanParams
from cxr_impressions.settings.decode import DecodeParams
from cxr_impressions.settings.machine import MachineParams

from .helpers import REPO, write_params


def test_defaults_and_overrides() -> None:
    params = build_section("clean", CleanParams, {"min_count": 3, "fractions": [0.7, 0.2, 0.1]})
    assert params.min_count == 3
    assert params.fractions == (0.7, 0.2, 0.1)
    assert params.target == "impression"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"min_count": "two"}, r"clean\.min_count must be an integer, got 'two'"),
        ({"min_count": 0}, r"clean\.min_count must be >= 1"),
        ({"target": "summary"}, r"clean\.target must be one of 'impression', 'findings'"),
        ({"fractions": [0.5, 0.5]}, r"clean\.fractions must be a list of 3"),
        ({"fractions": [0.5, 0.4, 0.3]}, r"summing to 1"),
        ({"min_cout": 2}, r"unknown param clean\.min_cout"),
        ({"seed": True}, r"clean\.seed must be an integer"),
        ({"split": "kfold", "folds": 5, "fold": 5},
         r"clean\.fold must be below clean\.folds \(5\), got 5"),
        ({"folds": 2}, r"clean\.folds must be >= 3"),
    ],
)
def test_wrong_param_is_one_line_error(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        build_section("clean", CleanParams, raw)
    assert "\n" not in str(info.value)


def test_an_unknown_guard_metric_is_one_line_error() -> None:
    with pytest.raises(InputError, match=r"decode\.select_guards must be one of 'bleu4'.*"
                                         r"got 'rouge'") as info:
        build_section("decode", DecodeParams, {"select_guards": ["rouge_l", "rouge"]})
    assert "\n" not in str(info.value)


def test_an_unknown_abnormal_multiplier_is_one_line_error() -> None:
    with pytest.raises(InputError, match=r"decode\.abnormal_multiplier must be one of 'shared', "
                                         r"'own', got 'both'") as info:
        build_section("decode", DecodeParams, {"abnormal_multiplier": "both"})
    assert "\n" not in str(info.value)


def test_bad_yaml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("clean:\n  min_count: [\n")
    with pytest.raises(InputError, match="params.yaml: line"):
        load_section("clean", path=path)


def _disagreements(path: Path) -> list[str]:
    """Where a params file and config.py's defaults differ: sections, keys or values."""
    params = read_params(path)
    problems = [f"section {s}: in params.yaml, no dataclass in config.SECTIONS"
                for s in sorted(set(params) - set(SECTIONS))]
    problems += [f"section {s}: missing from params.yaml"
                 for s in sorted(set(SECTIONS) - set(params))]
    for name in sorted(set(params) & set(SECTIONS)):
        cls, raw = SECTIONS[name], params[name] or {}
        fields = {f.name for f in dataclasses.fields(cls)}
        problems += [f"{name}.{k}: missing from params.yaml" for k in sorted(fields - set(raw))]
        try:
            given = build_section(name, cls, raw, source=str(path))
        except InputError as exc:
            problems.append(str(exc))
            continue
        default = cls()
        problems += [f"{name}.{f}: params.yaml {getattr(given, f)!r}, config.py "
                     f"{getattr(default, f)!r}" for f in sorted(fields)
                     if getattr(given, f) != getattr(default, f)]
    return problems


def test_params_yaml_lists_every_param_with_config_py_default(tmp_path: Path) -> None:
    """One source of defaults: config.py. params.yaml lists each of its sections and fields with
    the same value, so DVC tracks every value a stage uses. A `dvc exp run -S` leaves its value
    in the working copy; then the committed params.yaml must agree instead."""
    problems = _disagreements(REPO / "params.yaml")
    if problems:
        committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO,
                                   capture_output=True, text=True)
        if committed.returncode == 0:
            (tmp_path / "params.yaml").write_text(committed.stdout, encoding="utf-8")
            if not _disagreements(tmp_path / "params.yaml"):
                return
    assert not problems, problems


def test_the_defaults_check_sees_a_disagreement(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    changed = text.replace("  patience: 3", "  patience: 5").replace("  seed: 42", "  sed: 42")
    assert changed != text
    write_params(tmp_path, changed + "extra:\n  x: 1\n")
    problems = _disagreements(tmp_path / "params.yaml")
    assert "train.patience: params.yaml 5, config.py 3" in problems
    assert "section extra: in params.yaml, no dataclass in config.SECTIONS" in problems
    assert any("unknown param clean.sed" in p for p in problems)


def test_yaml_numbers_are_read_as_dvc_reads_them(tmp_path: Path) -> None:
    """YAML 1.2, as DVC's ruamel.yaml: `5e-4` is a number (PyYAML's YAML 1.1 reads text), `no`
    is text, `010` is ten."""
    from dvc.utils.serialize import load_yaml

    text = ("train:\n  learning_rate: 5e-4\n  epochs: 010\n"
            "clean:\n  sentence_token: no\n  max_len_percentile: 1e2\n")
    path = write_params(tmp_path, text)
    assert read_params(path) == load_yaml(path)
    train = load_section("train", path=path)
    assert train.learning_rate == 0.0005 and train.epochs == 10
    clean = load_section("clean", path=path)
    assert clean.sentence_token == "no" and clean.max_len_percentile == 100.0


def test_duplicate_key_is_one_line(tmp_path: Path) -> None:
    path = write_params(tmp_path, "train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(InputError, match=r"params\.yaml: line 3: not valid YAML \(found "
                                         r"duplicate key \"epochs\"") as info:
        load_section("train", path=path)
    assert "\n" not in str(info.value)


def test_machine_settings_live_in_their_own_section(tmp_path: Path) -> None:
    path = write_params(tmp_path, "machine:\n  threads: 2\n  weights_dir: /w\n"
                                  "features:\n  threads: 2\n")
    machine = load_section("machine", path=path)
    assert machine == MachineParams(threads=2, weights_dir="/w", allow_download=False)
    with pytest.raises(InputError, match=r"unknown param features\.threads"):
        load_section("features", path=path)
    assert set(UNTRACKED) == {"machine", "serve"} and "machine" in SECTIONS


def test_decoding_candidates_are_lists_checked_in_one_line() -> None:
    from cxr_impressions.settings.decode import DecodeParams

    params = build_section("decode", DecodeParams, {"beam_sizes": [1, 4], "length_penalties": [1]})
    assert params.beam_sizes == (1, 4) and params.length_penalties == (1.0,)
    for raw, message in (({"beam_sizes": [0, 3]}, r"decode\.beam_sizes must be a non-empty"),
                         ({"beam_sizes": []}, r"decode\.beam_sizes must be a non-empty"),
                         ({"beam_sizes": 3}, r"decode\.beam_sizes must be a list of integers"),
                         ({"length_penalties": [4.0]}, r"decode\.length_penalties must be")):
        with pytest.raises(InputError, match=message) as info:
            build_section("decode", DecodeParams, raw)
        assert "\n" not in str(info.value)


def test_project_path_reaches_beside_the_repo_from_an_experiment_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr_impressions.config import project_path

    shared = tmp_path / "shared" / "weights"
    shared.mkdir(parents=True)
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"  # where `dvc queue` runs a stage
    copy.mkdir(parents=True)
    (copy / "data").mkdir()
    monkeypatch.chdir(copy)
    assert project_path("../shared/weights").resolve() == shared.resolve()
    assert project_path("data") == Path("data")  # inside the copy: left as it is
    assert project_path("../missing") == Path("../missing")  # the error names the param's path
    monkeypatch.chdir(project)
    assert project_path("../shared/weights") == Path("../shared/weights")


def test_origin_path_is_the_projects_whether_or_not_it_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared state (finetune's activation cache) lives in the project, also for a stage that
    runs in an experiment copy, from the copy's root or a folder below it."""
    from cxr_impressions.config import origin_path

    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    (copy / "stages").mkdir(parents=True)
    (copy / "features" / ".finetune-cache").mkdir(parents=True)  # even where the copy has one
    monkeypatch.chdir(copy)
    assert origin_path("features/.finetune-cache") == project.resolve() / "features/.finetune-cache"
    monkeypatch.chdir(copy / "stages")
    assert origin_path("cache") == project.resolve() / "stages" / "cache"
    assert origin_path(tmp_path / "abs") == tmp_path / "abs"
    monkeypatch.chdir(project)
    assert origin_path("features/.finetune-cache") == Path("features/.finetune-cache")
