"""The stage graph and its driver: which stages run, in which order, and when to skip one.

A stage's completion key hashes its name, the key of the stage before it and whatever of the
config and inputs it reads, so a change anywhere upstream redoes everything downstream, and a
rerun of an unchanged run skips straight to the first incomplete stage (resume).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from pipelines.context import RunContext
from pipelines.engines import prune_caches
from pipelines.errors import UserError
from pipelines.rundir import key_of
from pipelines.storage import is_url

log = logging.getLogger("lvd")


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], dict[str, Any]]
    #: What of the context determines this stage's output (besides upstream stages).
    key: Callable[[RunContext], Any]
    enabled: Callable[[RunContext], bool] = lambda ctx: True
    #: Paths (relative to the run) this stage owns; cleared before it reruns.
    outputs: tuple[str, ...] = ()
    description: str = ""


def run_stages(ctx: RunContext, stages: list[Stage], force: tuple[str, ...] = (), until: str | None = None) -> dict[str, Any]:
    """Run the enabled stages in order, skipping the complete ones; returns per-stage info."""
    names = [s.name for s in stages]
    for name in force:
        if name not in names:
            raise UserError(f"--force {name}: no such stage (stages: {', '.join(names)})")
    if until is not None and until not in names:
        raise UserError(f"--until {until}: no such stage (stages: {', '.join(names)})")
    forced_from = min((names.index(n) for n in force), default=len(names))
    report: dict[str, Any] = {}
    upstream = "root"
    for i, stage in enumerate(stages):
        if not stage.enabled(ctx):
            continue
        key = key_of(stage.name, upstream, stage.key(ctx))
        upstream = key
        if i < forced_from and ctx.run.is_complete(stage.name, key):
            info = ctx.run.stage_info(stage.name) or {}
            report[stage.name] = {**info, "skipped": True}
            log.info("stage %-12s complete, skipped", stage.name)
        else:
            previous = ctx.run.stage_info(stage.name)
            # A stage killed midway has no marker: keep its partial outputs so it resumes shard by
            # shard. A stage that completed under another key (or is forced) starts clean.
            if previous is not None or i >= forced_from:
                for rel in stage.outputs:
                    ctx.run.clear(rel)
                ctx.run.invalidate(stage.name)
            log.info("stage %-12s running%s", stage.name, f": {stage.description}" if stage.description else "")
            start = time.perf_counter()
            counts = stage.run(ctx) or {}
            if is_url(ctx.run.root):  # worker hosts drop their copies of the stage's removed scratch
                pruned = prune_caches(ctx.engine)
                log.info("stage %-12s: %d stale cached copies deleted", stage.name, pruned)
            seconds = round(time.perf_counter() - start, 3)
            info = {"counts": counts, "seconds": seconds, "engine": ctx.engine.name}
            ctx.run.mark_complete(stage.name, key, info)
            report[stage.name] = {**info, "skipped": False}
        ctx.run.update_manifest(stages={stage.name: {k: v for k, v in report[stage.name].items() if k != "key"}})
        if stage.name == until:
            break
    return report
