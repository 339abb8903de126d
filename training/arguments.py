"""The trainer's command-line arguments, shared by `lvd train` and `torchrun -m training.train`."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by `lvd train` and `python -m training.train` (torchrun)."""
    p.add_argument("--config", default="vits14",
                   help="trainer YAML, or a bundled config name: tiny, vits14, vitb14, vitl14, vitg14 (training/configs/)")
    p.add_argument("--data", required=True, help="Parquet shards with an `image` column: RUN/output, a file, a glob or an fsspec URL")
    p.add_argument("--out", default="runs/train", help="run directory: config, log.jsonl, checkpoints, backbone.pth (resumed if present)")
    p.add_argument("--distill-from", default=None, metavar="TEACHER",
                   help="distil from a frozen teacher: a backbone exported with --with-heads, or a training run/checkpoint")
    p.add_argument("--init", default=None, metavar="NAME:PATH",
                   help="continue pretraining from a released checkpoint in its official layout, e.g. "
                   "dinov2_vitb14:/weights/dinov2_vitb14_pretrain.pth (DINOv2 vit{s,b,l,g}14[_reg4], DINOv3 "
                   "vit{s,s+,b,l,h+,7b}16): student and teacher backbones from the file, heads fresh")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.base_lr=1e-3 train.max_steps=100")


def init_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides with `--init` as `model.init` (quoted: a path may hold YAML syntax)."""
    return list(args.overrides) + ([f"model.init={json.dumps(args.init)}"] if args.init else [])
