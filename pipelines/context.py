"""What every stage of a run can see: the run directory, the config, the engine, the inputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import RunConfig
from pipelines.engines import Engine
from curation.core.rundir import RunDir


@dataclass
class RunContext:
    run: RunDir
    cfg: RunConfig
    engine: Engine
    pool_sources: list[str] = field(default_factory=list)
    pool_format: str | None = None
    eval_sources: list[str] = field(default_factory=list)
    #: Which dedup detectors run: "hash" always, "embedding" from issue 3 on.
    dedup_methods: tuple[str, ...] = ("hash",)
    recipe: Any = None
    seeds: list[Any] = field(default_factory=list)
    truth: Path | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def recipe_modes(ctx: RunContext) -> set[str]:
    """The retrieval modes of the run's recipe rows (none without a recipe)."""
    return {row.mode for row in ctx.recipe.resolved_rows(ctx.cfg)} if ctx.recipe is not None else set()


def has_recipe(ctx: RunContext) -> bool:
    """Seed sets to retrieve for, or a seedless `balanced` row."""
    return ctx.recipe is not None and (bool(ctx.seeds) or "balanced" in recipe_modes(ctx))
