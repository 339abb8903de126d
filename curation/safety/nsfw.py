"""NSFW filtering of pool images with NudeNet's detector (DESIGN §2 step 2), run by onnxruntime.

Model: the YOLOv8-style detector that ships inside the `nudenet` package (`320n.onnx`, 320x320
input, 18 body-part classes). Each image is padded to a square (bottom/right, black), resized to
320, scaled to [0, 1] RGB, exactly as the package prepares it. The model's output holds, for each
of 2,100 anchor boxes, a confidence per class; the image's score is the highest confidence of any
*exposed* class (genitalia, breasts, buttocks, anus). An image is rejected when its score is at
least `safety.nsfw_threshold`.

The precision trade-off. The score is a detector confidence, not a calibrated probability:
- a low threshold (0.3-0.4) catches more nudity, including small or partly visible regions, at the
  cost of false positives on swimwear, beach and sports photos, skin-coloured textures, paintings
  and sculpture, which for a pretraining set is lost diversity;
- a high threshold (0.7+) keeps those, but lets through nudity the detector is unsure about
  (unusual poses, low resolution, heavy crops, drawings);
- the default 0.6 favours precision of the kept set moderately: a web crawl has few NSFW images,
  so a false positive costs one good image while a miss puts unsafe content in the dataset.
What was measured: benign bundled photos (scikit-image's astronaut, chelsea, rocket, camera,
coins ~0.00-0.03; coffee ~0.30) score below the threshold, and scikit-image's synthetic colour
wheel scores ~0.76 (`BUTTOCKS_EXPOSED`, NudeNet's own detector agrees): a false positive, kept
in tests/safety as the visible face of the precision cost. What was NOT measured: recall on actual
NSFW images — none is available offline and none may be fetched, so 0.6 is a judgement (well
above NudeNet's own 0.2 detection floor), not a value tuned on data here. Users who need a
measured operating point should score a labelled sample with `nsfw_scores` and pick it.

Cost and resolution (issue 17). The model's own side is 320; an image is never fed larger, and
only its content is fed: the fast path scales the longer side to 320 and pads the shorter one only
up to the model's stride (32) instead of to a square, so a 3:2 photo costs 320x224 instead of
320x320 (measured: 15 -> 11 ms CPU per image on one core of the dev machine; scores within ~0.06
of the square input, no decision changed on the test photos). One intra-op thread per session
(`safety.threads`; see `curation.safety.runtime`), the CUDA provider when present, images of one
padded shape batched together (`safety.nsfw_batch_size`). `safety.reference = true` runs the
pre-issue-17 path (square input, library-default threads) for the equivalence tests and the
before/after bench. int8 quantisation was measured and rejected: 1.6x faster, but it scored the
colour-wheel false positive 0.0 instead of 0.83.

Per-item isolation (issue 14): an image the model cannot score (its bytes fail to open, the
preprocessing or the model raises on it, or it runs past `safety.timeout_s`) is rejected with
stage `nsfw` and reason `model-error` (or `timeout`), never kept unchecked and never a stage
failure. A batch that fails is scored again image by image, so one bad image costs only itself.
A model that cannot load at all is a stage failure: it would fail every image.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from typing import Sequence

import cv2
import numpy as np
import pyarrow as pa

from curation.core import schemas
from curation.config import RunConfig
from curation.sources.images import Reject, open_rgb, rejects_table
from curation.core.item_guard import ItemTimeout, item_error, time_limit
from curation.safety import runtime

INPUT_SIDE = 320
STRIDE = 32  # the detector's coarsest stride: an input side must be a multiple of it
#: Output classes of NudeNet's 320n detector, in the model's order.
CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
#: Classes whose confidence makes an image NSFW (exposed male chest, belly, feet, armpits do not).
UNSAFE_CLASSES = (
    "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "ANUS_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
)
_UNSAFE_INDEX = np.array([CLASSES.index(c) for c in UNSAFE_CLASSES])


def model_path() -> str:
    """The detector's ONNX file inside the installed `nudenet` package (no download, ever)."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `nudenet` package is not installed: it ships the NSFW model")
    path = os.path.join(list(spec.submodule_search_locations)[0], "320n.onnx")
    if not os.path.exists(path):
        raise RuntimeError(f"NudeNet model not found at {path}")
    return path


@functools.lru_cache(maxsize=1)
def _reference_session():  # the pre-issue-17 session: onnxruntime's default threads, CPU only
    import onnxruntime as ort

    return ort.InferenceSession(model_path(), providers=["CPUExecutionProvider"])


def _session(reference: bool = False, threads: int = 1):
    """The model's session in this process (created once): the reference one, or one sized for
    the engine's one-task-per-core layout on the best provider."""
    return _reference_session() if reference else runtime.session(model_path(), threads)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3x320x320 float32: pad bottom/right to a square, resize, scale to [0, 1]."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[:h, :w] = rgb
    resized = cv2.resize(square, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def preprocess_shaped(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHpxWp float32 in [0, 1]: the longer side scaled to 320, the content
    padded (bottom/right, black) only up to a multiple of the model's stride, not to a square."""
    h, w = rgb.shape[:2]
    scale = INPUT_SIDE / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((3, -(-nh // STRIDE) * STRIDE, -(-nw // STRIDE) * STRIDE), dtype=np.float32)
    out[:, :nh, :nw] = resized.transpose(2, 0, 1) / np.float32(255.0)
    return out


def scores_from_output(output: np.ndarray) -> np.ndarray:
    """Model output (batch, 4 + classes, anchors) -> per-image max confidence of unsafe classes."""
    class_scores = output[:, 4:, :]
    return class_scores[:, _UNSAFE_INDEX, :].max(axis=(1, 2)).astype(np.float32)


#: Reasons of the rejects made here (stage `nsfw`).
REASONS = ("nsfw", "model-error", "timeout")


def _failure(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    if isinstance(exc, ItemTimeout):
        return "timeout", f"NSFW scoring took longer than safety.timeout_s = {timeout_s:g} s"
    return "model-error", item_error(exc)


def _by_shape(rows: list[int], pixels: list[np.ndarray]) -> list[tuple[list[int], list[np.ndarray]]]:
    """The batch split into groups of one input shape (a model call takes one shape), in order."""
    groups: dict[tuple[int, ...], tuple[list[int], list[np.ndarray]]] = {}
    for i, px in zip(rows, pixels):
        group = groups.setdefault(px.shape, ([], []))
        group[0].append(i)
        group[1].append(px)
    return list(groups.values())


def _run(session, name: str, rows: list[int], pixels: list[np.ndarray], timeout_s: float,
         out: np.ndarray, failed: dict[int, tuple[str, str]]) -> None:
    """Score one same-shape batch into `out`; a batch that fails is scored again image by image."""
    try:
        with time_limit(timeout_s * len(rows)):
            out[rows] = scores_from_output(session.run(None, {name: np.stack(pixels)})[0])
    except (ItemTimeout, Exception):  # the batch failed: score its images one by one to find the culprit(s)
        for i, px in zip(rows, pixels):
            try:
                with time_limit(timeout_s):
                    out[i] = scores_from_output(session.run(None, {name: px[None]})[0])[0]
            except (ItemTimeout, Exception) as exc:  # item boundary: the model on this one image
                failed[i] = _failure(exc, timeout_s)


def score_images(images: Sequence[bytes | np.ndarray | None], batch_size: int = 16, timeout_s: float = 0.0,
                 reference: bool = False, threads: int = 1) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    """(NSFW score of each image, {index: (reason, message)} of the images that could not be
    scored; their score is NaN). An image is its encoded bytes or, when the caller decoded it
    already (one decode for both safety models), its HxWx3 uint8 RGB array; None is skipped (NaN,
    the caller has its reject). Each image gets `timeout_s` (0: no limit) for its preprocessing
    and, in its batch, for the model; a batch that fails is run again one image at a time."""
    session = _session(reference, threads)  # outside the item boundary: a model that cannot load fails the stage
    name = session.get_inputs()[0].name
    prepare = preprocess if reference else preprocess_shaped
    out = np.full(len(images), np.nan, dtype=np.float32)
    failed: dict[int, tuple[str, str]] = {}
    for start in range(0, len(images), batch_size):
        pixels: list[np.ndarray] = []
        rows: list[int] = []
        for i in range(start, min(start + batch_size, len(images))):
            image = images[i]
            if image is None:
                continue
            try:
                with time_limit(timeout_s):
                    px = prepare(image if isinstance(image, np.ndarray) else np.asarray(open_rgb(image)))
            except (ItemTimeout, Exception) as exc:  # item boundary: one image's bytes or preprocessing
                failed[i] = _failure(exc, timeout_s)
                continue
            pixels.append(px)
            rows.append(i)
        for group_rows, group_pixels in _by_shape(rows, pixels):
            _run(session, name, group_rows, group_pixels, timeout_s, out, failed)
    return out, failed


def nsfw_scores(images: Sequence[bytes], batch_size: int = 16) -> np.ndarray:
    """NSFW score in [0, 1] of each encoded image (bytes written by `curation.sources.images`); NaN for an
    image that could not be scored (`score_images` says why)."""
    return score_images(images, batch_size)[0]


def nsfw_split(table: pa.Table, cfg: RunConfig, pixels: Sequence[np.ndarray | None] | None = None
               ) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """`nsfw_filter`, also returning the keep mask (the safety pass filters its decoded pixels
    with it). `pixels`: the images already decoded (None where decoding failed: that row must be
    rejected by the caller and is not kept here)."""
    if table.num_rows == 0:
        return table, schemas.empty(schemas.REJECTS), np.zeros(0, bool)
    safety = cfg.safety
    threshold = safety.nsfw_threshold
    inputs = table.column("image").to_pylist() if pixels is None else list(pixels)
    scores, failed = score_images(inputs, safety.nsfw_batch_size, safety.timeout_s, safety.reference, safety.threads)
    metas = []
    for meta, score in zip(table.column("meta").to_pylist(), scores):
        data = json.loads(meta) if meta else {}
        if not np.isnan(score):
            data["nsfw_score"] = round(float(score), 4)
        metas.append(json.dumps(data, sort_keys=True))
    keep = scores < threshold  # NaN (not scored) compares False: never kept unchecked
    scored = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))
    sources = table.column("source").to_pylist()
    rejects = [
        Reject(sources[i], *failed[i]) if i in failed
        else Reject(sources[i], "nsfw", f"nsfw score {scores[i]:.3f} >= threshold {threshold}")
        for i in np.flatnonzero(~keep) if inputs[i] is not None
    ]
    return scored.filter(pa.array(keep)), rejects_table(rejects, stage="nsfw"), keep


def nsfw_filter(table: pa.Table, cfg: RunConfig) -> tuple[pa.Table, pa.Table]:
    """POOL table -> (kept rows with `nsfw_score` in meta, REJECTS rows with reason `nsfw`, or
    `model-error` / `timeout` for the images the model could not score)."""
    kept, rejects, _ = nsfw_split(table, cfg)
    return kept, rejects
