"""Giving memory back to the system after large requests (glibc only; elsewhere these do nothing).

A 25-megapixel photo passes through a few hundred megabytes of buffers. glibc keeps freed memory in its arenas (one
per thread that allocated, up to 8 per core), so a worker that served a burst of large photos stayed gigabytes large
when idle. Fewer arenas and a `malloc_trim` after each large photo return it (docs/benchmarks.md, "Hostile traffic").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

#: glibc's mallopt parameter for the number of arenas (M_ARENA_MAX in malloc.h).
_M_ARENA_MAX = -8
#: Arenas per process: the serving threads share these instead of one arena each.
ARENA_MAX = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


def limit_arenas(count: int = ARENA_MAX) -> bool:
    """At most `count` malloc arenas in this process (like MALLOC_ARENA_MAX); True where glibc took it."""
    libc = _libc()
    return bool(libc and libc.mallopt(_M_ARENA_MAX, count) == 1)


def trim() -> bool:
    """Return the free memory at the top of every malloc arena to the system; True if some was returned."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))
