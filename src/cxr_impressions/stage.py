"""What every stage script shares: logging, and bad input reported as one line."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

VERBOSE_ENV = "CXR_VERBOSE"
# Wall-clock timings of the stages, one JSON file per stage. They change on every run, so they
# are kept out of the metrics files that `dvc metrics diff` and `dvc exp show` compare, out of
# dvc.yaml (no hash in dvc.lock) and out of git (.gitignore).
TIMINGS_DIR = Path("timings")
_timings: dict[str, float] = {}


def note_timing(name: str, value: float) -> None:
    """Add a figure (seconds, images per second, ...) to this stage's timings file."""
    _timings[name] = round(float(value), 3)


def quiet_logs() -> None:
    """Hide TensorFlow's and Keras' chatter (C++ oneDNN and absl lines, their Python loggers'
    warnings, deprecation notices), which buries the progress bars, the stages' own messages
    and the one-line errors, unless `CXR_VERBOSE=1`. Must run before TensorFlow loads."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("tensorflow", "keras", "tf_keras", "absl", "h5py", "google.protobuf"):
        warnings.filterwarnings("ignore", module=module)


quiet_logs()  # stage scripts and the CLI import this module before anything loads TensorFlow


def _write_timings(seconds: float) -> None:
    """timings/<stage>.json for a script in stages/ (not for the `cxr` command)."""
    script = Path(sys.argv[0])
    if script.parent.name != "stages":
        return
    from .atomic import write_json

    TIMINGS_DIR.mkdir(exist_ok=True)
    write_json(TIMINGS_DIR / f"{script.stem}.json", {"seconds": round(seconds, 2), **_timings})


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main`; an `InputError` prints `error: <message>` and exits with status 2.
    A stage that finishes writes its wall-clock time to timings/<stage>.json."""
    from .errors import InputError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    began = time.perf_counter()
    try:
        main()
        _write_timings(time.perf_counter() - began)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
