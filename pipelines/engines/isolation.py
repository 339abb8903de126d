"""Worker crashes and hangs cost one reject row, never the run: a broken task retried item by item.

A map stage whose tasks hand items to third-party C code (image decoders, models) passes the
engine an `Isolation`: how to cut a task into its items, compute a part of them, stand in for one
item whose process died or hung, and join the parts into the task's result. When a task's worker
dies (SIGSEGV inside a decoder, an OOM kill, `os._exit`) or runs past its deadline, the engine
first retries the task alone in a fresh process (it may have been an innocent neighbour of the
culprit in a pool that broke), and if that fails too, `isolate` bisects its items over fresh
processes until the culprit stands alone: it becomes a reject (`worker-crash` or `timeout`, with
its source) and every other item is kept. Parts are computed by the same pure function on the same
items, so the joined result equals an undisturbed run's, less the culprit.

Every engine uses these functions after its own retry mechanism gives up: the local engine on a
broken process pool or a missed deadline, Ray after `max_retries` (worker or node death) or a
cancelled overdue task, Beam inside the task's DoFn (a worker crash there would otherwise fail the
bundle, and on the local runner the whole process).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("lvd")

#: Seconds a task (or part) gets beyond its items' time limits: process start, imports, writes.
SLACK_S = 10.0
CRASH, TIMEOUT = "worker-crash", "timeout"


@dataclass(frozen=True)
class Isolation:
    """How a map stage's task is split and joined when it must be retried item by item.

    All five are top-level functions (they travel to worker processes):
    - `split(task) -> (head, items)`: the task without its items, and its items in order;
    - `part(head, items) -> part result`: pure, no writes; the stage's work on some items;
    - `failed(head, item, reason, message) -> part result`: what stands for one lost item (a reject);
    - `join(head, parts) -> task result`: the task's result (and its writes) from its parts, in order;
    - `item_seconds(head) -> float`: the time limit of one item in this task.
    """

    split: Callable[[tuple], tuple[tuple, list]]
    part: Callable[[tuple, list], Any]
    failed: Callable[[tuple, Any, str, str], Any]
    join: Callable[[tuple, list], Any]
    item_seconds: Callable[[tuple], float]

    def deadline(self, task: tuple) -> float:
        """Seconds the whole task may take before it counts as hung."""
        head, items = self.split(task)
        return SLACK_S + self.item_seconds(head) * max(1, len(items))


class _Failed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def _child(conn: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        result = ("ok", fn(*args))
    except BaseException as exc:  # our own errors travel back and are raised in the parent
        result = ("error", exc)
    try:
        conn.send(result)
    except Exception as exc:  # an unpicklable result or exception: say so rather than hang
        conn.send(("error", RuntimeError(f"could not return the result of {fn.__name__}: {exc!r}")))
    finally:
        conn.close()


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker killed by signal {-exitcode}"
    return f"worker exited with status {exitcode}"


def in_fresh_process(fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
    """`fn(*args)` in a new process (forkserver: no inherited threads); raises `_Failed` when the
    process dies (`worker-crash`) or outlives `timeout` seconds (`timeout`, then killed). An
    exception raised by `fn` is raised here."""
    ctx = mp.get_context("forkserver")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout):
            proc.kill()
            proc.join()
            raise _Failed(TIMEOUT, f"no result after {timeout:g} s")
        try:
            status, value = receive.recv()
        except (EOFError, OSError):
            proc.join()
            raise _Failed(CRASH, _describe(proc.exitcode)) from None
    finally:
        receive.close()
    proc.join()
    if status == "error":
        raise value
    return value


def _parts(iso: Isolation, head: tuple, items: list) -> list[Any]:
    """Results of `items`, computed in fresh processes; a group that fails is halved until the
    item that fails stands alone."""
    if not items:
        return []
    try:
        return [in_fresh_process(iso.part, (head, items), SLACK_S + iso.item_seconds(head) * len(items))]
    except _Failed as failure:
        if len(items) == 1:
            log.warning("item lost to %s: %s", failure.reason, failure.message)
            return [iso.failed(head, items[0], failure.reason, failure.message)]
    mid = len(items) // 2
    return _parts(iso, head, items[:mid]) + _parts(iso, head, items[mid:])


def isolate(iso: Isolation, task: tuple) -> Any:
    """A task whose worker died or hung, computed item group by item group in fresh processes."""
    head, items = iso.split(task)
    return iso.join(head, _parts(iso, head, items))


def retry_alone(fn: Callable[..., Any], iso: Isolation, task: tuple, hung: bool = False) -> Any:
    """A task caught in a broken worker: first alone in a fresh process (it may only have shared
    the worker pool with the culprit), then `isolate`d if it fails again. A task that itself
    outlived its deadline (`hung`) is isolated at once: running it whole again would only wait
    for the same deadline."""
    if hung:
        log.warning("task outlived its deadline; retrying its items one group at a time")
        return isolate(iso, task)
    try:
        return in_fresh_process(fn, task, iso.deadline(task))
    except _Failed as failure:
        log.warning("task failed alone (%s: %s); retrying its items one group at a time", failure.reason, failure.message)
        return isolate(iso, task)
