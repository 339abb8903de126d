"""A hostile image corpus, generated from installed packages: every format Pillow can write here,
from small real photos (scikit-image's data), times seeded mutations (issue 14, item 5).

Used by `tests/spine/test_spine_fuzz.py` (a few thousand files, a few seconds) and by
`bench/bench_fuzz.py` (a larger corpus: files/s, rejects by reason, peak memory). Nothing is
downloaded: the photos ship inside scikit-image, the encoders inside Pillow.

- `originals(side)`: each photo (shorter side `side`, default 72) in each `VARIANTS` encoding that
  Pillow writes on this machine (JPEG baseline / progressive / CMYK / grey / 4:4:4 / EXIF-rotated,
  PNG 8- and 16-bit / palette / alpha / APNG, GIF still and animated, WebP lossy / lossless /
  animated, TIFF with every compression that round-trips, BMP, DIB, TGA (raw and RLE), ICO, PPM /
  PGM / PBM, DDS, JPEG 2000, QOI, SGI, PCX, IM, SPIDER, MSP, XBM, MPO, AVIF when the plugin is
  there, and PSD, written by hand since Pillow reads but cannot write it): all of them must be kept;
- `hostile()`: inputs that must be rejected whatever the mutation: a DDS whose DX10 header names
  DXGI format 93 (the real-world `NotImplementedError` that stopped a run), EPS without
  Ghostscript, PDF, an empty file, text named .jpg;
- `mutate(data, kind, rng)`: one `MUTATIONS` kind of damage (truncation at a random offset, flipped
  header or body bytes, a zeroed payload, huge dimensions claimed in the header, garbage appended
  or inserted, the head of one file on the tail of another);
- `corpus(copies, side, seed)`: originals + hostile + `copies` mutants of each original per
  mutation kind, in a fixed order: the same seed gives the same bytes.
"""
from __future__ import annotations

import io
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageOps, features

#: scikit-image's bundled photos (no download): colour ones, and one grey.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera")
MUTATIONS = ("truncate", "flip-header", "flip-body", "zero-payload", "huge-dims", "append-garbage",
             "insert-garbage", "splice")


@dataclass(frozen=True)
class FuzzFile:
    """One corpus file: `name` (unique, with the format's extension), its bytes, the encoding
    `variant`, the `mutation` applied ("none" for originals, "hostile" for must-reject inputs)."""

    name: str
    data: bytes
    variant: str
    mutation: str

    @property
    def original(self) -> bool:
        return self.mutation == "none"


def photos(side: int = 72, names: Iterable[str] = PHOTOS) -> dict[str, Image.Image]:
    """The bundled photos as RGB (or L) images whose shorter side is `side`."""
    from skimage import data

    out = {}
    for name in names:
        img = Image.fromarray(getattr(data, name)())
        w, h = img.size
        scale = side / min(w, h)
        out[name] = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BOX)
    return out


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


def _gray16(img: Image.Image) -> Image.Image:
    return Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257).astype(np.uint16))


def _frames(img: Image.Image) -> list[Image.Image]:
    rgb = _rgb(img)
    return [rgb, ImageOps.mirror(rgb), ImageOps.invert(rgb)]


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(_rgb(img).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())


def _psd(img: Image.Image) -> bytes:
    """A minimal flat RGB PSD (version 1, raw planar image data), which Pillow's plugin reads."""
    rgb = np.asarray(_rgb(img))
    h, w = rgb.shape[:2]
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers and masks
    planes = b"".join(rgb[:, :, c].tobytes() for c in range(3))
    return head + sections + struct.pack(">H", 0) + planes


def _dds_dxgi(img: Image.Image, dxgi: int = 93) -> bytes:
    """A DDS with a DX10 header naming `dxgi` (93: DXGI_FORMAT_B8G8R8X8_UNORM_SRGB, which Pillow's
    DDS plugin refuses with NotImplementedError), followed by plausible 32-bit pixels."""
    w, h = img.size
    pixel_format = struct.pack("<II4s5I", 32, 0x4, b"DX10", 0, 0, 0, 0, 0)
    header = struct.pack("<7I", 124, 0x1 | 0x2 | 0x4 | 0x1000, h, w, w * 4, 0, 1) + b"\0" * 44 + pixel_format
    header += struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    dx10 = struct.pack("<5I", dxgi, 3, 0, 1, 0)
    return b"DDS " + header + dx10 + np.asarray(_rgb(img).convert("RGBA")).tobytes()


#: Encodings: name -> (file extension, writer). A writer that Pillow refuses on this machine (a
#: codec not compiled in) is left out of the corpus by `available_variants`.
VARIANTS: dict[str, tuple[str, Callable[[Image.Image], bytes]]] = {
    "jpeg": ("jpg", lambda i: _save(_rgb(i), "JPEG", quality=90)),
    "jpeg-progressive": ("jpg", lambda i: _save(_rgb(i), "JPEG", quality=85, progressive=True)),
    "jpeg-cmyk": ("jpg", lambda i: _save(i.convert("CMYK"), "JPEG", quality=90)),
    "jpeg-grey": ("jpg", lambda i: _save(i.convert("L"), "JPEG", quality=90)),
    "jpeg-444": ("jpg", lambda i: _save(_rgb(i), "JPEG", quality=95, subsampling=0)),
    "jpeg-exif-rotated": ("jpg", _exif_rotated),
    "png": ("png", lambda i: _save(_rgb(i), "PNG")),
    "png-16bit": ("png", lambda i: _save(_gray16(i), "PNG")),
    "png-palette": ("png", lambda i: _save(_rgb(i).convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")),
    "png-palette-alpha": ("png", lambda i: _save(_rgb(i).convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
                                                 "PNG", transparency=0)),
    "png-alpha": ("png", lambda i: _save(_rgb(i).convert("RGBA"), "PNG")),
    "png-grey-alpha": ("png", lambda i: _save(i.convert("LA"), "PNG")),
    "png-1bit": ("png", lambda i: _save(i.convert("1"), "PNG")),
    "apng": ("png", lambda i: _save(_frames(i)[0], "PNG", save_all=True, append_images=_frames(i)[1:], duration=100)),
    "gif": ("gif", lambda i: _save(_rgb(i), "GIF")),
    "gif-animated": ("gif", lambda i: _save(_frames(i)[0], "GIF", save_all=True, append_images=_frames(i)[1:],
                                            duration=100, loop=0)),
    "webp": ("webp", lambda i: _save(_rgb(i), "WEBP", quality=80)),
    "webp-lossless": ("webp", lambda i: _save(_rgb(i).convert("RGBA"), "WEBP", lossless=True)),
    "webp-animated": ("webp", lambda i: _save(_frames(i)[0], "WEBP", save_all=True, append_images=_frames(i)[1:],
                                              duration=100)),
    "tiff-raw": ("tif", lambda i: _save(_rgb(i), "TIFF", compression="raw")),
    "tiff-lzw": ("tif", lambda i: _save(_rgb(i), "TIFF", compression="tiff_lzw")),
    "tiff-deflate": ("tif", lambda i: _save(_rgb(i), "TIFF", compression="tiff_adobe_deflate")),
    "tiff-packbits": ("tif", lambda i: _save(_rgb(i), "TIFF", compression="packbits")),
    "tiff-jpeg": ("tif", lambda i: _save(_rgb(i), "TIFF", compression="jpeg")),
    "tiff-zstd": ("tif", lambda i: _save(_rgb(i), "TIFF", compression="zstd")),
    "tiff-lzma": ("tif", lambda i: _save(_rgb(i), "TIFF", compression="lzma")),
    "tiff-group3": ("tif", lambda i: _save(i.convert("1"), "TIFF", compression="group3")),
    "tiff-group4": ("tif", lambda i: _save(i.convert("1"), "TIFF", compression="group4")),
    "tiff-16bit": ("tif", lambda i: _save(_gray16(i), "TIFF")),
    "tiff-cmyk": ("tif", lambda i: _save(i.convert("CMYK"), "TIFF", compression="tiff_lzw")),
    "tiff-lab": ("tif", lambda i: _save(_rgb(i).convert("LAB"), "TIFF")),
    "tiff-float": ("tif", lambda i: _save(i.convert("F"), "TIFF")),
    "tiff-multipage": ("tif", lambda i: _save(_frames(i)[0], "TIFF", save_all=True, append_images=_frames(i)[1:])),
    "bmp": ("bmp", lambda i: _save(_rgb(i), "BMP")),
    "bmp-palette": ("bmp", lambda i: _save(_rgb(i).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "BMP")),
    "bmp-1bit": ("bmp", lambda i: _save(i.convert("1"), "BMP")),
    "dib": ("dib", lambda i: _save(_rgb(i), "DIB")),
    "tga": ("tga", lambda i: _save(_rgb(i), "TGA")),
    "tga-rle": ("tga", lambda i: _save(_rgb(i), "TGA", compression="tga_rle")),
    "ico": ("ico", lambda i: _save(_rgb(i), "ICO", sizes=[i.size])),
    "ppm": ("ppm", lambda i: _save(_rgb(i), "PPM")),
    "pgm": ("pgm", lambda i: _save(i.convert("L"), "PPM")),
    "pbm": ("pbm", lambda i: _save(i.convert("1"), "PPM")),
    "dds": ("dds", lambda i: _save(_rgb(i), "DDS")),
    "dds-rgba": ("dds", lambda i: _save(_rgb(i).convert("RGBA"), "DDS")),
    "jpeg2000": ("jp2", lambda i: _save(_rgb(i), "JPEG2000")),
    "j2k": ("j2k", lambda i: _save(_rgb(i), "JPEG2000", irreversible=True)),
    "qoi": ("qoi", lambda i: _save(_rgb(i), "QOI")),
    "sgi": ("sgi", lambda i: _save(_rgb(i), "SGI")),
    "pcx": ("pcx", lambda i: _save(_rgb(i), "PCX")),
    "im": ("im", lambda i: _save(_rgb(i), "IM")),
    "spider": ("spi", lambda i: _save(i.convert("F"), "SPIDER")),
    "msp": ("msp", lambda i: _save(i.convert("1"), "MSP")),
    "xbm": ("xbm", lambda i: _save(i.convert("1"), "XBM")),
    "mpo": ("mpo", lambda i: _save(_frames(i)[0], "MPO", save_all=True, append_images=_frames(i)[1:2])),
    "psd": ("psd", _psd),
}
if features.check("avif"):
    VARIANTS["avif"] = ("avif", lambda i: _save(_rgb(i), "AVIF", quality=60, speed=10))


def available_variants() -> list[str]:
    """The encodings Pillow writes on this machine, each tried once on a small image."""
    probe = Image.new("RGB", (80, 72), (120, 60, 30))
    ok = []
    for name, (_, write) in VARIANTS.items():
        try:
            write(probe)
        except Exception:  # a codec this Pillow build lacks: the variant is left out
            continue
        ok.append(name)
    return ok


def originals(side: int = 72, variants: Iterable[str] | None = None, photo_names: Iterable[str] = PHOTOS
              ) -> list[FuzzFile]:
    """Every photo in every available encoding: the good inputs, all of which must be kept."""
    names = list(variants) if variants is not None else available_variants()
    out = []
    for photo, img in photos(side, photo_names).items():
        for variant in names:
            ext, write = VARIANTS[variant]
            out.append(FuzzFile(f"{photo}-{variant}.{ext}", write(img), variant, "none"))
    return out


def hostile(side: int = 72) -> list[FuzzFile]:
    """Inputs that must be rejected: unsupported or unreadable by construction."""
    img = photos(side, ["coffee"])["coffee"]
    out = [
        FuzzFile("dxgi93.dds", _dds_dxgi(img, 93), "dds-dxgi93", "hostile"),
        FuzzFile("dxgi-unknown.dds", _dds_dxgi(img, 200), "dds-dxgi200", "hostile"),
        FuzzFile("empty.jpg", b"", "empty", "hostile"),
        FuzzFile("text.jpg", b"<html><body>not an image</body></html>\n", "text", "hostile"),
        FuzzFile("magic-only.png", b"\x89PNG\r\n\x1a\n", "png-magic", "hostile"),
        FuzzFile("magic-only.jpg", b"\xff\xd8\xff", "jpeg-magic", "hostile"),
    ]
    fixed = time.gmtime(0)  # a PDF carries its dates: fixed ones keep the corpus's bytes seeded
    for name, fmt, kw in (("eps", "EPS", {}), ("pdf", "PDF", {"creationDate": fixed, "modDate": fixed})):
        out.append(FuzzFile(f"document.{name}", _save(_rgb(img), fmt, **kw), name, "hostile"))
    return out


# -- mutations ---------------------------------------------------------------------------------


def _put(data: bytearray, offset: int, fmt: str, *values: int) -> None:
    if 0 <= offset and offset + struct.calcsize(fmt) <= len(data):
        struct.pack_into(fmt, data, offset, *values)


def _png_dims(data: bytearray, w: int, h: int) -> None:
    if data[12:16] == b"IHDR":
        struct.pack_into(">II", data, 16, w, h)
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)  # past the CRC check


def _jpeg_dims(data: bytearray, w: int, h: int) -> None:
    for m in re.finditer(rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf]", bytes(data)):
        _put(data, m.start() + 5, ">HH", min(h, 65535), min(w, 65535))
        return


def _tiff_dims(data: bytearray, w: int, h: int) -> None:
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None or len(data) < 8:
        return
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    if ifd + 2 > len(data):
        return
    for i in range(struct.unpack_from(order + "H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(data):
            return
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):
            value = w if tag == 256 else h
            if kind == 3:
                _put(data, entry + 8, order + "H", min(value, 65535))
            else:
                _put(data, entry + 8, order + "I", value)


def _text_dims(data: bytearray, w: int, h: int) -> bytearray:
    """PPM / PGM / PBM ("P6\\n108 72\\n"), XBM (#define ..._width 108), IM ("Size: 108x72")."""
    text = bytes(data)
    for pattern, repl in ((rb"^(P[1-6]\s+)\d+(\s+)\d+", rb"\g<1>%d\g<2>%d" % (w, h)),
                          (rb"(_width )\d+", rb"\g<1>%d" % w), (rb"(_height )\d+", rb"\g<1>%d" % h),
                          (rb"(Size: )\d+x\d+", rb"\g<1>%dx%d" % (w, h))):
        text = re.sub(pattern, repl, text, count=1)
    return bytearray(text)


def _box_dims(data: bytearray, box: bytes, offset: int, fmt: str, w: int, h: int) -> None:
    at = bytes(data).find(box)
    if at >= 0:
        _put(data, at + offset, fmt, w, h)


def huge_dims(data: bytes, rng: np.random.Generator) -> bytes:
    """The header claims a huge size: past any pixel cap (a decompression bomb) three times in four,
    else large but under the cap (the decoder then allocates and meets the real, short payload)."""
    if rng.random() < 0.75:
        w, h = int(rng.integers(40_000, 65_535)), int(rng.integers(40_000, 65_535))
    else:
        w, h = int(rng.integers(1_000, 2_000)), int(rng.integers(1_000, 2_000))
    out = bytearray(data)
    head = bytes(out[:16])
    if head.startswith(b"\x89PNG"):
        _png_dims(out, w, h)
    elif head.startswith(b"\xff\xd8"):
        _jpeg_dims(out, w, h)
    elif head[:2] in (b"II", b"MM"):
        _tiff_dims(out, w, h)
    elif head.startswith(b"GIF8"):
        _put(out, 6, "<HH", min(w, 65535), min(h, 65535))
    elif head.startswith(b"BM"):
        _put(out, 18, "<ii", w, h)
    elif head.startswith(b"DDS "):
        _put(out, 12, "<II", h, w)
    elif head.startswith(b"qoif"):
        _put(out, 4, ">II", w, h)
    elif head.startswith(b"8BPS"):
        _put(out, 14, ">II", h, w)
    elif head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        _box_dims(out, b"VP8X", 12, "<HxHx", min(w, 65535), min(h, 65535))
        _box_dims(out, b"\x9d\x01\x2a", 3, "<HH", min(w, 16383), min(h, 16383))
    elif head.startswith(b"\x00\x00\x00\x0cjP") or head.startswith(b"\xff\x4f\xff\x51"):
        _box_dims(out, b"\xff\x51", 6, ">II", w, h)
    elif b"ftyp" in head:
        _box_dims(out, b"ispe", 8, ">II", w, h)
    elif head.startswith(b"\x01\xda"):  # SGI
        _put(out, 6, ">HH", min(w, 65535), min(h, 65535))
    elif head.startswith(b"\x0a"):  # PCX: xmax, ymax
        _put(out, 8, "<HH", min(w, 65535), min(h, 65535))
    elif head.startswith((b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"#define", b"Image type")):
        out = _text_dims(out, w, h)
    elif head.startswith(b"\x00\x00\x01\x00"):  # ICO: its entry, then the image inside
        _put(out, 6, "<BB", 0, 0)
        inner = bytes(out).find(b"\x89PNG")
        if inner >= 0:
            sub = bytearray(out[inner:])
            _png_dims(sub, w, h)
            out[inner:] = sub
    elif len(out) >= 18 and out[2] in (2, 10):  # TGA: width, height
        _put(out, 12, "<HH", min(w, 65535), min(h, 65535))
    else:  # anything else: a 4-byte field of the header set to all ones
        _put(out, int(rng.integers(0, max(1, min(len(out), 64) - 4))), "<I", 0xFFFFFFFF)
    return bytes(out)


def mutate(data: bytes, kind: str, rng: np.random.Generator, other: bytes = b"") -> bytes:
    """`data` with one kind of damage (see MUTATIONS); `other` is the donor file of `splice`."""
    n = len(data)
    if kind == "truncate":  # anywhere: in the header a third of the time, else in the payload
        cut = int(rng.integers(1, min(n, 64))) if rng.random() < 1 / 3 else int(rng.integers(min(n - 1, 64), n))
        return data[:cut]
    if kind in ("flip-header", "flip-body"):
        out = bytearray(data)
        lo, hi = (0, min(n, 64)) if kind == "flip-header" else (min(n - 1, 64), n)
        for at in rng.integers(lo, hi, size=int(rng.integers(1, 9 if kind == "flip-header" else 33))):
            out[at] ^= int(rng.integers(1, 256))
        return bytes(out)
    if kind == "zero-payload":
        keep = int(rng.integers(16, 257))
        return data[:keep] + bytes(max(0, n - keep))
    if kind == "huge-dims":
        return huge_dims(data, rng)
    if kind == "append-garbage":
        return data + rng.integers(0, 256, size=int(rng.integers(1, 4097)), dtype=np.uint8).tobytes()
    if kind == "insert-garbage":
        at = int(rng.integers(0, n))
        return data[:at] + rng.integers(0, 256, size=int(rng.integers(1, 257)), dtype=np.uint8).tobytes() + data[at:]
    if kind == "splice":
        donor = other or data[::-1]
        return data[: int(rng.integers(1, n))] + donor[int(rng.integers(0, len(donor))):]
    raise ValueError(f"unknown mutation {kind!r} (one of {', '.join(MUTATIONS)})")


def corpus(copies: int = 1, side: int = 72, seed: int = 0, variants: Iterable[str] | None = None,
           photo_names: Iterable[str] = PHOTOS) -> list[FuzzFile]:
    """Originals, hostile inputs, and `copies` mutants of every original per mutation kind.

    With the defaults: 6 photos x ~57 encodings = ~340 originals, ~2,740 mutants, ~3,090 files.
    Splices join the head of one original to the tail of the same photo's next encoding.
    """
    rng = np.random.default_rng(seed)
    good = originals(side, variants, photo_names)
    files = [*good, *hostile(side)]
    for i, base in enumerate(good):
        other = good[(i + 1) % len(good)].data
        stem, ext = base.name.rsplit(".", 1)
        for kind in MUTATIONS:
            for c in range(copies):
                data = mutate(base.data, kind, rng, other)
                files.append(FuzzFile(f"{stem}~{kind}-{c}.{ext}", data, base.variant, kind))
    return files


def write_corpus(files: Iterable[FuzzFile], folder: str | Path) -> Path:
    """Write the corpus as one file per input (a folder `lvd ingest` reads as it is)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f.name).write_bytes(f.data)
    return root
