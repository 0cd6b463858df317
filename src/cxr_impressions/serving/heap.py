"""Give freed heap memory back to the operating system.

glibc's malloc keeps the pages of freed blocks in its arenas; a long-running server whose
threads (the HTTP stack, TensorFlow's pools) allocate and free in an interleaved order leaves
them fragmented, so its RSS creeps up although nothing leaks. `malloc_trim(0)` returns every
whole free page. Other C libraries have no such call; there it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim():  # noqa: ANN202 - a ctypes function or None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def can_release() -> bool:
    """Whether this process's C library can give free heap pages back (glibc)."""
    return _malloc_trim() is not None


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS; False where the C library can't."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
