"""`lvd eval-dedup`: precision and recall of a run's dedup against a demo world's ground truth, or
the real-photo copy benchmark's (`curation.quality.copy_bench`), with its precision / recall curve."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from curation.core.rundir import RunDir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-dedup", help="score dedup and rejects against truth.parquet",
                       description="Pairwise precision / recall of duplicate detection, recall per copy transform, relative "
                                   "dedup of planted evaluation copies, and the reject breakdown. With the real-photo "
                                   "benchmark's truth, also the precision / recall curve over thresholds on the score the "
                                   "k-NN graphs compare (the pairs the run kept: its edges and its near misses, down to "
                                   "the threshold minus knn.near_band; rerun `lvd dedup --threshold` lower to see further). "
                                   "When the run checked its candidate pairs in the pixels (dedup.verify), the curve sweeps "
                                   "the verified pairs, as plain components (the footprint and linkage splits not applied).")
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--truth", required=True, help="truth.parquet of the demo world (or real-photo copy benchmark) the run ingested")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from curation.quality.copy_score import copy_bench_quality, is_copy_bench, threshold_curve
    from curation.quality.truth import dedup_quality, load_truth, reject_quality
    from curation.core.errors import UserError
    from curation.core.rundir import RunDir
    from curation.core.storage import read_parquet

    run_dir = RunDir(args.run_dir)
    comp = run_dir.path("dedup", "components.parquet")
    if not comp.exists():
        raise UserError(f"{args.run_dir} has no dedup/components.parquet (run `lvd dedup {args.run_dir}` first)")
    truth, root = load_truth(args.truth)
    components = read_parquet(comp)
    curve = None
    if is_copy_bench(truth):
        result = {"dedup": copy_bench_quality(components, truth, root)}
        verified = _verified(run_dir)
        curve = threshold_curve(components, truth, root,
                                verified["self"] if verified else _pairs(run_dir, "knn_edges", "knn_near_misses"),
                                _pairs(run_dir, "hash_edges"),
                                verified["eval"] if verified else _pairs(run_dir, "eval_edges", "eval_near_misses"))
    else:
        result = {"dedup": dedup_quality(components, truth, root)}
    if run_dir.rejects.exists():
        result["rejects"] = reject_quality(read_parquet(run_dir.rejects), truth, root)
    if args.json:
        print(json.dumps({**result, **({"curve": curve} if curve is not None else {})}, indent=2))
        return 0
    for section, values in result.items():
        print(f"{section}:")
        for k, v in values.items():
            print(f"  {k}: {v}")
    if curve is not None:
        print(format_curve(curve))
    return 0


def _pairs(run_dir: RunDir, *names: str) -> pa.Table | None:
    """The rows of the run's `dedup/<name>.parquet` files that exist, as one table (None: none does)."""
    import pyarrow as pa

    from curation.core.storage import read_parquet

    found = [read_parquet(run_dir.path("dedup", f"{n}.parquet")) for n in names if run_dir.path("dedup", f"{n}.parquet").exists()]
    return pa.concat_tables(found) if found else None


def format_curve(curve: list[dict]) -> str:
    """The precision / recall curve as a text table, one threshold a line."""
    rel = any("eval_copies_removed" in r for r in curve)
    head = "threshold  precision  recall" + ("  eval_removed  collateral" if rel else "")
    lines = ["precision / recall over thresholds (hash edges + k-NN edges with score > t):", head]
    for r in curve:
        line = f"{r['threshold']:9.3f}  {r['precision']:9.4f}  {r['recall']:6.4f}"
        if rel:
            line += f"  {r.get('eval_copies_removed') or 0:12.4f}  {r.get('collateral') or 0:10.4f}"
        lines.append(line)
    return "\n".join(lines)


def _verified(run_dir: RunDir) -> dict[str, pa.Table] | None:
    """The self and evaluation pairs the run's `verify` stage verified (src, dst, sim = score), when
    the run verified its candidates; None otherwise."""
    from curation.config import RunConfig
    from pipelines.stages.components import VERIFIED, verified_pairs
    from pipelines.stages.embedding import verify_enabled

    if not run_dir.path(VERIFIED).exists() or not verify_enabled(RunConfig.model_validate(run_dir.manifest().get("config", {}))):
        return None
    pairs = {graph: verified_pairs(run_dir, graph) for graph in ("self", "eval")}
    return {graph: t.append_column("sim", t.column("score")) for graph, t in pairs.items()}
