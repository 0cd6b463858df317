"""The `cxr` command: impressions for new studies, without DVC.

    cxr predict FRONTAL.png [LATERAL.png] --model models/ [--explain heatmaps.png]
    cxr predict --projections indiana_projections.csv --images DIR --model models/ \\
        --out predictions.csv
    cxr scores [metrics/evaluate.json]      the model against the baselines, as a table
    cxr compare OLD [NEW] [--md]   two runs' test outputs (files or git revisions), paired
    cxr serve --model models/ [--host 127.0.0.1 --port 8000]   the web page and JSON API
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from typing import NoReturn

from .settings.evaluate import EvaluateParams
from .settings.machine import MachineParams
from .stage import run_stage


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(prog="cxr", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = cli.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="write impressions for studies")
    predict.add_argument("images", nargs="*", type=Path, help="FRONTAL [LATERAL] image files")
    predict.add_argument("--model", default="models", type=Path, help="model directory")
    predict.add_argument("--weights-dir", default=MachineParams.weights_dir,
                         help="folder of the backbone's ImageNet weights (default: %(default)s)")
    predict.add_argument("--beam", type=int, help="beam size (default: the model's decoding.json)")
    predict.add_argument("--projections", type=Path, help="batch: a Kaggle projections CSV")
    predict.add_argument("--images-dir", "--images-folder", dest="image_dir", type=Path,
                         help="batch: the folder of the images")
    predict.add_argument("--out", type=Path, help="batch: the CSV to write (uid,impression)")
    predict.add_argument("--exam-title", default="",
                         help="one study: its exam title, for a model with model.exam_title "
                              "(e.g. \"Xray Chest PA and Lateral\")")
    predict.add_argument("--reports", type=Path,
                         help="batch: a Kaggle reports CSV whose `image` column gives each "
                              "study's exam title (model.exam_title)")
    predict.add_argument("--explain", type=Path, metavar="PNG",
                         help="one study: also write where each word looked, as a PNG")
    predict.add_argument("--precision", choices=("float32", "bfloat16"),
                         help="the backbone's precision (default: the model's features.precision)")
    serve = commands.add_parser(
        "serve", help="serve the model: a web page at / and a JSON API at /v1/predict",
        description="Serve the model over HTTP. Settings come from the `serve:` section of "
                    "--params (when the file exists); flags override them.")
    serve.add_argument("--model", default="models", type=Path, help="model directory")
    serve.add_argument("--weights-dir", default=MachineParams.weights_dir,
                       help="folder of the backbone's ImageNet weights (default: %(default)s)")
    serve.add_argument("--params", default="params.yaml", type=Path,
                       help="params file whose `serve:` section is read (default: %(default)s)")
    serve.add_argument("--precision", choices=("float32", "bfloat16"),
                       help="the backbone's precision (default: the model's features.precision)")
    for flag, kind, text in (
            ("--host", str, "address to listen on (default 127.0.0.1: this machine only)"),
            ("--port", int, "port (default 8000)"),
            ("--max-batch", int, "studies decoded together; 1 turns batching off"),
            ("--backbone-batch", int, "images per backbone call within a batch"),
            ("--max-wait-ms", float, "how long a study waits for others on their way to "
                                      "fill its batch"),
            ("--queue-size", int, "studies queued or running before 503"),
            ("--timeout-s", float, "per-request time limit (504 beyond it)"),
            ("--max-upload-mb", float, "request body limit (413 beyond it)"),
            ("--max-image-side", int, "pixels per image side (413 beyond it)"),
            ("--heap-trim-s", float, "give free heap back to the OS at most this often "
                                      "(0: never)")):
        serve.add_argument(flag, type=kind, help=text)
    scores = commands.add_parser("scores", help="print the model against the baselines")
    scores.add_argument("metrics", nargs="?", default="metrics/evaluate.json", type=Path,
                        help="the evaluate stage's scores (default: %(default)s)")
    compare = commands.add_parser(
        "compare", help="two runs' test outputs against each other (paired bootstrap)",
        description="NEW minus OLD on every metric, each difference with its 95% interval "
                    "from a paired bootstrap of the test studies. OLD and NEW are per-study "
                    "tables (the evaluate stage's metrics/eval/per_study.csv) or git revisions, "
                    "whose table DVC reads from the cache or the remote; or several of these, "
                    "comma-separated, whose test studies are pooled (the folds of clean.split: "
                    "kfold).")
    compare.add_argument("old", help="a per-study CSV, or a git revision (branch, tag, commit); "
                                     "or several, comma-separated, pooled")
    compare.add_argument("new", nargs="?", default="metrics/eval/per_study.csv",
                         help="the same (default: the workspace's metrics/eval/per_study.csv)")
    for side in ("old", "new"):
        compare.add_argument(f"--{side}-system", default="model", metavar="SYSTEM",
                             help=f"the system of {side.upper()}'s table to compare: model "
                                  "(default), or a baseline the evaluate stage scored beside it "
                                  "(constant, closest_constant, title_constant, "
                                  "nearest_neighbour)")
    compare.add_argument("--md", action="store_true", help="a Markdown table")
    compare.add_argument("--resamples", type=int, default=EvaluateParams.bootstrap,
                         help="bootstrap resamples (default: %(default)s, as evaluate.bootstrap)")
    compare.add_argument("--seed", type=int, default=EvaluateParams.seed,
                         help="the resamples' seed (default: %(default)s, as evaluate.seed)")
    compare.add_argument("--no-meteor", action="store_true",
                         help="leave METEOR out (it needs Java)")
    args = cli.parse_args(_batch_alias(argv if argv is not None else sys.argv[1:]))
    if args.command == "scores":
        run_stage(lambda: _scores(args.metrics))
    elif args.command == "compare":
        run_stage(lambda: _compare(args))
    elif args.command == "serve":
        run_stage(lambda: _serve(args))
    else:
        run_stage(lambda: _predict(args))


def _scores(path: Path) -> None:
    import json

    from .errors import InputError
    from .reporting.page import (
        BASELINES,
        SYSTEMS,
        bootstrap_note,
        check_scores,
        score_rows,
        verdict,
    )

    if not path.is_file():
        raise InputError(f"{path}: not found (run the evaluate stage: `dvc repro evaluate`)")
    try:
        scores = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a metrics JSON file ({exc})") from None
    rows = score_rows(check_scores(scores, str(path)))
    print(f"{scores.get('kind', '?')} model, {scores.get('test_studies', '?')} test studies "
          f"({path})")
    # Two blocks, so that each fits a terminal: the systems, then model minus each baseline.
    systems = len(SYSTEMS) + 1
    for block in ([r[:systems] for r in rows], [(r[0], *r[systems:]) for r in rows]):
        widths = [max(len(r[i]) for r in block) for i in range(len(block[0]))]
        print()
        for row in block:
            print(f"{row[0]:<{widths[0]}}  " + "  ".join(
                f"{c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True)))
    lines = [bootstrap_note(scores), *(verdict(scores, b) for b in BASELINES)]
    if any(lines):
        print()
    for line in filter(None, lines):
        print(textwrap.fill(line, width=100, subsequent_indent="  "))


def _compare(args: argparse.Namespace) -> None:
    from .errors import InputError
    from .evaluation.compare import compare_runs, comparison_rows, read_run, render, verdict

    # Package code takes no params from params.yaml (tests/test_architecture.py): the defaults
    # are the evaluate section's defaults, and a run with other settings passes them.
    resamples, seed = args.resamples, args.seed
    if resamples < 1 or seed < 0:
        raise InputError("--resamples must be >= 1 and --seed >= 0")
    old, new = read_run(args.old, args.old_system), read_run(args.new, args.new_system)
    scorer = None
    if not args.no_meteor:
        from .evaluation.meteor import MeteorScorer, require_java

        require_java()
        scorer = MeteorScorer()
    try:
        result = compare_runs(new, old, None if scorer is None else scorer.statistics,
                              resamples, seed)
    finally:
        if scorer is not None:
            scorer.close()
    sources = tuple(
        source + ("" if system == "model" else f" {system}")
        for source, system in ((args.old, args.old_system),
                               ("workspace" if args.new == "metrics/eval/per_study.csv"
                                else args.new, args.new_system)))
    # Long paths would make the table too wide: they are named once here, and "old"/"new" there.
    names = tuple(s if len(s) <= 16 else n for s, n in zip(sources, ("old", "new"), strict=True))
    described = [n if n == s else f"{n} ({s})" for n, s in zip(names, sources, strict=True)]
    # Markdown paragraphs are left unwrapped: they go into a pull request as they are.
    wrap = (lambda text: text) if args.md else (
        lambda text: textwrap.fill(text, width=100, subsequent_indent="  "))
    print(wrap(f"{described[1]} against {described[0]}: {len(new.uids)} test studies; "
               f"{names[1]} − {names[0]} with its 95% interval from {resamples} paired "
               f"bootstrap resamples (seed {seed}); ▲/▼: significantly better/worse (the "
               "interval excludes 0)"))
    print()
    print(render(comparison_rows(result, *names), args.md))
    print()
    print(wrap(verdict(result, *names)))


def _serve(args: argparse.Namespace) -> None:
    import dataclasses

    from .config import build_section, load_section
    from .serving.server import serve
    from .settings.serve import ServeParams

    params = (load_section("serve", ServeParams, args.params) if args.params.is_file()
              else ServeParams())
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeParams)
                 if getattr(args, f.name, None) is not None}
    # Flags pass through the same checks as the params file, naming the flag's param.
    params = build_section("serve", ServeParams, {**dataclasses.asdict(params), **overrides},
                           source="cxr serve")
    serve(args.model, args.weights_dir, params, precision=args.precision)


def _batch_alias(argv: list[str]) -> list[str]:
    """Accept `--images DIR` in batch mode (with --projections) as the README shows it."""
    if "--projections" in argv and "--images" in argv:
        argv = ["--images-dir" if a == "--images" else a for a in argv]
    return argv


def _check_output(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    from .errors import InputError

    if path.is_dir():
        raise InputError(f"{path}: a directory ({option} needs a file name)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: not a directory, so {option} {path} cannot be written")


def _all_failed(args: argparse.Namespace, errors: list[str]) -> NoReturn:
    """A batch in which no study could be predicted is an error (exit status 2), not a success
    with an empty file."""
    from .errors import InputError

    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    raise InputError(f"all {len(errors)} studies of {args.projections} failed; "
                     f"{args.out} not written")


def _predict(args: argparse.Namespace) -> None:
    import pandas as pd

    from .atomic import atomic_path, write_csv
    from .errors import InputError

    # Every check that needs no model comes first: a mistake costs seconds, not a model load.
    batch = args.projections is not None
    if batch and (args.image_dir is None or args.out is None):
        raise InputError("batch prediction needs --projections, --images DIR and --out FILE")
    if not batch and not 1 <= len(args.images) <= 2:
        raise InputError("give one or two image files (frontal, then lateral), or --projections")
    if batch and args.explain is not None:
        raise InputError("--explain works on one study; the HTML report shows every test study")
    if batch and args.exam_title:
        raise InputError("--exam-title is for one study; in batch, give --reports CSV")
    if not batch and args.reports is not None:
        raise InputError("--reports is for batch prediction (--projections)")
    for image in args.images:
        if image.is_dir():
            raise InputError(f"{image}: a directory, not an image file")
        if not image.is_file():
            raise InputError(f"{image}: file not found")
    for option, path in (("--out", args.out), ("--explain", args.explain)):
        if path is not None:
            _check_output(path, option)

    from .captioning.predict import (
        Predictor,
        Study,
        exam_titles_from_reports,
        predict_batch,
        studies_from_projections,
    )

    began = time.perf_counter()
    if batch:
        titles = exam_titles_from_reports(args.reports) if args.reports is not None else None
        studies, errors = studies_from_projections(args.projections, args.image_dir, titles)
        if not studies and not errors:
            raise InputError(f"{args.projections}: no studies listed")
        if not studies:
            _all_failed(args, errors)
    predictor = Predictor(args.model, args.weights_dir, args.beam, precision=args.precision)
    given = bool(args.exam_title) or args.reports is not None
    if predictor.bundle.titles is None and given:
        print("note: this model does not read exam titles (model.exam_title: false); "
              "ignoring them", file=sys.stderr)
    elif predictor.bundle.titles is not None and not given:
        print("note: this model reads the exam title; with none given (--exam-title, or "
              "--reports in batch) it writes as for an unknown one", file=sys.stderr)
    if not batch:
        frontal, *lateral = args.images
        study = Study("-", frontal, lateral[0] if lateral else None, args.exam_title)
        if args.explain is None:
            print(predictor.predict([study])[0])
            return
        from .reporting.heatmaps import explain_figure

        text, images, maps = predictor.explain(study)
        figure = explain_figure(images, text.split(), maps)
        with atomic_path(args.explain, suffix=".png") as tmp:
            figure.save(tmp, format="PNG")
        print(text)
        print(f"heat-maps -> {args.explain}", file=sys.stderr)
        return
    rows, read_errors = predict_batch(predictor, studies)
    errors += read_errors
    if not rows:
        _all_failed(args, errors)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    write_csv(args.out, pd.DataFrame(rows, columns=["uid", "impression"]))
    seconds = time.perf_counter() - began
    print(f"{len(rows)} studies -> {args.out} ({len(errors)} failed) in {seconds:.1f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
