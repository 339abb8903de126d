"""Seed registry: the curated datasets of DINOv2 Table 15 by short name, and where the user keeps them.

What a seed *is* (task, split, expected size, default retrieval) lives here; where it *lives* comes
from the user's `seeds.yaml`:

    imagenet22k: {path: /data/imagenet22k, format: tar-per-class}
    caltech101: {path: s3://bucket/caltech101/train, format: imagefolder}
    my_set: /data/my_set            # a bare path: the format is detected by curation.sources

Names in `seeds.yaml` that the registry does not know are custom seeds (no expected size).
`resolve_seeds` checks every name before any work starts, so a typo or a missing location costs a
one-line error, not a half-finished run.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import yaml

from curation import paper

Mode = Literal["as_is", "sample", "cluster"]
#: The layouts a seed may come in (curation.sources reads them all).
SEED_FORMATS = ("imagefolder", "tar-per-class", "webdataset", "parquet", "filelist")
#: Where `resolve_seeds` looks for seeds.yaml when no path is given.
SEEDS_ENV = "LVD_SEEDS"
DEFAULT_SEEDS_FILE = "seeds.yaml"


@dataclass(frozen=True)
class SeedInfo:
    """One registered seed dataset. `images` is Table 15's count (None: not known in advance)."""

    name: str
    title: str
    task: str
    split: str
    images: Optional[int]
    retrieval: Mode  # the mode the paper used for it (imagenet22k and gldv2 use as_is AND sample)
    n: Optional[int] = None  # `sample` N when it differs from the run's default


def _seed(name: str, title: str, task: str, split: str, images: Optional[int], retrieval: Mode, n: Optional[int] = None) -> SeedInfo:
    return SeedInfo(name, title, task, split, images, retrieval, n)


#: Table 15 of the paper, one entry per dataset (image counts are the paper's), plus the demo world.
REGISTRY: dict[str, SeedInfo] = {
    s.name: s
    for s in [
        _seed("imagenet22k", "ImageNet-22k", "classification", "-", 14_197_086, "sample"),
        _seed("imagenet1k", "ImageNet-1k", "classification", "train", 1_281_167, "sample", paper.SAMPLE_N_IMAGENET1K),
        _seed("caltech101", "Caltech 101", "fine-grained", "train", 3_030, "cluster"),
        _seed("cub200", "CUB-200-2011", "fine-grained", "train", 5_994, "cluster"),
        _seed("dtd", "DTD", "fine-grained", "train1", 1_880, "cluster"),
        _seed("fgvc_aircraft", "FGVC-Aircraft", "fine-grained", "train", 3_334, "cluster"),
        _seed("flowers102", "Flowers-102", "fine-grained", "train", 1_020, "cluster"),
        _seed("food101", "Food-101", "fine-grained", "train", 75_750, "cluster"),
        _seed("oxford_pets", "Oxford-IIIT Pet", "fine-grained", "trainval", 3_680, "cluster"),
        _seed("stanford_cars", "Stanford Cars", "fine-grained", "train", 8_144, "cluster"),
        _seed("sun397", "SUN397", "fine-grained", "train1", 19_850, "cluster"),
        _seed("voc2007", "Pascal VOC 2007", "fine-grained", "train", 2_501, "cluster"),
        _seed("ade20k", "ADE20K", "segmentation", "train", 20_210, "cluster"),
        _seed("cityscapes", "Cityscapes", "segmentation", "train", 2_975, "cluster"),
        _seed("voc2012_seg", "Pascal VOC 2012 (seg.)", "segmentation", "trainaug", 1_464, "cluster"),
        _seed("mapillary_sls", "Mapillary SLS", "depth", "train", 1_434_262, "as_is"),
        _seed("kitti", "KITTI", "depth", "train (Eigen)", 23_158, "cluster"),
        _seed("nyu_depth_v2", "NYU Depth V2", "depth", "train", 24_231, "cluster"),
        _seed("sun_rgbd", "SUN RGB-D", "depth", "train", 4_829, "cluster"),
        _seed("gldv2", "Google Landmarks v2", "retrieval", "train (clean)", 1_580_470, "sample"),
        _seed("amstertime_new", "AmsterTime", "retrieval", "new", 1_231, "cluster"),
        _seed("amstertime_old", "AmsterTime", "retrieval", "old", 1_231, "cluster"),
        _seed("met", "Met", "retrieval", "train", 397_121, "cluster"),
        _seed("roxford", "Revisiting Oxford", "retrieval", "base", 4_993, "cluster"),
        _seed("rparis", "Revisiting Paris", "retrieval", "base", 6_322, "cluster"),
        # The demo world (curation.demo_world) writes these as ImageFolders; sizes depend on it.
        _seed("demo_objects", "Demo objects", "demo", "-", None, "as_is"),
        _seed("demo_textures", "Demo textures", "demo", "-", None, "sample"),
        _seed("demo_scenes", "Demo scenes", "demo", "-", None, "cluster"),
    ]
}


@dataclass(frozen=True)
class SeedLocation:
    """Where one seed lives: a local path or fsspec URI, and its layout (None: detected)."""

    path: str
    format: Optional[str] = None


@dataclass(frozen=True)
class ResolvedSeed:
    """A seed ready to read: its registry entry (None for custom seeds) and its location."""

    name: str
    info: Optional[SeedInfo]
    location: SeedLocation

    def iter_items(self) -> Iterator[Any]:
        """Every image of the seed as `curation.sources.SourceItem` (ImageFolder: meta['label'])."""
        from curation.sources import iter_source

        return iter_source(self.location.path, self.location.format)


def _user_error(message: str) -> Exception:
    from curation.errors import UserError

    return UserError(message)


def default_seeds_path() -> Optional[Path]:
    """`$LVD_SEEDS`, else ./seeds.yaml when it exists, else None (no locations known)."""
    env = os.environ.get(SEEDS_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_SEEDS_FILE)
    return local if local.exists() else None


def _absolute(path: str, base: Path) -> str:
    # Relative paths are relative to seeds.yaml, so a world folder can be moved as a whole;
    # URIs with a scheme (s3://, gs://, file://) are fsspec's business.
    if "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def load_seeds_config(path: str | Path) -> dict[str, SeedLocation]:
    """Parse seeds.yaml (optionally under a top-level `seeds:` key) into name -> location."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise _user_error(f"seeds file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise _user_error(f"seeds file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(raw, dict) and isinstance(raw.get("seeds"), dict):
        raw = raw["seeds"]
    if not isinstance(raw, dict):
        raise _user_error(f"seeds file {path} must map seed names to {{path: ..., format: ...}}")
    out: dict[str, SeedLocation] = {}
    for name, entry in raw.items():
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not entry.get("path"):
            raise _user_error(f"seeds file {path}: entry {name!r} needs a path: `{name}: {{path: ..., format: ...}}`")
        fmt = entry.get("format")
        if fmt is not None and fmt not in SEED_FORMATS:
            raise _user_error(f"seeds file {path}: entry {name!r} has format {fmt!r}; use one of {', '.join(SEED_FORMATS)}")
        unknown = set(entry) - {"path", "format"}
        if unknown:
            raise _user_error(f"seeds file {path}: entry {name!r} has unknown keys {sorted(unknown)} (path, format)")
        out[str(name)] = SeedLocation(_absolute(str(entry["path"]), path.parent), fmt)
    return out


def _split_spec(spec: str) -> list[str]:
    """A comma list of seed names, or a recipe name (its datasets in recipe order)."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise _user_error("SEEDS is empty: give seed names (e.g. imagenet22k,caltech101) or a recipe name")
    if len(names) == 1 and names[0] not in REGISTRY:
        from curation.recipes import recipe_names, load_recipe

        if names[0] in recipe_names():
            return load_recipe(names[0]).datasets()
    return list(dict.fromkeys(names))  # drop repeats, keep order


def resolve_seeds(spec: str, seeds_config_path: str | Path | None = None) -> list[ResolvedSeed]:
    """Turn `SEEDS=` (comma list or recipe name) into located seeds, or fail in one line.

    Unknown names fail first (with close matches), then names without a location (saying which key
    to add to seeds.yaml). Nothing is read from the seeds themselves here.
    """
    path = Path(seeds_config_path) if seeds_config_path is not None else default_seeds_path()
    locations = load_seeds_config(path) if path is not None else {}
    names = _split_spec(spec)
    known = list(REGISTRY) + [n for n in locations if n not in REGISTRY]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known seeds: {', '.join(REGISTRY)}"
            raise _user_error(f"unknown seed {name!r}{hint}")
    missing = [n for n in names if n not in locations]
    if missing:
        where = str(path) if path is not None else f"seeds.yaml (or set ${SEEDS_ENV})"
        keys = " ".join(f"`{n}: {{path: ..., format: ...}}`" for n in missing)
        what = f"seed {missing[0]!r} has" if len(missing) == 1 else f"seeds {', '.join(map(repr, missing))} have"
        raise _user_error(f"{what} no location: add {keys} to {where}")
    return [ResolvedSeed(n, REGISTRY.get(n), locations[n]) for n in names]
