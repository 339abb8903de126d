"""`lvd ablate`: the paper's Table 2 at our scale: a tiny ViT trained on the curated output, on an
equal-size random sample of the uncurated pool and on the seeds alone, scored by k-NN accuracy."""
from __future__ import annotations

import argparse

#: Held-out images per seed concept generated from a demo world: k-NN bank, test.
HELDOUT_TRAIN, HELDOUT_TEST = 40, 100


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="curated vs uncurated vs seeds alone: a tiny ViT each, k-NN accuracy (paper Table 2)",
        description="Train the tiny config for the same number of iterations on (a) RUN/output, (b) an equal-size "
        "random sample of the run's pool, (c) the seed sets alone, once per training seed, and report k-NN top-1 "
        "accuracy on held-out images of the seed concepts (mean ± standard error over seeds, and the paired "
        "difference (a) - (b)). On a demo world the held-out set is generated: fresh images of the seed concepts, "
        "disjoint from the pool and the seeds. Writes RUN/ablation/ablation.{json,md}; the report shows the table.")
    p.add_argument("run", metavar="RUN", help="a curated run directory (lvd curate on a demo world)")
    p.add_argument("--world", default=None, help="its demo world (default: the one the run was curated from)")
    p.add_argument("--heldout", default=None, metavar="DIR",
                   help="labelled evaluation set DIR/{train,test}/<concept>/ (default: generated from the demo world)")
    p.add_argument("--heldout-size", default=f"{HELDOUT_TRAIN},{HELDOUT_TEST}", metavar="TRAIN,TEST",
                   help=f"generated held-out images per seed concept: k-NN bank, test (default {HELDOUT_TRAIN},{HELDOUT_TEST})")
    p.add_argument("--out", default=None, help="where to write (default RUN/ablation)")
    p.add_argument("--steps", type=int, default=None, help="iterations per arm (default: tiny.yaml's schedule)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of training/configs/tiny.yaml (repeatable)")
    p.set_defaults(func=run)


def heldout_for(run_dir, world, out, size: str):
    """The held-out set generated from the demo world `world` into OUT/heldout (None when `world` is
    not a demo world, so the ablation falls back to its evaluation set)."""
    import json
    from pathlib import Path

    from curation.core.errors import UserError
    from curation.demo.world import build_heldout
    from training.ablate import run_seed_concepts

    meta = Path(world) / "world.json"
    if not meta.exists() or not (Path(run_dir) / "seeds").is_dir():
        return None
    try:
        n_train, n_test = (int(v) for v in size.split(","))
    except ValueError:
        raise UserError(f"--heldout-size takes TRAIN,TEST image counts (got {size!r})") from None
    concepts = run_seed_concepts(Path(run_dir), Path(world))
    return build_heldout(Path(out) / "heldout", concepts, n_train, n_test, int(json.loads(meta.read_text()).get("seed", 0)))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.ablate import run_ablation, table

    run_dir = Path(args.run)
    world = Path(args.world) if args.world else run_dir / "world"
    if not args.world and not (world / "world.json").exists() and (run_dir / "manifest.json").exists():
        import json

        pools = json.loads((run_dir / "manifest.json").read_text()).get("inputs", {}).get("pool") or []
        if len(pools) == 1 and (Path(pools[0]).parent / "world.json").exists():  # curated with --world DIR
            world = Path(pools[0]).parent
    out = Path(args.out) if args.out else run_dir / "ablation"
    heldout = Path(args.heldout) if args.heldout else heldout_for(run_dir, world, out, args.heldout_size)
    result = run_ablation(run_dir, world, out, args.steps, args.overrides, args.seeds, heldout)
    print(table(result))
    if out.resolve() == (run_dir / "ablation").resolve() and (run_dir / "report.html").exists():
        from curation.report.write import write_report

        print(f"report: {write_report(run_dir)} (ablation section)")
    return 0
