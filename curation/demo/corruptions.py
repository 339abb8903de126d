"""Planted copies, odd-but-valid files and junk: the hard cases of the demo world and of the
bad-input tests, generated in one place."""
from __future__ import annotations

import io
import struct
import zlib
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

#: Near-copy transforms planted in the pool (paper: copy detection must survive these).
TRANSFORMS = ("exact", "reencode", "resize", "crop", "colour", "overlay", "border")
#: Transforms of evaluation images planted in the pool (relative dedup must catch them).
EVAL_TRANSFORMS = ("exact", "reencode", "resize", "crop", "colour", "overlay")


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_copy(img: Image.Image, kind: str, rng: np.random.Generator, original_bytes: bytes | None = None) -> bytes:
    """A copy of `img` under one transform, as JPEG bytes (`exact` returns the original bytes)."""
    w, h = img.size
    if kind == "exact":
        return original_bytes if original_bytes is not None else _jpeg(img, 92)
    if kind == "reencode":
        return _jpeg(img, int(rng.integers(25, 50)))
    if kind == "resize":
        s = rng.uniform(0.55, 0.85)
        return _jpeg(img.resize((max(64, int(w * s)), max(64, int(h * s))), Image.Resampling.BILINEAR), 85)
    if kind == "crop":
        keep = rng.uniform(0.72, 0.9)  # area kept: at most ~30 % cropped away
        cw, ch = int(w * np.sqrt(keep)), int(h * np.sqrt(keep))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return _jpeg(img.crop((x, y, x + cw, y + ch)), 88)
    if kind == "colour":
        out = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.75, 1.25))
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
        return _jpeg(out, 88)
    if kind == "overlay":
        out = img.convert("RGB").copy()
        d = ImageDraw.Draw(out)
        bw, bh = int(w * rng.uniform(0.25, 0.4)), int(h * rng.uniform(0.1, 0.18))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        d.rectangle([x, y, x + bw, y + bh], fill=(255, 255, 255))
        d.text((x + 4, y + 2), "© LOGO", fill=(200, 0, 0), font_size=max(10, bh // 2))
        return _jpeg(out, 88)
    if kind == "border":
        pad = int(min(w, h) * rng.uniform(0.04, 0.08))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        return _jpeg(ImageOps.expand(img.convert("RGB"), border=pad, fill=fill), 88)
    raise ValueError(f"unknown copy transform {kind!r}")


def odd_files(new_image: Callable[[], Image.Image], rng: np.random.Generator) -> list[tuple[str, str, bytes]]:
    """Valid images in awkward encodings, each of a fresh image: (kind, extension, bytes); every
    one must be kept."""
    out = []
    buf = io.BytesIO()
    new_image().convert("CMYK").save(buf, "JPEG", quality=90)
    out.append(("cmyk", "jpg", buf.getvalue()))
    gray16 = (np.asarray(new_image().convert("L"), np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")  # mode I;16
    out.append(("gray16", "png", buf.getvalue()))
    pal = new_image().convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    out.append(("palette-alpha", "png", buf.getvalue()))
    first = new_image()
    frames = [first.convert("P"), ImageOps.invert(first.convert("RGB")).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out.append(("animated", "gif", buf.getvalue()))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW on display
    buf = io.BytesIO()
    new_image().convert("RGB").save(buf, "JPEG", quality=90, exif=exif.tobytes())
    out.append(("exif-rotated", "jpg", buf.getvalue()))
    return out


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims `width x height` pixels: must be refused before decoding."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def junk_files(img: Image.Image, rng: np.random.Generator) -> list[tuple[str, str, bytes]]:
    """Inputs that must be rejected: (expected reject reason, extension, bytes)."""
    full = _jpeg(img, 90)
    png = io.BytesIO()
    img.save(png, "PNG")
    wide = img.resize((640, 96))
    return [
        ("too-small", "jpg", _jpeg(img.resize((24, 24)), 90)),
        ("bad-aspect", "jpg", _jpeg(wide, 90)),
        ("truncated", "jpg", full[: len(full) // 2]),
        ("truncated", "png", png.getvalue()[: len(png.getvalue()) // 2]),
        ("empty", "jpg", b""),
        ("not-an-image", "jpg", b"this is a text file, not a JPEG\n" * int(rng.integers(1, 5))),
        ("decompression-bomb", "png", png_bomb()),
    ]
