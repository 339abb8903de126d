"""`make train-demo`: train the tiny ViT on a curated demo run and show k-NN before / after.

    python -m training.demo --run runs/demo [--world DIR] [key=value ...]

Reads `RUN/output/*.parquet` (from `make curate`), trains `training/configs/tiny.yaml` into
`RUN/train` (resuming if it is there), then evaluates the model at initialisation and the trained
backbone with the DINO k-NN protocol on the demo world's labelled set
`WORLD/eval/demo_eval/{train,test}` (WORLD defaults to `RUN/world`). Writes `RUN/train/demo.json`.
The same steps by hand:

    lvd train --config training/configs/tiny.yaml --data RUN/output --out RUN/train
    lvd eval-knn --checkpoint RUN/train/backbone.pth --train WORLD/eval/demo_eval/train --val WORLD/eval/demo_eval/test
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from curation.core.errors import UserError

EVAL_SET = "demo_eval"
TINY = Path(__file__).parent / "configs" / "tiny.yaml"


def run_demo(run: Path, world: Path | None, overrides: Sequence[str]) -> dict:
    import torch

    from training.config import load_config
    from training.eval.evaluate import evaluate_model
    from training.export import IMAGENET_MEAN, IMAGENET_STD, load_backbone
    from training.meta_arch import SSLMetaArch
    from training.train import run_training

    if not sorted((run / "output").glob("*.parquet")):
        raise UserError(f"no curated shards in {run / 'output'}: run `make curate RUN={run}` first")
    world = world or run / "world"
    train_set, test_set = world / "eval" / EVAL_SET / "train", world / "eval" / EVAL_SET / "test"
    if not train_set.is_dir() or not test_set.is_dir():
        raise UserError(f"no labelled evaluation set at {world / 'eval' / EVAL_SET}; pass --world DIR (the demo world of the run)")
    cfg = load_config(TINY, overrides)

    torch.manual_seed(int(cfg.train.seed))  # the trainer's seed: the weights the run starts from
    initial = SSLMetaArch(cfg).teacher["backbone"]
    info = {"img_size": int(cfg.crops.global_crops_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    before = evaluate_model(initial, info, train_set, test_set)
    summary = run_training(cfg, str(run / "output"), run / "train")
    model, info = load_backbone(run / "train" / "backbone.pth")
    after = evaluate_model(model, info, train_set, test_set)
    result = {"knn_top1_init": before["knn_top1"], "knn_top1_trained": after["knn_top1"], "n_val": after["n_val"],
              "n_train": after["n_train"], "n_classes": after["n_classes"], "iterations": summary["iterations"],
              "last_loss": summary["last"].get("loss"), "backbone": str(run / "train" / "backbone.pth")}
    (run / "train" / "demo.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="a curated run directory (make curate)")
    parser.add_argument("--world", default=None, help="its demo world (default RUN/world)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="tiny.yaml overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        r = run_demo(Path(args.run), Path(args.world) if args.world else None, args.overrides)
    except UserError as exc:
        print(f"train-demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"k-NN top-1 on {r['n_val']} {EVAL_SET} test images ({r['n_classes']} classes): "
          f"{100 * r['knn_top1_init']:.1f}% at initialisation -> {100 * r['knn_top1_trained']:.1f}% after "
          f"{r['iterations']} iterations; backbone {r['backbone']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
