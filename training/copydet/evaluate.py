"""Score a copy descriptor on the real-photo benchmark directly (no run directory): embed its files,
link every pair above a threshold, and score with `curation.quality.copy_score` per split (tuning photos,
held-out photos). The thresholds of the shipped model are chosen here, on the tuning split only.

    python -m training.copydet.evaluate WEIGHTS BENCH_ROOT [--size 224] [--json out.json] [--demo-world ROOT]

(BENCH_ROOT: a `curation.quality.copy_bench.build_copy_bench` output; built there when missing.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from curation.quality.copy_score import components_from_pairs, split_quality
from training.copydet.data import normalise, to_input

Embed = Callable[[list[Path]], np.ndarray]


def embedder(model: torch.nn.Module, size: int = 224, batch: int = 32) -> Embed:
    """Files -> float32 [n, D] L2-normalised descriptors, at `size` pixels."""
    def run(paths: list[Path]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for k in range(0, len(paths), batch):
                px = np.stack([to_input(Image.open(p), size) for p in paths[k:k + batch]])
                out.append(model(normalise(px)).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return run


def bench_embeddings(root: Path, embed: Embed) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(pool sources, pool descriptors, evaluation-original descriptors) of a benchmark."""
    truth = pq.read_table(root / "truth.parquet").to_pylist()
    pool = [root / r["source"] for r in truth if r["source"].startswith("pool/")]
    evals = [root / r["source"] for r in truth if r["kind"] == "eval-original"]
    return [str(p) for p in pool], embed(pool), embed(evals)


def components_at(sources: list[str], pool: np.ndarray, evals: np.ndarray, self_t: float, rel_t: float) -> pa.Table:
    """The components of the pairs with cosine > self_t; a component is `eval-duplicate` when one
    of its rows has cosine > rel_t to an evaluation original (as `lvd dedup --against` removes)."""
    sims = pool @ pool.T
    i, j = np.nonzero(np.triu(sims > self_t, 1))
    comp = components_from_pairs(sources, list(zip(i.tolist(), j.tolist())))
    labels = np.array(comp.column("component").to_pylist())
    hit = (evals @ pool.T).max(axis=0) > rel_t if len(evals) else np.zeros(len(sources), bool)
    removed = np.isin(labels, labels[hit])
    return comp.set_column(2, "reason", pa.array(["eval-duplicate" if r else "kept" for r in removed]))


def sweep(root: Path, sources: list[str], pool: np.ndarray, evals: np.ndarray,
          thresholds: np.ndarray) -> list[dict[str, Any]]:
    """Per threshold (the same for self and relative): precision, recall, removed, collateral per split."""
    truth = pq.read_table(root / "truth.parquet")
    rows = []
    for t in thresholds:
        q = split_quality(components_at(sources, pool, evals, float(t), float(t)), truth, root)
        rows.append({"threshold": round(float(t), 3), **{
            f"{s}_{k}": v for s, sq in q.items() for k, v in (("precision", sq["precision"]), ("recall", sq["recall"]),
                                                              ("removed", sq["relative"]["eval_copies_removed"]),
                                                              ("collateral", sq["relative"]["collateral"]))}})
    return rows


def choose_threshold(curve: list[dict[str, Any]], split: str = "tune", min_precision: float = 0.99) -> float:
    """Self dedup: the lowest threshold whose `split` precision is at least `min_precision` (the
    most recall at the target precision)."""
    ok = [r["threshold"] for r in curve if r[f"{split}_precision"] >= min_precision]
    return min(ok) if ok else max(r["threshold"] for r in curve)


def choose_relative(curve: list[dict[str, Any]], self_t: float, split: str = "tune", max_collateral: float = 0.005) -> float:
    """Relative dedup: the lowest threshold, at most `self_t`, whose `split` collateral is at most
    `max_collateral` (half the target's 1 %: the margin for other data)."""
    ok = [r["threshold"] for r in curve if r[f"{split}_collateral"] <= max_collateral and r["threshold"] <= self_t]
    return min(ok) if ok else self_t


def _pairs(*keys: np.ndarray) -> int:
    _, counts = np.unique(np.rec.fromarrays(keys), return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def demo_world_scores(root: Path, embed: Embed, self_t: float, rel_t: float) -> dict[str, Any]:
    """Pairwise precision / recall (embedding pairs only, all pairs) of the demo world's pool
    originals and copies, and relative dedup of its evaluation set against the whole pool."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = [r for r in pq.read_table(root / "truth.parquet").to_pylist() if r["kind"] in ("original", "copy", "eval-copy", "eval")]
    pool = [r for r in rows if r["kind"] != "eval"]
    x = embed([root / r["source"] for r in pool])
    v = embed([root / r["source"] for r in rows if r["kind"] == "eval"])
    sims = x @ x.T
    _, labels = connected_components(coo_matrix(np.triu(sims > self_t, 1)), directed=False)
    lab = np.array([r["kind"] in ("original", "copy") for r in pool])
    group = np.array([r["dup_group"] for r in pool])[lab]
    pred, good, true = _pairs(labels[lab]), _pairs(labels[lab], group), _pairs(group)
    per: dict[str, list[bool]] = {}
    first = {g: labels[lab][k] for k, g in reversed(list(enumerate(group)))}
    for r, c in zip(np.array(pool)[lab], labels[lab]):
        if r["kind"] == "copy":
            per.setdefault(r["transform"], []).append(bool(first[r["dup_group"]] == c))
    ev = np.array([r["kind"] == "eval-copy" for r in pool])
    removed = (v @ x.T).max(axis=0) > rel_t
    return {"precision": round(good / max(pred, 1), 4), "recall": round(good / max(true, 1), 4),
            "recall_by_transform": {t: round(float(np.mean(b)), 4) for t, b in sorted(per.items())},
            "eval_copies_removed": round(float(removed[ev].mean()), 4), "collateral": round(float(removed[~ev].mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    from curation.quality.copy_bench import build_copy_bench
    from training.copydet.model import load_trained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--self-threshold", type=float, default=None)
    ap.add_argument("--relative-threshold", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--demo-world", type=Path, default=None, help="also score this demo world (curation.demo.world) at the chosen thresholds")
    ap.add_argument("--lo", type=float, default=0.3, help="lowest threshold of the sweep")
    ap.add_argument("--step", type=float, default=0.025, help="threshold step of the sweep")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not (args.root / "truth.parquet").exists():
        build_copy_bench(args.root, seed=0)
    cache = args.weights.with_suffix(f".bench{args.size}{'' if args.no_flip else 'f'}.npz")
    if cache.exists() and cache.stat().st_mtime > args.weights.stat().st_mtime:
        z = np.load(cache)
        sources, pool, evals = [str(s) for s in z["sources"]], z["pool"], z["evals"]
    else:
        model = load_trained(args.weights, flip_invariant=not args.no_flip)
        sources, pool, evals = bench_embeddings(args.root, embedder(model, args.size))
        np.savez(cache, sources=np.array(sources), pool=pool, evals=evals)
    curve = sweep(args.root, sources, pool, evals, np.round(np.arange(args.lo, 0.96, args.step), 3))
    for r in curve:
        print(json.dumps(r))
    st = args.self_threshold or choose_threshold(curve)
    rt = args.relative_threshold or choose_relative(curve, st)
    q = split_quality(components_at(sources, pool, evals, st, rt), pq.read_table(args.root / "truth.parquet"), args.root)
    print(json.dumps({"self_threshold": st, "relative_threshold": rt, **q}, indent=1))
    if args.demo_world:
        model = load_trained(args.weights, flip_invariant=not args.no_flip)
        q["demo_world"] = demo_world_scores(args.demo_world, embedder(model, args.size), st, rt)
        print(json.dumps({"demo_world": q["demo_world"]}))
    if args.json:
        args.json.write_text(json.dumps({"curve": curve, "self_threshold": st, "relative_threshold": rt, "at": q}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
