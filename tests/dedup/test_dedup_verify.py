"""Pixel verification of candidate copy pairs (`curation.dedup.verify`) on real photographs shipped
in installed packages (scikit-image's data): copies under the benchmark's transforms pass, adjacent
tiles of one texture and different photos carrying the same logo do not."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from curation.config import VerifyConfig
from curation.dedup.keypoints import equalised, features, features_of, pack, unpack
from curation.dedup.verify import RATIO, Check, check, check_pairs, graph_config, passes, pending, ratio_matches
from curation.quality.copy_bench import TRANSFORMS, load_photo, tiles

CFG = VerifyConfig()


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def overlays() -> dict[str, Image.Image]:
    return {name: load_photo(name) for name in ("logo", "horse", "clock_motion", "text")}


def _copy(im: Image.Image, transform: str, overlays: dict, seed: int = 0) -> bytes:
    return _jpeg(TRANSFORMS[transform](im.copy(), np.random.default_rng(seed), overlays))


@pytest.mark.parametrize("transform", ["crop_72", "caption", "hflip", "mirror_crop", "rotate", "perspective",
                                       "blur", "border_noise", "logo", "jpeg_q25"])
def test_copies_of_a_photo_are_verified(transform, overlays):
    original = load_photo("coffee")
    a, b = features(_jpeg(original), CFG), features(_copy(original, transform, overlays), CFG)
    c = check(a, b, CFG)
    assert passes(c, CFG), (transform, c)
    assert c.mirrored == (transform in ("hflip", "mirror_crop"))


def test_adjacent_tiles_of_one_texture_are_not_verified():
    photo = load_photo("brick")
    boxes = tiles(*photo.size)
    assert len(boxes) >= 2
    a, b = (features(_jpeg(photo.crop(box)), CFG) for box in boxes[:2])
    c = check(a, b, CFG)
    assert not passes(c, CFG) and c.inliers < CFG.min_inliers, c


def test_two_photos_with_the_same_logo_are_not_verified(overlays):
    """The logo alone matches (many inliers on it), but it covers too small a part to be a copy."""
    photo = load_photo("moon")
    left, right = (photo.crop(box) for box in tiles(*photo.size)[:2])
    logo = overlays["logo"].convert("RGB").resize((left.width // 3, left.width // 3 * overlays["logo"].height // overlays["logo"].width))
    for im in (left, right):
        im.paste(logo, (10, 10))
    c = check(features(_jpeg(left), CFG), features(_jpeg(right), CFG), CFG)
    assert c.inliers >= CFG.min_inliers and c.spread < CFG.min_spread, c
    # Too short a spread for the outside check, or the moon around the logo differs.
    assert c.spread < CFG.low_spread or c.outside < CFG.min_outside, c
    assert not passes(c, CFG)


def _on_background(back: Image.Image, thing: Image.Image) -> Image.Image:
    im = back.copy()
    im.paste(thing, (300, 40))
    return im


def _coins_on_the_moon() -> tuple[Image.Image, Image.Image, Image.Image]:
    """(a smooth background, an object, the object on that background)."""
    back = load_photo("moon").convert("RGB").resize((480, 360)).filter(ImageFilter.GaussianBlur(25))
    coins = load_photo("coins").convert("RGB").crop((0, 0, 130, 100))
    return back, coins, _on_background(back, coins)


def test_outside_blocks_tell_a_copy_from_the_same_object_elsewhere():
    """All keypoints on one small object (coins) over a smooth background (the moon, blurred): the
    matches spread too little, so the blocks outside them decide. A resized or cropped copy agrees
    there; the same object on another background does not, however well the object itself matches."""
    back, coins, scene = _coins_on_the_moon()
    a = features(_jpeg(scene), CFG)
    for copy in (scene.resize((400, 300)), scene.crop((40, 0, 480, 330))):
        c = check(a, features(_jpeg(copy), CFG), CFG)
        assert CFG.low_spread <= c.spread < CFG.min_spread and c.outside >= CFG.min_outside, c
        assert passes(c, CFG)
    for other in (back.transpose(Image.FLIP_TOP_BOTTOM), back.transpose(Image.FLIP_LEFT_RIGHT).transpose(Image.FLIP_TOP_BOTTOM)):
        c = check(a, features(_jpeg(_on_background(other, coins)), CFG), CFG)
        assert c.detail >= CFG.min_detail and CFG.low_spread <= c.spread < CFG.min_spread, c  # the object matches
        # Measured 0.48-0.65 of the blocks, 0.80 once the largest disagreeing region is taken for an overlay.
        assert c.outside < CFG.min_outside - 0.1 and not passes(c, CFG), c
    # With low_spread = min_spread (the spread rule alone) the copies fail.
    strict = VerifyConfig(low_spread=CFG.min_spread)
    assert not passes(check(features(_jpeg(scene), strict), features(_jpeg(scene.resize((400, 300))), strict), strict), strict)


def test_evaluation_pairs_take_the_outside_rule_for_whole_frames_only():
    """Relative dedup removes whole components: a tile inside its whole photo agrees outside its
    matches as a copy does, so evaluation pairs need each image to cover the other for that rule."""
    assert graph_config(CFG, "self") == CFG
    strict = graph_config(CFG, "eval")
    assert strict.min_cover == CFG.eval_min_cover > 0
    whole, part = Check(100, 1.0, 0.1, False, outside=1.0, cover=1.0), Check(100, 1.0, 0.1, False, outside=1.0, cover=0.25)
    assert passes(whole, strict) and not passes(part, strict) and passes(part, CFG)
    # Real photos: tiles of chelsea and grass inside their whole photo (spread under min_spread,
    # every outside block agreeing) join as self pairs, not as evaluation pairs.
    for name, k in (("chelsea", 1), ("grass", 2)):
        im = load_photo(name)
        a, b = features(_jpeg(im), CFG), features(_jpeg(im.crop(tiles(im.width, im.height)[k])), CFG)
        c, e = check(a, b, CFG), check(a, b, strict)
        assert c.spread < CFG.min_spread and c.outside >= CFG.min_outside and c.cover < 0.5, c
        assert passes(c, CFG) and not passes(e, strict), e
    # A resized copy of the whole frame whose matches spread little still joins as an evaluation pair.
    _, _, scene = _coins_on_the_moon()
    e = check(features(_jpeg(scene), strict), features(_jpeg(scene.resize((400, 300))), strict), strict)
    assert e.spread < CFG.min_spread and e.cover >= strict.min_cover and passes(e, strict), e


def test_a_copy_with_an_overlay_verifies_on_the_pixels_outside_it():
    """A photo pasted over 16 % of a copy (a solid region): too few of the windows agree, but all
    others do. Scattered disagreement (a stereo pair: one scene from two viewpoints) is no overlay."""
    im = load_photo("coffee").convert("RGB").resize((480, 360))
    copy = im.copy()
    copy.paste(load_photo("astronaut").convert("RGB").resize((192, 144)), (144, 108))
    a, b = features(_jpeg(im), CFG), features(_jpeg(copy), CFG)
    c = check(a, b, CFG)
    assert c.detail < CFG.min_detail and c.clean >= CFG.min_clean and passes(c, CFG), c
    off = VerifyConfig(max_overlay=0.0)
    assert not passes(check(a, b, off), off)
    small = VerifyConfig(max_overlay=0.1)  # the region (with its border) covers more than a tenth
    assert not passes(check(a, b, small), small)
    left, right = load_photo("motorcycle_left"), load_photo("motorcycle_right")
    box = tiles(left.width, left.height)[3]
    s = check(features(_jpeg(left.crop(box)), CFG), features(_jpeg(right.crop(box)), CFG), CFG)
    assert s.detail < s.clean < CFG.min_clean and not passes(s, CFG), s  # the rule was tried and refused


def test_thresholds_that_contradict_each_other_are_refused():
    with pytest.raises(ValueError, match="low_spread"):
        VerifyConfig(low_spread=0.2)


def test_outside_an_overlay_the_pixels_agree_at_least_as_a_whole_copys_must():
    c = Check(100, 0.7, 0.3, False, clean=0.95)
    assert passes(c, CFG) and not passes(c, VerifyConfig(min_detail=0.99))


def test_check_pairs_reports_unreadable_images_and_is_repeatable(overlays):
    original = load_photo("astronaut")
    images = {"a": _jpeg(original), "b": _copy(original, "crop_85", overlays), "bad": b"not an image"}
    pairs = [("a", "b"), ("a", "bad")]
    found = features_of(images, CFG)
    first = check_pairs(found, pairs, CFG)
    index, blob = pack(found)  # stored and read back, a record at a time as a check task does
    back = {r["image_id"]: unpack(r, blob[r["offset"]:r["offset"] + r["length"]]) for r in index.to_pylist()}
    second = check_pairs(back, pairs, CFG)
    assert first.equals(second)
    rows = first.to_pylist()
    assert rows[0]["verified"] and rows[0]["error"] is None
    assert not rows[1]["verified"] and "decoded" in rows[1]["error"]


def test_stricter_minimums_verify_fewer_pairs(overlays):
    original = load_photo("chelsea")
    a, b = features(_jpeg(original), CFG), features(_copy(original, "caption", overlays), CFG)
    c = check(a, b, CFG)
    assert passes(c, CFG)
    assert not passes(c, CFG.model_copy(update={"min_detail": min(1.0, c.detail + 0.01)})) or c.detail == 1.0
    assert not passes(c, CFG.model_copy(update={"min_inliers": c.inliers + 1}))


def test_pending_skips_pairs_already_connected():
    labels = np.array([0, 0, 1, 2])
    assert pending(np.array([0, 0, 2]), np.array([1, 2, 3]), labels).tolist() == [False, True, True]


def test_settled_skips_pairs_that_cannot_change_the_decisions():
    from curation.dedup.verify import Settled

    s = Settled(5, np.array([0]), np.array([1]))  # a hash edge joins 0 and 1
    assert s.open_self(np.array([0, 1, 2]), np.array([1, 2, 3])).tolist() == [False, True, True]
    s.add_self(np.array([1]), np.array([2]))  # verified: 0, 1, 2 are one component
    assert s.open_self(np.array([0, 2, 3]), np.array([2, 3, 4])).tolist() == [False, True, True]
    s.add_eval(np.array([0]))  # an evaluation copy of the component {0, 1, 2}
    assert s.open_eval(np.array([2, 3])).tolist() == [False, True]


def test_pack_keeps_every_array_and_each_record_stands_alone():
    found = features_of({"b": _jpeg(load_photo("coffee")), "a": _jpeg(load_photo("camera")), "x": b"junk"}, CFG)
    index, blob = pack(found)
    rows = index.to_pylist()
    assert [r["image_id"] for r in rows] == ["a", "b", "x"] and rows[2]["error"] and rows[2]["length"] == 0
    assert rows[1]["offset"] == rows[0]["length"] and len(blob) == rows[0]["length"] + rows[1]["length"]
    for r in rows[:2]:
        record = np.array(blob[r["offset"]:r["offset"] + r["length"]])
        got, want = unpack(r, record), found[r["image_id"]]
        for name in ("gray", "points", "descriptors", "mirror_points", "mirror_descriptors"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), name
        record[:] = 0  # the features own their memory: the blob can be unmapped or reused
        assert getattr(got, "gray").any()
    assert unpack(rows[2], blob[:0]) == found["x"]


@pytest.mark.parametrize("transform", ["crop_half_area", "hflip"])
def test_low_contrast_photos_get_keypoints_from_the_equalised_image(transform, overlays):
    """A microscopy tile: ORB on the raw grey finds (almost) nothing to match; checked again on both
    images' CLAHE-equalised grey (`VerifyConfig.equalize_below`, on by default) its copies verify."""
    cell = load_photo("cell")
    photo = cell if transform == "crop_half_area" else cell.crop(tiles(*cell.size)[0])
    a, b = _jpeg(photo), _copy(photo, transform, overlays)
    plain = CFG.model_copy(update={"equalize_below": 0})
    off, on = check(features(a, plain), features(b, plain), plain), check(features(a, CFG), features(b, CFG), CFG)
    assert not passes(off, plain) and off.inliers < CFG.min_inliers, off
    assert passes(on, CFG) and on.inliers >= 4 * max(off.inliers, CFG.min_inliers), on


def test_the_equalised_check_only_runs_for_failing_low_contrast_pairs(overlays):
    """Photos with keypoints enough are decided by the plain check alone: the fallback is never
    asked for (and a pair the plain check passes is not measured again)."""
    asked = []

    def described(f):
        asked.append(f)
        return equalised(f, CFG)

    coffee = load_photo("coffee")
    a, b = features(_jpeg(coffee), CFG), features(_copy(coffee, "crop_72", overlays), CFG)
    far = features(_jpeg(load_photo("rocket")), CFG)
    assert min(len(a.points), len(far.points)) >= CFG.equalize_below
    assert passes(check(a, b, CFG, described), CFG) and not passes(check(a, far, CFG, described), CFG)
    assert asked == []
    cell = load_photo("cell")
    c, d = features(_jpeg(cell), CFG), features(_copy(cell, "crop_half_area", overlays), CFG)
    assert passes(check(c, d, CFG, described), CFG) and len(asked) == 2


def _opencv_ratio_matches(da: np.ndarray, db: np.ndarray) -> set[tuple[int, int]]:
    import cv2

    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    return {(p[0].queryIdx, p[0].trainIdx) for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance}


@pytest.mark.parametrize("transform", ["crop_72", "hflip", "blur", "jpeg_q25"])
def test_ratio_matches_are_opencvs_brute_force_matches(transform, overlays):
    """The FAISS Hamming matcher keeps exactly the matches OpenCV's brute-force matcher keeps (the
    reference it replaced), for a copy, its mirror and an unrelated tile of another photo."""
    original = load_photo("coffee")
    a, b = features(_jpeg(original), CFG), features(_copy(original, transform, overlays), CFG)
    brick = load_photo("brick")
    other = features(_jpeg(brick.crop(tiles(*brick.size)[0])), CFG)
    for db in (b.descriptors, b.mirror_descriptors, other.descriptors):
        query, train = ratio_matches(a.descriptors, db)
        ours = set(zip(query.tolist(), train.tolist()))
        assert ours == _opencv_ratio_matches(a.descriptors, db)
        assert len(ours) == len(query)  # each query matched once
    aligned = b.mirror_descriptors if transform == "hflip" else b.descriptors  # the copy the right way round
    assert len(ratio_matches(a.descriptors, aligned)[0]) > 100
    assert len(ratio_matches(a.descriptors, other.descriptors)[0]) < 30
