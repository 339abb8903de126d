"""Train the copy descriptor (`training.copydet.model`) with the SSCD recipe, on CPU, deterministically.

    OMP_NUM_THREADS=1 python -m training.copydet.train --out lvd_copy_v1.safetensors --seed 0

AdamW (weight decay 1e-4), linear warm-up then cosine decay, on batches of `--instances` view
pairs at `--size` pixels (`training.copydet.data.PairBatches`); the loss is `training.copydet.loss`.
One thread and a fixed seed give the same weights on every run (batch k depends on (seed, k) only).
The trained parameters are written as float16 safetensors to `--out` (also every `--save-every`
steps, so a long run can be scored while it trains).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from training.copydet.data import PairBatches, training_photos
from training.copydet.loss import KOLEO_WEIGHT, TEMPERATURE, copy_loss
from training.copydet.model import DIM, CopyDescriptor, build, save_trained


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 1 % of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def optimiser(model: CopyDescriptor, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trained parameters; the fresh projection and GeM learn 10x faster."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("proj.", "pool."))]
    trunk = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("trained.")]
    return torch.optim.AdamW([{"params": trunk, "scale": 1.0}, {"params": head, "scale": 10.0}], lr=lr, weight_decay=1e-4)


def train(out: Path, seed: int = 0, steps: int = 1200, instances: int = 32, size: int = 160, lr: float = 1e-4,
          warmup: int = 50, temperature: float = TEMPERATURE, koleo_weight: float = KOLEO_WEIGHT, dim: int = DIM,
          save_every: int = 100, log_every: int = 10, stop_after: int | None = None, log=print) -> list[dict[str, float]]:
    """Train from the packaged trunk and write the trained parameters to `out`; returns the log rows.
    `stop_after`: end after that many steps of the `steps`-long schedule (the same weights as the
    checkpoint a full run writes at that step)."""
    torch.manual_seed(seed)
    model = build(dim, flip_invariant=False, seed=seed)  # flips are learnt from the views
    model.train()
    opt = optimiser(model, lr)
    data = PairBatches(training_photos(), instances=instances, size=size, seed=seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(min(steps, stop_after or steps)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup) * group["scale"]
        x = data.batch(step)
        loss, parts = copy_loss(model(x), temperature, koleo_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0:
            row = {"step": step, **{k: round(v, 4) for k, v in parts.items()}, "seconds": round(time.perf_counter() - start, 1)}
            history.append(row)
            log(json.dumps(row))
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save_trained(model, out)
    save_trained(model, out)
    return history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--instances", type=int, default=32, help="view pairs per batch")
    ap.add_argument("--size", type=int, default=160, help="training input side")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--temperature", type=float, default=TEMPERATURE)
    ap.add_argument("--koleo-weight", type=float, default=KOLEO_WEIGHT)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: bit-reproducible)")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--stop-after", type=int, default=None, help="end after this many steps of the --steps schedule")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    train(args.out, args.seed, args.steps, args.instances, args.size, args.lr, args.warmup, args.temperature,
          args.koleo_weight, save_every=args.save_every, stop_after=args.stop_after, log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
