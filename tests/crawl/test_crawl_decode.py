"""The fast decode path of crawled (and every other) JPEG: OpenCV reduced decode, area/bicubic
resize and OpenCV encode give what the Pillow path gives: same size rules, close pixels, same
encoder bytes, every EXIF orientation, truncated files still rejected."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from curation.sources import images
from curation.config import DecodeConfig
from curation.sources.images import Decoded, Reject, decode_image, encode, target_size

CFG = DecodeConfig()


def _jpeg(img: Image.Image, quality: int = 92, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def _photo(name: str, longer: int) -> Image.Image:
    """A bundled photo (scikit-image) scaled so that its longer side is `longer`."""
    arr = np.asarray(getattr(data, name)())
    img = Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr)
    scale = longer / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)


def _pixels(result: Decoded | Reject) -> np.ndarray:
    assert isinstance(result, Decoded), result
    return np.asarray(Image.open(io.BytesIO(result.image)).convert("RGB"), np.int16)


def _pillow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_FAST_FORMATS", frozenset())


def _fast(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> Decoded | Reject:
    """`decode_image` through the OpenCV path (asserted: it decoded, no fallback to Pillow)."""
    decoded: list[bool] = []
    fast = images._decode_fast

    def spy(*args: object) -> object:
        arr = fast(*args)
        decoded.append(arr is not None)
        return arr

    with monkeypatch.context() as m:
        m.setattr(images, "_decode_fast", spy)
        result = decode_image(raw, "x.jpg", CFG)
    assert decoded == [True]
    return result


@pytest.mark.parametrize("name,longer", [("astronaut", 1400), ("coffee", 1100), ("chelsea", 800), ("rocket", 2600)])
def test_fast_path_matches_the_pillow_path(monkeypatch: pytest.MonkeyPatch, name: str, longer: int) -> None:
    raw = _jpeg(_photo(name, longer))
    fast = _fast(raw, monkeypatch)
    _pillow_path(monkeypatch)
    slow = decode_image(raw, "x.jpg", CFG)
    assert isinstance(fast, Decoded) and isinstance(slow, Decoded)
    assert (fast.width, fast.height) == (slow.width, slow.height) == target_size(fast.orig_width, fast.orig_height, 512)
    assert max(fast.width, fast.height) == 512
    assert (fast.orig_width, fast.orig_height, fast.orig_format) == (slow.orig_width, slow.orig_height, "JPEG")
    assert np.abs(_pixels(fast) - _pixels(slow)).mean() < 0.5  # same libjpeg-turbo scale: ~identical
    _close_to_lanczos(raw, fast)


def _close_to_lanczos(raw: bytes, result: Decoded | Reject) -> None:
    """Within 1.5 grey levels (mean) of Pillow's Lanczos on the full-resolution upright image,
    re-encoded alike (the filter of the decode stage before): the re-encoding alone costs ~1.5-2.8."""
    assert isinstance(result, Decoded)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(raw)).convert("RGB"))
    lanczos = upright.resize((result.width, result.height), Image.Resampling.LANCZOS)
    reference = np.asarray(lanczos, np.int16)
    reencoded = np.abs(_pixels(Decoded("", 0, 0, 0, 0, "", encode(lanczos, CFG), {})) - reference).mean()
    assert np.abs(_pixels(result) - reference).mean() < reencoded + 1.5


def test_reduced_decode_keeps_the_size_and_the_look(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _jpeg(_photo("astronaut", 2100).crop((0, 0, 2100, 1300)))  # 1/4 scale: 525x325 -> 512x317
    reduced = _fast(raw, monkeypatch)
    monkeypatch.setattr(images, "_reduction", lambda w, h, m: 1)
    full = decode_image(raw, "x.jpg", CFG)
    assert isinstance(reduced, Decoded) and isinstance(full, Decoded)
    assert (reduced.width, reduced.height) == (full.width, full.height) == (512, 317)
    assert np.abs(_pixels(reduced) - _pixels(full)).mean() < 2.5
    _close_to_lanczos(raw, reduced)


def test_small_images_are_not_resized_and_gray_becomes_rgb() -> None:
    img = _photo("camera", 300)  # grayscale photo, mode L
    assert img.mode == "L"
    result = decode_image(_jpeg(img), "g.jpg", CFG)
    assert isinstance(result, Decoded) and (result.width, result.height) == img.size
    out = Image.open(io.BytesIO(result.image))
    assert out.mode == "RGB"
    px = np.asarray(out, np.int16)
    assert np.abs(px[..., 0] - px[..., 2]).max() <= 2  # still gray
    assert np.abs(px[..., 0] - np.asarray(Image.open(io.BytesIO(_jpeg(img))), np.int16)).mean() < 1.5


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(monkeypatch: pytest.MonkeyPatch, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    src = _photo("coffee", 1200)  # 1200x800: decoded at 1/2 scale
    raw = _jpeg(src, exif=exif.tobytes())
    fast = _fast(raw, monkeypatch)
    _pillow_path(monkeypatch)
    slow = decode_image(raw, "o.jpg", CFG)
    assert isinstance(fast, Decoded) and isinstance(slow, Decoded)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))
    assert (fast.width, fast.height) == (slow.width, slow.height) == target_size(*upright.size, 512)
    assert np.abs(_pixels(fast) - _pixels(slow)).mean() < 0.5
    _close_to_lanczos(raw, fast)


def test_jpeg_bytes_are_pillows_bytes_and_deterministic() -> None:
    img = _photo("astronaut", 512)
    bgr = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)
    for quality in (75, 90, 95):
        cfg = DecodeConfig(quality=quality)
        assert images._encode_bgr(bgr, cfg) == encode(img, cfg)
    raw = _jpeg(_photo("rocket", 1500))
    a, b = decode_image(raw, "a.jpg", CFG), decode_image(raw, "b.jpg", CFG)
    assert isinstance(a, Decoded) and isinstance(b, Decoded) and a.image == b.image and a.image_id == b.image_id


def test_truncated_and_padded_jpegs(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _jpeg(_photo("chelsea", 900))
    cut = decode_image(raw[: len(raw) * 2 // 3], "cut.jpg", CFG)
    assert isinstance(cut, Reject) and cut.reason == "truncated"
    calls: list[int] = []
    fast = images._decode_fast
    monkeypatch.setattr(images, "_decode_fast", lambda *a: calls.append(1) or fast(*a))
    padded = decode_image(raw + b"\0" * 40, "pad.jpg", CFG)  # zero padding after EOI: fast path
    trailing = decode_image(raw + b"junk", "tail.jpg", CFG)  # other trailing bytes: Pillow decides
    assert isinstance(padded, Decoded) and isinstance(trailing, Decoded) and len(calls) == 1
    assert np.abs(_pixels(padded) - _pixels(trailing)).mean() < 1.5


@pytest.mark.parametrize("pattern", ["rows", "checker"])
def test_resize_aliases_no_more_than_area_averaging(pattern: str) -> None:
    """One-pixel stripes (the worst case: all energy at Nyquist) must average to grey; what is left
    (aliasing) is at most what OpenCV's INTER_AREA (img2dataset's filter) leaves, beyond 1.25x."""
    arr = np.zeros((900, 1200, 3), np.uint8)
    arr[::2] = 255
    if pattern == "checker":
        arr[:, ::2] = 255 - arr[:, ::2]
    assert images.resize_to(arr, (1200, 900)) is arr
    assert images.resize_to(arr, (1000, 750)).shape == (750, 1000, 3)  # factor 1.2: bicubic
    for size in ((900, 675), (800, 600), (700, 525), (600, 450), (500, 375), (300, 225)):  # 1.33 .. 4
        ours = images.resize_to(arr, size)
        area = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
        assert ours.shape == area.shape == (size[1], size[0], 3)

        def residual(a: np.ndarray) -> float:
            return float(np.abs(a[2:-2, 2:-2].astype(np.int16) - 128).mean())

        assert residual(ours) <= residual(area) + 0.5, size
