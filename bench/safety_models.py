"""The safety models' costs for `bench_crawl.py --modes safety`: per-model CPU ms per image, both
paths (the reference per-image path of before issue 17, and the batched one), in one process.

One process: the batched sessions and OpenCV at one thread, as in an engine task (the reference
NudeNet session at onnxruntime's default, as it was). CPU
time (not wall) per image, median of `repeats` alternating runs: the dev machine is shared.
Beside them the floors of the batched path: NudeNet's forward alone on the preprocessed inputs,
and MTCNN's three networks replayed alone on the inputs one `detect_batch` fed them plus the scale
pyramid's resampling (the boxes depend on the reference's INTER_AREA pixels): `*_over_floor` is
how much the path around the models still costs.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _cpu_ms(fn: Callable[[], Any], count: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) / count * 1e3


class _Recorder:
    """Records every call of one network (the bench's replay of the bare forwards)."""

    def __init__(self, net: Any, calls: list):
        self.net, self.calls = net, calls

    def run(self, outputs: Any, feed: dict) -> Any:
        self.calls.append((self.net, outputs, feed))
        return self.net.run(outputs, feed)


def _mtcnn_floor(rgbs: list[np.ndarray], min_face_size: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(the three networks' calls of one `detect_batch`, replayed bare; the scale pyramid, resampled
    as the reference resamples it): the work no exact rewrite of the batched path can drop."""
    import cv2

    from curation.safety import mtcnn

    calls: list = []
    build = mtcnn._net
    mtcnn._net = lambda name, threads: _Recorder(build(name, threads), calls)  # type: ignore[assignment]
    try:
        mtcnn.detect_batch(rgbs, min_face_size, 1)
    finally:
        mtcnn._net = build  # type: ignore[assignment]

    def pyramid() -> None:
        for img in rgbs:
            h, w = img.shape[:2]
            for scale in mtcnn.scales(h, w, min_face_size):
                cv2.resize(img, (int(np.ceil(w * scale)), int(np.ceil(h * scale))), interpolation=cv2.INTER_AREA)

    return (lambda: [net.run(out, feed) for net, out, feed in calls]), pyramid


def model_costs(folder: Path, count: int = 100, repeats: int = 3) -> dict[str, Any]:
    """CPU ms per image of decode, NudeNet and MTCNN on `count` of the bench's images, decoded as
    the fetch stage decodes them (longest side <= 512), reference vs batched."""
    import cv2

    from curation.config import RunConfig
    from curation.safety import faces, mtcnn, nsfw
    from curation.sources.images import decode_image, open_rgb

    cfg = RunConfig.model_validate({"decode": {"max_side": 512, "quality": 90, "format": "JPEG"}})
    paths = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))[:count]
    pool = [decode_image(p.read_bytes(), str(p), cfg.decode).image for p in paths]
    rgbs = [np.asarray(open_rgb(b)) for b in pool]
    reference = nsfw._reference_session()
    ref_mtcnn = faces._mtcnn(cfg.safety.face_min_size)
    n = len(rgbs)
    networks, pyramid = _mtcnn_floor(rgbs, cfg.safety.face_min_size)
    shaped = [nsfw.preprocess_shaped(r)[None] for r in rgbs]
    session = nsfw._session(threads=1)
    nsfw_input = session.get_inputs()[0].name
    cases: dict[str, Callable[[], Any]] = {
        "decode": lambda: [np.asarray(open_rgb(b)) for b in pool],
        "nsfw_reference": lambda: [reference.run(None, {"images": nsfw.preprocess(r)[None]}) for r in rgbs],
        "nsfw_batched": lambda: nsfw.score_images(rgbs, cfg.safety.nsfw_batch_size, threads=1),
        "mtcnn_reference": lambda: [ref_mtcnn.detect_faces(r) for r in rgbs],
        "mtcnn_batched": lambda: mtcnn.detect_batch(rgbs, cfg.safety.face_min_size, 1),
        "nsfw_bare_forward": lambda: [session.run(None, {nsfw_input: x}) for x in shaped],
        "mtcnn_bare_networks": networks,
        "mtcnn_pyramid_resampling": pyramid,
    }
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for fn in cases.values():  # warm-up: sessions built, caches filled
            fn()
        runs: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(repeats):  # alternate, so that outside load hits every case alike
            for name, fn in cases.items():
                runs[name].append(round(_cpu_ms(fn, n), 2))
    finally:
        cv2.setNumThreads(before)
    med = {k: statistics.median(v) for k, v in runs.items()}
    # Note: the reference NudeNet session keeps onnxruntime's default threads (one per core), as
    # before issue 17; its CPU time includes those threads' spinning.
    return {
        "images": n, "runs_cpu_ms_per_image": runs, "median_cpu_ms_per_image": med,
        "nsfw_speedup": round(med["nsfw_reference"] / med["nsfw_batched"], 2),
        "mtcnn_speedup": round(med["mtcnn_reference"] / med["mtcnn_batched"], 2),
        # The floors: NudeNet's forward alone; MTCNN's three networks plus the pyramid resampling
        # (the reference's INTER_AREA, which the boxes depend on) alone.
        "nsfw_over_floor": round(med["nsfw_batched"] / med["nsfw_bare_forward"], 2),
        "mtcnn_floor_cpu_ms": round(med["mtcnn_bare_networks"] + med["mtcnn_pyramid_resampling"], 2),
        "mtcnn_over_floor": round(med["mtcnn_batched"] / (med["mtcnn_bare_networks"] + med["mtcnn_pyramid_resampling"]), 2),
        "faces_found": sum(len(faces._confident(b, cfg.safety)) for b in mtcnn.detect_batch(rgbs, cfg.safety.face_min_size, 1)),
    }
