"""Issue 17: safety-model sessions (threads, providers, once per process) and the one decode."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image
from skimage import data

from curation.config import RunConfig
from curation.core import schemas
from curation.safety import faces, filters, nsfw, runtime
from curation.sources.images import image_id_of


def _pool(names: list[str]) -> pa.Table:
    images = []
    for n in names:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(getattr(data, n)())[..., :3]).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    return pa.table({
        "image_id": [image_id_of(b) for b in images], "source": names, "width": [1] * len(names),
        "height": [1] * len(names), "orig_width": [1] * len(names), "orig_height": [1] * len(names),
        "orig_format": ["JPEG"] * len(names), "image": images, "meta": ["{}"] * len(names),
    }, schema=schemas.POOL)


def test_one_session_per_process_with_one_thread():
    first = nsfw._session(threads=1)
    assert nsfw._session(threads=1) is first  # created once, reused by every batch of the process
    assert first.get_session_options().intra_op_num_threads == 1
    assert first.get_session_options().inter_op_num_threads == 1
    assert first.get_providers()[-1] == "CPUExecutionProvider"


def test_cuda_first_when_the_runtime_has_it(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"] and runtime.on_gpu()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert runtime.providers() == ["CPUExecutionProvider"] and not runtime.on_gpu()


def test_opencv_threads_held_then_restored():
    before = cv2.getNumThreads()
    with runtime.single_threaded_cv2(1):
        assert cv2.getNumThreads() == 1
    assert cv2.getNumThreads() == before


def test_each_image_is_decoded_once(monkeypatch):
    calls = []
    real = runtime.decode_all
    monkeypatch.setattr(runtime, "decode_all", lambda images, t=0.0: calls.append(len(images)) or real(images, t))
    opened = []
    real_open = faces.open_rgb
    monkeypatch.setattr(faces, "open_rgb", lambda b: opened.append(1) or real_open(b))
    monkeypatch.setattr(nsfw, "open_rgb", lambda b: opened.append(1) or real_open(b))
    pool, rejects = filters.safety_filter(_pool(["astronaut", "coffee", "colorwheel"]), RunConfig(), True, True)
    assert calls == [3] and opened == []  # one decode pass; neither model decodes again
    assert pool.num_rows == 2 and rejects.column("source").to_pylist() == ["colorwheel"]


def test_undecodable_image_is_rejected_by_the_first_filter_that_is_on():
    table = _pool(["astronaut"])
    bad = table.set_column(table.schema.get_field_index("image"), "image", pa.array([b"not an image"], pa.binary()))
    for run_nsfw, stage in ((True, "nsfw"), (False, "faces")):
        pool, rejects = filters.safety_filter(bad, RunConfig(), run_nsfw, True)
        assert pool.num_rows == 0
        assert rejects.column("stage").to_pylist() == [stage] and rejects.column("reason").to_pylist() == ["model-error"]


def test_images_too_small_for_a_face_are_not_searched():
    from curation.safety import mtcnn

    assert mtcnn.scales(19, 400, 20) == []  # no pyramid level: the reference finds nothing either
    assert mtcnn.detect_batch([np.zeros((19, 400, 3), np.uint8)], 20) == [[]]


def test_batched_faces_that_cannot_be_checked_are_rejected(monkeypatch):
    """A batch whose detector raises or hangs is retried image by image: only the culprits go."""
    import time

    from curation.safety import mtcnn

    real = mtcnn.detect_batch

    def flaky(imgs, min_face_size, threads=1):
        if any(img.mean() < 1 for img in imgs):
            raise RuntimeError("onnxruntime error on a black image")
        if any(img.mean() > 254 for img in imgs):
            while True:
                time.sleep(0.01)
        return real(imgs, min_face_size, threads)

    monkeypatch.setattr(mtcnn, "detect_batch", flaky)
    table = _pool(["astronaut", "coffee"])
    black, white = (io.BytesIO(), io.BytesIO())
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(black, "JPEG")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(white, "JPEG")
    images = table.column("image").to_pylist() + [black.getvalue(), white.getvalue()]
    table = pa.table({**{c: table.column(c).to_pylist() + table.column(c).to_pylist()[:2] for c in table.column_names},
                      "image": images, "source": ["astronaut", "coffee", "black", "white"]}, schema=schemas.POOL)
    kept, rejects = faces.face_filter(table, RunConfig.model_validate({"safety": {"timeout_s": 0.5}}))
    assert kept.column("source").to_pylist() == ["astronaut", "coffee"]
    assert {r["source"]: r["reason"] for r in rejects.to_pylist()} == {"black": "model-error", "white": "timeout"}
