"""`lvd demo-world`: generate the embedded demo world (pool, seeds, evaluation sets, truth)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-world", help="generate the demo world (no downloads)",
                       description="Generate an uncurated demo pool with ground truth, seed sets and evaluation sets "
                                   "from photos bundled in installed packages and procedural images.")
    p.add_argument("--out", required=True, help="directory to (re)create")
    p.add_argument("--size", choices=["small", "medium", "web"], default="small",
                   help="small: ~3k files, medium: ~30k, web: ~8k, mostly off-concept images and duplicates (lvd ablate)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from curation.demo.world import build_world

    root = build_world(args.out, args.size, args.seed)
    info = json.loads((root / "world.json").read_text())
    print(f"demo world ({args.size}, seed {args.seed}) in {root}: " + ", ".join(f"{k}={v}" for k, v in info["files"].items()))
    return 0
