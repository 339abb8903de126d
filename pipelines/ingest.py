"""Ingest: inputs -> decoded, filtered pool shards + reject rows, resumable shard by shard.

Shard boundaries are fixed by input order (every `shard_rows` inputs form one shard), so a rerun
cuts the same shards, skips the ones already written with the same key, and ends with the same
bytes however often the run was killed.
"""
from __future__ import annotations

import json
from itertools import islice
from typing import Any, Iterable, Iterator

import pyarrow as pa

from curation.core import schemas
from curation.config import RunConfig
from curation.sources.images import decode_items
from curation.sources.inputs import SourceItem
from pipelines.engines import Engine
from pipelines.engines.isolation import Isolation
from curation.core.rundir import RunDir, key_of, write_json, write_table
from curation.core.storage import files, read_parquet

REJECTS_DIR = "_work/rejects"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _chunks(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def shard_config(cfg: RunConfig, crawled: bool = False) -> dict[str, Any]:
    """What a decode task needs: the config and whether the safety filters apply (by default they
    do for crawled data only; `safety.nsfw` / `safety.blur_faces` force them on or off)."""
    nsfw = cfg.safety.nsfw if cfg.safety.nsfw is not None else crawled
    blur = cfg.safety.blur_faces if cfg.safety.blur_faces is not None else crawled
    return {"run": cfg.model_dump(mode="json"), "nsfw": bool(nsfw), "blur": bool(blur)}


def decode_part(head: tuple, items: list[SourceItem]) -> tuple[pa.Table, pa.Table]:
    """Decode some of a shard's items (then NSFW-filter and blur faces when on): (pool rows, reject
    rows). Pure: the shard task and the item-by-item retry (`INGEST_ISOLATION`) both call it."""
    shard_cfg = head[1]
    cfg = RunConfig.model_validate(shard_cfg["run"])
    pool, rejects = decode_items(items, cfg.decode)
    if shard_cfg.get("nsfw") or shard_cfg.get("blur"):
        from curation.safety.filters import safety_filter  # one decode for both models (issue 17)

        pool, safety_rejects = safety_filter(pool, cfg, bool(shard_cfg.get("nsfw")), bool(shard_cfg.get("blur")))
        rejects = pa.concat_tables([rejects, safety_rejects])
    return pool, rejects


def write_shard(head: tuple, inputs: int, pool: pa.Table, rejects: pa.Table) -> dict[str, int]:
    """A decoded shard's pool part and reject part, then its marker."""
    index, _, root, key, target = head
    run = RunDir(root)
    if target != "pool":
        rejects = rejects.set_column(3, "stage", pa.array([f"{target}-decode"] * rejects.num_rows, pa.string()))
    write_table(pool, run.path(target, shard_name(index)))
    write_table(rejects, run.path(REJECTS_DIR, target, shard_name(index)))
    counts = {"inputs": inputs, "kept": pool.num_rows, "rejected": rejects.num_rows}
    write_json({"key": key, **counts}, run.path("_work", f"ingest-{target}", f"{index:05d}.json"))
    return counts


def decode_shard(index: int, items: list[SourceItem], shard_cfg: dict[str, Any], root: str, key: str, target: str) -> dict[str, int]:
    """One shard: decode every item (then NSFW-filter and blur faces when on), write its pool part
    and its reject part, then its marker."""
    head = (index, shard_cfg, root, key, target)
    return write_shard(head, len(items), *decode_part(head, items))


# -- item-by-item retry of a shard whose worker died or hung (pipelines.engines.isolation) ---------
def _split_shard(task: tuple) -> tuple[tuple, list[SourceItem]]:
    index, items, shard_cfg, root, key, target = task
    return (index, shard_cfg, root, key, target), items


def lost_item(head: tuple, item: SourceItem, reason: str, message: str) -> tuple[pa.Table, pa.Table]:
    """The part standing for an item whose worker process died or hung: one reject row."""
    from curation.sources.images import Reject, rejects_table

    return schemas.POOL.empty_table(), rejects_table([Reject(item.source, reason, message)], stage="decode")


def join_parts(parts: list[tuple[pa.Table, pa.Table]]) -> tuple[pa.Table, pa.Table]:
    """Parts of a shard, in item order, as one (pool, rejects) pair with contiguous columns."""
    return tuple(pa.concat_tables([p[j] for p in parts]).combine_chunks() for j in (0, 1))  # type: ignore[return-value]


def _join_shard(head: tuple, parts: list[tuple[pa.Table, pa.Table]]) -> dict[str, int]:
    pool, rejects = join_parts(parts)
    return write_shard(head, pool.num_rows + rejects.num_rows, pool, rejects)


def item_seconds(head: tuple) -> float:
    """One item's time limit in a decode task: its decode, plus the safety models' when on."""
    shard_cfg = head[1]
    run = shard_cfg["run"]
    safety = run.get("safety", {})
    models = int(bool(shard_cfg.get("nsfw"))) + int(bool(shard_cfg.get("blur")))
    return float(run.get("decode", {}).get("timeout_s", 10.0)) + models * float(safety.get("timeout_s", 10.0))


INGEST_ISOLATION = Isolation(split=_split_shard, part=decode_part, failed=lost_item, join=_join_shard,
                             item_seconds=item_seconds)


def _shard_done(run: RunDir, index: int, key: str, target: str) -> dict[str, int] | None:
    marker = run.path("_work", f"ingest-{target}", f"{index:05d}.json")
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    return info if info.get("key") == key else None


def ingest_items(
    run: RunDir, items: Iterable[SourceItem], cfg: RunConfig, engine: Engine, target: str = "pool", total: int | None = None,
    crawled: bool = False,
) -> dict[str, int]:
    """Decode a stream of inputs into `RUN/<target>/part-NNNNN.parquet` (the pool by default;
    evaluation sets go to `RUN/eval/pool`)."""
    task_cfg = shard_config(cfg, crawled)
    key = key_of(cfg.decode.model_dump(mode="json"), cfg.shard_rows, task_cfg["nsfw"], task_cfg["blur"],
                 cfg.safety.model_dump(mode="json"))
    done: list[dict[str, int]] = []

    def tasks() -> Iterator[tuple]:
        for index, chunk in enumerate(_chunks(items, cfg.shard_rows)):
            previous = _shard_done(run, index, key, target)
            if previous is not None:
                done.append(previous)
                continue
            yield (index, chunk, task_cfg, str(run.root), key, target)

    shards = total and -(-total // cfg.shard_rows)
    results = engine.map(decode_shard, tasks(), desc=f"ingest {target}", total=shards, isolation=INGEST_ISOLATION)
    totals = {"inputs": 0, "kept": 0, "rejected": 0}
    for r in results + done:
        for k in totals:
            totals[k] += int(r[k])
    finalize_rejects(run)
    return totals


def finalize_rejects(run: RunDir) -> int:
    """Gather every stage's reject parts into `RUN/rejects.parquet` (sorted: same bytes each run)."""
    parts = files(run.path(REJECTS_DIR), "**/*.parquet")
    tables = [read_parquet(p) for p in parts]
    table = pa.concat_tables(tables) if tables else schemas.REJECTS.empty_table()
    table = table.sort_by([("stage", "ascending"), ("source", "ascending"), ("reason", "ascending")])
    write_table(table, run.rejects)
    return table.num_rows
