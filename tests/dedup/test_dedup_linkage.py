"""Look-alikes that bridge two copy groups (`curation.dedup.linkage`): a component splits where the
pairs between two dense groups mostly failed the pixel check; copies that verify against a few
members of their group stay; no failed pair, no split; one answer whatever the input order."""
from __future__ import annotations

import io
import itertools

import numpy as np
from PIL import Image

from curation.config import VerifyConfig
from curation.dedup.keypoints import features
from curation.dedup.linkage import split_labels
from curation.dedup.verify import check, passes
from curation.quality.copy_bench import OVERLAYS, TRANSFORMS, load_photo, tiles

RATE = VerifyConfig().min_linkage


def _cliques(size: int, bridges: int, checked_between: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two groups 0..size-1 and size..2*size-1, every pair inside verified; `bridges` verified pairs
    between them that share no image (i, size + i) and, when `checked_between`, every other pair
    between them checked and failed."""
    src, dst, ok = [], [], []
    for a, b in itertools.combinations(range(2 * size), 2):
        inside = (a < size) == (b < size)
        bridge = b == a + size and a < bridges
        if inside or bridge or checked_between:
            src.append(a)
            dst.append(b)
            ok.append(inside or bridge)
    return np.array(src), np.array(dst), np.array(ok)


def test_two_groups_bridged_by_a_few_pairs_split():
    # 3 verified pairs of 400 between two groups of 20: under the rate.
    src, dst, ok = _cliques(20, 3, checked_between=True)
    assert 3 / 400 < RATE
    assert split_labels(40, src, dst, ok, None, RATE).tolist() == [0] * 20 + [20] * 20
    assert set(split_labels(40, src, dst, ok, None, 3 / 400).tolist()) == {0}
    # Off: the plain components of the verified pairs.
    assert set(split_labels(40, src, dst, ok, None, 0.0).tolist()) == {0}


def test_two_groups_joined_through_two_images_split_whatever_the_rate():
    # Two of 36 pairs between groups of 6 verified (above the rate), but only 2 share no image;
    # a third disjoint pair joins them.
    src, dst, ok = _cliques(6, 2, checked_between=True)
    assert 2 / 36 > RATE
    assert split_labels(12, src, dst, ok, None, RATE).tolist() == [0] * 6 + [6] * 6
    src, dst, ok = _cliques(6, 3, checked_between=True)
    assert set(split_labels(12, src, dst, ok, None, RATE).tolist()) == {0}
    # Hubs: image 0 verified against the whole other group is still one image.
    src, dst, ok = _cliques(6, 0, checked_between=True)
    ok = ok | ((src == 0) & (dst >= 6))
    labels = split_labels(12, src, dst, ok, None, RATE)
    assert len(set(labels[1:6].tolist())) == 1 and len(set(labels[6:].tolist())) == 1 and labels[1] != labels[6]


def test_no_failed_pair_between_them_no_split():
    # The pairs between the groups were never candidates: no evidence against joining them.
    src, dst, ok = _cliques(6, 1, checked_between=False)
    assert len(src) == 2 * 15 + 1
    assert set(split_labels(12, src, dst, ok, None, RATE).tolist()) == {0}


def test_a_hard_copy_joins_on_one_pair_of_a_few_checked():
    # 0-4 a copy group; 5 (a half-area crop) verifies against 0 alone, fails against 1-4.
    group = list(itertools.combinations(range(5), 2))
    src = np.array([a for a, _ in group] + [0, 1, 2, 3, 4])
    dst = np.array([b for _, b in group] + [5] * 5)
    ok = np.r_[np.ones(len(group), bool), True, False, False, False, False]
    assert set(split_labels(6, src, dst, ok, None, RATE).tolist()) == {0}
    # A rate above 1 in 5 keeps it apart.
    assert split_labels(6, src, dst, ok, None, 0.25).tolist() == [0] * 5 + [5]


def test_fixed_edges_are_never_split_and_other_components_keep_their_labels():
    src, dst, ok = _cliques(4, 1, checked_between=True)
    fixed = (np.array([0, 9]), np.array([7, 10]))  # a trusted hash edge across the groups; 9-10 elsewhere
    labels = split_labels(11, src, dst, ok, fixed, RATE)
    assert labels[0] == labels[7]
    assert labels[8] == 8 and labels[9] == labels[10] == 9


def test_one_answer_whatever_the_order_of_the_pairs():
    src, dst, ok = _cliques(7, 3, checked_between=True)
    want = split_labels(14, src, dst, ok, None, RATE)
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.permutation(len(src))
        swap = rng.random(len(src)) < 0.5
        s, d = np.where(swap, dst, src)[p], np.where(swap, src, dst)[p]
        assert split_labels(14, s, d, ok[p], None, RATE).tolist() == want.tolist()


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_blurred_stereo_frames_do_not_join_the_two_frames():
    """The real-photo benchmark's case: scikit-image's motorcycle stereo pair, one tile of each frame
    with its copies by every benchmark transform. Each blurred frame verifies against many of the
    other frame's images (3 px of blur covers the parallax): the verified pairs between the frames
    are more than `min_linkage` of those checked, but rest on two images. Each frame keeps its
    copies (but perhaps its blurred one, which may go with the other frame), apart."""
    cfg = VerifyConfig()
    rng = np.random.default_rng(0)
    overlays = {name: load_photo(name) for name in OVERLAYS}
    images = []
    for name in ("motorcycle_left", "motorcycle_right"):
        photo = load_photo(name)
        im = photo.crop(tiles(photo.width, photo.height)[4])
        images += [(name, "original", im)] + [(name, t, f(im, rng, overlays)) for t, f in TRANSFORMS.items()]
    feats = [features(_jpeg(im), cfg) for _, _, im in images]
    right = np.array([name == "motorcycle_right" for name, _, _ in images])
    src, dst = map(np.array, zip(*itertools.combinations(range(len(images)), 2)))
    ok = np.array([passes(check(feats[a], feats[b], cfg), cfg) for a, b in zip(src, dst)])
    across = ok & (right[src] != right[dst])
    # The bridge this test is about: a rate above min_linkage, through the two blurred frames.
    assert across.sum() > cfg.min_linkage * (right[src] != right[dst]).sum()
    blurred = {i for i, (_, t, _) in enumerate(images) if t == "blur"}
    assert all(a in blurred or b in blurred for a, b in zip(src[across], dst[across]))
    assert len(set(split_labels(len(images), src, dst, ok, None, 0.0).tolist())) == 1
    labels = split_labels(len(images), src, dst, ok, None, cfg.min_linkage)
    sharp = np.array([i not in blurred for i in range(len(images))])
    left_label, right_label = labels[~right & sharp], labels[right & sharp]
    assert len(set(left_label.tolist())) == 1 and len(set(right_label.tolist())) == 1
    assert left_label[0] != right_label[0]


def test_many_bridged_groups_split_at_once():
    """The benchmark's graph (bench/bench_linkage.py): groups of 12 in pairs, each pair bridged by one
    image verified against ~40 % of the other group; every pair between them checked."""
    from bench.bench_linkage import checked_graph

    src, dst, ok, truth = checked_graph(40, 12)
    assert len(set(split_labels(len(truth), src, dst, ok, None, 0.0).tolist())) == 20
    labels = split_labels(len(truth), src, dst, ok, None, RATE)
    assert len(set(labels.tolist())) == 40
    assert all(len(set(labels[truth == g].tolist())) == 1 for g in range(40))
