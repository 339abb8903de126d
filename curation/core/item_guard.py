"""Per-item isolation inside a map stage: one bad input costs one reject row, never the stage.

Three tools, shared by every map stage that hands an item to third-party code (decoders, models,
parsers):

- `item_error(exc)`: the reject message of an exception raised for one item (its type and text);
  the stage catches `Exception` at the item boundary, never an allow-list of types;
- `time_limit(seconds)`: a per-item deadline (SIGALRM, in a process's main thread) that turns a
  stuck call into `ItemTimeout`; code stuck inside C that never returns to the interpreter is
  caught one level up, by the engine's task deadline and item-by-item retry
  (`pipelines.engines.isolation`);
- `inject_fault(source)`: a test-only hook. When the environment variable `LVD_INJECT_FAULT`
  names this item's source (`KIND:SOURCE[,KIND:SOURCE...]`), the worker crashes or hangs the way
  real decoders do: `segv` (SIGSEGV to itself), `exit` (`os._exit(137)`, as an OOM kill), `hang`
  (sleeps in Python: interruptible) or `stall` (ignores SIGALRM, then sleeps: only a task deadline
  ends it), `raise` (a RuntimeError), `delay` (one second, then the item goes on normally: a
  stage slow enough to disturb). Unset in production: one environment look-up per item.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator

INJECT_ENV = "LVD_INJECT_FAULT"
#: Longest reject message kept from an exception (the rejects table is read by people).
MESSAGE_CHARS = 300


class ItemTimeout(BaseException):
    """One item ran past its time limit. A BaseException, like KeyboardInterrupt: it passes through
    the `except Exception` item boundaries inside the limited block to the `time_limit` caller."""


def item_error(exc: BaseException) -> str:
    """`Type: message` of an exception raised for one item, cut to `MESSAGE_CHARS`."""
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}"[:MESSAGE_CHARS] if text else type(exc).__name__


def _raise_timeout(signum: int, frame: object) -> None:
    raise ItemTimeout("item ran past its time limit")


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `ItemTimeout` in the block after `seconds` (0 or less: no limit).

    SIGALRM only reaches a process's main thread; elsewhere (a Beam thread, a fetch thread) the
    block runs without a limit and the engine's task deadline is the guard.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    started = time.monotonic()
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    if 0 < outer < seconds:  # an outer alarm (a test runner's timeout) due first keeps its time
        signal.setitimer(signal.ITIMER_REAL, outer)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # give the outer alarm back what is left of its time
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer - (time.monotonic() - started)))


def _faults() -> dict[str, str]:
    spec = os.environ.get(INJECT_ENV, "")
    faults: dict[str, str] = {}
    for part in filter(None, spec.split(",")):
        kind, _, source = part.partition(":")
        faults[source] = kind
    return faults


def inject_fault(source: str) -> None:
    """Test-only: crash, kill or hang this process when `LVD_INJECT_FAULT` names `source`."""
    if INJECT_ENV not in os.environ:
        return
    kind = _faults().get(source)
    if kind is None:
        return
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "exit":
        os._exit(137)
    elif kind == "hang":
        while True:
            time.sleep(0.05)
    elif kind == "stall":
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # as code stuck in C: the alarm changes nothing
        while True:
            time.sleep(0.05)
    elif kind == "raise":
        raise RuntimeError(f"injected failure on {source}")
    elif kind == "delay":
        time.sleep(1.0)
    else:
        raise ValueError(f"{INJECT_ENV}: unknown fault kind {kind!r} (segv, exit, hang, stall, raise, delay)")
