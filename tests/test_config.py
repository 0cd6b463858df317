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


def test_decoding_candidates_are_lists_checked_in_one_line() -> None:
    from cxr_impressions.config import DecodeParams

    params = build_section("decode", DecodeParams, {"beam_sizes": [1, 4], "length_penalties": [1]})
    assert params.beam_sizes == (1, 4) and params.length_penalties == (1.0,)
    for raw, message in (({"beam_sizes": [0, 3]}, r"decode\.beam_sizes must be a non-empty"),
                         ({"beam_sizes": []}, r"decode\.beam_sizes must be a non-empty"),
                         ({"beam_sizes": 3}, r"decode\.beam_sizes must be a list of integers"),
                         ({"length_penalties": [4.0]}, r"decode\.length_penalties must be")):
        with pytest.raises(InputError, match=message) as info:
            build_section("decode", DecodeParams, raw)
        assert "\n" not in str(info.value)
