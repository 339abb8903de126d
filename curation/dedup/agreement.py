"""Pixel agreement of two images aligned by a homography: the measures `curation.dedup.verify`
decides a candidate pair on (see there): `detail` (windowed correlation, with either side blurred),
`clean` (the detail once one overlay is left out), `outside` (coarse blocks outside the matches'
hull, after a linear grey map) and `cover` (how much of each image the other covers)."""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

#: Windows of the detail check: side in pixels, blur before the correlation, minimum contrast (grey
#: levels, standard deviation) for a window to count as textured, correlation that counts as agreeing.
WINDOW, WINDOW_SIGMA, WINDOW_MIN_STD, WINDOW_NCC = 8, 0.6, 6.0, 0.8
#: Blur (Gaussian sigma, pixels) tried on the sharper side before the detail check.
BLUR_STEPS = (1.0, 2.0, 3.0)
#: Fraction of a window that must lie inside the warped image.
WINDOW_INSIDE = 0.9
#: The outside check: block side (pixels), blur before the block means (Gaussian sigma), grey levels
#: (of 255) within which a block's mean agrees after the linear grey map, least blocks to fit and judge.
BLOCK, BLOCK_SIGMA, BLOCK_TOLERANCE, MIN_BLOCKS = 8, 3.0, 6.0, 4
#: The overlay rule (`without_overlay`): the blob of disagreeing cells fills at least this share of
#: its bounding box, and at least OVERLAY_MIN_SHARE of the cells agree with it (it holds at most half).
OVERLAY_FILL, OVERLAY_MIN_SHARE = 0.3, 0.5


def _windows(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return x[:rows * WINDOW, :cols * WINDOW].reshape(rows, WINDOW, cols, WINDOW).transpose(0, 2, 1, 3).reshape(rows, cols, -1)


class Reading(NamedTuple):
    """One detail reading: the share of a's textured windows that agree, and the two window grids."""

    detail: float
    textured: np.ndarray
    agree: np.ndarray


NO_READING = Reading(0.0, np.zeros((0, 0), bool), np.zeros((0, 0), bool))


def agreement(a: np.ndarray, b_warped: np.ndarray, inside: np.ndarray) -> Reading:
    """Which of a's textured windows (inside b's footprint) correlate with b's pixels."""
    rows, cols = a.shape[0] // WINDOW, a.shape[1] // WINDOW
    if rows == 0 or cols == 0:
        return NO_READING
    wa = _windows(cv2.GaussianBlur(a, (0, 0), WINDOW_SIGMA), rows, cols)
    wb = _windows(cv2.GaussianBlur(b_warped, (0, 0), WINDOW_SIGMA), rows, cols)
    sa, sb = wa.std(-1), wb.std(-1)
    cov = ((wa - wa.mean(-1, keepdims=True)) * (wb - wb.mean(-1, keepdims=True))).mean(-1)
    ncc = cov / np.maximum(sa * sb, np.float32(1e-6))
    textured = (_windows(inside, rows, cols).mean(-1) >= WINDOW_INSIDE) & (sa >= WINDOW_MIN_STD)
    agree = (ncc > WINDOW_NCC) & textured
    count = int(textured.sum())
    return Reading(float(agree.sum()) / count if count else 0.0, textured, agree)


def warp(a: np.ndarray, b: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a as float32, b warped onto a by h, the mask of a's pixels that b covers)."""
    height, width = a.shape
    warped = cv2.warpPerspective(b.astype(np.float32), h, (width, height), flags=cv2.INTER_LINEAR)
    inside = cv2.warpPerspective(np.ones(b.shape, np.float32), h, (width, height), flags=cv2.INTER_NEAREST)
    return a.astype(np.float32), warped, inside


def detail_reading(af: np.ndarray, warped: np.ndarray, inside: np.ndarray, enough: float) -> Reading:
    """Agreement of b warped onto a (`warp`), with either side blurred by each of BLUR_STEPS (or
    neither): the first reading >= `enough` (the pair passes; most copies do unblurred), else the best
    (the first of equals)."""
    best = agreement(af, warped, inside)
    for sigma in BLUR_STEPS:
        for x, y in ((cv2.GaussianBlur(af, (0, 0), sigma), warped), (af, cv2.GaussianBlur(warped, (0, 0), sigma))):
            if best.detail >= enough:
                return best
            reading = agreement(x, y, inside)
            best = reading if reading.detail > best.detail else best
    return best


def without_overlay(considered: np.ndarray, agree: np.ndarray, max_overlay: float) -> float:
    """The share of the `considered` cells (windows or blocks of a's grid) that `agree`, once one
    overlay is left out: the largest blob of disagreeing cells (8-connected after closing one-cell
    gaps), when it is one solid region (it fills OVERLAY_FILL of its bounding box or more) whose
    bounding box covers at most `max_overlay` of the grid and the share is OVERLAY_MIN_SHARE or more
    without leaving it out. A caption, a logo, an emoji or a pasted photo covers one such region of
    a copy, while two different photos, or one scene from two viewpoints, disagree in many places or
    over most of the image."""
    count = int(considered.sum())
    share = float(agree.sum()) / count if count else 0.0
    bad = (considered & ~agree).astype(np.uint8)
    if share < OVERLAY_MIN_SHARE or not bad.any() or max_overlay <= 0:
        return share
    closed = cv2.morphologyEx(bad, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    k = int(np.argmax(np.bincount(labels[bad > 0], minlength=n)[1:])) + 1
    box = int(stats[k, cv2.CC_STAT_WIDTH]) * int(stats[k, cv2.CC_STAT_HEIGHT])
    if box > max_overlay * bad.size or (labels == k).sum() < OVERLAY_FILL * box:
        return share
    rest = labels != k
    count = int((considered & rest).sum())
    return float((agree & rest).sum()) / count if count else 0.0


def outside_share(af: np.ndarray, warped: np.ndarray, inside: np.ndarray, points: np.ndarray, max_overlay: float) -> float:
    """Share of the blocks of a that b covers outside the hull of the inliers (`points`, in a) whose
    blurred mean grey agrees with b's within BLOCK_TOLERANCE, after the linear grey map (least squares)
    that takes b's blocks inside the hull to a's, once one overlay is left out (`without_overlay`).
    0 with fewer than MIN_BLOCKS blocks either side: no evidence is no copy."""
    height, width = af.shape
    pad = np.ones((2 * BLOCK + 1, 2 * BLOCK + 1), np.uint8)
    hull = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(points).astype(np.int32).reshape(-1, 1, 2)), 1)
    # Blocks a border away from the hull and from the footprint's edge: blur and resampling
    # mix pixels across both.
    hull = cv2.dilate(hull, pad)
    covered = cv2.erode((inside > 0).astype(np.uint8), pad)
    rows, cols = height // BLOCK, width // BLOCK
    if rows == 0 or cols == 0:
        return 0.0

    def means(x: np.ndarray) -> np.ndarray:
        return x[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).mean((1, 3), dtype=np.float64)

    ma, mb = means(cv2.GaussianBlur(af, (0, 0), BLOCK_SIGMA)), means(cv2.GaussianBlur(warped, (0, 0), BLOCK_SIGMA))
    whole, within = means(covered.astype(np.float32)) == 1.0, means(hull.astype(np.float32))
    fit, rest = whole & (within == 1.0), whole & (within == 0.0)
    if fit.sum() < MIN_BLOCKS or rest.sum() < MIN_BLOCKS:
        return 0.0
    gain, offset = np.linalg.lstsq(np.stack([mb[fit], np.ones(int(fit.sum()))], axis=1), ma[fit], rcond=None)[0]
    return without_overlay(rest, rest & (np.abs(ma - (gain * mb + offset)) <= BLOCK_TOLERANCE), max_overlay)


def covered(inside: np.ndarray, h: np.ndarray, shape_b: tuple[int, ...]) -> float:
    """How much of each image the other covers under h (the smaller share): 1 for a copy of the whole
    frame (resized, recoloured, overlaid), about a ninth for a tile and the whole photo it was cut from."""
    back = cv2.warpPerspective(np.ones(inside.shape, np.float32), np.linalg.inv(h), (shape_b[1], shape_b[0]),
                               flags=cv2.INTER_NEAREST)
    return float(min(inside.mean(dtype=np.float64), back.mean(dtype=np.float64)))


__all__ = ["NO_READING", "Reading", "agreement", "covered", "detail_reading", "outside_share", "warp", "without_overlay"]
