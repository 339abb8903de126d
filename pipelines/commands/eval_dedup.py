"""`lvd eval-dedup`: precision and recall of a run's dedup against a demo world's ground truth."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-dedup", help="score dedup and rejects against truth.parquet",
                       description="Pairwise precision / recall of duplicate detection, recall per copy transform, relative "
                                   "dedup of planted evaluation copies, and the reject breakdown.")
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--truth", required=True, help="truth.parquet of the demo world the run ingested")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from curation.quality import dedup_quality, load_truth, reject_quality
    from pipelines.errors import UserError
    from pipelines.rundir import RunDir
    from pipelines.storage import read_parquet

    run_dir = RunDir(args.run_dir)
    comp = run_dir.path("dedup", "components.parquet")
    if not comp.exists():
        raise UserError(f"{args.run_dir} has no dedup/components.parquet (run `lvd dedup {args.run_dir}` first)")
    truth, root = load_truth(args.truth)
    result = {"dedup": dedup_quality(read_parquet(comp), truth, root)}
    if run_dir.rejects.exists():
        result["rejects"] = reject_quality(read_parquet(run_dir.rejects), truth, root)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for section, values in result.items():
            print(f"{section}:")
            for k, v in values.items():
                print(f"  {k}: {v}")
    return 0
