"""Copies versus look-alikes that bridge two images: split a component where its checks say two.

Copies of one image are copies of each other, so the pixel check (`curation.dedup.verify`) passes
most pairs inside a copy group: a group is close to a clique of verified pairs. A look-alike can
pass against members of another group: a blurred frame of a stereo pair matches the other frame and
its copies within the blur's tolerance, while every other pair between the two frames' groups is
checked and fails. Connected components join the two groups through that one image. On the
real-photo benchmark the motorcycle stereo pair's tiles were all of self-dedup's false pairs
(1,430 pairs), each pair of groups joined by 1-7 verified pairs against ~480 checked.

`split_labels` clusters each component by average linkage over the checks: starting from the
trusted (hash) components, it repeatedly joins the two clusters whose pairs verified at the
highest rate (verified / checked), while that rate is at least `min_linkage`; and when both hold
MIN_SIDE images or more, only if MIN_DISJOINT of their verified pairs share no image (a maximum
matching): a join of two groups must not rest on one or two images that match both (two blurred
frames, one of each, gave a stereo tile 20 verified pairs of 484, a rate no threshold that keeps
copies could refuse, but only 2 disjoint ones). A copy that verifies against a few members of its
group (a half-area crop, an overlaid photo) still joins it: its own pairs are all its evidence.

Pairs never checked (not candidates) are no evidence either way. Components without a failed pair
inside are left as they are, so the cost is that of the components with failed checks. Counts are
integers, pairs are taken in sorted order and ties go to the smaller cluster ids, so one graph gives
one answer whatever the input order, on every engine.
"""
from __future__ import annotations

import heapq

import numpy as np

from curation.dedup.graph import Forest, connected_components

__all__ = ["split_labels"]

#: Clusters of at least MIN_SIDE images each join only on MIN_DISJOINT verified pairs that share no
#: image. 4: on the benchmark's tuning photos, 3 kept three pairs of hard copies (a crop and a crop
#: of it, both matching the original alone) out of their groups; 4 keeps every tuning copy.
MIN_SIDE, MIN_DISJOINT = 4, 3


class _Link:
    """The checked pairs between two clusters: how many verified, how many in all, and which."""

    __slots__ = ("verified", "checked", "pairs")

    def __init__(self) -> None:
        self.verified, self.checked = 0, 0
        self.pairs: list[tuple[int, int, bool]] = []

    def add(self, a: int, b: int, ok: bool) -> None:
        self.verified += ok
        self.checked += 1
        self.pairs.append((a, b, ok))

    def extend(self, other: "_Link") -> None:
        self.verified += other.verified
        self.checked += other.checked
        self.pairs.extend(other.pairs)

    def disjoint(self, side: dict[int, bool], enough: int) -> int:
        """How many verified pairs here share no image (a maximum matching, augmenting paths), up
        to `enough`. `side`: whether a node lies in the first cluster."""
        edges: dict[int, list[int]] = {}
        for a, b, ok in sorted(self.pairs):
            if ok:
                u, v = (a, b) if side[a] else (b, a)
                edges.setdefault(u, []).append(v)
        partner: dict[int, int] = {}

        def augment(u: int, seen: set[int]) -> bool:
            for v in edges[u]:
                if v not in seen:
                    seen.add(v)
                    if v not in partner or augment(partner[v], seen):
                        partner[v] = u
                        return True
            return False

        found = 0
        for u in sorted(edges):
            if found >= enough:
                break
            found += augment(u, set())
        return found


class _Clusters(Forest):
    """Union-find over nodes whose roots carry, per neighbouring root, the `_Link` between them."""

    def __init__(self) -> None:
        super().__init__()
        self.size: dict[int, int] = {}
        self.links: dict[int, dict[int, _Link]] = {}

    def union(self, a: int, b: int) -> int:
        """Join the clusters of a and b (links merged); the surviving root."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        big, small = (ra, rb) if (self.size.get(ra, 1), -ra) >= (self.size.get(rb, 1), -rb) else (rb, ra)
        self.parent[small] = big
        self.size[big] = self.size.get(big, 1) + self.size.pop(small, 1)
        mine = self.links.setdefault(big, {})
        mine.pop(small, None)
        for other, link in self.links.pop(small, {}).items():
            if other == big:
                continue
            theirs = self.links[other]
            theirs.pop(small)
            if other in mine:
                mine[other].extend(link)
            else:
                mine[other] = theirs[big] = link  # one link shared by both roots
        return big

    def count(self, a: int, b: int, verified: bool) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        link = self.links.setdefault(ra, {}).get(rb)
        if link is None:
            link = self.links[ra][rb] = self.links.setdefault(rb, {})[ra] = _Link()
        link.add(a, b, verified)

    def joins(self, a: int, b: int, link: _Link, min_linkage: float) -> bool:
        """Whether clusters a and b join: their pairs verified at `min_linkage` or more and, when
        both hold MIN_SIDE images or more, at least MIN_DISJOINT of the verified pairs share no image."""
        if link.verified < min_linkage * link.checked:
            return False
        if min(self.size.get(a, 1), self.size.get(b, 1)) < MIN_SIDE:
            return True
        side = {x: self.find(x) == a for pair in link.pairs for x in pair[:2]}
        return link.disjoint(side, MIN_DISJOINT) >= MIN_DISJOINT


def _entry(a: int, b: int, link: _Link) -> tuple[float, int, int, int, int]:
    return (-link.verified / link.checked, min(a, b), max(a, b), link.verified, link.checked)


def split_labels(n: int, src: np.ndarray, dst: np.ndarray, verified: np.ndarray,
                 fixed: tuple[np.ndarray, np.ndarray] | None, min_linkage: float) -> np.ndarray:
    """A cluster label per node (the smallest node of its cluster): the components of the `fixed`
    edges and the verified checked pairs, each split by average linkage (see the module) where its
    failed pairs say so. `src`, `dst`, `verified`: every checked pair (node indices) and its outcome."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    src, dst = np.minimum(src, dst), np.maximum(src, dst)  # undirected: one orientation, one order
    verified = np.asarray(verified, bool)
    fs, fd = fixed if fixed is not None else (np.empty(0, np.int64), np.empty(0, np.int64))
    fs, fd = np.asarray(fs, np.int64), np.asarray(fd, np.int64)
    fs, fd = np.minimum(fs, fd), np.maximum(fs, fd)
    every = connected_components(n, np.r_[fs, src[verified]], np.r_[fd, dst[verified]])
    if min_linkage <= 0 or verified.all():
        return every
    # Only components holding a failed pair between two of their nodes can split.
    split = np.unique(every[src[~verified]][every[src[~verified]] == every[dst[~verified]]])
    if len(split) == 0:
        return every
    rows = np.flatnonzero((every[src] == every[dst]) & np.isin(every[src], split))
    rows = rows[np.lexsort((dst[rows], src[rows]))]
    inside = np.flatnonzero(np.isin(every[fs], split))
    inside = inside[np.lexsort((fd[inside], fs[inside]))]
    clusters = _Clusters()
    for a, b in zip(fs[inside].tolist(), fd[inside].tolist()):
        clusters.union(a, b)
    for r in rows.tolist():
        clusters.count(int(src[r]), int(dst[r]), bool(verified[r]))
    heap = [_entry(a, b, link) for a, others in clusters.links.items() for b, link in others.items()
            if a < b and link.verified]
    heapq.heapify(heap)
    while heap:
        rate, a, b, hits, tried = heapq.heappop(heap)
        if -rate < min_linkage:
            break
        link = clusters.links.get(a, {}).get(b)
        if link is None or link.verified != hits or link.checked != tried:
            continue  # stale: a or b was joined, or the pairs between them changed
        if not clusters.joins(a, b, link, min_linkage):
            continue  # seen again if the pairs between them change
        root = clusters.union(a, b)
        for other, other_link in clusters.links.get(root, {}).items():
            if other_link.verified:
                heapq.heappush(heap, _entry(root, other, other_link))
    out = every.copy()
    nodes = np.unique(np.r_[src[rows], dst[rows], fs[inside], fd[inside]])
    roots = np.array([clusters.find(int(x)) for x in nodes.tolist()], np.int64)
    # Label = smallest node of the cluster (canonical, whatever the roots).
    order = np.lexsort((nodes, roots))
    first = np.r_[True, roots[order][1:] != roots[order][:-1]]
    smallest = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    out[nodes[order]] = nodes[order][smallest]
    return out
