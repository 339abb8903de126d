"""The demo world: a generated uncurated pool with ground truth (the embedded default).

Built only from what installed packages carry (scikit-image's bundled photos, procedural image
families), in seconds for `small`. It has what a curation run must cope with: concepts of very
different sizes, planted exact and near copies (re-encode, resize, crop <= 30 %, colour jitter,
overlay, border), planted copies of evaluation images, odd-but-valid files (CMYK, 16-bit,
palette + transparency, animated, EXIF-rotated) and junk (tiny, extreme aspect, truncated, zero
bytes, non-image, decompression bomb). Curated seed sets and evaluation sets come with it.

Layout of WORLD/: pool/ (nested folders of files), seeds/<set>/<concept>/*.jpg,
eval/<set>/{train,test}/<concept>/*.jpg, seeds.yaml, truth.parquet, world.json.
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from curation.demo import corruptions
from curation.demo.procedural import FAMILIES

VERSION = 1
#: Photo concepts: tiles of bundled photos (distinct regions of one scene each). Not the Hubble deep
#: field: its tiles are all alike (star fields), i.e. duplicates of each other for any descriptor.
PHOTOS = {"coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut"}
#: Seed sets (curated datasets of the demo recipe) and the concepts they hold.
SEED_SETS = {
    "demo_objects": ["circles", "polygons", "glyphs"],
    "demo_textures": ["stripes", "checker", "clouds"],
    "demo_scenes": ["rings", "blobs", "sticks"],
}
EVAL_SET = "demo_eval"
EVAL_CONCEPTS = ["circles", "stripes", "rings", "dots"]


@dataclass(frozen=True)
class WorldSize:
    originals: int  # distinct pool images over all procedural concepts
    copy_rate: float  # fraction of originals with planted near/exact copies
    seeds_per_concept: int
    eval_per_split: int
    eval_copies: int
    junk_each: int
    #: Off-concept pool images (crops of bundled photos, no seed or evaluation concept) and the most
    #: planted copies one of them gets (heavy-tailed: most none, a few many, as popular web images).
    off_concept: int = 0
    off_copies_max: int = 0


SIZES = {
    "small": WorldSize(originals=1800, copy_rate=0.35, seeds_per_concept=24, eval_per_split=20, eval_copies=60, junk_each=3),
    # The paper's setting for the Table-2 ablation (`lvd ablate`): a pool dominated by off-concept
    # images and their duplicates, as a web crawl is: ~8k pool files, 14 % on a seed concept, 57 % repeats.
    "web": WorldSize(originals=900, copy_rate=0.35, seeds_per_concept=24, eval_per_split=20, eval_copies=60, junk_each=3,
                     off_concept=2400, off_copies_max=20),
    "medium": WorldSize(originals=20000, copy_rate=0.35, seeds_per_concept=120, eval_per_split=60, eval_copies=600, junk_each=20),
}


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _concept_counts(total: int, rng: np.random.Generator) -> dict[str, int]:
    """Zipf-like sizes: an uncurated pool is far from balanced."""
    names = list(FAMILIES)
    order = rng.permutation(len(names))
    weights = 1.0 / (np.arange(len(names)) + 1.0) ** 0.8
    counts = np.maximum(20, np.round(total * weights / weights.sum())).astype(int)
    return {names[i]: int(counts[rank]) for rank, i in enumerate(order)}


def _photo_tiles(name: str, tile: int) -> list[Image.Image]:
    import skimage.data

    arr = getattr(skimage.data, name)()
    img = Image.fromarray(arr).convert("RGB")
    w, h = img.size
    tiles = []
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            t = img.crop((x, y, x + tile, y + tile))
            if np.asarray(t.convert("L"), np.float32).std() > 12:  # skip near-blank regions
                tiles.append(t.resize((256, 256), Image.Resampling.LANCZOS))
    return tiles


#: Bundled photos that give procedural images an instance signature (see `_new_image`).
SIGNATURE_PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field", "immunohistochemistry",
                    "retina", "camera", "coins", "moon", "brick", "grass", "gravel", "page", "clock", "horse")


@lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _signature(concept: str, rng: np.random.Generator, side: int) -> Image.Image:
    """A random crop of one of the concept's own photos: what makes two members of a concept two
    images (different regions), while the photo choice stays part of what the concept looks like."""
    k = sorted(FAMILIES).index(concept)
    choices = (SIGNATURE_PHOTOS[k % len(SIGNATURE_PHOTOS)], SIGNATURE_PHOTOS[(k + len(FAMILIES)) % len(SIGNATURE_PHOTOS)])
    photo = _photo(choices[int(rng.integers(2))])
    w, h = photo.size
    c = int(min(w, h) * rng.uniform(0.25, 0.6))
    x, y = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
    return photo.crop((x, y, x + c, y + c)).resize((side, side), Image.Resampling.BILINEAR)


def _new_image(concept: str, rng: np.random.Generator) -> Image.Image:
    """One member of a procedural concept: the family's pattern, plus a photo signature in a corner
    region, so that distinct members differ at instance level, as distinct web images do."""
    side = int(rng.choice([224, 256, 288]))
    img = FAMILIES[concept](rng, side)
    sig = int(side * rng.uniform(0.38, 0.48))
    x, y = int(rng.integers(0, side - sig + 1)), int(rng.integers(0, side - sig + 1))
    img.paste(_signature(concept, rng, sig), (x, y))
    if rng.random() < 0.3:  # some non-square originals
        img = img.resize((side, int(side * rng.uniform(0.7, 0.9))), Image.Resampling.BICUBIC)
    return img


#: Photos bundled with scikit-image that off-concept images are cropped from.
OFF_CONCEPT_PHOTOS = SIGNATURE_PHOTOS + ("colorwheel", "logo", "text", "cat")


def off_concept_image(rng: np.random.Generator) -> tuple[str, Image.Image]:
    """An off-concept web image: a random crop (10-70 % of the short side) of one bundled photo,
    maybe mirrored or non-square. Returns (photo name, image)."""
    name = OFF_CONCEPT_PHOTOS[int(rng.integers(len(OFF_CONCEPT_PHOTOS)))]
    photo = _photo(name)
    w, h = photo.size
    c = max(16, int(min(w, h) * rng.uniform(0.1, 0.7)))
    x, y = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
    side = int(rng.choice([224, 256, 288]))
    img = photo.crop((x, y, x + c, y + c)).resize((side, side), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        img = img.resize((side, int(side * rng.uniform(0.7, 0.9))), Image.Resampling.BICUBIC)
    return name, img


def heldout_images(concepts: list[str], per_concept: int, seed: int, stream: str) -> list[tuple[str, int, bytes]]:
    """Fresh labelled images of `concepts` for evaluation: (concept, index, JPEG bytes). Drawn from
    their own random stream (`seed`, `stream`), never the one that makes the pool and the seeds, so
    they are new members of each concept, not copies of pool or seed images."""
    tag = int.from_bytes(stream.encode()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng([seed, 0x4845_4C44, tag])
    return [(c, i, _jpeg(_new_image(c, rng))) for c in concepts for i in range(per_concept)]


def build_heldout(out: str | Path, concepts: list[str], train: int, test: int, seed: int = 0) -> Path:
    """An ImageFolder evaluation set `out/{train,test}/<concept>/*.jpg` of fresh images of `concepts`
    (the k-NN bank and the test images of `lvd ablate`); rebuilt only when its spec changes."""
    root = Path(out)
    spec = {"version": VERSION, "concepts": sorted(concepts), "train": train, "test": test, "seed": seed}
    meta = root / "heldout.json"
    if meta.exists() and json.loads(meta.read_text()) == spec:
        return root
    if root.exists():
        shutil.rmtree(root)
    for split, n in (("train", train), ("test", test)):
        for concept, i, data in heldout_images(sorted(concepts), n, seed, split):
            path = root / split / concept / f"{concept}-{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    meta.write_text(json.dumps(spec, sort_keys=True))
    return root


class _Writer:
    def __init__(self, root: Path):
        self.root = root
        self.rows: list[dict[str, str]] = []

    def add(self, rel: str, data: bytes, concept: str, group: str, kind: str, transform: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.rows.append({"source": rel, "concept": concept, "dup_group": group, "kind": kind, "transform": transform})


def build_world(out: str | Path, size: str = "small", seed: int = 0) -> Path:
    """Generate the world into `out` (replacing it) and return its path."""
    if size not in SIZES:
        from curation.core.errors import UserError

        raise UserError(f"unknown world size {size!r} (one of: {', '.join(SIZES)})")
    spec, root = SIZES[size], Path(out)
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    w = _Writer(root)
    originals: list[tuple[str, str, Image.Image]] = []  # (group id, concept, image)

    for concept, count in _concept_counts(spec.originals, rng).items():
        for i in range(count):
            originals.append((f"{concept}-{i:05d}", concept, _new_image(concept, rng)))
    for concept, photo in PHOTOS.items():
        for i, tile in enumerate(_photo_tiles(photo, 96)[:60]):
            originals.append((f"{concept}-{i:05d}", concept, tile))

    for n, (group, concept, img) in enumerate(originals):
        folder = f"pool/batch-{n % 7}"
        if n % 10 == 3:
            w.add(f"{folder}/{group}.png", _png(img), concept, group, "original", "none")
        else:
            w.add(f"{folder}/{group}.jpg", _jpeg(img), concept, group, "original", "none")

    # Planted copies of pool originals (a few originals get two).
    picks = rng.choice(len(originals), size=int(len(originals) * spec.copy_rate), replace=False)
    for k, idx in enumerate(picks):
        group, concept, img = originals[idx]
        for c in range(2 if k % 8 == 0 else 1):
            kind = corruptions.TRANSFORMS[int(rng.integers(len(corruptions.TRANSFORMS)))]
            data = corruptions.make_copy(img, kind, rng, original_bytes=_jpeg(img))
            w.add(f"pool/copies/{group}-copy{c}-{kind}.jpg", data, concept, group, "copy", kind)

    # Curated seed sets: fresh images of their concepts, never in the pool.
    seeds_yaml = {}
    for name, concepts in SEED_SETS.items():
        for concept in concepts:
            for i in range(spec.seeds_per_concept):
                w.add(f"seeds/{name}/{concept}/{concept}-seed-{i:04d}.jpg", _jpeg(_new_image(concept, rng)), concept, f"seed:{name}:{concept}:{i}", "seed", "none")
        seeds_yaml[name] = {"path": f"seeds/{name}", "format": "imagefolder"}

    # Evaluation set with train/test splits, and copies of some of its images planted in the pool.
    eval_images: list[tuple[str, str, Image.Image]] = []
    for split in ("train", "test"):
        for concept in EVAL_CONCEPTS:
            for i in range(spec.eval_per_split):
                img = _new_image(concept, rng)
                gid = f"eval:{split}:{concept}:{i}"
                w.add(f"eval/{EVAL_SET}/{split}/{concept}/{concept}-{i:04d}.jpg", _jpeg(img), concept, gid, "eval", "none")
                eval_images.append((gid, concept, img))
    for j, idx in enumerate(rng.choice(len(eval_images), size=min(spec.eval_copies, len(eval_images)), replace=False)):
        gid, concept, img = eval_images[idx]
        kind = corruptions.EVAL_TRANSFORMS[j % len(corruptions.EVAL_TRANSFORMS)]
        w.add(f"pool/batch-{j % 7}/evalcopy-{j:04d}-{kind}.jpg", corruptions.make_copy(img, kind, rng, original_bytes=_jpeg(img)), concept, gid, "eval-copy", kind)

    # Off-concept web images and their duplicates (the `web` size), from a stream of their own so
    # that the other sizes' files do not change.
    off_rng = np.random.default_rng([seed, 0x5745_4200])
    for i in range(spec.off_concept):
        photo, img = off_concept_image(off_rng)
        group, original = f"web-{i:05d}", _jpeg(img)
        w.add(f"pool/web/batch-{i % 7}/{group}.jpg", original, f"photo:{photo}", group, "original", "none")
        for c in range(min(int(off_rng.zipf(2.0)) - 1, spec.off_copies_max)):
            kind = corruptions.TRANSFORMS[int(off_rng.integers(len(corruptions.TRANSFORMS)))]
            w.add(f"pool/web/copies/{group}-copy{c}-{kind}.jpg", corruptions.make_copy(img, kind, off_rng, original_bytes=original),
                  f"photo:{photo}", group, "copy", kind)

    # Odd-but-valid files (kept) and junk (rejected).
    for j in range(spec.junk_each):
        for kind, ext, data in corruptions.odd_files(lambda: _new_image("polygons", rng), rng):
            w.add(f"pool/odd/{kind}-{j}.{ext}", data, "polygons", f"odd-{kind}-{j}", "original", f"odd:{kind}")
        for kind, ext, data in corruptions.junk_files(_new_image("circles", rng), rng):
            w.add(f"pool/junk/{kind}-{j}.{ext}", data, "", "", "junk", kind)

    (root / "seeds.yaml").write_text(yaml.safe_dump({"seeds": seeds_yaml}, sort_keys=True))
    truth = pa.Table.from_pylist(w.rows).sort_by("source")
    pq.write_table(truth, root / "truth.parquet")
    kinds = {k: sum(1 for r in w.rows if r["kind"] == k) for k in sorted({r["kind"] for r in w.rows})}
    (root / "world.json").write_text(json.dumps(
        {"version": VERSION, "size": size, "seed": seed, "files": kinds, "seed_sets": SEED_SETS,
         "eval_sets": {EVAL_SET: EVAL_CONCEPTS}, "concepts": sorted(set(FAMILIES) | set(PHOTOS))}, indent=2, sort_keys=True))
    return root


def world_is_built(root: str | Path, size: str, seed: int) -> bool:
    meta = Path(root) / "world.json"
    if not meta.exists():
        return False
    info = json.loads(meta.read_text())
    return info.get("version") == VERSION and info.get("size") == size and info.get("seed") == seed
