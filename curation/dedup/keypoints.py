"""Image features for pixel verification (`curation.dedup.verify`): each candidate image decoded once,
to grayscale at `VerifyConfig.side`, with its ORB keypoints and those of its mirror; packed into one
flat blob per engine task with an index (`pack`, `unpack`), so a check task reads back only its own
images' bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import cv2
import numpy as np
import pyarrow as pa

from curation.config import VerifyConfig

#: ORB's FAST threshold (lower than OpenCV's 20: copies may be blurred).
FAST_THRESHOLD = 10
#: CLAHE (clip limit, tiles per side) of `equalised` (`VerifyConfig.equalize_below`).
EQUALIZE_CLIP, EQUALIZE_TILES = 2.0, 8

#: Where each image's features lie in a features blob (`pack`): `length` bytes from `offset`, the
#: grayscale pixels (height x width), then the keypoints (float32 x, y) and ORB descriptors of the
#: image and of its mirror; or the reason the image could not be read.
FEATURE_INDEX = pa.schema([
    ("image_id", pa.string()), ("offset", pa.int64()), ("length", pa.int64()), ("height", pa.int32()),
    ("width", pa.int32()), ("points", pa.int32()), ("mirror_points", pa.int32()), ("error", pa.string()),
])
ORB_BYTES = 32  # one ORB descriptor


@dataclass(frozen=True)
class Features:
    """One image ready for checking: its grayscale pixels and ORB keypoints (of the image and of its
    mirror, keypoints in the mirrored image's own coordinates)."""

    gray: np.ndarray
    points: np.ndarray
    descriptors: np.ndarray | None
    mirror_points: np.ndarray
    mirror_descriptors: np.ndarray | None


def _gray(data: bytes, side: int) -> np.ndarray:
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None or gray.size == 0:
        raise ValueError("the image could not be decoded for verification")
    h, w = gray.shape
    scale = side / max(h, w)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return gray


def _orb(gray: np.ndarray, cfg: VerifyConfig) -> tuple[np.ndarray, np.ndarray | None]:
    orb = cv2.ORB_create(nfeatures=cfg.features, fastThreshold=FAST_THRESHOLD)
    keypoints, descriptors = orb.detectAndCompute(gray, None)
    points = np.float32([k.pt for k in keypoints]).reshape(-1, 2)
    return points, descriptors


def features(data: bytes, cfg: VerifyConfig) -> Features:
    """Decode an encoded image and find its keypoints (raises ValueError on undecodable bytes)."""
    gray = _gray(data, cfg.side)
    points, descriptors = _orb(gray, cfg)
    mirror_points, mirror_descriptors = _orb(cv2.flip(gray, 1), cfg)
    return Features(gray, points, descriptors, mirror_points, mirror_descriptors)


def equalised(f: Features, cfg: VerifyConfig) -> Features:
    """The same image with its keypoints found on its CLAHE-equalised grey (the pixels the checks
    compare stay as they are)."""
    grey = cv2.createCLAHE(EQUALIZE_CLIP, (EQUALIZE_TILES, EQUALIZE_TILES)).apply(f.gray)
    points, descriptors = _orb(grey, cfg)
    mirror_points, mirror_descriptors = _orb(cv2.flip(grey, 1), cfg)
    return Features(f.gray, points, descriptors, mirror_points, mirror_descriptors)


def features_of(images: Mapping[str, bytes], cfg: VerifyConfig) -> dict[str, Features | str]:
    """Features of each encoded image, or the reason it could not be read (a string)."""
    out: dict[str, Features | str] = {}
    for image_id, data in images.items():
        try:
            out[image_id] = features(data, cfg)
        except Exception as exc:  # item boundary: one undecodable image fails its own pairs
            out[image_id] = f"{type(exc).__name__}: {exc}"
    return out


def _keypoints(points: np.ndarray, descriptors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if descriptors is None or not len(descriptors):
        return np.zeros((0, 2), np.float32), np.zeros((0, ORB_BYTES), np.uint8)
    return np.ascontiguousarray(points, np.float32), np.ascontiguousarray(descriptors, np.uint8)


def pack(found: Mapping[str, Features | str]) -> tuple[pa.Table, np.ndarray]:
    """Features as one flat uint8 blob and its FEATURE_INDEX (ids sorted): each image is decoded and
    described once per stage, and a check task reads back only its own images' bytes (`unpack`)."""
    rows: dict[str, list] = {name: [] for name in FEATURE_INDEX.names}
    chunks: list[np.ndarray] = []
    offset = 0
    for image_id in sorted(found):
        f = found[image_id]
        if isinstance(f, str):
            values: tuple = (image_id, offset, 0, 0, 0, 0, 0, f)
        else:
            pts, desc = _keypoints(f.points, f.descriptors)
            mpts, mdesc = _keypoints(f.mirror_points, f.mirror_descriptors)
            parts = [np.ascontiguousarray(f.gray, np.uint8), pts, desc, mpts, mdesc]
            length = sum(x.nbytes for x in parts)
            chunks += [x.reshape(-1).view(np.uint8) for x in parts]
            values = (image_id, offset, length, *f.gray.shape, len(pts), len(mpts), None)
            offset += length
        for name, value in zip(FEATURE_INDEX.names, values):
            rows[name].append(value)
    blob = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return pa.table(rows, schema=FEATURE_INDEX), blob


def unpack(row: Mapping[str, object], data: np.ndarray) -> Features | str:
    """One image's Features from its FEATURE_INDEX row and its `length` bytes of the blob (or the
    reason it could not be read)."""
    if row["error"] is not None:
        return str(row["error"])
    h, w, n, m = (int(row[k]) for k in ("height", "width", "points", "mirror_points"))  # type: ignore[call-overload]
    cuts = np.cumsum([0, h * w, n * 8, n * ORB_BYTES, m * 8, m * ORB_BYTES])
    # Copies: the bytes may be a read-only memory map, and a record's float32 parts are unaligned.
    gray, pts, desc, mpts, mdesc = (data[a:b].copy() for a, b in zip(cuts[:-1], cuts[1:]))
    return Features(gray.reshape(h, w), pts.view(np.float32).reshape(n, 2), desc.reshape(n, ORB_BYTES) if n else None,
                    mpts.view(np.float32).reshape(m, 2), mdesc.reshape(m, ORB_BYTES) if m else None)


__all__ = ["FEATURE_INDEX", "ORB_BYTES", "Features", "equalised", "features", "features_of", "pack", "unpack"]
