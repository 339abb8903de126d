"""Training data of the copy descriptor: instances cut from license-clean images, as pairs of views.

Sources (all from installed wheels, nothing downloaded):
- the tuning photos of the real-photo benchmark (`curation.quality.copy_bench.TUNE_PHOTOS`: scikit-image /
  scikit-learn sample photos; the held-out photos are never read here);
- matplotlib's `grace_hopper.jpg` sample photo;
- procedural images of the demo world's families (`curation.demo.procedural.FAMILIES`), each generated
  afresh with an inset crop of a training photo, as the demo world's distinct members differ.

An instance is a region of a source. Regions of one photo in one batch are cells of one grid laid
over it (whole photo, halves, quarters, ninths; then a random sub-box of each cell), so they never
overlap: adjacent regions of one photo are the hard negatives of each other, as adjacent tiles are
in the benchmark. Each instance gives two views (`augment.light_view`, `augment.copy_view`); a batch
is [2N, 3, S, S] with views i and N + i of one instance. Batch k of seed s depends only on (s, k).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curation.quality.copy_bench import TUNE_PHOTOS, load_photo
from curation.demo.procedural import FAMILIES
from training.copydet.augment import copy_view, light_view
from training.copydet.model import MEAN, STD

#: Longest side of a source photo as held in memory, and of an instance before augmentation.
SOURCE_SIDE = 768
INSTANCE_SIDE = 320
#: Grids (columns, rows) laid over a photo to cut disjoint instances from it.
GRIDS = ((1, 1), (1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (2, 3), (3, 3))


def grace_hopper_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def _fit(im: Image.Image, side: int) -> Image.Image:
    s = side / max(im.size)
    return im.resize((max(8, round(im.width * s)), max(8, round(im.height * s))), Image.BICUBIC) if s < 1 else im


def training_photos() -> dict[str, Image.Image]:
    """The training photos (RGB, longest side <= SOURCE_SIDE), by name, in a fixed order."""
    out = {name: _fit(load_photo(name), SOURCE_SIDE) for name in sorted(TUNE_PHOTOS)}
    out["grace_hopper"] = _fit(Image.open(grace_hopper_path()).convert("RGB"), SOURCE_SIDE)
    return out


def procedural_image(rng: np.random.Generator, photos: list[Image.Image]) -> Image.Image:
    """A fresh member of a random procedural family with an inset crop of a training photo."""
    names = sorted(FAMILIES)
    side = int(rng.choice([224, 256, 288]))
    img = FAMILIES[names[int(rng.integers(0, len(names)))]](rng, side).convert("RGB")
    photo = photos[int(rng.integers(0, len(photos)))]
    c = int(min(photo.size) * rng.uniform(0.25, 0.6))
    x, y = int(rng.integers(0, photo.width - c + 1)), int(rng.integers(0, photo.height - c + 1))
    sig = int(side * rng.uniform(0.3, 0.5))
    img.paste(photo.crop((x, y, x + c, y + c)).resize((sig, sig), Image.BILINEAR),
              (int(rng.integers(0, side - sig + 1)), int(rng.integers(0, side - sig + 1))))
    return img


def disjoint_regions(photo: Image.Image, rng: np.random.Generator, most: int) -> list[Image.Image]:
    """Up to `most` non-overlapping regions of a photo: cells of a random grid, each shrunk to a
    random sub-box keeping 60..100 % of the cell's side (whole cells half the time)."""
    cols, rows = GRIDS[int(rng.integers(0, len(GRIDS)))]
    w, h = photo.size
    xs, ys = np.linspace(0, w, cols + 1).astype(int), np.linspace(0, h, rows + 1).astype(int)
    cells = [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(rows) for i in range(cols)]
    out = []
    for k in rng.permutation(len(cells))[:most]:
        x0, y0, x1, y1 = (int(v) for v in cells[k])
        if rng.random() < 0.5:
            fx, fy = rng.uniform(0.6, 1.0, 2)
            cw, ch = max(16, int((x1 - x0) * fx)), max(16, int((y1 - y0) * fy))
            x0, y0 = x0 + int(rng.integers(0, x1 - x0 - cw + 1)), y0 + int(rng.integers(0, y1 - y0 - ch + 1))
            x1, y1 = x0 + cw, y0 + ch
        out.append(_fit(photo.crop((x0, y0, x1, y1)), INSTANCE_SIDE))
    return out


def to_input(im: Image.Image, size: int) -> np.ndarray:
    """The embedder's eval geometry (`embedder.preprocess.Preprocess`, crop_pct 1): the shorter side
    resized to `size` (bilinear), the centre `size` x `size` cut out; uint8 HWC."""
    im = im.convert("RGB")
    w, h = im.size
    ow, oh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((max(size, ow), max(size, oh)), Image.BILINEAR)
    left, top = int(round((im.width - size) / 2.0)), int(round((im.height - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] with the trunk's mean / std."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@dataclass
class PairBatches:
    """Seeded batches of view pairs: `batch(k)` -> float [2N, 3, size, size]."""

    photos: dict[str, Image.Image]
    instances: int = 32
    size: int = 160
    seed: int = 0
    photo_share: float = 0.6  # instances cut from photos; the rest procedural
    per_photo: int = 4  # most disjoint regions of one photo in one batch

    def __post_init__(self) -> None:
        self._list = [self.photos[k] for k in sorted(self.photos)]
        rng = np.random.default_rng([self.seed, 1 << 20])
        self.overlays = [procedural_image(rng, self._list) for _ in range(24)]
        self.overlays += [p.resize((160, max(8, int(160 * p.height / p.width)))) for p in self._list]

    def instances_for(self, rng: np.random.Generator) -> list[Image.Image]:
        out: list[Image.Image] = []
        want = int(round(self.instances * self.photo_share))
        for k in rng.permutation(len(self._list)):
            if len(out) >= want:
                break
            out += disjoint_regions(self._list[k], rng, min(self.per_photo, want - len(out)))
        while len(out) < self.instances:
            out.append(procedural_image(rng, self._list))
        return out

    def batch(self, k: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, k])
        insts = self.instances_for(rng)
        a = [to_input(light_view(im, rng, self.overlays), self.size) for im in insts]
        b = [to_input(copy_view(im, rng, self.overlays), self.size) for im in insts]
        return normalise(np.stack(a + b))
