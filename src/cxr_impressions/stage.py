"""What every stage script shares: logging, and bad input reported as one line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

VERBOSE_ENV = "CXR_VERBOSE"


def quiet_logs() -> None:
    """Hide TensorFlow's start-up chatter (C++ oneDNN and absl lines), which buries the progress
    bars and the one-line errors, unless `CXR_VERBOSE=1`. Must run before TensorFlow loads."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


quiet_logs()  # stage scripts and the CLI import this module before anything loads TensorFlow


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's `main`; an `InputError` prints `error: <message>` and exits with status 2."""
    from .errors import InputError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
