"""Face blurring: the astronaut's face is found, blurred, and then no detector finds it."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image
from skimage import data

from curation.core import schemas
from curation.config import RunConfig, SafetyConfig
from curation.safety.faces import MARGIN, blur_faces, detect_faces
from curation.sources.images import image_id_of, open_rgb


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pool(arrays: dict[str, np.ndarray]) -> pa.Table:
    images = [jpeg(a) for a in arrays.values()]
    return pa.table(
        {
            "image_id": [image_id_of(b) for b in images],
            "source": list(arrays),
            "width": [a.shape[1] for a in arrays.values()],
            "height": [a.shape[0] for a in arrays.values()],
            "orig_width": [a.shape[1] for a in arrays.values()],
            "orig_height": [a.shape[0] for a in arrays.values()],
            "orig_format": ["JPEG"] * len(images),
            "image": images,
            "meta": [json.dumps({"alt": "a photo"})] * len(images),
        },
        schema=schemas.POOL,
    )


MTCNN = SafetyConfig(face_detector="mtcnn")
MTCNN_ANY = SafetyConfig(face_detector="mtcnn", face_min_confidence=0.5, face_min_size=12)
HAAR = SafetyConfig(face_detector="haar")


def test_astronaut_face_found_by_both_detectors():
    img = data.astronaut()
    for cfg in (MTCNN, HAAR):
        boxes = detect_faces(img, cfg)
        assert len(boxes) == 1, (cfg.face_detector, boxes)
        x, y, w, h, conf = boxes[0]
        # The face sits around x 180-270, y 60-175 in the 512x512 photo.
        assert 160 <= x <= 200 and 50 <= y <= 90 and 80 <= w <= 120 and 80 <= h <= 130
        assert conf >= 0.9


def test_blurred_face_is_no_longer_found():
    table = pool({"astronaut": data.astronaut(), "rocket": data.rocket()})
    out = blur_faces(table, RunConfig())
    assert out.schema == schemas.POOL and out.num_rows == 2
    metas = [json.loads(m) for m in out.column("meta").to_pylist()]
    assert [m["faces_blurred"] for m in metas] == [1, 0]
    assert metas[0]["alt"] == "a photo" and metas[0]["pre_blur_image_id"] == table.column("image_id")[0].as_py()

    blurred = np.asarray(open_rgb(out.column("image")[0].as_py()))
    assert blurred.shape == (512, 512, 3)
    # Not found again, by MTCNN even at a low confidence and small size, nor by the Haar cascade.
    assert detect_faces(blurred, MTCNN_ANY) == []
    assert detect_faces(blurred, HAAR) == []
    # The id is the decode stage's hash of the new bytes.
    assert out.column("image_id")[0].as_py() == image_id_of(out.column("image")[0].as_py())
    assert out.column("image_id")[0].as_py() != table.column("image_id")[0].as_py()
    # The rocket (no face) is untouched: same bytes, same id.
    assert out.column("image")[1].as_py() == table.column("image")[1].as_py()
    assert out.column("image_id")[1].as_py() == table.column("image_id")[1].as_py()


def test_blur_is_local_and_strong():
    original = np.asarray(open_rgb(jpeg(data.astronaut()))).astype(np.float32)
    out = blur_faces(pool({"astronaut": data.astronaut()}), RunConfig())
    blurred = np.asarray(open_rgb(out.column("image")[0].as_py())).astype(np.float32)
    x, y, w, h, _ = detect_faces(data.astronaut(), MTCNN)[0]
    inner = (slice(y + h // 4, y + 3 * h // 4), slice(x + w // 4, x + 3 * w // 4))
    # Inside the face: detail is gone (local contrast collapses) and pixels moved a lot.
    assert blurred[inner].std(axis=(0, 1)).mean() < 0.5 * original[inner].std(axis=(0, 1)).mean()
    assert np.abs(blurred[inner] - original[inner]).mean() > 8
    # Outside the grown box: only re-encoding noise.
    mask = np.ones(original.shape[:2], bool)
    mask[max(0, int(y - MARGIN * h)) - 8 : int(y + h + MARGIN * h) + 8, max(0, int(x - MARGIN * w)) - 8 : int(x + w + MARGIN * w) + 8] = False
    assert np.abs(blurred[mask] - original[mask]).mean() < 2.0
