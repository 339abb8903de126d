"""The paper's Table 2 at our scale: is curated data better pretraining data than the raw pool?

    python -m training.ablate --run RUN [--world DIR] [--heldout DIR] [--steps N] [--seeds S] [--out DIR] [key=value ...]

Trains the tiny ViT (`training/configs/tiny.yaml`, the same number of steps) on
  (a) curated: the run's output shards (`RUN/output`);
  (b) uncurated: a seeded random sample of the run's pool (`RUN/pool`, before any dedup or
      retrieval) of the same size as (a);
  (c) seeds: the seed datasets alone (`RUN/seeds/*/pool`);
once per training seed (`train.seed` = 0 .. S-1; arm (b) also draws its sample with that seed), and
reports the DINO k-NN accuracy (k 20, T 0.07) of each backbone, and of the untrained one, on
held-out labelled images of the concepts of the seed sets ("seed concepts"): HELDOUT/{train,test}
(an ImageFolder pair: the k-NN bank and the test images; `lvd ablate` generates a large one from
the demo world, `curation.demo.world.build_heldout`), else the demo world's `eval/demo_eval`.
Per arm: the mean over seeds and its standard error; paired: (a) - (b) and (a) - (c) seed by seed,
with the standard error of the mean difference, and whether it exceeds 2 SE. With the demo world's
truth (WORLD/truth.parquet) also what each arm's images are: share on a seed concept, duplicates.
Writes `OUT/ablation.json` and `OUT/ablation.md` (OUT defaults to `RUN/ablation`).
DINOv2 Table 2 (ViT-g/14, ImageNet-1k linear): uncurated 73.6 < curated 85.8 (LVD-142M).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.errors import UserError

TINY = Path(__file__).parent / "configs" / "tiny.yaml"
EVAL_SET = "demo_eval"
ARMS = ("curated", "uncurated", "seeds")
LABELS = {"init": "untrained", "curated": "(a) curated output", "uncurated": "(b) uncurated pool sample",
          "seeds": "(c) seeds alone"}
PAIRS = (("curated", "uncurated"), ("curated", "seeds"))
log = logging.getLogger("training.ablate")


def mean_se(values: Sequence[float]) -> dict[str, Any]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); None for n < 2)."""
    v = np.asarray(values, np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "se": None}
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return {"n": int(len(v)), "mean": float(v.mean()), "se": se}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """The seed-by-seed difference a - b: its values, mean, standard error, and whether the mean
    exceeds twice its standard error (False when the SE is unknown, n < 2)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs one value per seed in both arms ({len(a)} != {len(b)})")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    stats = mean_se(diffs)
    beyond = stats["se"] is not None and stats["mean"] > 2 * stats["se"]
    return {"diffs": diffs, **stats, "beyond_2se": bool(beyond)}


def summarise(per_seed: dict[str, list[float]]) -> dict[str, Any]:
    """Per arm mean +- SE over seeds, and the paired differences of `PAIRS` present in `per_seed`."""
    arms = {arm: {"top1": list(map(float, v)), **mean_se(v)} for arm, v in per_seed.items()}
    pairs = {f"{a} - {b}": paired(per_seed[a], per_seed[b]) for a, b in PAIRS if a in per_seed and b in per_seed}
    return {"arms": arms, "paired": pairs}


def _files(pattern_root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in pattern_root.glob(pattern) if p.is_file())


def _rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _write_images(ids: list[str], images: list[bytes], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image_id": pa.array(ids, pa.string()), "image": pa.array(images, pa.binary())})
    pq.write_table(table, out / "part-00000.parquet", row_group_size=64)
    return out


def sample_pool(pool_files: list[Path], n: int, seed: int, out: Path) -> Path:
    """A uniform random sample (seeded, without replacement) of `n` pool rows, as a shard directory
    (the pool's image ids kept)."""
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in pool_files]
    total = sum(sizes)
    if total < n:
        raise UserError(f"the pool has {total} rows, fewer than the {n} curated ones to match")
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    ids: list[str] = []
    images: list[bytes] = []
    start = 0
    for f, size in zip(pool_files, sizes):
        local = chosen[(chosen >= start) & (chosen < start + size)] - start
        if len(local):
            t = pq.read_table(f, columns=["image_id", "image"]).take(pa.array(local))
            ids += [str(i) for i in t.column("image_id").to_pylist()]
            images += t.column("image").to_pylist()
        start += size
    return _write_images(ids, images, out)


def seed_images(seed_files: list[Path], out: Path) -> Path:
    tables = [pq.read_table(f, columns=["image_id", "image"]) for f in seed_files]
    return _write_images([str(i) for t in tables for i in t.column("image_id").to_pylist()],
                         [img for t in tables for img in t.column("image").to_pylist()], out)


def _subset(split: Path, classes: list[str], out: Path) -> Path:
    """An ImageFolder view of `split` with only `classes` (symlinks)."""
    out.mkdir(parents=True, exist_ok=True)
    for c in classes:
        link = out / c
        if not link.exists():
            link.symlink_to((split / c).resolve(), target_is_directory=True)
    return out


def run_seed_concepts(run: Path, world: Path) -> list[str]:
    """Concepts of the run's seed sets (the folders of WORLD/seeds/<set>/)."""
    names: set[str] = set()
    for seed_set in sorted(p.name for p in (run / "seeds").iterdir() if p.is_dir()):
        src = world / "seeds" / seed_set
        names |= {p.name for p in src.iterdir() if p.is_dir()} if src.is_dir() else set()
    return sorted(names)


def seed_concepts(run: Path, world: Path, heldout: Path | None = None) -> list[str]:
    """Concepts of the run's seed sets that the evaluation set also labels."""
    test = (heldout or world / "eval" / EVAL_SET) / "test"
    labelled = {p.name for p in test.iterdir() if p.is_dir()}
    return sorted(set(run_seed_concepts(run, world)) & labelled)


def _ids(files: list[Path]) -> list[str]:
    return [str(i) for f in files for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()]


def truth_labels(run: Path, world: Path) -> dict[str, tuple[str, str]] | None:
    """image_id -> (concept, duplicate group) for the run's pool and seed images, from the demo
    world's truth (None without one)."""
    truth_file = world / "truth.parquet"
    if not truth_file.exists():
        return None
    truth = {r["source"]: (r["concept"], r["dup_group"]) for r in pq.read_table(truth_file, columns=["source", "concept", "dup_group"]).to_pylist()}
    root = world.resolve()
    labels: dict[str, tuple[str, str]] = {}
    for f in _files(run / "pool", "part-*.parquet") + _files(run / "seeds", "*/pool/*.parquet"):
        for r in pq.read_table(f, columns=["image_id", "source"]).to_pylist():
            try:
                rel = Path(r["source"]).resolve().relative_to(root).as_posix()
            except ValueError:
                continue
            if rel in truth:
                labels.setdefault(str(r["image_id"]), truth[rel])
    return labels


def composition(ids: Sequence[str], labels: dict[str, tuple[str, str]], concepts: Sequence[str]) -> dict[str, Any]:
    """What an arm's images are: how many on a seed concept, how many repeat an image already in the
    arm (the same duplicate group: exact or planted near copies), and the count per concept."""
    per: dict[str, int] = {}
    groups: set[str] = set()
    dups = on = 0
    wanted = set(concepts)
    for i in ids:
        concept, group = labels.get(i, ("?", i))
        concept = concept or "?"
        per[concept] = per.get(concept, 0) + 1
        on += concept in wanted
        key = group or i
        dups += key in groups
        groups.add(key)
    n = len(ids)
    return {"images": n, "on_seed_concept": on, "on_seed_concept_share": round(on / n, 4) if n else None,
            "duplicates": dups, "duplicate_share": round(dups / n, 4) if n else None,
            "per_concept": dict(sorted(per.items(), key=lambda kv: (-kv[1], kv[0])))}


def _cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    if path.exists():
        got = json.loads(path.read_text())
        if got.get("key") == key:
            return got
    return None


def run_ablation(run: Path, world: Path | None, out: Path | None, steps: int | None, overrides: Sequence[str],
                 seeds: int = 1, heldout: Path | None = None) -> dict[str, Any]:
    """Train every arm once per seed and evaluate; a finished (arm, seed) with the same settings is
    read back from OUT/results/ instead of retrained (a rerun after a crash resumes)."""
    import torch

    from training.config import load_config
    from training.eval.evaluate import evaluate_model
    from training.export import IMAGENET_MEAN, IMAGENET_STD, load_backbone
    from training.meta_arch import SSLMetaArch
    from training.train import run_training

    started = time.perf_counter()
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1 (got {seeds})")
    world = world or run / "world"
    out = out or run / "ablation"
    curated = _files(run / "output", "*.parquet")
    pool = _files(run / "pool", "part-*.parquet")
    seed_files = _files(run / "seeds", "*/pool/*.parquet")
    for what, files in (("curated shards in RUN/output", curated), ("pool shards in RUN/pool", pool),
                        ("seed pools in RUN/seeds/*/pool", seed_files)):
        if not files:
            raise UserError(f"no {what} under {run}: run `lvd curate --out {run}` first")
    eval_root = heldout or world / "eval" / EVAL_SET
    test_split, train_split = eval_root / "test", eval_root / "train"
    if not test_split.is_dir() or not train_split.is_dir():
        raise UserError(f"no labelled evaluation set at {eval_root}; pass --world DIR (the run's demo world) or --heldout DIR")
    concepts = seed_concepts(run, world, heldout)
    if not concepts:
        raise UserError(f"the evaluation set {eval_root} labels none of the run's seed concepts")
    tr, te = _subset(train_split, concepts, out / "eval" / "train"), _subset(test_split, concepts, out / "eval" / "test")
    n_train = sum(1 for c in concepts for _ in (train_split / c).iterdir())
    n_test = sum(1 for c in concepts for _ in (test_split / c).iterdir())

    n = _rows(curated)
    data: dict[str, Path] = {"curated": run / "output", "seeds": seed_images(seed_files, out / "data" / "seeds")}
    for s in range(seeds):
        data[f"uncurated-{s}"] = sample_pool(pool, n, s, out / "data" / f"uncurated-{s}")
    sizes = {"curated": n, "uncurated": n, "seeds": _rows(_files(data["seeds"], "*.parquet"))}

    base = load_config(TINY, overrides)
    extra = [f"optim.epoch_length={max(1, steps // int(base.optim.epochs))}"] if steps else []
    cfg_overrides = list(overrides) + extra
    base_seed = int(base.train.seed)

    def evaluate(model, info) -> float:
        return float(evaluate_model(model, info, tr, te)["knn_top1"])

    per_seed: dict[str, list[float]] = {"init": [], **{arm: [] for arm in ARMS}}
    losses: dict[str, list[float | None]] = {arm: [] for arm in ARMS}
    seconds: dict[str, float] = {arm: 0.0 for arm in ARMS}
    iterations = 0
    for s in range(seeds):
        seed_overrides = cfg_overrides + [f"train.seed={base_seed + s}"]
        cfg = load_config(TINY, seed_overrides)
        torch.manual_seed(int(cfg.train.seed))
        info = {"img_size": int(cfg.crops.global_crops_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        per_seed["init"].append(evaluate(SSLMetaArch(cfg).teacher["backbone"].eval(), info))
        for arm in ARMS:
            key = {"arm": arm, "seed": base_seed + s, "overrides": seed_overrides, "images": sizes[arm],
                   "eval": [str(eval_root), concepts, n_train, n_test]}
            result_file = out / "results" / f"{arm}-{s}.json"
            got = _cached(result_file, key)
            if got is None:
                t0 = time.perf_counter()
                train_dir = out / f"train_{arm}_{s}"
                summary = run_training(load_config(TINY, seed_overrides), str(data[arm if arm != "uncurated" else f"uncurated-{s}"]), train_dir)
                model, info = load_backbone(train_dir / "backbone.pth")
                got = {"key": key, "iterations": summary["iterations"], "last_loss": summary["last"].get("loss"),
                       "top1": evaluate(model, info), "seconds": round(time.perf_counter() - t0, 1)}
                result_file.parent.mkdir(parents=True, exist_ok=True)
                result_file.write_text(json.dumps(got, indent=2))
            log.info("seed %d %s: k-NN top-1 %.4f (%s s)", base_seed + s, arm, got["top1"], got["seconds"])
            iterations = got["iterations"]
            per_seed[arm].append(got["top1"])
            losses[arm].append(got["last_loss"])
            seconds[arm] += got["seconds"]

    summary = summarise(per_seed)
    for arm in ARMS:
        summary["arms"][arm].update({"images": sizes[arm], "last_loss": losses[arm], "train_eval_seconds": round(seconds[arm], 1)})
    summary["arms"]["init"]["images"] = 0
    labels = truth_labels(run, world)
    if labels is not None:
        ids = {"curated": _ids(curated), "uncurated": _ids(_files(data["uncurated-0"], "*.parquet")),
               "seeds": _ids(_files(data["seeds"], "*.parquet"))}
        for arm in ARMS:
            summary["arms"][arm]["composition"] = composition(ids[arm], labels, run_seed_concepts(run, world))
    gap = summary["paired"]["curated - uncurated"]
    result = {"iterations": iterations, "seeds": [base_seed + s for s in range(seeds)], "config": str(TINY),
              "overrides": cfg_overrides, "seed_concepts": concepts,
              "heldout": {"path": str(eval_root), "classes": len(concepts), "n_train": n_train, "n_test": n_test},
              "k": 20, "temperature": 0.07, **summary,
              "curated_beats_uncurated": bool(gap["beyond_2se"]),
              "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=2))
    (out / "ablation.md").write_text(table(result))
    return result


def _pm(stats: dict[str, Any], scale: float = 100.0) -> str:
    if stats.get("mean") is None:
        return "-"
    se = stats.get("se")
    return f"{scale * stats['mean']:.1f}" + (f" ± {scale * se:.1f}" if se is not None else "")


def table(result: dict[str, Any]) -> str:
    """The result as Markdown: one row per arm, then the paired differences."""
    h = result["heldout"]
    seeds = result["seeds"]
    lines = [f"tiny ViT, {result['iterations']} iterations per arm, {len(seeds)} training seed(s); k-NN top-1 (k {result['k']}) "
             f"on {h['n_test']} held-out images of the {h['classes']} seed concepts ({h['n_train']} in the k-NN bank); "
             "mean ± standard error over seeds",
             "",
             "| data | images | on a seed concept | duplicates | k-NN top-1 (%) | per seed |",
             "|---|---:|---:|---:|---:|---|"]
    for key in ("init", *ARMS):
        row = result["arms"].get(key)
        if row is None:
            continue
        comp = row.get("composition") or {}
        share = lambda k: f"{100 * comp[k]:.0f} %" if comp.get(k) is not None else "-"  # noqa: E731
        lines.append(f"| {LABELS[key]} | {row['images']} | {share('on_seed_concept_share')} | {share('duplicate_share')} "
                     f"| {_pm(row)} | {' / '.join(f'{100 * v:.1f}' for v in row['top1'])} |")
    lines += ["", "| paired difference (points) | per seed | mean ± SE | beyond 2 SE |", "|---|---|---:|---|"]
    for name, d in result["paired"].items():
        a, b = name.split(" - ")
        lines.append(f"| {LABELS[a][:3]} − {LABELS[b][:3]} | {' / '.join(f'{100 * v:+.1f}' for v in d['diffs'])} "
                     f"| {_pm(d)} | {'yes' if d['beyond_2se'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a curated run directory (lvd curate)")
    parser.add_argument("--world", default=None, help="its demo world (default RUN/world)")
    parser.add_argument("--heldout", default=None, help="labelled evaluation set DIR/{train,test}/<concept>/ (default WORLD/eval/demo_eval)")
    parser.add_argument("--out", default=None, help="where to write (default RUN/ablation)")
    parser.add_argument("--steps", type=int, default=None, help="iterations per arm (default: tiny.yaml's schedule, 200)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per arm (default 1)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="tiny.yaml overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run_ablation(Path(args.run), Path(args.world) if args.world else None,
                              Path(args.out) if args.out else None, args.steps, args.overrides, args.seeds,
                              Path(args.heldout) if args.heldout else None)
    except UserError as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
