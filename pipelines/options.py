"""Command-line options shared by the run commands, and the context they build."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

from curation.config import load_config, parse_overrides
from pipelines.context import RunContext
from pipelines.engines import make_engine
from pipelines.rundir import RunDir
from pipelines.storage import makedirs


def add_run_options(p: argparse.ArgumentParser, engine: bool = True) -> None:
    g = p.add_argument_group("run options")
    g.add_argument("--config", metavar="YAML", help="RunConfig YAML (or a recipe); defaults in curation/config.py")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set dedup.k=32 (repeatable)")
    g.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    g.add_argument("--force", action="append", default=[], metavar="STAGE", help="recompute STAGE and everything after it")
    g.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    if engine:
        g.add_argument("--engine", choices=["local", "ray", "beam"], default="local", help="execution engine (default: local)")
        add_engine_options(p)


#: Flags of one engine: dest -> engine keyword (pipelines/engines/ray_engine.py, beam_engine.py).
RAY_FLAGS = {"ray_address": "address"}
BEAM_FLAGS = {"runner": "runner", "project": "project", "region": "region", "temp_location": "temp_location",
              "dataflow_service_options": "dataflow_service_options", "beam_args": "beam_args"}


def add_engine_options(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("engine options (--engine ray / beam)")
    e.add_argument("--ray-address", metavar="ADDR", help="ray: cluster to join (auto: this node's); default: a local Ray")
    e.add_argument("--runner", help="beam: runner (default FnApiRunner, local and offline; DataflowRunner for Dataflow)")
    e.add_argument("--project", help="beam/Dataflow: Google Cloud project")
    e.add_argument("--region", help="beam/Dataflow: region")
    e.add_argument("--temp-location", metavar="GS_PATH", help="beam/Dataflow: temp and scratch location (gs://...)")
    e.add_argument("--dataflow-service-options", action="append", default=[], metavar="OPT",
                   help="beam/Dataflow: e.g. 'worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver' (repeatable)")
    if not any(not a.option_strings for a in p._actions):  # a command with positionals takes no pass-through
        e.add_argument("beam_args", nargs="*", default=[], metavar="-- BEAM_OPTION",
                       help="beam: after a literal --, more Beam pipeline options, passed verbatim (e.g. --job_name=J)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of the chosen engine from its flags; another engine's flags are an error."""
    from pipelines.errors import UserError

    name = getattr(args, "engine", "local")
    options = dict(getattr(args, "engine_options", {}) or {})
    for engine, flags in (("ray", RAY_FLAGS), ("beam", BEAM_FLAGS)):
        given = {dest: getattr(args, dest) for dest in flags if getattr(args, dest, None)}
        if given and engine != name:
            raise UserError(f"{', '.join('--' + d.replace('_', '-') for d in given)}: only with --engine {engine}")
        options.update({flags[dest]: value for dest, value in given.items()})
    stray = [a for a in options.get("beam_args", []) if not a.startswith("--")]
    if stray:
        raise UserError(f"unexpected arguments {stray}: Beam pipeline options go after a literal -- as --name=value")
    return options


def build_context(args: argparse.Namespace, out: str, base_config: dict[str, Any] | None = None, **fields: Any) -> RunContext:
    cfg = load_config(args.config, parse_overrides(args.overrides), base=base_config)
    if args.workers:
        cfg = cfg.model_copy(update={"workers": args.workers})
    run = RunDir(out)
    makedirs(run.root)
    engine = make_engine(getattr(args, "engine", "local"), cfg.workers, **engine_options(args))
    if hasattr(engine, "progress"):
        engine.progress = not args.no_progress
    run.update_manifest(
        config=cfg.model_dump(mode="json"),
        versions=versions(),
        command=" ".join(["lvd", *sys.argv[1:]]) if sys.argv else "lvd",
    )
    return RunContext(run=run, cfg=cfg, engine=engine, progress=not args.no_progress, **fields)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("lvd-builder", "numpy", "pyarrow", "pillow", "faiss-cpu", "faiss-gpu", "torch", "timm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def existing_paths(paths: list[str]) -> list[str]:
    """Check local inputs up front (one clear error instead of a failure mid-run)."""
    from pipelines.errors import UserError

    for p in paths:
        if "://" not in p and not os.path.exists(p):
            raise UserError(f"input not found: {p}")
    return [p if "://" in p else str(Path(p).resolve()) for p in paths]
