"""Issue 17: the batched safety path makes the reference path's decisions on real photos.

Real faces: scikit-image's astronaut and cameraman, and the 100 LFW faces scikit-image ships
(`lfw_subset`, 25x25 grey crops) enlarged to 20-160 px and pasted into its other photos, so that
small and grey faces at the detector's lower size bound are covered too.
"""
from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from skimage import data

from curation.config import RunConfig, SafetyConfig
from curation.core import schemas
from curation.safety import faces, mtcnn, nsfw
from curation.safety.filters import safety_filter
from curation.sources.images import image_id_of, open_rgb


def _rgb(name: str) -> np.ndarray:
    arr = np.asarray(getattr(data, name)())
    return (np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]).astype(np.uint8)


def _with_faces(seed: int, count: int) -> list[np.ndarray]:
    """Photos with 1-3 real (LFW) faces of 20-160 px pasted in."""
    rng = np.random.default_rng(seed)
    lfw = (data.lfw_subset()[:100] * 255).astype(np.uint8)
    backgrounds = [_rgb(n) for n in ("coffee", "rocket", "camera", "chelsea")]
    out = []
    for i in range(count):
        img = backgrounds[i % len(backgrounds)].copy()
        h, w = img.shape[:2]
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.choice([20, 24, 28, 32, 40, 56, 80, 120, 160]))
            face = cv2.resize(lfw[rng.integers(0, 100)], (side, side), interpolation=cv2.INTER_CUBIC)
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            img[y:y + side, x:x + side] = face[..., None]
        out.append(img)
    return out


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pool(arrays: list[np.ndarray]) -> pa.Table:
    images = [_jpeg(a) for a in arrays]
    return pa.table({
        "image_id": [image_id_of(b) for b in images], "source": [f"img{i}" for i in range(len(images))],
        "width": [a.shape[1] for a in arrays], "height": [a.shape[0] for a in arrays],
        "orig_width": [a.shape[1] for a in arrays], "orig_height": [a.shape[0] for a in arrays],
        "orig_format": ["JPEG"] * len(images), "image": images, "meta": ["{}"] * len(images),
    }, schema=schemas.POOL)


PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "colorwheel"]


def test_batched_mtcnn_finds_the_reference_boxes():
    images = [_rgb(n) for n in PHOTOS] + _with_faces(0, 24)
    safety = SafetyConfig(face_detector="mtcnn", reference=True)
    reference = [faces.detect_faces(img, safety) for img in images]
    batched = [faces._confident(b, safety) for b in mtcnn.detect_batch(images, safety.face_min_size)]
    assert sum(map(len, reference)) >= 25  # the test has faces to compare: astronaut + pasted ones
    assert len(reference[0]) == 1  # the astronaut
    for ref, new in zip(reference, batched):
        assert [b[:4] for b in new] == [b[:4] for b in ref]  # the same boxes, to the pixel
        assert np.allclose([b[4] for b in new], [b[4] for b in ref], atol=1e-4)


def test_batched_nsfw_makes_the_reference_decisions():
    images = [_rgb(n) for n in PHOTOS] + _with_faces(1, 8)
    ref, _ = nsfw.score_images(images, batch_size=4, reference=True)
    new, failed = nsfw.score_images(images, batch_size=4)
    assert not failed and np.isfinite(new).all()
    threshold = RunConfig().safety.nsfw_threshold
    assert ((new >= threshold) == (ref >= threshold)).all()
    assert (ref >= threshold).sum() == 1 and new[PHOTOS.index("colorwheel")] >= threshold  # the known false positive
    assert np.abs(new - ref).max() < 0.1  # content-shaped input: scores move a little, decisions do not


def test_safety_pass_equals_the_reference_pass():
    """Same kept rows, same blurred bytes (so the same new image ids), same rejects."""
    table = _pool([_rgb(n) for n in PHOTOS] + _with_faces(2, 6))
    ref_cfg = RunConfig.model_validate({"safety": {"reference": True}})
    ref_pool, ref_rejects = safety_filter(table, ref_cfg, True, True)
    new_pool, new_rejects = safety_filter(table, RunConfig(), True, True)
    assert new_pool.schema == schemas.POOL and new_rejects.schema == schemas.REJECTS
    assert new_rejects.select(["source", "reason", "stage"]).to_pylist() == ref_rejects.select(["source", "reason", "stage"]).to_pylist()
    assert new_rejects.column("source").to_pylist() == ["img6"]  # the colour wheel
    assert new_pool.column("source").to_pylist() == ref_pool.column("source").to_pylist()
    assert new_pool.column("image_id").to_pylist() == ref_pool.column("image_id").to_pylist()
    new_meta = [json.loads(m) for m in new_pool.column("meta").to_pylist()]
    ref_meta = [json.loads(m) for m in ref_pool.column("meta").to_pylist()]
    assert [m["faces_blurred"] for m in new_meta] == [m["faces_blurred"] for m in ref_meta]
    assert sum(m["faces_blurred"] for m in new_meta) >= 7
    assert np.allclose([m["nsfw_score"] for m in new_meta], [m["nsfw_score"] for m in ref_meta], atol=0.1)


def test_the_blur_changes_the_face_region():
    astronaut = _rgb("astronaut")
    out, rejects = safety_filter(_pool([astronaut]), RunConfig(), False, True)
    assert rejects.num_rows == 0 and json.loads(out.column("meta")[0].as_py())["faces_blurred"] == 1
    before = np.asarray(open_rgb(_jpeg(astronaut))).astype(np.float32)
    after = np.asarray(open_rgb(out.column("image")[0].as_py())).astype(np.float32)
    x, y, w, h, _ = faces.detect_faces(astronaut, SafetyConfig(face_detector="mtcnn"))[0]
    face = (slice(y, y + h), slice(x, x + w))
    assert np.abs(after[face] - before[face]).mean() > 8  # the face moved a lot
    assert after[face].std(axis=(0, 1)).mean() < 0.5 * before[face].std(axis=(0, 1)).mean()  # and lost its detail
    assert mtcnn.detect_batch([after.astype(np.uint8)], 12) == [[]] or all(
        b[4] < 0.5 for b in mtcnn.detect_batch([after.astype(np.uint8)], 12)[0])  # no face left to find


def test_area_crops_equal_opencv_inter_area():
    """The integral-image crops are OpenCV's INTER_AREA of the zero-padded crop."""
    img = _rgb("astronaut")
    boxes = np.array([[100.0, 50, 299, 249, 0.9], [-20, -10, 79, 89, 0.8], [450, 400, 560, 510, 0.7]])
    status = mtcnn._helper("pad")(boxes.copy(), img.shape[1], img.shape[0])
    fast = mtcnn._area_crops(cv2.integral(img, sdepth=cv2.CV_64F), status, np.arange(3), 24)
    for k in range(3):
        dy, edy, dx, edx, y, ey, x, ex, tmpw, tmph = (v[k] for v in status)
        tmp = np.zeros((tmph, tmpw, 3))
        tmp[dy - 1:edy, dx - 1:edx] = img[y - 1:ey, x - 1:ex]
        assert np.abs(fast[k] - cv2.resize(tmp, (24, 24), interpolation=cv2.INTER_AREA)).max() < 0.5


@pytest.mark.parametrize("method", ["Union", "Min"])
def test_nms_picks_what_the_package_picks(method):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 200, (300, 2))
    size = rng.uniform(10, 60, (300, 1))
    boxes = np.hstack([xy, xy + size, rng.uniform(0, 1, (300, 1))])
    assert mtcnn.nms(boxes.copy(), 0.5, method).tolist() == mtcnn._helper("nms")(boxes.copy(), 0.5, method).tolist()
