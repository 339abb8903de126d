"""Command-line options shared by the run commands, and the context they build."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

from curation.config import RunConfig, load_config, parse_overrides
from pipelines.context import RunContext
from pipelines.engines import make_engine
from curation.core.errors import UserError
from curation.core.rundir import check_run_dir


def add_run_options(p: argparse.ArgumentParser, engine: bool = True) -> None:
    g = p.add_argument_group("run options")
    g.add_argument("--config", metavar="YAML", help="RunConfig YAML (or a recipe); defaults in curation/config/")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set dedup.k=32 (repeatable)")
    g.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    g.add_argument("--force", action="append", default=[], metavar="STAGE", help="recompute STAGE and everything after it")
    g.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_reuse_option(g)
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


def add_reuse_option(g: Any) -> None:
    g.add_argument("--reuse", action="store_true",
                   help="continue in a run directory made with another recipe or lvd version (stages whose inputs "
                        "changed are recomputed; without it such a directory is refused)")


def run_config(args: argparse.Namespace, base_config: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> RunConfig:
    """The run's config: `base_config` (a recipe's block), `--config`, then `--set` overrides and
    `extra` (flags mapped onto keys). Every override key and value is checked first, so a typo or a
    wrong type is one line naming the key, never a half-started run."""
    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    raw = {k.strip(): v for k, v in (item.split("=", 1) for item in getattr(args, "overrides", []) or [] if "=" in item)}
    overrides.update(extra or {})
    for key, value in overrides.items():
        check_override(key.strip(), value, raw.get(key, str(value)).strip())
    cfg = load_config(getattr(args, "config", None), overrides, base=base_config)
    if getattr(args, "workers", None):
        cfg = cfg.model_copy(update={"workers": args.workers})
    return cfg


def build_context(args: argparse.Namespace, out: str, base_config: dict[str, Any] | None = None,
                  cfg: RunConfig | None = None, **fields: Any) -> RunContext:
    """Config, run directory (checked: see `rundir.check_run_dir`) and engine of a run command."""
    cfg = cfg if cfg is not None else run_config(args, base_config)
    recipe = fields.get("recipe")
    run = check_run_dir(out, recipe=getattr(recipe, "name", None), version=lvd_version(),
                        reuse=getattr(args, "reuse", False))
    engine = make_engine(getattr(args, "engine", "local"), cfg.workers, **engine_options(args))
    if hasattr(engine, "progress"):
        engine.progress = not args.no_progress
    run.update_manifest(
        config=cfg.model_dump(mode="json"),
        versions=versions(),
        command=" ".join(["lvd", *sys.argv[1:]]) if sys.argv else "lvd",
        **({"recipe": recipe.name} if recipe is not None else {}),
    )
    return RunContext(run=run, cfg=cfg, engine=engine, progress=not args.no_progress, **fields)


# -- checking --set keys and values ------------------------------------------------------------
def _describe(annotation: Any, metadata: Any = ()) -> str:
    """A config field's type in words: "an integer >= 1", "one of auto, cpu, cuda", ..."""
    import types
    import typing

    from pydantic import BaseModel

    bounds = " and ".join(f"{sign} {getattr(m, attr)}" for m in metadata
                          for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                          if getattr(m, attr, None) is not None)
    bounds = " " + bounds if bounds else ""
    origin, targs = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in targs)
    if origin in (typing.Union, types.UnionType):
        kinds = " or ".join(_describe(a) for a in targs if a is not type(None))
        return kinds + bounds + (", or null" if type(None) in targs else "")
    if origin is list:
        inner = _describe(targs[0]) if targs else "values"
        return "a list of " + {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(inner, inner)
    if origin is dict:
        return "a mapping ({key: value, ...})"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a section"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(annotation, str(annotation)) + bounds


def check_override(key: str, value: Any, raw: str) -> None:
    """`--set key=value`: the key must name a config field and the value must have its type."""
    import difflib
    import typing
    from typing import Annotated

    from pydantic import BaseModel, TypeAdapter, ValidationError

    model: type[BaseModel] = RunConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        where = ".".join(parts[:depth]) or "the top level"
        if part not in fields:
            keys = list(fields)
            close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
            prefix = ".".join(parts[:depth] + [""])
            hint = f"did you mean {', '.join(prefix + c for c in close)}? " if close else ""
            raise UserError(f"unknown config key {key} in --set {key}={raw}: {hint}(keys of {where}: {', '.join(keys)})")
        field = fields[part]
        annotation = field.annotation
        last = depth == len(parts) - 1
        if not last:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise UserError(f"--set {key}={raw}: {'.'.join(parts[:depth + 1])} is a value, not a section "
                                f"(use --set {'.'.join(parts[:depth + 1])}=VALUE)")
            model = annotation
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            first = next(iter(annotation.model_fields))
            raise UserError(f"--set {key}={raw}: {key} is a section; set its keys one by one, e.g. --set {key}.{first}=... "
                            f"(keys: {', '.join(annotation.model_fields)})")
        try:
            TypeAdapter(Annotated[(annotation, *field.metadata)] if field.metadata else annotation).validate_python(value)
        except ValidationError as exc:
            default = field.get_default(call_default_factory=True)
            example = f", e.g. --set {key}={_yaml(default)}" if default is not None else ""
            # A mapping of sections (embed.models): say which inner value is wrong, and why.
            inner = next((e for e in exc.errors() if e.get("loc")), None) if typing.get_origin(annotation) is dict else None
            why = f"; {key}.{'.'.join(map(str, inner['loc']))}: {inner['msg']}" if inner else ""
            raise UserError(f"bad config value {key}={raw}: {key} expects {_describe(annotation, field.metadata)} "
                            f"(default: {_yaml(default)}){example}{why}") from None


def _yaml(value: Any) -> str:
    import json

    if value is None or isinstance(value, (list, dict, bool)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def lvd_version() -> str | None:
    return versions().get("lvd-builder")


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
    for p in paths:
        if "://" not in p and not os.path.exists(p):
            raise UserError(f"input not found: {p} (check the path; inputs are folders, archives, Parquet files or path lists)")
    return [p if "://" in p else str(Path(p).resolve()) for p in paths]
