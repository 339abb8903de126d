"""A real-photo copy-detection benchmark, generated at test time from photographs that ship inside
installed packages (scikit-image's `skimage/data`, scikit-learn's sample images: public-domain /
CC-licensed photos, never redistributed by this project, only read from the installed wheels).

Originals are whole photos and non-overlapping tiles of the larger ones (each tile its own image);
copies are made from them by DISC21-style transforms (`TRANSFORMS`). A share of the originals forms
an evaluation split (`eval/`): only their copies enter the pool, as `eval-copy` rows, to score
relative dedup. `truth.parquet` gives every file its original (`dup_group`), transform, photo,
scene and region of the photo (x0, y0, x1, y1), from which `curation.quality.copy_score` labels each pair:
copies (one original), ambiguous (two regions of one photo that overlap, e.g. a tile and the whole
photo it was cut from: ignored by the scores) or distinct (adjacent tiles, other photos of one
scene or kind: the hard negatives). Seeded and deterministic: the same seed writes the same files.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

# Photos in the pool: name -> scene (photos sharing a scene are hard negatives of each other).
POOL_PHOTOS = {
    "astronaut": "astronaut", "camera": "camera", "chelsea": "chelsea", "coffee": "coffee", "coins": "coins",
    "hubble_deep_field": "hubble", "motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle",
    "retina": "retina", "rocket": "rocket", "china": "china", "flower": "flower", "brick": "texture",
    "grass": "texture", "gravel": "texture", "moon": "moon", "cell": "microscopy", "ihc": "microscopy",
    "page": "page",
}
#: The tuning split, chosen by photo: the photos (with all their tiles and copies) on which the
#: trained copy descriptor (`training.copydet`) learns and its thresholds are chosen. Every other
#: pool photo is held out: never seen in training, it gives the figures reported as held-out.
#: Held out on purpose: the motorcycle stereo pair (the hardest same-scene negatives), a texture
#: (gravel) whose siblings are in tuning, and the people / objects / microscopy photos.
TUNE_PHOTOS = frozenset({"retina", "hubble_deep_field", "camera", "chelsea", "china", "brick", "grass", "cell", "coins"})


def photo_split(photo: str) -> str:
    """The split of a pool photo: `tune` for one of `TUNE_PHOTOS`, else `held-out`."""
    return "tune" if photo in TUNE_PHOTOS else "held-out"


# Images used only as overlays (never in the pool, so an overlay makes no pair of its own).
OVERLAYS = ("logo", "horse", "clock_motion", "text")
TILE = 224  # smallest tile side: photos at least twice this on a side are also cut into tiles
MAX_TILES = 3  # per side


def _photo_paths() -> dict[str, Path]:
    import skimage.data
    import sklearn.datasets

    sk = Path(skimage.data.__file__).parent
    sl = Path(sklearn.datasets.__file__).parent / "images"
    out = {}
    for name in list(POOL_PHOTOS) + list(OVERLAYS):
        found = [p for p in (sl / f"{name}.jpg", sk / f"{name}.png", sk / f"{name}.jpg") if p.exists()]
        if found:
            out[name] = found[0]
    return out


def load_photo(name: str, paths: dict[str, Path] | None = None) -> Image.Image:
    """One packaged photo as RGB (RGBA for overlays with transparency)."""
    im = Image.open((paths or _photo_paths())[name])
    im.load()
    return im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") and name in OVERLAYS else im.convert("RGB")


def tiles(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping tiles (x0, y0, x1, y1) of a w x h photo: a grid of at most MAX_TILES per side,
    each side at least TILE; none when the photo is too small for two."""
    nx, ny = min(w // TILE, MAX_TILES), min(h // TILE, MAX_TILES)
    if nx * ny < 2:
        return []
    xs, ys = np.linspace(0, w, nx + 1).astype(int), np.linspace(0, h, ny + 1).astype(int)
    return [(int(xs[i]), int(ys[j]), int(xs[i + 1]), int(ys[j + 1])) for j in range(ny) for i in range(nx)]


# ---- transforms: (image, rng, overlays) -> image ---------------------------------------------

def _crop_frac(im: Image.Image, fx: float, fy: float, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    cw, ch = max(1, round(w * fx)), max(1, round(h * fy))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


def _pad(im: Image.Image, fill: Callable[[int, int], Image.Image]) -> Image.Image:
    w, h = im.size
    p = max(4, w // 12)
    canvas = fill(w + 2 * p, h + 2 * p)
    canvas.paste(im, (p, p))
    return canvas


def _noise(rng: np.random.Generator) -> Callable[[int, int], Image.Image]:
    return lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _caption(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = im.copy()
    w, h = im.size
    band = h // 5
    d = ImageDraw.Draw(im)
    d.rectangle((0, h - band, w, h), fill=(255, 255, 255))
    words = ["when", "the", "copy", "detector", "sees", "it", "monday", "mood", "lol", "same"]
    text = " ".join(rng.choice(words, 4))
    d.text((w // 20, h - band + band // 4), text, fill=(220, 20, 20), font=_font(max(10, band // 2)))
    return im


def draw_smiley(d: ImageDraw.ImageDraw, cx: int, cy: int, r: int, fill: tuple, outline: tuple, ink: tuple) -> None:
    """A smiley-like disc of radius r at (cx, cy): face, two eyes and a mouth (an emoji overlay)."""
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=max(1, r // 10))
    e = max(1, r // 6)
    for dx in (-r // 3, r // 3):
        d.ellipse((cx + dx - e, cy - r // 3 - e, cx + dx + e, cy - r // 3 + e), fill=ink)
    d.arc((cx - r // 2, cy - r // 4, cx + r // 2, cy + r // 2), 20, 160, fill=ink, width=max(1, r // 8))


def _emoji(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(int(rng.integers(2, 4))):
        r = int(min(w, h) * rng.uniform(0.08, 0.14))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        draw_smiley(d, cx, cy, r, (255, 204, 0), (120, 80, 0), (60, 30, 0))
    return im


def _paste(im: Image.Image, over: Image.Image, frac: float, rng: np.random.Generator) -> Image.Image:
    im = im.copy()
    w, h = im.size
    ow = max(8, int(w * frac))
    oh = max(8, int(over.height * ow / over.width))
    over = over.resize((ow, min(oh, h)))
    x, y = int(rng.integers(0, max(1, w - over.width))), int(rng.integers(0, max(1, h - over.height)))
    im.paste(over, (x, y), over if over.mode == "RGBA" else None)
    return im


def _rotate(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(3, 10)) * (1 if rng.random() < 0.5 else -1)
    return im.rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def _perspective(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    j = lambda s: float(rng.uniform(0, 0.1) * s)  # noqa: E731
    src = [(j(w), j(h)), (w - j(w), j(h)), (w - j(w), h - j(h)), (j(w), h - j(h))]
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(a, float), np.array([c for p in src for c in p], float))
    return im.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC, fillcolor=(0, 0, 0))


def _screenshot(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    s = float(rng.uniform(0.6, 0.8))
    inner = im.resize((max(8, int(w * s)), max(8, int(h * s))))
    canvas = Image.new("RGB", (w, h), (236, 236, 240))
    d = ImageDraw.Draw(canvas)
    bar = max(12, h // 14)
    d.rectangle((0, 0, w, bar), fill=(52, 58, 70))
    for k in range(3):
        d.ellipse((8 + k * bar, bar // 4, 8 + k * bar + bar // 2, bar // 4 + bar // 2), fill=[(237, 95, 90), (245, 190, 80), (98, 200, 85)][k])
    d.text((w // 3, bar // 5), "photo.jpg - Viewer", fill=(230, 230, 230), font=_font(max(8, bar // 2)))
    x, y = (w - inner.width) // 2, bar + max(2, (h - bar - inner.height) // 2)
    canvas.paste(inner, (x, min(y, max(0, h - inner.height))))
    d.rectangle((0, h - bar, w, h), fill=(210, 210, 216))
    return canvas


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


Transform = Callable[[Image.Image, np.random.Generator, dict], Image.Image]
TRANSFORMS: dict[str, Transform] = {
    "jpeg_q25": lambda im, r, o: _jpeg(im, 25),
    "half_size": lambda im, r, o: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.BICUBIC),
    "crop_85": lambda im, r, o: _crop_frac(im, 0.85, 0.85, r),
    "crop_72": lambda im, r, o: _crop_frac(im, 0.72, 0.72, r),
    "crop_half_area": lambda im, r, o: _crop_frac(im, *((0.9, 0.556) if r.random() < 0.5 else (0.556, 0.9)), r),
    "aspect": lambda im, r, o: im.resize((int(im.width * 1.35), im.height) if r.random() < 0.5 else (im.width, int(im.height * 1.35)), Image.BICUBIC),
    "brightness_contrast": lambda im, r, o: Image.fromarray(np.clip((np.asarray(im, np.float32) - 128) * r.uniform(1.3, 1.5) + 128 + r.uniform(15, 35), 0, 255).astype(np.uint8)),
    "grayscale": lambda im, r, o: ImageOps.grayscale(im).convert("RGB"),
    "caption": lambda im, r, o: _caption(im, r),
    "emoji": lambda im, r, o: _emoji(im, r),
    "logo": lambda im, r, o: _paste(im, o["logo"], 0.3, r),
    "overlay_photo": lambda im, r, o: _paste(im, o[["horse", "clock_motion", "text"][int(r.integers(0, 3))]], 0.35, r),
    "border_black": lambda im, r, o: _pad(im, lambda w, h: Image.new("RGB", (w, h), (0, 0, 0))),
    "border_colour": lambda im, r, o: _pad(im, lambda w, h: Image.new("RGB", (w, h), tuple(int(c) for c in r.integers(0, 256, 3)))),
    "border_noise": lambda im, r, o: _pad(im, _noise(r)),
    "rotate": lambda im, r, o: _rotate(im, r),
    "perspective": lambda im, r, o: _perspective(im, r),
    "hflip": lambda im, r, o: ImageOps.mirror(im),
    "mirror_crop": lambda im, r, o: _crop_frac(ImageOps.mirror(im), 0.8, 0.8, r),
    "blur": lambda im, r, o: im.filter(ImageFilter.GaussianBlur(3)),
    "screenshot": lambda im, r, o: _screenshot(im, r),
}


def _originals(paths: dict[str, Path]) -> list[dict]:
    out = []
    for name in POOL_PHOTOS:
        if name not in paths:
            continue
        w, h = Image.open(paths[name]).size
        out.append({"orig": name, "photo": name, "box": (0, 0, w, h)})
        for t, box in enumerate(tiles(w, h)):
            out.append({"orig": f"{name}-t{t}", "photo": name, "box": box})
    return out


def build_copy_bench(root: str | Path, seed: int = 0, copies_per_original: int | None = None,
                     eval_fraction: float = 0.15, max_side: int = 512) -> Path:
    """Write the benchmark to `root` (pool/, eval/, truth.parquet); returns root.

    `copies_per_original`: None makes every transform of every original (the full set, `bench/`);
    a number makes that many per original, cycling through the transforms so each is covered (the
    small set the tests use). Large sources are first scaled so their longer side is at most
    `max_side` (what ingest would do anyway); tile boxes stay in the photo's own pixels."""
    root = Path(root)
    (root / "pool").mkdir(parents=True, exist_ok=True)
    (root / "eval").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = _photo_paths()
    overlays = {n: load_photo(n, paths) for n in OVERLAYS if n in paths}
    origs = _originals(paths)
    is_eval = np.zeros(len(origs), bool)
    is_eval[rng.permutation(len(origs))[: int(round(len(origs) * eval_fraction))]] = True
    names = list(TRANSFORMS)
    photos: dict[str, Image.Image] = {}
    rows: list[dict] = []

    def write(im: Image.Image, rel: str, o: dict, kind: str, transform: str) -> None:
        q = 25 if transform == "jpeg_q25" else 92
        im.convert("RGB").save(root / rel, "JPEG", quality=q)
        rows.append({"source": rel, "kind": kind, "dup_group": o["orig"], "transform": transform, "photo": o["photo"],
                     "scene": POOL_PHOTOS[o["photo"]], "x0": o["box"][0], "y0": o["box"][1], "x1": o["box"][2], "y1": o["box"][3],
                     "concept": ""})

    for i, o in enumerate(origs):
        if o["photo"] not in photos:
            photos[o["photo"]] = load_photo(o["photo"], paths)
        im = photos[o["photo"]].crop(o["box"])
        if max(im.size) > max_side:
            s = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
        ev = bool(is_eval[i])
        write(im, f"{'eval' if ev else 'pool'}/{o['orig']}.jpg", o, "eval-original" if ev else "original", "")
        chosen = names if copies_per_original is None else [names[(i * copies_per_original + j) % len(names)] for j in range(copies_per_original)]
        for t in chosen:
            r = np.random.default_rng([seed, i, names.index(t)])
            write(TRANSFORMS[t](im, r, overlays), f"pool/{o['orig']}__{t}.jpg", o, "eval-copy" if ev else "copy", t)
    pq.write_table(pa.Table.from_pylist(rows), root / "truth.parquet")
    return root


def overlap(a: tuple, b: tuple) -> bool:
    """Whether two boxes (x0, y0, x1, y1) share any area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


__all__ = ["TRANSFORMS", "TUNE_PHOTOS", "build_copy_bench", "load_photo", "overlap", "photo_split", "tiles"]
