"""Shared helpers of the infra lint tests (paths, setup.cfg extras, the `lvd curate` parser)."""
from __future__ import annotations

import configparser
import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKERFILES = sorted((INFRA / "docker").glob("Dockerfile.*"))
RAYJOB = INFRA / "ray" / "rayjob.yaml"
RAY_CLUSTER = INFRA / "ray" / "cluster-gcp.yaml"
METADATA = INFRA / "dataflow" / "metadata.json"
LAUNCH = INFRA / "dataflow" / "launch.sh"
CURATE_MODULE = REPO / "pipelines" / "commands" / "curate.py"
# `pip install <path>[extras]` of this package (not `apache-beam[gcp]` and the like).
PACKAGE_EXTRAS = re.compile(r"(?<![\w-])(?:\.|/|\$HOME/|~/)[^\s\"'\[]*\[([^\]]+)\]")


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flex_main = _load_module("lvd_infra_flex_main", INFRA / "dataflow" / "main.py")
reqs_tool = _load_module("lvd_infra_reqs", INFRA / "docker" / "requirements_from_setup_cfg.py")


def _tool(name: str) -> str | None:
    """An executable on PATH or next to the running interpreter (a venv's bin/)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "setup.cfg")
    return parser


def _extras() -> set[str]:
    cfg = _setup_cfg()
    return set(cfg["options.extras_require"]) if cfg.has_section("options.extras_require") else set()


def _curate_parser(engine: str):
    """The `lvd curate` argparse parser, or skip while the command or the engine does not exist yet.

    The engine-specific flags (`--ray-address`, `--runner`, `--temp-location`, ...) belong to the
    engine (pipelines/options.py passes them through to it), so the check waits for that engine.
    """
    if not CURATE_MODULE.exists():
        pytest.skip("pipelines/commands/curate.py does not exist yet")
    if not list((REPO / "pipelines" / "engines").glob(f"{engine}*.py")):
        pytest.skip(f"the {engine} engine (pipelines/engines/{engine}*.py) does not exist yet")
    import argparse

    from pipelines.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and "curate" in action.choices:
            return action.choices["curate"]
    pytest.fail("`lvd curate` is not registered although pipelines/commands/curate.py exists")


def _parses(parser, argv: list[str]) -> None:
    try:
        parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports errors by exiting
        pytest.fail(f"`lvd curate` rejects {shlex.join(argv)!r} (exit {exc.code})")



def _unknown(mapping: dict, allowed: set[str], where: str) -> list[str]:
    return [f"{where}: unknown field {key!r}" for key in mapping if key not in allowed]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _dockerfile_args(path: Path) -> dict[str, str]:
    args = {}
    for word, rest in _instructions(path):
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key.strip(), value.strip().strip('"'))
    return args


# Everything here, underscore helpers included, is for the test modules beside this one.
def _rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def _entrypoint_argv(doc: dict | None = None) -> list[str]:
    return shlex.split((doc or _rayjob())["spec"]["entrypoint"])


def _ray_cluster() -> dict:
    return yaml.safe_load(RAY_CLUSTER.read_text())


def assert_breakage_caught(checker, original: dict, breakage, expected: str) -> None:
    """Break a deep copy of a config with `breakage` and check that `checker` reports `expected`:
    each lint checker is shown to fail on what it is meant to catch."""
    doc = copy.deepcopy(original)
    breakage(doc)
    problems = checker(doc)
    assert any(expected in p for p in problems), problems


__all__ = [n for n in dir() if not n.startswith("__")]
