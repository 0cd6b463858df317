"""The `cxr` command: impressions for new studies, without DVC.

    cxr predict FRONTAL.png [LATERAL.png] --model models/ [--explain heatmaps.png]
    cxr predict --projections indiana_projections.csv --images DIR --model models/ \\
        --out predictions.csv
    cxr scores [metrics/evaluate.json]      the model against the baselines, as a table
    cxr serve --model models/ [--host 127.0.0.1 --port 8000]   the web page and JSON API
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .stage import run_stage


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(prog="cxr", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = cli.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="write impressions for studies")
    predict.add_argument("images", nargs="*", type=Path, help="FRONTAL [LATERAL] image files")
    predict.add_argument("--model", default="models", type=Path, help="model directory")
    predict.add_argument("--weights-dir", default="../shared/weights",
                         help="folder of the backbone's ImageNet weights (default: %(default)s)")
    predict.add_argument("--beam", type=int, help="beam size (default: the model's decoding.json)")
    predict.add_argument("--projections", type=Path, help="batch: a Kaggle projections CSV")
    predict.add_argument("--images-dir", "--images-folder", dest="image_dir", type=Path,
                         help="batch: the folder of the images")
    predict.add_argument("--out", type=Path, help="batch: the CSV to write (uid,impression)")
    predict.add_argument("--explain", type=Path, metavar="PNG",
                         help="one study: also write where each word looked, as a PNG")
    predict.add_argument("--precision", choices=("float32", "bfloat16"),
                         help="the backbone's precision (default: the model's features.precision)")
    serve = commands.add_parser(
        "serve", help="serve the model: a web page at / and a JSON API at /v1/predict",
        description="Serve the model over HTTP. Settings come from the `serve:` section of "
                    "--params (when the file exists); flags override them.")
    serve.add_argument("--model", default="models", type=Path, help="model directory")
    serve.add_argument("--weights-dir", default="../shared/weights",
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
            ("--max-wait-ms", float, "how long a study waits for others to fill its batch"),
            ("--queue-size", int, "studies queued or running before 503"),
            ("--timeout-s", float, "per-request time limit (504 beyond it)"),
            ("--max-upload-mb", float, "request body limit (413 beyond it)"),
            ("--max-image-side", int, "pixels per image side (413 beyond it)")):
        serve.add_argument(flag, type=kind, help=text)
    scores = commands.add_parser("scores", help="print the model against the baselines")
    scores.add_argument("metrics", nargs="?", default="metrics/evaluate.json", type=Path)
    args = cli.parse_args(_batch_alias(argv if argv is not None else sys.argv[1:]))
    if args.command == "scores":
        run_stage(lambda: _scores(args.metrics))
    elif args.command == "serve":
        run_stage(lambda: _serve(args))
    else:
        run_stage(lambda: _predict(args))


def _scores(path: Path) -> None:
    import json

    from .errors import InputError
    from .reporting.page import score_rows

    if not path.is_file():
        raise InputError(f"{path}: not found (run the evaluate stage: `dvc repro evaluate`)")
    try:
        scores = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a metrics JSON file ({exc})") from None
    rows = score_rows(scores)
    width = max(len(r[0]) for r in rows)
    print(f"{scores.get('kind', '?')} model, {scores.get('test_studies', '?')} test studies "
          f"({path})")
    for row in rows:
        print(f"{row[0]:<{width}}  " + "  ".join(f"{c:>10}" for c in row[1:]))


def _serve(args: argparse.Namespace) -> None:
    import dataclasses

    from .config import ServeParams, build_section, load_section
    from .serving.server import serve

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


def _predict(args: argparse.Namespace) -> None:
    import pandas as pd

    from .atomic import atomic_path, write_csv
    from .captioning.predict import Predictor, Study, predict_batch, studies_from_projections
    from .errors import InputError

    batch = args.projections is not None
    if batch and (args.image_dir is None or args.out is None):
        raise InputError("batch prediction needs --projections, --images DIR and --out FILE")
    if not batch and not 1 <= len(args.images) <= 2:
        raise InputError("give one or two image files (frontal, then lateral), or --projections")
    if batch and args.explain is not None:
        raise InputError("--explain works on one study; the HTML report shows every test study")
    began = time.perf_counter()
    predictor = Predictor(args.model, args.weights_dir, args.beam, precision=args.precision)
    if not batch:
        frontal, *lateral = args.images
        study = Study("-", frontal, lateral[0] if lateral else None)
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
    studies, errors = studies_from_projections(args.projections, args.image_dir)
    rows, read_errors = predict_batch(predictor, studies)
    errors += read_errors
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    write_csv(args.out, pd.DataFrame(rows, columns=["uid", "impression"]))
    seconds = time.perf_counter() - began
    print(f"{len(rows)} studies -> {args.out} ({len(errors)} failed) in {seconds:.1f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
