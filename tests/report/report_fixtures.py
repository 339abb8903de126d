"""A small synthetic run directory with every file the output writer and the report read.

Pool (21 rows, 20 distinct images, one exact copy), rejects, duplicate components, an evaluation
pool with its edges, cluster assignments, two seed pools, retrieved rows (as_is, sample, cluster,
and one row whose image exists nowhere) and the recipe. Some data strings are hostile
(`<script>`, quotes) so that the report's escaping is exercised on every path they take.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.core import schemas
from curation.config import OutputConfig
from curation.output.shards import METADATA

EVIL = "<script>alert(1)</script>"
EVIL_SOURCE = f'/data/pool/{EVIL} "quoted" name.jpg'
EVIL_DATASET = f'evil{EVIL}"x"'
MISSING_ID = "f" * 32
STAGES = ("ingest", "components", "output")


def make_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small JPEG, different for every seed."""
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * (seed % 7 + 2) + seed * 11) % 256, (yy * (seed % 5 + 2)) % 256, (xx + yy + seed * 37) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def pool_table(rows: list[tuple[str, bytes]]) -> pa.Table:
    """POOL rows from (source, bytes)."""
    return pa.table({
        "image_id": [image_id(b) for _, b in rows],
        "source": [s for s, _ in rows],
        "width": [64] * len(rows), "height": [48] * len(rows),
        "orig_width": [64] * len(rows), "orig_height": [48] * len(rows),
        "orig_format": ["JPEG"] * len(rows),
        "image": [b for _, b in rows],
        "meta": ["{}"] * len(rows),
    }, schema=schemas.POOL)


@dataclass
class Synthetic:
    root: Path
    images: dict[str, bytes] = field(default_factory=dict)  # image_id -> bytes, every image anywhere
    pool: list[str] = field(default_factory=list)  # P0..P19 ids
    eval: list[str] = field(default_factory=list)
    seeds: dict[str, list[str]] = field(default_factory=dict)
    retrieved: pa.Table | None = None
    recipe_rows: list[dict] = field(default_factory=list)

    def sources(self) -> list[Path]:
        return sorted((self.root / "pool").glob("part-*.parquet")) + sorted(self.root.glob("seeds/*/pool/part-*.parquet"))


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def build_run(root: Path, upto: str = "output") -> Synthetic:
    """Write the synthetic run into `root` as far as stage `upto` (ingest, components, output)."""
    run = Synthetic(root)
    blobs = [make_jpeg(i) for i in range(20)]
    run.pool = [image_id(b) for b in blobs]
    sources = [EVIL_SOURCE if i == 3 else f"/data/pool/img{i:02d}.jpg" for i in range(20)]
    rows = list(zip(sources, blobs)) + [("/data/pool/copy_of_00.jpg", blobs[0])]
    _write(pool_table(rows[:10]), root / "pool" / "part-00000.parquet")
    _write(pool_table(rows[10:]), root / "pool" / "part-00001.parquet")
    run.images.update(zip(run.pool, blobs))
    rejects = [("/data/pool/bad1.jpg", "truncated", "image file is truncated", "decode"),
               (f"/data/pool/{EVIL}.jpg", "truncated", f"bad bytes {EVIL}", "decode"),
               ("/data/pool/tiny.png", "too-small", "8x8 < 64", "decode"),
               ("/data/pool/nude.jpg", "nsfw", "score 0.97", "nsfw"),
               ("/data/eval/broken.jpg", "corrupt", "not an image", "eval/pool-decode"),
               ("/seeds/objects/broken.jpg", "corrupt", "not an image", "seeds/objects/pool-decode")]
    _write(pa.table(dict(zip(schemas.REJECTS.names, map(list, zip(*rejects)))), schema=schemas.REJECTS), root / "rejects.parquet")
    stages = {"ingest": {"counts": {"inputs": 25, "kept": 21, "rejected": 4}, "seconds": 1.5, "engine": "local"}}
    manifest = {"config": {"clustering": {"k": 4}}, "versions": {"lvd": "0.1.0"}, "inputs": {"pool": ["/data/pool"]},
                "stages": stages, "recipe": {"name": "synthetic"}}
    if upto in STAGES[1:]:
        _components(run, root)
        largest = [{"component": run.pool[0], "rows": 5}, {"component": run.pool[4], "rows": 2},
                   {"component": run.pool[6], "rows": 2}]
        stages["components"] = {"counts": {"kept": 14, "near-duplicate": 3, "largest_components": largest},
                                "seconds": 0.2, "engine": "local"}
        manifest["quality"] = {"dedup quality": {"precision": 1.0, "recall": 0.95, "recall_by_transform": {"crop": 0.9}}}
    if upto == "output":
        _retrieval(run, root)
        from curation.output.shards import write_output

        write_output(run.retrieved, run.sources(), root / "output", OutputConfig(shard_rows=5, webdataset=True), run.recipe_rows)
        stages["output"] = {"counts": {"rows": 12}, "seconds": 0.1, "engine": "local"}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return run


def _components(run: Synthetic, root: Path) -> None:
    p = run.pool
    rows = [(p[0], "/data/pool/img00.jpg", p[0], True, "kept"),
            (p[0], "/data/pool/copy_of_00.jpg", p[0], False, "exact-duplicate"),
            (p[1], "/data/pool/img01.jpg", p[0], False, "hash-duplicate"),
            (p[2], "/data/pool/img02.jpg", p[0], False, "near-duplicate"),
            (p[3], EVIL_SOURCE, p[0], False, "near-duplicate"),
            (p[4], "/data/pool/img04.jpg", p[4], True, "kept"),
            (p[5], "/data/pool/img05.jpg", p[4], False, "near-duplicate"),
            (p[6], "/data/pool/img06.jpg", p[6], False, "eval-duplicate"),
            (p[7], "/data/pool/img07.jpg", p[6], False, "eval-duplicate")]
    rows += [(p[i], f"/data/pool/img{i:02d}.jpg", p[i], True, "kept") for i in range(8, 20)]
    _write(pa.table(dict(zip(schemas.COMPONENTS.names, map(list, zip(*rows)))), schema=schemas.COMPONENTS),
           root / "dedup" / "components.parquet")
    eval_blobs = [make_jpeg(100 + i) for i in range(2)]
    run.eval = [image_id(b) for b in eval_blobs]
    run.images.update(zip(run.eval, eval_blobs))
    _write(pool_table([(f"/data/eval/e{i}.jpg", b) for i, b in enumerate(eval_blobs)]), root / "eval" / "pool" / "part-00000.parquet")
    edges = pa.table({"src": [run.eval[0], run.eval[0], run.eval[1]], "dst": [p[6], p[7], p[7]],
                      "sim": pa.array([0.9, 0.8, 0.5], pa.float32())}, schema=schemas.EDGES)
    _write(edges, root / "dedup" / "eval_edges.parquet")


def _retrieval(run: Synthetic, root: Path) -> None:
    p = run.pool
    kept = [p[0], p[4]] + p[8:20]
    clusters = [0] * 6 + [1] * 5 + [2] * 3
    sims = [round(0.95 - 0.05 * i, 2) for i in range(14)]
    _write(pa.table({"image_id": kept, "cluster": pa.array(clusters, pa.int64()), "similarity": pa.array(sims, pa.float32())}),
           root / "clusters" / "assignments.parquet")
    for name, first, count in (("objects", 200, 3), ("textures", 300, 2)):
        blobs = [make_jpeg(first + i) for i in range(count)]
        run.seeds[name] = [image_id(b) for b in blobs]
        run.images.update(zip(run.seeds[name], blobs))
        _write(pool_table([(f"/seeds/{name}/{i}.jpg", b) for i, b in enumerate(blobs)]), root / "seeds" / name / "pool" / "part-00000.parquet")
    s, t = run.seeds["objects"], run.seeds["textures"]
    rows = [(i, "objects", "as_is", i, None, 1.0) for i in s]
    rows += [(p[8], "textures", "sample", t[0], None, 0.9), (p[9], "textures", "sample", t[0], None, 0.8),
             (p[10], "textures", "sample", t[1], None, 0.7), (p[11], "textures", "sample", t[1], None, 0.6),
             (MISSING_ID, "textures", "sample", t[1], None, 0.5)]
    rows += [(p[i], EVIL_DATASET, "cluster", None, 1 if i < 15 else 2, 0.5) for i in (12, 13, 14, 15, 16)]
    cols = list(map(list, zip(*rows)))
    prov = [json.dumps([{"dataset": d, "mode": m, "query": q}]) for _, d, m, q, _, _ in rows]
    # Deliberately not in output order: the writer sorts.
    order = list(reversed(range(len(rows))))
    run.retrieved = pa.table({
        "image_id": cols[0], "seed_dataset": cols[1], "mode": cols[2], "query_id": cols[3],
        "cluster": pa.array(cols[4], pa.int64()), "similarity": pa.array(cols[5], pa.float32()), "provenance": prov,
    }, schema=METADATA).take(order)
    _write(run.retrieved, root / "retrieval" / "retrieved.parquet")
    # As the retrieve stage writes them: `got` counts a row's retrievals before the merge (the
    # textures row pretends to have lost one collision there).
    run.recipe_rows = [{"dataset": "objects", "mode": "as_is", "seed_images": 3, "planned": 3, "got": 3},
                       {"dataset": "textures", "mode": "sample", "n": 2, "seed_images": 2, "planned": 4, "got": 6},
                       {"dataset": EVIL_DATASET, "mode": "cluster", "m": 3, "cap": 10, "seed_images": 7, "planned": 6, "got": 5}]
    collisions = {"rows": 14, "unique_images": 13, "duplicate_rows": 1, "per_dataset": {"textures": {"rows": 6}}}
    (root / "recipe.json").write_text(json.dumps({"name": "synthetic", "rows": run.recipe_rows, "collisions": collisions}))


class PageParser(HTMLParser):
    """What tests look at in a report page: per section, its tables (cell text), images and figure titles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.sections: dict[str, dict] = {}
        self.links: list[str] = []
        self._section: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self._section = a["id"]
            self.sections[self._section] = {"rows": [], "imgs": [], "titles": [], "text": []}
        sec = self.sections.get(self._section or "")
        if tag == "a":
            self.links.append(a.get("href") or "")
        if sec is None:
            return
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            sec["imgs"].append(a)
        elif tag == "figure":
            sec["titles"].append(a.get("title"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._section:
            self.sections[self._section]["rows"].append(self._row)
            self._row = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._section:
            self.sections[self._section]["text"].append(data)


def parse_page(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser
