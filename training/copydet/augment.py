"""Copy augmentations for training the copy descriptor: what people do to an image they re-post.

Each augmentation maps (PIL RGB image, numpy Generator, overlay pool) -> PIL RGB image, with its
strength drawn from the generator, so one seed gives one sequence of views. The set follows SSCD /
DISC21: flips, crops down to ~35 % of the area, aspect changes, text / emoji / photo overlays,
coloured and noisy borders, rotation up to +-10 degrees, perspective, JPEG, blur, grayscale, colour
jitter, screenshot-in-a-frame, mirror + crop. `copy_view` chains a few of them.

The overlay pool holds training images only (never the benchmark's overlay images), and the
parameter ranges are wider than the benchmark's (`curation.quality.copy_bench.TRANSFORMS`) so that the
descriptor learns the families, not the benchmark's exact settings.
"""
from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from curation.quality.copy_bench import draw_smiley

Augment = Callable[[Image.Image, np.random.Generator, Sequence[Image.Image]], Image.Image]
_WORDS = ("copy", "meme", "when", "you", "see", "it", "best", "day", "ever", "wow", "repost", "2024", "lol", "#1", "sale",
          "new", "photo", "credit", "news", "look", "this", "is", "fine")


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def crop(im: Image.Image, rng: np.random.Generator, min_area: float = 0.35) -> Image.Image:
    """A random crop keeping `min_area`..1 of the area, aspect of the crop 0.6..1.6 of the image's."""
    w, h = im.size
    area = float(rng.uniform(min_area, 1.0))
    ratio = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    fx, fy = min(1.0, np.sqrt(area * ratio)), min(1.0, np.sqrt(area / ratio))
    cw, ch = max(8, round(w * fx)), max(8, round(h * fy))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


def aspect(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Stretch one side by 1.15..1.6 (or squeeze it by its inverse)."""
    s = float(rng.uniform(1.15, 1.6)) ** (1 if rng.random() < 0.5 else -1)
    w, h = im.size
    return im.resize((max(8, round(w * s)), h) if rng.random() < 0.5 else (w, max(8, round(h * s))), Image.BICUBIC)


def rescale(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Down (and back) to 0.3..1 of the size: the detail a small re-post loses."""
    s = float(rng.uniform(0.3, 1.0))
    w, h = im.size
    return im.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BICUBIC)


def jpeg(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(15, 80)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def colour_jitter(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.6, 1.5)))
    im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.6, 1.6)))
    im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.3, 1.7)))
    if rng.random() < 0.3:  # a hue shift
        hsv = np.asarray(im.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-30, 30))) % 256
        im = Image.fromarray(hsv, "HSV").convert("RGB")
    return im


def border(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Padding of 3..15 % of the width per side (not always symmetric): a flat colour or noise."""
    w, h = im.size
    p = [max(2, int(w * rng.uniform(0.03, 0.15))) for _ in range(4)]
    if rng.random() < 0.6:
        p = [p[0]] * 4
    cw, ch = w + p[0] + p[2], h + p[1] + p[3]
    kind = rng.random()
    if kind < 0.35:
        canvas = Image.fromarray(rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8))
    else:
        canvas = Image.new("RGB", (cw, ch), (0, 0, 0) if kind < 0.55 else (255, 255, 255) if kind < 0.65 else _colour(rng))
    canvas.paste(im, (p[0], p[1]))
    return canvas


def caption(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A text band (top or bottom, 12..25 % of the height) or free text over the picture."""
    im = im.copy()
    w, h = im.size
    d = ImageDraw.Draw(im)
    text = " ".join(rng.choice(_WORDS, int(rng.integers(2, 6))))
    if rng.random() < 0.6:
        band = int(h * rng.uniform(0.12, 0.25))
        y0 = h - band if rng.random() < 0.6 else 0
        d.rectangle((0, y0, w, y0 + band), fill=_colour(rng) if rng.random() < 0.4 else (255, 255, 255))
        d.text((int(w * rng.uniform(0, 0.2)), y0 + band // 4), text, fill=_colour(rng), font=_font(max(10, band // 2)))
    else:
        size = max(10, int(h * rng.uniform(0.06, 0.15)))
        d.text((int(rng.integers(0, max(1, w // 3))), int(rng.integers(0, max(1, h - size)))), text, fill=_colour(rng),
               font=_font(size), stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
    return im


def emoji(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """1..4 smiley-like discs of 6..16 % of the shorter side."""
    im = im.copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(int(rng.integers(1, 5))):
        r = max(3, int(min(w, h) * rng.uniform(0.06, 0.16)))
        cx, cy = int(rng.integers(0, max(1, w))), int(rng.integers(0, max(1, h)))
        draw_smiley(d, cx, cy, r, _colour(rng), (0, 0, 0), (0, 0, 0))
    return im


def overlay(im: Image.Image, rng: np.random.Generator, pool: Sequence[Image.Image]) -> Image.Image:
    """Another training image pasted over 15..40 % of the width (a logo, an inset photo)."""
    if not pool:
        return emoji(im, rng)
    im = im.copy()
    w, h = im.size
    over = pool[int(rng.integers(0, len(pool)))]
    ow = max(8, int(w * rng.uniform(0.15, 0.4)))
    oh = min(h, max(8, int(over.height * ow / over.width)))
    over = over.resize((ow, oh), Image.BILINEAR)
    im.paste(over, (int(rng.integers(0, max(1, w - ow))), int(rng.integers(0, max(1, h - oh)))))
    return im


def rotate(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(-10, 10))
    fill = (0, 0, 0) if rng.random() < 0.6 else _colour(rng)
    return im.rotate(angle, resample=Image.BICUBIC, expand=bool(rng.random() < 0.3), fillcolor=fill)


def perspective(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The four corners moved inwards by up to 12 % of the side."""
    w, h = im.size
    src = [(rng.uniform(0, 0.12) * w, rng.uniform(0, 0.12) * h), (w - rng.uniform(0, 0.12) * w, rng.uniform(0, 0.12) * h),
           (w - rng.uniform(0, 0.12) * w, h - rng.uniform(0, 0.12) * h), (rng.uniform(0, 0.12) * w, h - rng.uniform(0, 0.12) * h)]
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    a, b = [], []
    for (x, y), (u, v) in zip(dst, src):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        b += [u, v]
    coeffs = np.linalg.solve(np.array(a, float), np.array(b, float))
    return im.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC, fillcolor=(0, 0, 0))


def screenshot(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The image at 55..90 % inside a window: title bar, margins, status bar."""
    w, h = im.size
    s = float(rng.uniform(0.55, 0.9))
    inner = im.resize((max(8, int(w * s)), max(8, int(h * s))), Image.BILINEAR)
    canvas = Image.new("RGB", (w, h), _colour(rng) if rng.random() < 0.5 else (236, 236, 240))
    d = ImageDraw.Draw(canvas)
    bar = max(8, int(h * rng.uniform(0.04, 0.1)))
    d.rectangle((0, 0, w, bar), fill=_colour(rng))
    d.text((w // 4, bar // 5), " ".join(rng.choice(_WORDS, 3)), fill=_colour(rng), font=_font(max(8, bar // 2)))
    x = int(rng.integers(0, max(1, w - inner.width)))
    y = bar + int(rng.integers(0, max(1, h - bar - inner.height)))
    canvas.paste(inner, (x, min(y, max(0, h - inner.height))))
    if rng.random() < 0.5:
        d.rectangle((0, h - bar, w, h), fill=_colour(rng))
    return canvas


AUGMENTS: dict[str, Augment] = {
    "hflip": lambda im, r, p: ImageOps.mirror(im),
    "crop": lambda im, r, p: crop(im, r),
    "mirror_crop": lambda im, r, p: crop(ImageOps.mirror(im), r, 0.5),
    "aspect": lambda im, r, p: aspect(im, r),
    "rescale": lambda im, r, p: rescale(im, r),
    "jpeg": lambda im, r, p: jpeg(im, r),
    "colour": lambda im, r, p: colour_jitter(im, r),
    "grayscale": lambda im, r, p: ImageOps.grayscale(im).convert("RGB"),
    "blur": lambda im, r, p: im.filter(ImageFilter.GaussianBlur(float(r.uniform(0.5, 3.5)))),
    "border": lambda im, r, p: border(im, r),
    "caption": lambda im, r, p: caption(im, r),
    "emoji": lambda im, r, p: emoji(im, r),
    "overlay": overlay,
    "rotate": lambda im, r, p: rotate(im, r),
    "perspective": lambda im, r, p: perspective(im, r),
    "screenshot": lambda im, r, p: screenshot(im, r),
}


def copy_view(im: Image.Image, rng: np.random.Generator, pool: Sequence[Image.Image], max_ops: int = 3) -> Image.Image:
    """A copy of `im`: 1..max_ops augmentations in random order, then a JPEG re-encode half the time."""
    names = list(AUGMENTS)
    for k in rng.permutation(len(names))[: int(rng.integers(1, max_ops + 1))]:
        im = AUGMENTS[names[k]](im, rng, pool)
    return jpeg(im, rng) if rng.random() < 0.5 else im


def light_view(im: Image.Image, rng: np.random.Generator, pool: Sequence[Image.Image]) -> Image.Image:
    """The 'original' side of a training pair: the instance itself, rescaled and re-encoded, and one
    augmentation a third of the time (copies of copies exist too)."""
    im = rescale(im, rng) if rng.random() < 0.5 else im
    if rng.random() < 0.33:
        names = list(AUGMENTS)
        im = AUGMENTS[names[int(rng.integers(0, len(names)))]](im, rng, pool)
    return jpeg(im, rng) if rng.random() < 0.5 else im
