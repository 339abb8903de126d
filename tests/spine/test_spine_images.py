"""Decode and filter: every bad input becomes a reject with the right reason; odd files are kept."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curation.demo import corruptions
from curation.config import DecodeConfig
from curation.sources.images import Decoded, Reject, decode_image, decode_items, image_id_of
from curation.demo.procedural import circles, polygons
from curation.sources.inputs import SourceItem

CFG = DecodeConfig()


def _image(seed: int = 0) -> Image.Image:
    return polygons(np.random.default_rng(seed), 256)


@pytest.mark.parametrize("expected,ext,data", corruptions.junk_files(circles(np.random.default_rng(1), 256), np.random.default_rng(2)))
def test_junk_is_rejected_with_its_reason(expected: str, ext: str, data: bytes) -> None:
    result = decode_image(data, f"junk.{ext}", CFG)
    assert isinstance(result, Reject), f"{expected} file was kept"
    assert result.reason == expected


def test_odd_files_are_kept_as_rgb() -> None:
    rng = np.random.default_rng(3)
    odd = corruptions.odd_files(lambda: _image(int(rng.integers(1000))), rng)
    assert {k for k, _, _ in odd} == {"cmyk", "gray16", "palette-alpha", "animated", "exif-rotated"}
    for kind, _, data in odd:
        result = decode_image(data, kind, CFG)
        assert isinstance(result, Decoded), f"{kind}: {result}"
        assert Image.open(io.BytesIO(result.image)).mode == "RGB"
        if kind == "animated":
            assert result.meta["animated_frames"] == 2


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (300, 200), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    result = decode_image(buf.getvalue(), "rot.jpg", CFG)
    assert isinstance(result, Decoded) and (result.width, result.height) == (200, 300)


def test_sixteen_bit_keeps_its_scale() -> None:
    arr = np.full((100, 100), 32768, np.uint16)
    arr[:50] = 65535
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    result = decode_image(buf.getvalue(), "16.png", CFG)
    assert isinstance(result, Decoded)
    px = np.asarray(Image.open(io.BytesIO(result.image)).convert("L"), np.int32)
    assert abs(px[75, 50] - 128) <= 3 and px[25, 50] >= 250  # not clipped to 255 everywhere


def test_palette_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (100, 100), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 50, 100))
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    result = decode_image(buf.getvalue(), "p.png", CFG)
    px = np.asarray(Image.open(io.BytesIO(result.image)))  # type: ignore[union-attr]
    assert px[50, 80].min() >= 245  # transparent -> white
    assert px[50, 20, 0] >= 240 and px[50, 20, 1] <= 15  # opaque red stays red


def test_resize_caps_the_longer_side_and_id_is_stable() -> None:
    img = Image.new("RGB", (1200, 800), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    a = decode_image(buf.getvalue(), "big.png", CFG)
    b = decode_image(buf.getvalue(), "big-again.png", CFG)
    assert isinstance(a, Decoded) and (a.width, a.height) == (512, 341)
    assert a.image_id == b.image_id == image_id_of(a.image)


def test_filters_are_configurable() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (100, 40), 0).save(buf, "PNG")
    assert decode_image(buf.getvalue(), "x", CFG).reason == "too-small"  # type: ignore[union-attr]
    loose = DecodeConfig(min_side=32, max_aspect=3.0)
    assert isinstance(decode_image(buf.getvalue(), "x", loose), Decoded)
    assert decode_image(buf.getvalue(), "x", DecodeConfig(min_side=32, max_aspect=2.0)).reason == "bad-aspect"  # type: ignore[union-attr]


def test_decode_items_gives_one_row_per_input() -> None:
    good = io.BytesIO()
    _image().save(good, "JPEG")
    items = [SourceItem("a.jpg", good.getvalue()), SourceItem("b.jpg", b""), SourceItem("c.jpg", None, error="unreadable: gone")]
    pool, rejects = decode_items(items, CFG)
    assert pool.num_rows == 1 and rejects.num_rows == 2
    assert sorted(rejects.column("reason").to_pylist()) == ["empty", "unreadable"]
    assert set(rejects.column("stage").to_pylist()) == {"decode"}
