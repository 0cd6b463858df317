"""What every stage script shares: logging, and bad input reported as one line."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
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


# What TensorFlow's C++ libraries print while they load, whatever TF_CPP_MIN_LOG_LEVEL says: absl's
# banner, then its INFO and WARNING lines (on CPUs with AVX512_VNNI, AVX512_BF16 or AMX, where
# oneDNN's custom operations are on by default: "oneDNN custom operations are on ...").
_LOAD_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] )")


@contextlib.contextmanager
def _load_chatter_dropped() -> Iterator[None]:
    """Collect what is written to file descriptor 2 (C++ code writes there directly) and write it
    back without the load chatter: errors and anything else still show."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as collected:
        os.dup2(collected.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            collected.seek(0)
            lines = collected.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _LOAD_CHATTER.match(line)))
            sys.stderr.flush()


class _QuietTensorFlowLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        with _load_chatter_dropped():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> object:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Loads the `tensorflow` package, whoever imports it first, with its load chatter dropped.
    A hook, not an import here: processes that never need TensorFlow (the Ray driver, `cxr
    scores`) must not pay its seconds of loading."""

    def find_spec(self, name: str, path: object, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietTensorFlowLoader(spec.loader)
        return spec


def quiet_logs() -> None:
    """Hide TensorFlow's and Keras' chatter (C++ oneDNN and absl lines, their Python loggers'
    warnings, deprecation notices), which buries the progress bars, the stages' own messages
    and the one-line errors, unless `CXR_VERBOSE=1`. Must run before TensorFlow loads."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("tensorflow", "keras", "tf_keras", "absl", "h5py", "google.protobuf"):
        warnings.filterwarnings("ignore", module=module)


quiet_logs()  # stage scripts and the CLI import this module before anything loads TensorFlow


def _stage_script() -> Path | None:
    """The running script when it is a stage (stages/<name>.py); None for the `cxr` command."""
    script = Path(sys.argv[0])
    return script if script.parent.name == "stages" else None


def _write_timings(seconds: float) -> None:
    """timings/<stage>.json for a script in stages/ (not for the `cxr` command)."""
    script = _stage_script()
    if script is None:
        return
    from .atomic import write_json

    TIMINGS_DIR.mkdir(exist_ok=True)
    write_json(TIMINGS_DIR / f"{script.stem}.json", {"seconds": round(seconds, 2), **_timings})


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main`; an `InputError` or a missing input file prints `error: <message>`
    and exits with status 2.
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
    except FileNotFoundError as exc:  # an earlier stage's output is missing (pandas, h5py, open)
        missing = exc.filename or (exc.args[0] if exc.args else "a file")
        hint = " (an input of this stage; `dvc repro` builds it)" if _stage_script() else ""
        print(f"error: {missing}: not found{hint}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
