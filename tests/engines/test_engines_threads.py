"""Run files read by many threads of one process, as Beam runs a worker's tasks: numpy parses each
`.npy` header with `ast.literal_eval`, which CPython 3.11 cannot run in two threads at once when a
garbage collection interleaves them (`curation.core.storage._HEADER_LOCK`)."""
from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

import numpy as np

from curation.core.storage import load_array, load_npz, load_ranges, save_array, save_npz


class _Cycle:
    """Garbage that only the cycle collector frees, with a finaliser that runs Python code: a
    collection inside one thread's header parse then lets another thread run (as Beam's gRPC and
    pyarrow threads do in a worker)."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        sum(range(20))


def test_headers_parsed_by_many_threads_at_once(tmp_path: Path) -> None:
    array, npz = tmp_path / "a.npy", tmp_path / "b.npz"
    save_array(array, np.arange(30, dtype=np.float32).reshape(10, 3))
    save_npz(npz, x=np.ones(4))
    failures: list[BaseException] = []

    def read() -> None:
        for _ in range(600):
            try:
                for _ in range(20):
                    _Cycle()
                assert load_array(array)[2, 1] == 7.0
                assert load_ranges(array, [(1, 3)])[0].shape == (2, 3)
                assert load_npz(npz)["x"].sum() == 4.0
            except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
                failures.append(exc)

    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=read) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)
    assert not failures, f"{len(failures)} reads failed, e.g. {failures[0]!r}"
