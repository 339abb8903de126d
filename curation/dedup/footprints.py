"""Copies versus parts: keep two different parts of one image out of one component.

A verified pair (`curation.dedup.verify`) says that two images share pixels under one homography,
not that they are one image. A tile cut from a photo verifies against the whole photo and its copies,
and so does the tile beside it; connected components then join two different images (adjacent
tiles, two crops of a panorama that do not overlap) through the photo both were cut from. On the
real-photo benchmark these chains were half of self-dedup's false pairs (issue 15).

The verify stage records each verified pair's footprints: where the matched keypoints lie in each
image (`src_box`, `dst_box`, fractions of the image). Two images verified against one image (a
"hub") whose footprints in it overlap by less than `min_overlap` of the smaller footprint show
different parts of it: they conflict (`conflicts`). `split_mask` then joins the verified pairs of
the components that hold a conflict one at a time, best score first, and leaves out a pair that
would put two conflicting images into one component; the hub goes with the part that matched it
first. Components without a conflict are left as they are, so the cost is that of the conflicts.

Copies of one image never conflict: crops that keep half of an image's area each still share at
least 0.17 of it (two intervals of 0.71 of a side overlap by 0.42 of it), a third of the smaller
crop, and a mirrored, rotated, recoloured or padded copy covers its original whole.
"""
from __future__ import annotations

import numpy as np

from curation.dedup.graph import Forest, pair_keys

__all__ = ["conflicts", "overlap", "split_mask"]


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection of boxes a[i] and b[i] (x0, y0, x1, y1) over the smaller one's area (0 where
    either is empty)."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    smaller = np.minimum(_area(a), _area(b))
    return np.divide(w * h, smaller, out=np.zeros(len(a)), where=smaller > 0)


def conflicts(src: np.ndarray, dst: np.ndarray, src_box: np.ndarray, dst_box: np.ndarray,
              min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of nodes (u < v, sorted, unique) that are different parts of one image: both verified
    against a hub, their footprints in it overlapping by less than `min_overlap` of the smaller, and
    not verified against each other. `src_box[i]` is where pair i's inliers lie in `src[i]` (the
    footprint of `dst[i]` in it), `dst_box[i]` the other way round."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    hub = np.concatenate([src, dst])
    other = np.concatenate([dst, src])
    box = np.concatenate([np.asarray(src_box, np.float64).reshape(-1, 4), np.asarray(dst_box, np.float64).reshape(-1, 4)])
    # Two footprints covering more than (1 + min_overlap) / 2 of the hub each overlap by more than
    # min_overlap of either: only hubs with a smaller footprint can hold a conflict.
    partial = _area(box) < (1.0 + min_overlap) / 2.0
    hubs = np.unique(hub[partial])
    keep = np.isin(hub, hubs)
    hub, other, box, partial = hub[keep], other[keep], box[keep], partial[keep]
    order = np.lexsort((other, hub))
    hub, other, box, partial = hub[order], other[order], box[order], partial[order]
    starts = np.flatnonzero(np.r_[True, hub[1:] != hub[:-1]])
    ends = np.r_[starts[1:], len(hub)]
    found_u, found_v = [], []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        i, j = np.triu_indices(e - s, 1)
        i, j = i + s, j + s
        pick = (partial[i] | partial[j]) & (other[i] != other[j])
        i, j = i[pick], j[pick]
        low = overlap(box[i], box[j]) < min_overlap
        found_u.append(other[i][low])
        found_v.append(other[j][low])
    if not found_u:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    u, v = np.concatenate(found_u), np.concatenate(found_v)
    linked = pair_keys(src, dst)
    keys = pair_keys(u, v)
    keys = np.unique(keys[~np.isin(keys, linked)])
    return keys >> 32, keys & 0xFFFFFFFF


def split_mask(labels: np.ndarray, src: np.ndarray, dst: np.ndarray, score: np.ndarray,
               conflict: tuple[np.ndarray, np.ndarray], fixed: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Which of the pairs (src, dst) the self components use: all of them, except in components
    (`labels`: over `fixed` edges and all pairs, `curation.dedup.decisions.graph_components`) that
    hold a conflicting pair. There, `fixed` edges (hash duplicates) are joined first, then the
    pairs by score (best first, ties by node ids), each left out if it would join two components
    holding a conflicting pair. Deterministic: the same graph gives the same mask in any input order."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    mask = np.ones(len(src), dtype=bool)
    cu, cv = conflict
    if len(cu) == 0 or len(src) == 0:
        return mask
    fs, fd = fixed if fixed is not None else (np.empty(0, np.int64), np.empty(0, np.int64))
    touched = np.unique(labels[cu])
    rows = np.flatnonzero(np.isin(labels[src], touched))
    rows = rows[np.lexsort((dst[rows], src[rows], -np.asarray(score, np.float64)[rows]))]
    fixed_inside = np.isin(labels[fs], touched)
    mask[rows] = _join_apart(rows, src, dst, np.asarray(fs)[fixed_inside], np.asarray(fd)[fixed_inside], cu, cv)
    return mask


class _Apart(Forest):
    """Union-find whose roots carry the conflicts of their members (a set of node ids)."""

    def __init__(self, cu: np.ndarray, cv: np.ndarray):
        super().__init__()
        self.apart: dict[int, set[int]] = {}
        for u, v in zip(cu.tolist(), cv.tolist()):
            self.apart.setdefault(u, set()).add(v)
            self.apart.setdefault(v, set()).add(u)

    def merge(self, a: int, b: int) -> None:
        """Join the components of a and b, whatever their conflicts."""
        small, big = self.find(a), self.find(b)
        if small == big:
            return
        if len(self.apart.get(small, ())) > len(self.apart.get(big, ())):
            small, big = big, small
        self.parent[small] = big
        if small in self.apart:
            self.apart.setdefault(big, set()).update(self.apart.pop(small))

    def join(self, a: int, b: int) -> bool:
        """Join a's and b's components unless they hold a conflicting pair; whether they are one."""
        ra, rb = self.find(a), self.find(b)
        small, big = (ra, rb) if len(self.apart.get(ra, ())) <= len(self.apart.get(rb, ())) else (rb, ra)
        if ra != rb and any(self.find(p) == big for p in self.apart.get(small, ())):
            return False
        self.merge(ra, rb)
        return True


def _join_apart(rows: np.ndarray, src: np.ndarray, dst: np.ndarray, fs: np.ndarray, fd: np.ndarray,
                cu: np.ndarray, cv: np.ndarray) -> np.ndarray:
    """Union-find over the fixed edges (fs, fd), whatever their conflicts, then over `rows` in
    order; a row is taken unless its two sides' components hold a conflicting pair. Returns whether
    each row was taken."""
    forest = _Apart(cu, cv)
    for a, b in zip(fs.tolist(), fd.tolist()):
        forest.merge(a, b)
    return np.array([forest.join(int(src[r]), int(dst[r])) for r in rows], dtype=bool)
