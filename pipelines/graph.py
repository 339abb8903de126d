"""The stage graph and its driver: which stages run, in which order, and when to skip one.

The stages form a DAG of data dependencies: each `Stage` names the stages whose outputs it reads
(`reads`), and its completion key hashes its name, the keys of those stages (the enabled ones) and
what it reads of the config and inputs (`key`). A change therefore redoes the stage it touches and
every stage that reads its outputs, transitively, and nothing else: `--set dedup.k=32` redoes the
k-NN graph and what follows from it, never the embeddings. A rerun of an unchanged run skips every
complete stage (resume). `--force X` redoes X and its readers, transitively. Stages run in list
order, which must be a topological order of `reads` (`check_order`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Union

from pipelines.context import RunContext
from pipelines.engines import prune_caches
from curation.core.errors import UserError
from curation.core.rundir import key_of, write_json
from curation.core.storage import is_url, remove

log = logging.getLogger("lvd")

#: The stages a stage reads: a fixed tuple, or a function of the context for a stage whose inputs
#: depend on the config (e.g. `cluster` reads the dedup embeddings or the retrieval ones).
Reads = Union[tuple[str, ...], Callable[[RunContext], tuple[str, ...]]]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], dict[str, Any]]
    #: What of the context (config fields, input fingerprints) determines this stage's output,
    #: besides the outputs of the stages it reads.
    key: Callable[[RunContext], Any]
    #: The stages whose outputs this stage reads; each must come earlier in the list.
    reads: Reads = ()
    enabled: Callable[[RunContext], bool] = lambda ctx: True
    #: Paths (relative to the run) this stage owns; cleared before it reruns.
    outputs: tuple[str, ...] = ()
    description: str = ""

    def inputs(self, ctx: RunContext | None) -> tuple[str, ...]:
        """The stages it reads (in a context; without one, only fixed `reads` are known)."""
        if callable(self.reads):
            return tuple(self.reads(ctx)) if ctx is not None else ()
        return tuple(self.reads)


def config_fields(cfg: Any, *paths: str) -> dict[str, Any]:
    """The named values of a `RunConfig` as JSON-ready data, by dotted path (`"dedup.k"`) or whole
    section (`"decode"`): the part of a stage's key that is its config, field by field where a
    section mixes fields read by different stages."""
    data = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for path in paths:
        node = data
        for part in path.split("."):
            node = node[part]
        out[path] = node
    return out


def check_order(stages: list[Stage], ctx: RunContext | None = None) -> None:
    """Stage names are unique and every stage reads only stages listed before it (the list is a
    topological order of the data flow). Without a context, context-dependent `reads` are skipped."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} is listed twice")
        for name in stage.inputs(ctx):
            if name not in seen:
                raise ValueError(f"stage {stage.name!r} reads {name!r}, which is not a stage listed before it")
        seen.add(stage.name)


def readers(stages: list[Stage], names: Iterable[str], ctx: RunContext | None = None) -> set[str]:
    """`names` and every stage that reads their outputs, transitively (one pass: list order is
    topological)."""
    out = set(names)
    for stage in stages:
        if any(name in out for name in stage.inputs(ctx)):
            out.add(stage.name)
    return out


def stage_key(ctx: RunContext, stage: Stage, keys: dict[str, str]) -> str:
    """Completion key of an enabled stage: its name, the keys of the stages it reads (`keys`: those
    of the enabled stages before it; a disabled stage's is left out) and its own `key`."""
    upstream = [[name, keys[name]] for name in stage.inputs(ctx) if name in keys]
    return key_of(stage.name, upstream, stage.key(ctx))


def stage_keys(ctx: RunContext, stages: list[Stage]) -> dict[str, str]:
    """Completion key of every enabled stage."""
    keys: dict[str, str] = {}
    for stage in stages:
        if stage.enabled(ctx):
            keys[stage.name] = stage_key(ctx, stage, keys)
    return keys


def run_stages(ctx: RunContext, stages: list[Stage], force: tuple[str, ...] = (), until: str | None = None) -> dict[str, Any]:
    """Run the enabled stages in order, skipping the complete ones; returns per-stage info."""
    names = [s.name for s in stages]
    for name in force:
        if name not in names:
            raise UserError(f"--force {name}: no such stage (stages: {', '.join(names)})")
    if until is not None and until not in names:
        raise UserError(f"--until {until}: no such stage (stages: {', '.join(names)})")
    check_order(stages, ctx)
    forced = readers(stages, force, ctx)
    keys: dict[str, str] = {}
    report: dict[str, Any] = {}
    for stage in stages:
        if not stage.enabled(ctx):
            if stage.name == until:
                break
            continue
        key = keys[stage.name] = stage_key(ctx, stage, keys)
        if stage.name not in forced and ctx.run.is_complete(stage.name, key):
            info = ctx.run.stage_info(stage.name) or {}
            report[stage.name] = {**info, "skipped": True}
            log.info("stage %-12s complete, skipped", stage.name)
        else:
            previous = ctx.run.stage_info(stage.name)
            started = _started_key(ctx, stage.name)
            # A stage killed midway under this same key has no marker: keep its partial outputs so
            # it resumes shard by shard. A stage that completed or was killed under another key (or
            # is forced) starts clean, its marker removed before its outputs (a kill while clearing
            # must not leave a marker over missing outputs); its readers then see a new key (or
            # are forced too) and rerun.
            if previous is not None or stage.name in forced or (started is not None and started != key):
                ctx.run.invalidate(stage.name)
                for rel in stage.outputs:
                    ctx.run.clear(rel)
            else:
                _drop_temporaries(ctx, stage)
            write_json({"key": key}, _started_path(ctx, stage.name))
            log.info("stage %-12s running%s", stage.name, f": {stage.description}" if stage.description else "")
            start = time.perf_counter()
            counts = stage.run(ctx) or {}
            if is_url(ctx.run.root):  # worker hosts drop their copies of the stage's removed scratch
                pruned = prune_caches(ctx.engine)
                log.info("stage %-12s: %d stale cached copies deleted", stage.name, pruned)
            seconds = round(time.perf_counter() - start, 3)
            info = {"counts": counts, "seconds": seconds, "engine": ctx.engine.name}
            ctx.run.mark_complete(stage.name, key, info)
            remove(_started_path(ctx, stage.name))
            report[stage.name] = {**info, "skipped": False}
        ctx.run.update_manifest(stages={stage.name: {k: v for k, v in report[stage.name].items() if k != "key"}})
        if stage.name == until:
            break
    return report


def _started_path(ctx: RunContext, name: str) -> Any:
    """Where a running stage records its key: a rerun after a kill tells a resume (same key: keep
    the finished shards) from a changed run (another key: the partial outputs are stale)."""
    return ctx.run.path("_work", "started", f"{name}.json")


def _started_key(ctx: RunContext, name: str) -> str | None:
    path = _started_path(ctx, name)
    return json.loads(path.read_text()).get("key") if path.exists() else None


def _drop_temporaries(ctx: RunContext, stage: Stage) -> None:
    """Files a kill left half-written under a resumed stage's outputs (`.NAME.tmp-*`; local run
    directories only: an object store shows an object only once its upload completes)."""
    if is_url(ctx.run.root):
        return
    for rel in stage.outputs:
        root = ctx.run.path(rel)
        for tmp in (root.rglob(".*.tmp-*") if root.is_dir() else ()):
            tmp.unlink(missing_ok=True)
