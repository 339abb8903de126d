"""Stages `output` (the curated Parquet shards) and `report` (RUN/report.html)."""
from __future__ import annotations

import json
from typing import Any

from curation.report.write import write_report
from curation.output.shards import write_output
from pipelines.context import RunContext
from pipelines.graph import config_fields
from pipelines.stages.retrieval import RETRIEVED
from curation.core.storage import file_size, files, read_parquet


def run_output(ctx: RunContext) -> dict[str, Any]:
    run = ctx.run
    recipe = json.loads(run.path("recipe.json").read_text())
    sources = run.pool_files() + files(run.root, "seeds/*/pool/part-*.parquet")
    index = write_output(read_parquet(run.path(RETRIEVED)), sources, run.path("output"), ctx.cfg.output, recipe["rows"],
                         map_fn=lambda fn, tasks: ctx.engine.map(fn, tasks, desc=f"output {fn.__name__}", total=len(tasks)))
    return {**{k: v for k, v in index.get("totals", {}).items() if isinstance(v, (int, float))}, "missing": index.get("missing", 0)}


def output_key(ctx: RunContext) -> Any:
    """`output` (reads the retrieved rows and the pool's and seeds' image bytes): the shards' shape."""
    return config_fields(ctx.cfg, "output")


def run_report(ctx: RunContext) -> dict[str, Any]:
    path = write_report(ctx.run.root)
    return {"bytes": file_size(path)}
