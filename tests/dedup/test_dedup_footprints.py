"""Copies versus parts of one image (`curation.dedup.footprints`): two tiles verified against the
photo they were cut from conflict and stay in different self-dedup components; copies never conflict;
relative dedup still follows every verified pair."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curation.config import VerifyConfig
from curation.dedup.decisions import decide, graph_components
from curation.dedup.footprints import conflicts, overlap, split_mask
from curation.dedup.keypoints import features
from curation.dedup.verify import check, passes
from curation.quality.copy_bench import load_photo

CFG = VerifyConfig()
FULL = [0.0, 0.0, 1.0, 1.0]
LEFT, RIGHT = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_overlap_is_the_share_of_the_smaller_box():
    a = np.array([FULL, LEFT, LEFT, [0.0, 0.0, 0.0, 1.0]])
    b = np.array([LEFT, RIGHT, [0.25, 0.0, 0.75, 1.0], FULL])
    assert overlap(a, b).tolist() == [1.0, 0.0, 0.5, 0.0]  # empty box: no overlap, not a division by 0


def test_two_halves_of_one_photo_conflict_copies_do_not():
    # 0: a photo; 1, 2: its left and right halves; 3: a full copy of 0; 4, 5: crops of 0 keeping half
    # its area each, at opposite corners (they share a sixth of it).
    src = np.array([0, 0, 0, 0, 0])
    dst = np.array([1, 2, 3, 4, 5])
    side = 0.5 ** 0.5
    src_box = np.array([LEFT, RIGHT, FULL, [0, 0, side, side], [1 - side, 1 - side, 1, 1]])
    u, v = conflicts(src, dst, src_box, np.array([FULL] * 5), 0.1)
    assert list(zip(u.tolist(), v.tolist())) == [(1, 2)]
    # Pairs verified against each other never conflict, whatever the hub says.
    u, v = conflicts(np.r_[src, 1], np.r_[dst, 2], np.r_[src_box, [FULL]], np.array([FULL] * 6), 0.1)
    assert len(u) == 0
    # 0 switches it off.
    assert len(conflicts(src, dst, src_box, np.array([FULL] * 5), 0.0)[0]) == 0


def _tiles_graph():
    """0: a photo; 1, 2: its left / right tiles; 3, 4: copies of tile 1; 5, 6: copies of tile 2;
    7, 8: a copy pair elsewhere. Each tile and its copies verify against the photo."""
    src = np.array([0, 0, 0, 0, 0, 0, 1, 1, 3, 2, 2, 5, 7])
    dst = np.array([1, 3, 4, 2, 5, 6, 3, 4, 4, 5, 6, 6, 8])
    src_box = np.array([LEFT] * 3 + [RIGHT] * 3 + [FULL] * 7)
    score = np.array([0.9, 0.8, 0.8, 0.85, 0.8, 0.8, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.9])
    return src, dst, src_box, np.array([FULL] * len(src)), score


def test_split_keeps_the_photo_with_its_best_part_and_the_other_part_whole():
    src, dst, src_box, dst_box, score = _tiles_graph()
    conflict = conflicts(src, dst, src_box, dst_box, 0.1)
    mask = split_mask(graph_components(9, None, (src, dst)), src, dst, score, conflict)
    labels = decide(np.ones(9, np.int64), np.ones(9, np.int64), None, (src[mask], dst[mask])).rep
    groups = sorted({tuple(np.flatnonzero(labels == r).tolist()) for r in labels})
    assert groups == [(0, 1, 3, 4), (2, 5, 6), (7, 8)]
    # Unconflicted components keep every pair; the mask does not depend on the input order.
    assert mask[-1] and (~mask).sum() == 3
    perm = np.random.default_rng(0).permutation(len(src))
    conflict_p = conflicts(src[perm], dst[perm], src_box[perm], dst_box[perm], 0.1)
    labels_p = graph_components(9, None, (src[perm], dst[perm]))
    assert np.array_equal(split_mask(labels_p, src[perm], dst[perm], score[perm], conflict_p), mask[perm])


def test_hash_duplicates_join_whatever_the_conflicts():
    src, dst, src_box, dst_box, score = _tiles_graph()
    conflict = conflicts(src, dst, src_box, dst_box, 0.1)
    fixed = (np.array([1]), np.array([2]))  # the two tiles' hashes collide
    mask = split_mask(graph_components(9, fixed, (src, dst)), src, dst, score, conflict, fixed)
    labels = decide(np.ones(9, np.int64), np.ones(9, np.int64), fixed, (src, dst), self_mask=mask).rep
    assert labels[1] == labels[2]


def test_relative_dedup_follows_every_verified_pair():
    """A part of an evaluation image goes with it, even when self-dedup keeps the parts apart."""
    src, dst, src_box, dst_box, score = _tiles_graph()
    mask = split_mask(graph_components(9, None, (src, dst)), src, dst, score, conflicts(src, dst, src_box, dst_box, 0.1))
    hit = np.zeros(9, bool)
    hit[0] = True
    dec = decide(np.ones(9, np.int64), np.ones(9, np.int64), None, (src, dst), hit, self_mask=mask)
    assert dec.doomed[:7].all() and not dec.doomed[7:].any()
    assert len(set(dec.rep[:7].tolist())) == 2


@pytest.mark.parametrize("mirror", [False, True])
def test_verify_records_where_a_tile_lies_in_its_photo(mirror):
    """The footprint of the left half of a real photo in the photo is its left half (in the photo's
    own frame, also when the tile is mirrored), and the tile's footprint in itself is the whole tile."""
    photo = load_photo("coffee")
    w, h = photo.size
    tile = photo.crop((0, 0, w // 2, h))
    if mirror:
        tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    c = check(features(_jpeg(photo), CFG), features(_jpeg(tile), CFG), CFG)
    assert passes(c, CFG) and c.mirrored == mirror, c
    x0, y0, x1, y1 = c.src_box
    assert x0 >= 0 and x1 <= 0.55 and x1 - x0 >= 0.25 and y1 - y0 >= 0.5, c.src_box
    assert c.dst_box[2] - c.dst_box[0] >= 0.5 and c.dst_box[3] - c.dst_box[1] >= 0.5, c.dst_box
