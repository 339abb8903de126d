"""Procedural image families for the demo world: each family is a visual concept with endless,
genuinely distinct members (every parameter drawn from a seeded generator)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Generator = Callable[[np.random.Generator, int], Image.Image]


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _pair(rng: np.random.Generator, min_contrast: float = 70.0) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two colours whose luminance differs enough to survive a grayscale view of the image."""
    lum = np.array([0.299, 0.587, 0.114])
    while True:
        a, b = _colour(rng), _colour(rng)
        if abs(float(lum @ np.array(a) - lum @ np.array(b))) >= min_contrast:
            return a, b


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return x, y


def _two_tone(mask: np.ndarray, a: tuple[int, int, int], b: tuple[int, int, int]) -> Image.Image:
    m = mask[..., None].astype(np.float32)
    arr = m * np.array(a, np.float32) + (1 - m) * np.array(b, np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def circles(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng, 0, 90))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 14))):
        r = int(rng.integers(size // 16, size // 4))
        cx, cy = rng.integers(0, size, 2)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng, 100, 256))
    return img


def stripes(rng: np.random.Generator, size: int) -> Image.Image:
    x, y = _grid(size)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 14)
    wave = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 6.3))
    return _two_tone(wave > rng.uniform(-0.3, 0.3), *_pair(rng))


def checker(rng: np.random.Generator, size: int) -> Image.Image:
    """A rotated board with irregular cell sizes (random grid lines), so no two boards coincide."""
    x, y = _grid(size)
    angle = rng.uniform(0, np.pi / 2)
    u = x * np.cos(angle) - y * np.sin(angle)
    v = x * np.sin(angle) + y * np.cos(angle)
    cuts_u = np.sort(rng.uniform(-1.5, 1.5, int(rng.integers(6, 16))))
    cuts_v = np.sort(rng.uniform(-1.5, 1.5, int(rng.integers(6, 16))))
    parity = (np.searchsorted(cuts_u, u) + np.searchsorted(cuts_v, v)) % 2 == 0
    return _two_tone(parity, *_pair(rng))


def rings(rng: np.random.Generator, size: int) -> Image.Image:
    x, y = _grid(size)
    cx, cy, freq = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(4, 16)
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return _two_tone(np.sin(2 * np.pi * freq * r) > 0, *_pair(rng))


def polygons(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng, 150, 256))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(int(rng.integers(3, 6)))]
        d.polygon(pts, fill=_colour(rng, 0, 200))
    return img


def blobs(rng: np.random.Generator, size: int) -> Image.Image:
    x, y = _grid(size)
    arr = np.zeros((size, size, 3), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
        g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
        arr += g[..., None] * np.array(_colour(rng), np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def dots(rng: np.random.Generator, size: int) -> Image.Image:
    """A jittered lattice of dots of varying size."""
    background, fill = _pair(rng)
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    step = int(rng.integers(size // 12, size // 5))
    base_r = step * rng.uniform(0.15, 0.35)
    off = rng.integers(0, step, 2)
    for cy in range(int(off[1]), size, step):
        for cx in range(int(off[0]), size, step):
            r = max(2.0, base_r * rng.uniform(0.5, 1.5))
            jx, jy = rng.normal(0, step * 0.15, 2)
            d.ellipse([cx + jx - r, cy + jy - r, cx + jx + r, cy + jy + r], fill=fill)
    return img


def sticks(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng, 200, 256))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(10, 40))):
        a, b = rng.integers(0, size, 2), rng.integers(0, size, 2)
        d.line([tuple(int(v) for v in a), tuple(int(v) for v in b)], fill=_colour(rng, 0, 120), width=int(rng.integers(2, 8)))
    return img


def clouds(rng: np.random.Generator, size: int) -> Image.Image:
    noise = np.zeros((size, size), np.float32)
    for octave in range(1, 5):
        cells = 2 ** (octave + 1)
        coarse = rng.random((cells, cells)).astype(np.float32)
        layer = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC), np.float32)
        noise += layer / (2**octave)
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
    img = _two_tone(noise, *_pair(rng))
    return img.filter(ImageFilter.GaussianBlur(1))


def glyphs(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng, 180, 256))
    d = ImageDraw.Draw(img)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    fill = _colour(rng, 0, 100)
    for row in range(int(rng.integers(4, 10))):
        y = int((row + rng.uniform(0, 0.5)) * size / 10)
        text = "".join(rng.choice(list(letters), int(rng.integers(6, 20))))
        d.text((int(rng.integers(0, size // 4)), y), text, fill=fill, font_size=int(rng.integers(12, 28)))
    return img


FAMILIES: dict[str, Generator] = {
    "circles": circles, "stripes": stripes, "checker": checker, "rings": rings, "polygons": polygons,
    "blobs": blobs, "dots": dots, "sticks": sticks, "clouds": clouds, "glyphs": glyphs,
}
