"""Pixel verification of candidate copy pairs: does one image hold the other's pixels?

A global descriptor puts two different photos of one texture (adjacent tiles of a star field, of
gravel, of a brick wall), two frames of one scene (a stereo pair) or two photos carrying the same
logo as close as an image and its copy: on the real-photo benchmark (`curation.quality.copy_bench`)
no threshold of any descriptor we measured, SSCD's included, separates them (issue 15). What a
copy has and a look-alike has not is the same pixels under one geometric map. So each candidate
pair (a k-NN edge above the dedup model's candidate threshold, or a perceptual-hash edge the k-NN
graph lacks) is checked:

1. ORB keypoints of both images (grayscale, longer side `side`), and of the second one mirrored
   (`curation.dedup.keypoints`);
   Lowe's ratio test on the two nearest descriptors (FAISS's exact Hamming k-NN), then a RANSAC
   homography (the copy transforms we target - crops, scaling, rotation, perspective, mirroring,
   padding - are all homographies).
2. `inliers`: matches the homography explains. Different textures rarely get more than a handful.
3. `detail`: the second image warped onto the first, the fraction of the first's textured 8-px
   windows whose normalised cross-correlation with it exceeds 0.8 - the pixels agree, not just a
   few keypoints. Blur is a copy transform, so the sharper side is blurred by 0-3 px first (the best
   agreement counts): a blurred copy then agrees with its sharp original, while a stereo pair's
   parallax still leaves windows that no single homography aligns.
4. `spread`: the area of the inliers' convex hull over the image's area (the smaller of the two
   images' values). Two photos carrying the same logo or caption match on the overlay only, a small
   part of the image.
5. `src_box`, `dst_box`: where the inliers lie in each image (bounding box as fractions of its width
   and height, in the image's own unmirrored frame): one image's footprint in the other, which
   `curation.dedup.footprints` uses to tell copies of an image from different parts of it.
6. `outside`, measured only where the spread is short of `min_spread` but at least `low_spread`: the
   share of the overlap's coarse blocks outside the inliers' hull whose mean grey agrees under the
   homography (after the linear grey map fitted inside the hull: recolouring is a copy transform).
   A copy whose keypoints cluster on a few strong edges (a flat graphic, a photo's one textured
   object) agrees everywhere else too; two tiles carrying the same logo differ around it (on the
   real-photo benchmark such pairs agree on 0.52-0.67 of those blocks, copies on 0.97 at the median).
   `cover`: how much of each image the other covers under the homography (the smaller share);
   evaluation pairs take the outside rule only for whole frames (`graph_config`).
7. `clean`, measured only where the spread passes and the detail does not: the detail once one
   overlay is left out (`without_overlay`), the largest solid region of disagreeing windows if its
   bounding box covers at most `max_overlay` of the image. A caption, logo, emoji or pasted photo
   covers one region of a copy; a stereo pair or two different photos disagree in many places. The
   outside blocks leave one such region out the same way.

A pair is verified when `inliers`, `detail` (or `clean` at `min_clean`) and `spread` pass
`VerifyConfig`'s minimums, or when the first two do and a shorter spread (down to `low_spread`)
comes with `outside` at `min_outside` (and `cover` at `min_cover`). A
pair that fails where one image has too little contrast for keypoints is measured once more with the
keypoints of both images found on their locally equalised (CLAHE) grey. Values are computed in float32
and float64 by OpenCV and numpy in a fixed order; RANSAC uses OpenCV's fixed seed, so one input
gives one answer on every engine.

Plain components only need verified paths, not every verified edge, so the stage checks pairs in
rounds and can skip a pair whose images are already connected (`pending`): the components are the
same as checking every pair, at the cost of the pairs that matter. Components that keep the parts
of one image apart (`curation.dedup.footprints`) or split where most checks failed
(`curation.dedup.linkage`), both on by default, need every self pair (`Settled`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import faiss
import numpy as np
import pyarrow as pa

from curation.config import VerifyConfig
from curation.dedup.graph import connected_components, pairs_in
from curation.dedup.agreement import covered, detail_reading, outside_share, warp, without_overlay
from curation.dedup.keypoints import Features, equalised

#: Lowe's ratio test.
RATIO = 0.8
MIN_MATCHES = 8  # fewer ratio-test matches: no homography is fitted
#: The robust fit: OpenCV's USAC (LO-RANSAC with SPRT model rejection, fixed seed). Classic RANSAC
#: ran all its iterations on look-alikes' matches, which have no model to find: 5.5 ms a fit against
#: 0.3 ms, with the same verified pairs but about 1 in 200 (bench/bench_verify.py).
RANSAC_METHOD, RANSAC_ITERATIONS, RANSAC_CONFIDENCE = cv2.USAC_DEFAULT, 500, 0.995

CHECKS = pa.schema([
    ("src", pa.string()), ("dst", pa.string()),
    ("inliers", pa.int32()), ("detail", pa.float32()), ("spread", pa.float32()),
    ("mirrored", pa.bool_()), ("verified", pa.bool_()), ("error", pa.string()),
    ("src_box", pa.list_(pa.float32(), 4)), ("dst_box", pa.list_(pa.float32(), 4)), ("outside", pa.float32()),
    ("clean", pa.float32()), ("cover", pa.float32()),
])


Box = tuple[float, float, float, float]
NO_BOX: Box = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Check:
    """What the check of one pair measured; `verified` by `passes`. The boxes: where the inliers
    lie in the first and in the second image (x0, y0, x1, y1 as fractions of its width and height)."""

    inliers: int
    detail: float
    spread: float
    mirrored: bool
    src_box: Box = NO_BOX
    dst_box: Box = NO_BOX
    outside: float = 0.0
    clean: float = 0.0
    cover: float = 0.0


NO_MATCH = Check(0, 0.0, 0.0, False)


def ratio_matches(descriptors_a: np.ndarray, descriptors_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowe's ratio-test matches of a's descriptors in b's, as (indices in a, indices in b).

    FAISS's exact Hamming k-NN (~4x OpenCV's brute-force matcher, which was 70 % of a check) on one
    thread: a check task already has its core. Distances are integers, so the two nearest are the
    same on every CPU, and a tie for the nearest fails the ratio test whichever neighbour comes first.
    """
    distances, neighbours = faiss.knn_hamming(np.ascontiguousarray(descriptors_a, np.uint8),
                                             np.ascontiguousarray(descriptors_b, np.uint8), 2)
    good = np.flatnonzero(distances[:, 0] < RATIO * distances[:, 1])
    return good, neighbours[good, 0]


def _homography(a: Features, points_b: np.ndarray, descriptors_b: np.ndarray | None,
                cfg: VerifyConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """(homography mapping b into a, or None; the inlier matches as [m, 2, 2] points in a and b)."""
    none = (None, np.zeros((0, 2, 2), np.float32))
    if a.descriptors is None or descriptors_b is None or len(a.descriptors) < 2 or len(descriptors_b) < 2:
        return none
    query, train = ratio_matches(a.descriptors, descriptors_b)
    if len(query) < max(MIN_MATCHES, cfg.min_inliers):  # too few matches to reach min_inliers inliers
        return none
    in_a = np.ascontiguousarray(a.points[query], np.float32)
    in_b = np.ascontiguousarray(points_b[train], np.float32)
    h, mask = cv2.findHomography(in_b, in_a, RANSAC_METHOD, cfg.ransac_px, maxIters=RANSAC_ITERATIONS,
                                 confidence=RANSAC_CONFIDENCE)
    if h is None:
        return none
    keep = mask.ravel().astype(bool)
    if keep.sum() >= 4:  # refit on the inliers alone (least squares): RANSAC's pick is one sample's fit
        refit, _ = cv2.findHomography(in_b[keep], in_a[keep], 0)
        h = refit if refit is not None else h
    return h, np.stack([in_a[keep], in_b[keep]], axis=1)


def _hull_fraction(points: np.ndarray, shape: tuple[int, ...]) -> float:
    if len(points) < 3:
        return 0.0
    area = cv2.contourArea(cv2.convexHull(np.ascontiguousarray(points, np.float32).reshape(-1, 1, 2)))
    return float(area) / float(shape[0] * shape[1])


def _box(points: np.ndarray, shape: tuple[int, ...], mirrored: bool = False) -> Box:
    """Bounding box of points as fractions of the image (`mirrored`: the points are in the mirrored
    image's coordinates, the box is given in the image's own)."""
    h, w = shape[:2]
    x0, x1 = float(points[:, 0].min()) / w, float(points[:, 0].max()) / w
    if mirrored:
        x0, x1 = 1.0 - x1, 1.0 - x0
    return (x0, float(points[:, 1].min()) / h, x1, float(points[:, 1].max()) / h)


def check(a: Features, b: Features, cfg: VerifyConfig,
          described: Callable[[Features], Features] | None = None) -> Check:
    """Measure one pair (`_measure`). When that fails and an image has fewer than `equalize_below`
    keypoints (too little contrast: microscopy, a retina), measure it again with both images'
    keypoints found on their equalised grey (`described`: `equalised`, or a cache of it), and keep
    the better reading. Both images, never one: a raw and an equalised description match poorly.
    The fallback only adds pairs, so photos with keypoints enough are decided as before."""
    found = _measure(a, b, cfg)
    if passes(found, cfg) or min(len(a.points), len(b.points)) >= cfg.equalize_below:
        return found
    eq = described or (lambda f: equalised(f, cfg))
    again = _measure(eq(a), eq(b), cfg)
    return again if passes(again, cfg) or (again.detail, again.inliers) > (found.detail, found.inliers) else found


def _measure(a: Features, b: Features, cfg: VerifyConfig) -> Check:
    """Measure one pair, b as is, then (unless that passes) b mirrored: the first reading that
    passes, else the one with the most agreement (then the most inliers). The checks run cheapest
    first and stop at the first that fails: a pair with fewer than `min_inliers` inliers is not
    measured further, one whose inliers spread less than `low_spread` gets no `detail` (0)."""
    best = NO_MATCH
    for mirrored in (False, True):
        points, descriptors = (b.mirror_points, b.mirror_descriptors) if mirrored else (b.points, b.descriptors)
        h, inl = _homography(a, points, descriptors, cfg)
        if h is None or len(inl) < cfg.min_inliers:
            if h is not None and len(inl) > best.inliers and best.detail == 0.0:
                best = Check(len(inl), 0.0, 0.0, mirrored)
            continue
        spread = min(_hull_fraction(inl[:, 0], a.gray.shape), _hull_fraction(inl[:, 1], b.gray.shape))
        detail = outside = clean = cover = 0.0
        if spread >= cfg.low_spread:
            af, warped, inside = warp(a.gray, cv2.flip(b.gray, 1) if mirrored else b.gray, h)
            reading = detail_reading(af, warped, inside, cfg.min_detail)
            detail = reading.detail
            if spread < cfg.min_spread and detail >= cfg.min_detail:
                cover = covered(inside, h, b.gray.shape)
                if cover >= cfg.min_cover:
                    outside = outside_share(af, warped, inside, inl[:, 0], cfg.max_overlay)
            if spread >= cfg.min_spread and detail < cfg.min_detail:
                clean = without_overlay(reading.textured, reading.agree, cfg.max_overlay)
        found = Check(len(inl), detail, spread, mirrored, _box(inl[:, 0], a.gray.shape),
                      _box(inl[:, 1], b.gray.shape, mirrored), outside, clean, cover)
        if passes(found, cfg):
            return found
        if (found.detail, found.inliers) > (best.detail, best.inliers):
            best = found
    return best


def passes(c: Check, cfg: VerifyConfig) -> bool:
    """Whether a measured pair is a verified copy."""
    spread = c.spread >= cfg.min_spread or (c.spread >= cfg.low_spread and c.outside >= cfg.min_outside
                                            and c.cover >= cfg.min_cover)
    # Outside an overlay the pixels agree at least as much as a copy's whole image must.
    detail = c.detail >= cfg.min_detail or c.clean >= max(cfg.min_clean, cfg.min_detail)
    return c.inliers >= cfg.min_inliers and detail and spread


def hash_only(hash_edges: tuple[np.ndarray, np.ndarray], knn_edges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Mask of the hash edges the k-NN graph does not hold: their perceptual hashes collide while the
    dedup model does not put the two images near each other (two dark corner tiles of a retina, mirror
    images at 32 px). One weak signal, so they are checked here like candidates, and the components
    use such a hash edge only if its pixels verify it; a hash pair the model agrees with stays a hash edge."""
    return ~pairs_in(hash_edges, knn_edges)


def graph_config(cfg: VerifyConfig, graph: str) -> VerifyConfig:
    """The settings pairs of one dedup graph are checked with. Evaluation pairs (`eval`) take the
    outside-blocks rule only where each image covers `eval_min_cover` of the other: relative dedup
    discards an evaluation copy's whole component, chains through parts of one image included, so a
    tile inside the whole photo it was cut from (whose outside blocks agree as a copy's do) must not
    reach it on that evidence, while a copy of the whole frame may."""
    return cfg.model_copy(update={"min_cover": cfg.eval_min_cover}) if graph == "eval" else cfg


@contextmanager
def _one_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread: each check task already holds one core of the engine. The
    setting is the calling thread's own (libgomp keeps it per thread), so threads of one Beam
    worker checking pairs at once do not change each other's, nor the other stages'."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def check_pairs(found: Mapping[str, Features | str], pairs: Sequence[tuple[str, str]], cfg: VerifyConfig) -> pa.Table:
    """Check each (src, dst) pair of image ids against the images' features (`features_of`): a
    CHECKS table in pair order. An image that could not be read fails its pairs with the reason in
    `error` (never verified: an unreadable image is no evidence of a copy)."""
    rows: dict[str, list] = {name: [] for name in CHECKS.names}
    cache: dict[int, Features] = {}  # equalised features, once per image of the call

    def described(f: Features) -> Features:
        if id(f) not in cache:
            cache[id(f)] = equalised(f, cfg)
        return cache[id(f)]

    def unreadable(src: str, dst: str) -> str | None:
        fa, fb = found[src], found[dst]
        return fa if isinstance(fa, str) else fb if isinstance(fb, str) else None

    errors = [unreadable(src, dst) for src, dst in pairs]
    with _one_thread():
        checked = [NO_MATCH if error else check(found[src], found[dst], cfg, described)  # type: ignore[arg-type]
                   for (src, dst), error in zip(pairs, errors)]
    for (src, dst), error, c in zip(pairs, errors, checked):
        for name, value in (("src", src), ("dst", dst), ("inliers", c.inliers), ("detail", c.detail),
                            ("spread", c.spread), ("mirrored", c.mirrored),
                            ("verified", error is None and passes(c, cfg)), ("error", error),
                            ("src_box", list(c.src_box)), ("dst_box", list(c.dst_box)), ("outside", c.outside),
                            ("clean", c.clean), ("cover", c.cover)):
            rows[name].append(value)
    return pa.table(rows, schema=CHECKS)


def pending(src: np.ndarray, dst: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mask of the pairs (node indices) whose nodes are not yet in one component (`labels`: a
    component label per node): only those can change the components."""
    return labels[src] != labels[dst]


class Settled:
    """What the pairs checked so far have decided, so later pairs that cannot change it are skipped.

    Self pairs: the components of the hash edges and the verified pairs (a pair inside one
    component changes nothing), unless `every_self`: when the components keep different parts of
    one image apart (`curation.dedup.footprints`) or split on failed checks (`curation.dedup.linkage`),
    any pair may add a conflict, a path or evidence against one, so every self pair is checked (and
    the result does not depend on the rounds). Evaluation pairs (checked after every self pair): the
    components already holding a verified evaluation copy (the whole component goes either way).
    Nodes are indices into the pool's sorted unique image ids."""

    def __init__(self, n: int, src: np.ndarray, dst: np.ndarray, every_self: bool = False):
        self.labels = connected_components(n, src, dst)
        self.hit = np.zeros(n, bool)
        self.every_self = every_self

    def open_self(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if self.every_self:
            return np.ones(len(src), dtype=bool)
        return pending(src, dst, self.labels)

    def add_self(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Join the components of verified self pairs (the components of the components' graph:
        the cost of a round is its pairs and the node count, not every pair verified so far)."""
        if len(src):
            self.labels = connected_components(len(self.labels), self.labels[src], self.labels[dst])[self.labels]

    def open_eval(self, dst: np.ndarray) -> np.ndarray:
        return ~self.hit[self.labels[dst]]

    def add_eval(self, dst: np.ndarray) -> None:
        self.hit[self.labels[dst]] = True


__all__ = ["CHECKS", "Check", "Settled", "check", "check_pairs", "graph_config", "hash_only", "passes", "pending",
           "ratio_matches"]
