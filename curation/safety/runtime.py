"""onnxruntime sessions for the safety models: one per model per worker process, sized for the
engine's layout, on the GPU when one is there.

Threads. The engines run one decode task per core, and the safety models run inside that task,
so each session gets ONE intra-op thread by default (`safety.threads`). Measured on the 2-core dev
machine (NudeNet 320n, 2 worker processes): onnxruntime's default (one thread per core in every
process) costs 24 ms CPU per image against 13 ms with one thread, the extra being threads spinning
and waiting for each other. OpenCV's own pool (the pyramid resizes) is set to one thread for the
same reason while the safety pass runs (`single_threaded_cv2`). `safety.threads = 0` gives the
library defaults back, for a process that owns the whole machine.

GPU. `CUDAExecutionProvider` first when the installed onnxruntime has it (onnxruntime-gpu), CPU
otherwise; a session that cannot start on CUDA falls back to the CPU provider on its own.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Sequence

import cv2
import numpy as np


def providers() -> list[str]:
    """Execution providers in preference order: CUDA when available, always CPU last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def on_gpu() -> bool:
    """True when the safety models will run on a GPU (batches then pay; on CPU they barely do)."""
    return providers()[0] == "CUDAExecutionProvider"


@functools.lru_cache(maxsize=None)
def session(path: str, threads: int = 1) -> Any:
    """The onnxruntime session of one model file, created once per process (loading NudeNet takes
    ~0.2 s; forkserver workers never inherit the driver's). `threads` 0: onnxruntime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Waiting threads yield instead of spinning: a spinning thread steals the core of the
        # engine's other task on this machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=providers())


@contextlib.contextmanager
def single_threaded_cv2(threads: int = 1) -> Iterator[None]:
    """OpenCV's pool at `threads` for the block (0: leave it), then restored: the engine already
    runs one task per core, so OpenCV's worker threads only compete with the other task."""
    if threads <= 0:
        yield
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def decode_all(images: Sequence[bytes], timeout_s: float = 0.0) -> tuple[list[np.ndarray | None], dict[int, BaseException]]:
    """Each pool image decoded once to HxWx3 uint8 RGB, for both safety models (the reference path
    decoded it once per model). ({index: exception} for the ones that failed or ran past
    `timeout_s`; their slot is None)."""
    from curation.core.item_guard import ItemTimeout, time_limit
    from curation.sources.images import open_rgb

    pixels: list[np.ndarray | None] = []
    failed: dict[int, BaseException] = {}
    for i, data in enumerate(images):
        try:
            with time_limit(timeout_s):
                pixels.append(np.asarray(open_rgb(data)))
        except (ItemTimeout, Exception) as exc:  # item boundary: the caller rejects it
            failed[i] = exc
            pixels.append(None)
    return pixels, failed
