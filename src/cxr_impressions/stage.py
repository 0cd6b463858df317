"""What every stage script shares: logging, and bad input reported as one line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


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
