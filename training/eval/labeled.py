"""Labelled image sets for evaluation: an ImageFolder directory (one sub-directory per class) or
Parquet shards with an `image` (encoded bytes) and a `label` column."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class LabeledSet:
    """`items[i]` is a file path or encoded bytes with class index `labels[i]` into `classes`."""

    items: list[Path | bytes]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.items)


def _image_folder(root: Path) -> LabeledSet:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        items += files
        labels += [index] * len(files)
    return LabeledSet(items, np.asarray(labels, dtype=np.int64), classes)


def _parquet(paths: list[Path]) -> LabeledSet:
    tables = [pq.read_table(p, columns=["image", "label"]) for p in paths]
    table = pa.concat_tables(tables)
    raw = table.column("label").to_pylist()
    classes = sorted({str(v) for v in raw}, key=lambda s: (len(s), s) if s.isdigit() else (0, s))
    index = {c: i for i, c in enumerate(classes)}
    return LabeledSet(table.column("image").to_pylist(), np.asarray([index[str(v)] for v in raw], dtype=np.int64), classes)


def load_labeled(path: str | Path) -> LabeledSet:
    """Read the listing of a labelled set (images are decoded later, batch by batch)."""
    path = Path(path)
    try:
        if path.is_file() and path.suffix == ".parquet":
            found = _parquet([path])
        elif path.is_dir() and sorted(path.glob("*.parquet")):
            found = _parquet(sorted(path.glob("*.parquet")))
        elif path.is_dir():
            found = _image_folder(path)
        else:
            raise UserError(f"labelled data not found: {path} (an ImageFolder directory or Parquet with image + label)")
    except (KeyError, pa.ArrowInvalid) as exc:
        raise UserError(f"{path}: Parquet labelled data needs `image` and `label` columns ({exc})") from exc
    if len(found) == 0:
        raise UserError(f"no labelled images under {path} (expected CLASS/*.jpg sub-directories or Parquet)")
    return found
