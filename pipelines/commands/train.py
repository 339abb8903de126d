"""`lvd train`: the bundled DINOv2 trainer on curated Parquet shards (see training/README.md)."""
from __future__ import annotations

import argparse

from training.arguments import add_arguments, init_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a DINOv2 ViT on curated shards",
        description="Train a DINOv2 ViT (DINO + iBOT + KoLeo, EMA teacher) on RUN/output shards. "
        "Single process here; multi-GPU/multi-node with `torchrun -m training.train` and the same arguments. "
        "Reruns with the same --out resume from the latest checkpoint.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.train import run_training

    cfg = load_config(args.config, init_overrides(args))
    summary = run_training(cfg, args.data, args.out, args.distill_from)
    last = summary.get("last", {})
    print(f"trained {summary['iterations']} iterations, last loss {last.get('loss', float('nan')):.4f}; "
          f"run directory {summary['out']}" + (f"; backbone {summary['backbone']}" if "backbone" in summary else ""))
    return 0
