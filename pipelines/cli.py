"""The `lvd` command line.

Every subcommand lives in its own module under `pipelines/commands/` and exposes
`register(subparsers)`; the module is discovered here, so adding a command never edits this file.
A command's handler is `args.func(args) -> int`. `UserError`, missing files, permissions and a full
disk (ENOSPC / EDQUOT, also when a worker's error wraps it) print one line and exit 2; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Sequence

from pipelines import commands
from curation.core.errors import UserError, disk_full


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvd",
        description="LVD builder: curate a DINOv2-style pretraining set from an uncurated image pool.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX probing is noise to users
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"lvd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"lvd {args.command}: error: no such file or directory: {exc.filename or exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"lvd {args.command}: error: permission denied: {exc.filename or exc}: run as a user who may write "
              "there, or choose another --out", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lvd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            raise
        print(f"lvd {args.command}: error: {disk_full_message(args, exc, *full)}", file=sys.stderr)
        return 2


def _run_dir(args: argparse.Namespace) -> str | None:
    for name in ("out", "run_dir", "run"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            return value
    return None


def _stage(exc: BaseException) -> str | None:
    """The stage the driver was running when `exc` rose (`pipelines.graph.run_stages`' frame)."""
    tb, name = exc.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "run_stages" and hasattr(frame.f_locals.get("stage"), "name"):
            name = frame.f_locals["stage"].name
        tb = tb.tb_next
    return name


def disk_full_message(args: argparse.Namespace, exc: BaseException, what: str, filename: str | None) -> str:
    """One line: what filled up, what was being written, in which run, and what to do."""
    run, stage = _run_dir(args), _stage(exc)
    writing = f" writing {filename}" if filename else ""
    during = f" (stage {stage})" if stage else ""
    where = f" in the run directory {run}" if run else ""
    return (f"{what}{writing}{during}{where}: free space on that disk and rerun the same command to resume "
            "(completed work is kept), or start over with --out on a larger disk")


if __name__ == "__main__":
    sys.exit(main())
