"""Where the user keeps the seed datasets, and turning `SEEDS=` into located seeds.

What a seed *is* lives in `curation.retrieval.seed_registry`; where it *lives* comes from the user's
`seeds.yaml`:

    imagenet22k: {path: /data/imagenet22k, format: tar-per-class}
    caltech101: {path: s3://bucket/caltech101/train, format: imagefolder}
    my_set: /data/my_set            # a bare path: the format is detected by curation.sources.inputs

Names in `seeds.yaml` that the registry does not know are custom seeds (no expected size).
`resolve_seeds` checks every name before any work starts, so a typo or a missing location costs a
one-line error, not a half-finished run.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from curation.retrieval.recipes import load_recipe, recipe_names
from curation.retrieval.seed_registry import REGISTRY, SEED_FORMATS, SeedInfo

__all__ = ["REGISTRY", "SEED_FORMATS", "SeedInfo", "SeedLocation", "ResolvedSeed", "SEEDS_ENV", "DEFAULT_SEEDS_FILE",
           "default_seeds_path", "load_seeds_config", "resolve_seeds"]

#: Where `resolve_seeds` looks for seeds.yaml when no path is given.
SEEDS_ENV = "LVD_SEEDS"
DEFAULT_SEEDS_FILE = "seeds.yaml"


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
        """Every image of the seed as `curation.sources.inputs.SourceItem` (ImageFolder: meta['label'])."""
        from curation.sources.inputs import iter_source

        return iter_source(self.location.path, self.location.format)


def _user_error(message: str) -> Exception:
    from curation.core.errors import UserError

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
