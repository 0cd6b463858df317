from pathlib import Path

import pytest

from cxr_impressions.config import CleanParams, build_section, load_section
from cxr_impressions.errors import InputError


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
    ],
)
def test_wrong_param_is_one_line_error(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        build_section("clean", CleanParams, raw)
    assert "\n" not in str(info.value)


def test_bad_yaml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("clean:\n  min_count: [\n")
    with pytest.raises(InputError, match="params.yaml: line"):
        load_section("clean", path=path)


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
