"""The `cxr` command: every bad input is one `error:` line and exit status 2, found before the
model loads wherever it can be."""

import json
from pathlib import Path

import pytest

from cxr_impressions.cli import main

from .helpers import SAMPLE
from .tiny_models import tiny_bundle

FRONTAL = next(SAMPLE.glob("images/*.jpg"))


def cxr(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run `cxr ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def one_error(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "models"
    tiny_bundle(directory)
    return directory


def test_an_image_that_is_a_directory(capsys, tmp_path: Path) -> None:
    status, _, err = cxr(capsys, "predict", tmp_path, "--model", tmp_path / "no-model")
    assert one_error(status, err) == f"{tmp_path}: a directory, not an image file"


@pytest.mark.parametrize("beam", ["0", "-2"])
def test_beam_below_one_is_refused(capsys, tmp_path: Path, beam: str) -> None:
    status, _, err = cxr(capsys, "predict", FRONTAL, "--model", tmp_path / "no-model", "--beam",
                         beam)
    assert one_error(status, err) == f"--beam must be at least 1, got {beam}"


@pytest.mark.parametrize("option", ["--out", "--explain"])
def test_an_output_that_is_a_directory_is_refused_first(capsys, tmp_path: Path,
                                                        option: str) -> None:
    # The model folder does not exist: the output is checked before anything is loaded.
    args = (["--projections", SAMPLE / "indiana_projections.csv", "--images", SAMPLE / "images"]
            if option == "--out" else [FRONTAL])
    status, _, err = cxr(capsys, "predict", *args, "--model", tmp_path / "no-model",
                         option, tmp_path)
    assert one_error(status, err) == f"{tmp_path}: a directory ({option} needs a file name)"


def test_a_broken_model_folder_is_one_line(capsys, models: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    broken.mkdir()
    for path in models.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.weights.h5").write_bytes(b"")
    status, _, err = cxr(capsys, "predict", FRONTAL, "--model", broken)
    assert one_error(status, err).startswith(
        f"{broken / 'model.weights.h5'}: not a readable Keras weights file")


def _projections(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "projections.csv"
    path.write_text("uid,filename,projection\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_a_batch_in_which_every_study_fails_exits_non_zero(capsys, models: Path,
                                                           tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "1_IM-0001-4001.dcm.png").write_bytes(b"not a png")  # found, unreadable
    projections = _projections(tmp_path, ["1,1_IM-0001-4001.dcm.png,Frontal",
                                          "2,2_IM-0652-1001.dcm.png,Frontal"])  # no file
    out = tmp_path / "predictions.csv"
    status, _, err = cxr(capsys, "predict", "--projections", projections, "--images", images,
                         "--model", models, "--out", out)
    lines = err.strip().splitlines()
    assert status == 2 and not out.exists()
    assert lines[-1] == f"error: all 2 studies of {projections} failed; {out} not written"
    assert any(line.startswith("error: uid 1: ") and "not a PNG, JPEG or DICOM" in line
               for line in lines)
    assert any(line.startswith("error: uid 2: no image file") for line in lines)


@pytest.mark.parametrize(("scores", "fault"), [
    ([1, 2], "not evaluate's scores (expected a JSON object with a 'model' object"),
    ({"kind": "merge"}, "not evaluate's scores"),
    ({"model": [0.1]}, "not evaluate's scores"),
    ({"model": {"bleu4": "high"}}, "model bleu4 must be a number, got 'high'"),
    ({"model": {}, "constant": 3}, "'constant' must be an object of metrics"),
    ({"model": {"clinical": {"abnormal": [1]}}}, "'model' must be an object of metrics"),
    ({"model": {"clinical": {"findings_macro_f1": None, "abnormal": {"f1": True}}}},
     "model abnormal_f1 must be a number, got True"),
    ({"model": {"bleu4": 0.1, "ci95": {"bleu4_low": "x"}}},
     "model.ci95.bleu4_low must be a number, got 'x'"),
    ({"model": {"ci95": [0.1]}}, "model.ci95 must be an object of interval bounds"),
    ({"model": {}, "model_vs_constant": [1]},
     "model_vs_constant must be an object of paired differences"),
    ({"model": {}, "model_vs_nearest_neighbour": {"cider": {"diff": "a", "low": 0, "high": 1}}},
     "model_vs_nearest_neighbour.cider must hold numbers diff, low and high"),
    ({"model": {}, "bootstrap": {"level": "95%"}}, "bootstrap.level must be a number"),
], ids=["list", "no-model", "model-list", "text", "system-number", "abnormal-list", "bool",
        "ci95-text", "ci95-list", "paired-list", "paired-text", "level-text"])
def test_scores_of_the_wrong_shape_is_one_line(capsys, tmp_path: Path, scores: object,
                                               fault: str) -> None:
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(scores))
    status, _, err = cxr(capsys, "scores", path)
    assert one_error(status, err).startswith(f"{path}: {fault}")


def test_exam_title_flags_in_the_wrong_mode_are_one_line(capsys, tmp_path: Path) -> None:
    batch = ["--projections", SAMPLE / "indiana_projections.csv", "--images", SAMPLE / "images",
             "--out", tmp_path / "out.csv"]
    status, _, err = cxr(capsys, "predict", *batch, "--exam-title", "Xray Chest",
                         "--model", tmp_path / "no-model")
    assert one_error(status, err) == "--exam-title is for one study; in batch, give --reports CSV"
    status, _, err = cxr(capsys, "predict", FRONTAL, "--reports",
                         SAMPLE / "indiana_reports.csv", "--model", tmp_path / "no-model")
    assert one_error(status, err) == "--reports is for batch prediction (--projections)"
    status, _, err = cxr(capsys, "predict", *batch, "--reports", tmp_path / "none.csv",
                         "--model", tmp_path / "no-model")
    assert one_error(status, err).startswith(f"{tmp_path / 'none.csv'}: ")


def test_a_model_without_titles_says_it_ignores_them(capsys, tmp_path: Path) -> None:
    from .tiny_models import serving_bundle

    models = serving_bundle(tmp_path / "models")
    status, out, err = cxr(capsys, "predict", FRONTAL, "--model", models, "--exam-title",
                           "Xray Chest PA and Lateral")
    assert status == 0 and out.strip()
    assert "this model does not read exam titles" in err


@pytest.mark.parametrize("command", ["predict", "serve", "scores", "compare"])
def test_help_describes_every_argument_in_plain_text(capsys, command: str) -> None:
    status, out, _ = cxr(capsys, command, "--help")
    assert status == 0 and f"usage: cxr {command}" in out
    assert "%%" not in out and "%(" not in out, out
    for line in out.splitlines():
        # an argument listed without a help text stands alone on its line
        words = line.split()
        assert not (line.startswith("  ") and len(words) == 1 and not line.startswith("   ")
                    ), f"{command}: no help for {line.strip()}"
