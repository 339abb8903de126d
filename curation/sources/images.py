"""Decode, normalise, filter, resize and re-encode images (DESIGN §6 bad input).

`decode_image` turns raw bytes into a clean RGB image re-encoded with fixed settings, or into a
`Reject` with a machine-readable reason. It never raises on bad data: every input the pipeline
does not keep gets a reject row. Re-encoding is deterministic, so `image_id` (a hash of the
re-encoded bytes) is stable across runs, processes and engines, and exact copies share it.

Per-item isolation (issue 14): every call into a decoder (Pillow, OpenCV) sits in a narrow
`try ... except Exception` at the item boundary, never behind an allow-list of exception types:
Pillow's plugins raise whatever they raise (`NotImplementedError: Unimplemented DXGI format 93`
from a DDS file stopped a run). Known failures keep their specific reason (truncated,
decompression-bomb, not-an-image, corrupt); any other exception is `decoder-error` (or
`encoder-error` when re-encoding fails), its message the exception's type and text
(`curation.core.item_guard.item_error`). `decode_items` gives each item `decode.timeout_s`
(`item_guard.time_limit`): a stuck decoder costs that item a `timeout` reject.

Plain JPEGs (most web images) are decoded, resized and encoded with OpenCV (libjpeg-turbo, as
Pillow's), ~2.5x cheaper than the Pillow/Lanczos path they replaced (crawl throughput, issue 6);
every other input is decoded by Pillow and then resized and encoded the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from curation.core import schemas
from curation.config import DecodeConfig
from curation.core.item_guard import ItemTimeout, inject_fault, item_error, time_limit
from curation.sources.inputs import SourceItem

# Truncated files must fail loudly (and become rejects), never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Reject reasons produced here (the stage column of rejects.parquet is "decode").
REASONS = (
    "unreadable", "empty", "too-large", "not-an-image", "decompression-bomb", "truncated",
    "corrupt", "too-small", "bad-aspect", "decoder-error", "encoder-error", "timeout",
)


@dataclass(frozen=True)
class Decoded:
    image_id: str
    width: int
    height: int
    orig_width: int
    orig_height: int
    orig_format: str
    image: bytes
    meta: dict[str, Any]


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str
    message: str


def image_id_of(data: bytes) -> str:
    """The stable id of re-encoded image bytes (shared by every stage that rewrites pixels)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Every mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, CMYK converted."""
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0  # keep the sensor's scale, not the image's own range
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def encode(img: Image.Image, cfg: DecodeConfig) -> bytes:
    """Deterministic encoding with the run's format and quality (no EXIF, no ICC)."""
    buf = io.BytesIO()
    if cfg.format == "JPEG":
        img.save(buf, "JPEG", quality=cfg.quality, optimize=False, progressive=False)
    elif cfg.format == "WEBP":
        img.save(buf, "WEBP", quality=cfg.quality, method=4)
    else:
        img.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _encode_bgr(bgr: np.ndarray, cfg: DecodeConfig) -> bytes:
    """`encode` of an 8-bit BGR array. JPEG goes through OpenCV: the same libjpeg-turbo settings as
    Pillow's (baseline, standard Huffman tables, 4:2:0, JFIF), so the same bytes (tested)."""
    if cfg.format == "JPEG":
        ok, buf = cv2.imencode(".jpg", bgr, _jpeg_params(cfg.quality))
        if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
            raise ValueError("JPEG encoding failed")
        return buf.tobytes()
    return encode(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), cfg)


def _jpeg_params(quality: int) -> list[int]:
    return [
        cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    ]


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Output size of a `width x height` image: longer side at most `max_side`, never upscaled.

    Always computed from the full-resolution (EXIF-oriented) size, never from a reduced decode, so
    the size does not depend on how the decoder got there.
    """
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


#: At or below this downscale factor (source / target, longer sides) `resize_to` interpolates
#: bicubically; up to 2x it averages a 2x bicubic supersampling; beyond, area averaging.
CUBIC_MAX_FACTOR = 1.25


def resize_to(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downscale an HxWxC uint8 array to `size` (w, h) with OpenCV, by the downscale factor f:

    - f <= 1.25: bicubic (INTER_CUBIC);
    - 1.25 < f <= 2: bicubic to twice the target, then the exact 2x2 average (INTER_AREA at an
      integer factor): 2x2-supersampled bicubic, an anti-aliased filter;
    - f > 2 (Pillow-decoded formats only; JPEGs are reduced in the DCT domain to f < 2): INTER_AREA.

    The filter before was Pillow's Lanczos: ~4.3 ms an image on the crawl bench's photos (web
    sizes, longest side 320-1280 -> 512), 60% of the whole decode task; these take ~0.2-0.5 ms
    (bicubic), ~1.4 ms (supersampled) and ~2.2 ms (area) on the same images. Measured against
    Pillow's Lanczos on the full-resolution image (mean absolute difference in grey levels of 255,
    skimage's photos and textures and a zone plate, f from 1.1 to 1.95): bicubic alone is the
    closest at f <= 1.25 but aliases beyond (46 on the zone plate at 1.95); the supersampled bicubic
    is 0.3-0.8 on photos and 1.3-3.3 on textures where area averaging (img2dataset's default) is
    0.6-1.1 and 2.6-3.9, and 8-13 on the zone plate against area's 10-14. All integer arithmetic in
    OpenCV (fixed-point bicubic, integer 2x area): the same bytes across runs and processes.
    """
    h, w = arr.shape[:2]
    if (w, h) == tuple(size):
        return arr
    factor = max(w, h) / max(size)
    if factor <= CUBIC_MAX_FACTOR:
        return cv2.resize(arr, size, interpolation=cv2.INTER_CUBIC)
    if factor <= 2:
        fine = cv2.resize(arr, (2 * size[0], 2 * size[1]), interpolation=cv2.INTER_CUBIC)
        return cv2.resize(fine, size, interpolation=cv2.INTER_AREA)
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


def _reduction(width: int, height: int, max_side: int) -> int:
    """Largest JPEG DCT scale-down (1, 2, 4 or 8) whose result keeps the longer side >= max_side."""
    if max_side <= 0:
        return 1
    longer = max(width, height)
    return next((s for s in (8, 4, 2) if longer >= s * max_side), 1)


_REDUCED = {1: 0, 2: 16, 4: 32, 8: 64}  # cv2.IMREAD_REDUCED_COLOR_s == IMREAD_COLOR | these bits
#: EXIF orientation -> the transform that displays the image upright (as `ImageOps.exif_transpose`).
_ORIENT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.flip(a, -1),
    4: lambda a: cv2.flip(a, 0),
    5: lambda a: cv2.transpose(a),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}
#: Formats decoded by OpenCV (libjpeg-turbo) when their mode is plain 8-bit; everything else by Pillow.
_FAST_FORMATS = frozenset({"JPEG", "MPO"})
_FAST_MODES = frozenset({"RGB", "L"})


def _ends_with_eoi(data: bytes) -> bool:
    """A JPEG that ends with its EOI marker (trailing zero padding allowed). libjpeg, as OpenCV drives
    it, pads a truncated stream with grey instead of failing; Pillow raises. Streams without their
    EOI go to Pillow, which tells truncated from merely trailing bytes."""
    return data[-64:].rstrip(b"\0")[-2:] == b"\xff\xd9"


_quiet_fd: list[int] = []  # /dev/null, opened once per process


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence what C decoders print to fd 2 on damaged input (libjpeg's "Corrupt JPEG data: ..."
    through OpenCV, libtiff's "ZIPDecode: Decoding error ...", one line per damaged web image; the
    reject row says it). Only in a worker process (multiprocessing child, one thread decoding): in
    the main process other threads (the fetch loop, its log) share fd 2, so there they are left
    alone."""
    if multiprocessing.parent_process() is None:
        yield
        return
    if not _quiet_fd:
        _quiet_fd.append(os.open(os.devnull, os.O_WRONLY))
    saved = os.dup(2)
    os.dup2(_quiet_fd[0], 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decode_fast(data: bytes, scale: int, orientation: int) -> np.ndarray | None:
    """A JPEG to an upright BGR array, decoded at 1/`scale` in the DCT domain; None if OpenCV fails."""
    flags = cv2.IMREAD_COLOR | _REDUCED[scale] | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None or arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        return None
    return arr if orientation not in _ORIENT else _ORIENT[orientation](arr)


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def failure_reason(exc: Exception, default: str = "decoder-error") -> tuple[str, str]:
    """(reason, message) of an exception a decoder raised for one item.

    The known failures keep their reasons: decompression-bomb (Pillow's pixel guard), not-an-image
    (no plugin recognised the bytes), truncated / corrupt (the I/O and parse errors Pillow raises
    on damaged files); anything else (a plugin's NotImplementedError, an OpenCV error, ...) is
    `default`. The message is the exception's type and text (`item_guard.item_error`).
    """
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "decompression-bomb", item_error(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not-an-image", "not a recognised image format"
    if isinstance(exc, (OSError, EOFError)):
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc).lower()
        return ("truncated" if truncated else "corrupt"), item_error(exc)
    if isinstance(exc, (SyntaxError, ValueError, TypeError, IndexError, KeyError, MemoryError,
                        struct.error, zlib.error)):
        return "corrupt", item_error(exc)
    return default, item_error(exc)


def _rejected(source: str, exc: Exception, default: str = "decoder-error") -> Reject:
    """The reject of an exception caught at the item boundary. (`ItemTimeout` is a BaseException:
    it goes through these boundaries to `decode_one`.)"""
    reason, message = failure_reason(exc, default)
    return Reject(source, reason, message)


def _header(data: bytes) -> tuple[Image.Image, str, int, int]:
    """Pillow's lazy open: (image, format, width, height); nothing decoded yet."""
    img = Image.open(io.BytesIO(data))
    w0, h0 = img.size
    return img, img.format or "unknown", int(w0), int(h0)


def _frames(img: Image.Image) -> int:
    """Frames of an animated image (1 for stills), the image left on its first frame."""
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        img.seek(0)
    return frames


def _pixels(img: Image.Image, data: bytes, orig_format: str, scale: int) -> tuple[np.ndarray, int, int]:
    """The decoders' part of `decode_image`: (upright 8-bit BGR array, oriented full-resolution
    width, height). Raises whatever Pillow and OpenCV raise on bad data."""
    w0, h0 = img.size
    arr = None
    if orig_format in _FAST_FORMATS and img.mode in _FAST_MODES and _ends_with_eoi(data):
        orientation = img.getexif().get(0x0112, 1)
        arr = _decode_fast(data, scale, orientation)
        w, h = _oriented((w0, h0), orientation)
    if arr is None:
        drafted = orig_format == "JPEG" and scale > 1
        if drafted:
            # The same DCT-domain reduction as the OpenCV path: Pillow drafts by
            # min(w0 // rw, h0 // rh), which is exactly `scale` for this request.
            img.draft("RGB", (max(1, w0 // scale), max(1, h0 // scale)))
        img.load()
        orientation = img.getexif().get(0x0112, 1)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        arr = cv2.cvtColor(np.asarray(_to_rgb(img)), cv2.COLOR_RGB2BGR)
        # The size the decoder gave (some formats settle it on load), unless drafted.
        w, h = _oriented((w0, h0), orientation) if drafted else img.size
    return arr, w, h


def decode_image(data: bytes | None, source: str, cfg: DecodeConfig, meta: dict[str, Any] | None = None) -> Decoded | Reject:
    """Bytes -> a kept, re-encoded image, or a reject with a reason (see REASONS).

    Pillow reads the header (format, size, mode, frames, EXIF orientation: lazily, nothing decoded)
    and the pixel cap is checked there. Plain 8-bit JPEGs that end with their EOI marker are then
    decoded once by OpenCV, at 1/2, 1/4 or 1/8 scale in the DCT domain when the image is at least
    twice `max_side`; everything else (CMYK, 16-bit, palette and alpha, animated, PNG, WebP, ...,
    and any JPEG OpenCV refuses) is decoded once by Pillow. Both give an upright 8-bit image that is
    filtered on its full-resolution oriented size, downscaled to `target_size` (`resize_to`) and
    encoded with the run's settings (JPEG through OpenCV: the same bytes as Pillow's encoder).

    Never raises on bad data: any exception of a decoder becomes a reject (`failure_reason`).
    Only `ItemTimeout` (the caller's time limit) goes through.
    """
    if data is None:
        return Reject(source, "unreadable", "no bytes could be read")
    if len(data) == 0:
        return Reject(source, "empty", "zero-byte file")
    if len(data) > cfg.max_bytes:
        return Reject(source, "too-large", f"{len(data)} bytes > max_bytes {cfg.max_bytes}")
    meta = dict(meta or {})
    with _quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data", "Truncated File Read", ...
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img, orig_format, w0, h0 = _header(data)
        except Exception as exc:  # item boundary: any decoder failure is this item's reject
            return _rejected(source, exc)
        if w0 * h0 > cfg.max_pixels:
            return Reject(source, "decompression-bomb", f"{w0}x{h0} pixels > max_pixels {cfg.max_pixels}")
        scale = _reduction(w0, h0, cfg.max_side)
        try:
            frames = _frames(img)
            arr, w, h = _pixels(img, data, orig_format, scale)
        except Exception as exc:  # item boundary (as above)
            return _rejected(source, exc)
    if frames > 1:
        meta["animated_frames"] = frames
    if min(w, h) < max(cfg.min_side, 1):
        return Reject(source, "too-small", f"{w}x{h}: shorter side < min_side {cfg.min_side}")
    if max(w, h) / min(w, h) > cfg.max_aspect:
        return Reject(source, "bad-aspect", f"{w}x{h}: aspect ratio > max_aspect {cfg.max_aspect}")
    size = target_size(w, h, cfg.max_side)
    try:
        out = _encode_bgr(resize_to(arr, size), cfg)
    except Exception as exc:  # item boundary: OpenCV's limits (e.g. a side past JPEG's 65,500)
        return _rejected(source, exc, "encoder-error")
    return Decoded(image_id_of(out), size[0], size[1], w0, h0, orig_format, out, meta)


def decode_one(item: SourceItem, cfg: DecodeConfig) -> Decoded | Reject:
    """One input of `decode_items` under its time limit (`decode.timeout_s`): a decoder stuck past
    it costs this item a `timeout` reject (one interruptible by SIGALRM; code stuck inside C is
    the engine's task deadline's to end)."""
    if item.error is not None:
        reason, _, message = item.error.partition(": ")
        return Reject(item.source, reason or "unreadable", message)
    try:
        with time_limit(cfg.timeout_s):
            try:
                inject_fault(item.source)  # test-only hook: stands for a decoder failing on this item
            except Exception as exc:  # item boundary
                return Reject(item.source, "decoder-error", item_error(exc))
            return decode_image(item.data, item.source, cfg, item.meta)
    except ItemTimeout:
        return Reject(item.source, "timeout", f"decoding took longer than decode.timeout_s = {cfg.timeout_s:g} s")


def decode_items(items: Iterable[SourceItem], cfg: DecodeConfig) -> tuple[pa.Table, pa.Table]:
    """A batch of inputs -> (POOL rows of the kept, REJECTS rows of the others)."""
    kept: list[Decoded] = []
    kept_sources: list[str] = []
    rejects: list[Reject] = []
    # One image is too small for OpenCV's worker threads to pay (they cost ~10% more CPU) and the
    # engines already run one decode task per core: single-threaded for the batch, then restored.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for item in items:
            result = decode_one(item, cfg)
            if isinstance(result, Reject):
                rejects.append(result)
            else:
                kept.append(result)
                kept_sources.append(item.source)
    finally:
        cv2.setNumThreads(threads)
    pool = pa.table(
        {
            "image_id": [d.image_id for d in kept],
            "source": kept_sources,
            "width": [d.width for d in kept],
            "height": [d.height for d in kept],
            "orig_width": [d.orig_width for d in kept],
            "orig_height": [d.orig_height for d in kept],
            "orig_format": [d.orig_format for d in kept],
            "image": [d.image for d in kept],
            "meta": [json.dumps(d.meta, sort_keys=True, default=str) for d in kept],
        },
        schema=schemas.POOL,
    )
    return pool, rejects_table(rejects, stage="decode")


def rejects_table(rejects: Iterable[Reject], stage: str) -> pa.Table:
    rows = list(rejects)
    return pa.table(
        {
            "source": [r.source for r in rows],
            "reason": [r.reason for r in rows],
            "message": [r.message for r in rows],
            "stage": [stage] * len(rows),
        },
        schema=schemas.REJECTS,
    )


def open_rgb(data: bytes) -> Image.Image:
    """Open bytes already cleaned by `decode_image` (trusted: written by this pipeline)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB") if img.mode != "RGB" else img
