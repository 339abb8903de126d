"""The errors users see: something they can correct (a bad path, config or seed location), and a
full disk or quota recognised wherever it surfaces.

They live on the bottom floor so that every layer raises the same class without importing the
scheduling layer above it; the CLI (`pipelines.cli`) prints them as one line, never a traceback.
"""
from __future__ import annotations

import errno
import re
from typing import Iterator


class UserError(Exception):
    """A bad path, a bad config, a missing seed location: something the user can correct."""


#: A full disk or a full quota, wherever it surfaces (the driver, a worker process, an engine's
#: wrapper of a worker's error).
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_DISK_FULL_TEXT = re.compile(r"\[Errno (28|122)\]|No space left on device|Disk quota exceeded", re.IGNORECASE)
_FILE_IN_TEXT = re.compile(r"(?:No space left on device|Disk quota exceeded)[^:]*: '([^']+)'")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it wraps: causes, contexts, Ray's `cause`, exception groups, and
    exceptions passed as arguments (some engines re-raise a worker's error inside their own)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        more = [e.__cause__, e.__context__, getattr(e, "cause", None), *getattr(e, "exceptions", ()),
                *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))]
        stack.extend(m for m in more if isinstance(m, BaseException))


def disk_full(exc: BaseException) -> tuple[str, str | None] | None:
    """(what, file) when `exc` is, or wraps, a full disk or quota (ENOSPC, EDQUOT); None otherwise.

    `file` is the path being written when any error of the chain names it."""
    what: str | None = None
    filename: str | None = None
    for e in _chain(exc):
        code = getattr(e, "errno", None)
        if isinstance(e, OSError) and code in DISK_FULL:
            what = what or DISK_FULL[code]
            filename = filename or (str(e.filename) if e.filename else None)
        elif _DISK_FULL_TEXT.search(str(e)):  # a worker's error re-raised as text by an engine
            text = str(e)
            what = what or ("disk quota exceeded" if "quota" in text.lower() or "[Errno 122]" in text else DISK_FULL[errno.ENOSPC])
            found = _FILE_IN_TEXT.search(text)
            filename = filename or (found.group(1) if found else None)
    return (what, filename) if what else None
