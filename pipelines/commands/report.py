"""`lvd report RUN`: (re)write RUN/report.html from whatever the run has produced so far."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="(re)write RUN/report.html: funnel, recipe, galleries, rejects",
                       description="Render the self-contained HTML report of a run directory (no network, no scripts). "
                                   "Sections whose stage has not run yet say so.")
    p.add_argument("run_dir", metavar="RUN", help="run directory (with manifest.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from curation.report.write import write_report
    from curation.core.errors import UserError
    from curation.core.rundir import run_path

    root = run_path(args.run_dir)
    if not (root / "manifest.json").is_file():
        raise UserError(f"{root} is not a run directory (no manifest.json); run `lvd curate --out {root}` first")
    print(write_report(root))
    return 0
