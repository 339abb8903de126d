"""Copy-detection calibration of the dedup model (default: the packaged copy head) on the small demo
world: pairwise precision / recall of the embedding graph alone (no hash edges) over a grid of
thresholds and whitening dims, with the model's score normalisation (all pairs, not only the top
k), and relative-dedup recall / false removals. This is where
`embedder.models.CALIBRATED` comes from; `calibrated` is the grid point the defaults pick;
`demo_world` the default's recall per transform there (hash + embedding edges).

Next to it, `real_photo` (`bench/real_photo_dedup.py`): the real-photo copy benchmark
(`curation.quality.copy_bench`, photos from installed packages), `lvd ingest` + `lvd dedup --against` with
the packaged default, per transform, relative dedup and the curve over thresholds, side by side
with imagededup's PHash / DHash / WHash on the same files in the same run. `--real-only` skips the
demo world; `--copies N` makes N copies per original instead of every transform."""
from __future__ import annotations

import shutil

import numpy as np

from bench.common import SCRATCH, parser, python, run_measured, world, write_result


def _pairs(*keys: np.ndarray) -> int:
    _, counts = np.unique(np.rec.fromarrays(keys), return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _scores(sims: np.ndarray, cfg) -> np.ndarray:
    """The pipeline's scores (`curation.dedup.knn.scores`) for every pair of a dense matrix, not only the
    top k: rows sorted best first, scored, put back in place."""
    from curation.dedup.knn import scores

    order = np.argsort(-sims, axis=1, kind="stable")
    out = np.empty_like(sims)
    np.put_along_axis(out, order, scores(np.take_along_axis(sims, order, axis=1), order, cfg), axis=1)
    return out


def main() -> None:
    p = parser("dedup_quality", __doc__)
    p.add_argument("--real-only", action="store_true", help="only the real-photo benchmark")
    p.add_argument("--copies", type=int, help="copies per original in the real-photo set (default: every transform)")
    args = p.parse_args()
    from bench import real_photo_dedup as real

    root = real.build(args.copies)
    lvd = real.lvd_default(root)
    others = real.imagededup_methods(root)
    real_photo = {"side_by_side": real.summary(root, lvd, others), "lvd_default": lvd, "imagededup": others}
    from curation.config import GRID_COPY_MODEL, PACKAGED_COPY_MODEL, TRAINED_COPY_MODEL

    for name in (TRAINED_COPY_MODEL, GRID_COPY_MODEL):  # both packaged copy descriptors, the default already run
        if name != PACKAGED_COPY_MODEL:
            real_photo[name] = real.lvd_default(root, name)
    if args.real_only:
        write_result(args.out, {"real_photo": real_photo})
        return
    demo = demo_world_grid()
    demo["demo_world_models"] = {name: demo_world_model(name) for name in (TRAINED_COPY_MODEL,)}
    write_result(args.out, {**demo, "real_photo": real_photo})


def demo_world_model(model: str) -> dict:
    """`lvd dedup` on the small demo world with another dedup model (its own calibration: for the
    trained descriptor, candidate pairs checked by the `verify` stage), scored by `lvd eval-dedup`."""
    import json
    import subprocess

    root, base = world("small"), SCRATCH / "dedup-quality-run"
    out = SCRATCH / f"dedup-quality-run-{model}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    dedup = run_measured([python(), "-m", "pipelines", "dedup", str(out), "--against", str(root / "eval"), "--no-progress",
                          "--reuse", "--set", f"dedup.model={model}"])
    scored = json.loads(subprocess.run([python(), "-m", "pipelines", "eval-dedup", str(out), "--truth", str(root / "truth.parquet"),
                                        "--json"], check=True, capture_output=True, text=True).stdout)["dedup"]
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    return {"model": model, "dedup_seconds": dedup["seconds"],
            **{k: scored[k] for k in ("precision", "recall", "recall_by_transform", "eval_copies_removed", "others_removed_as_eval")},
            "stage_counts": {n: stages[n]["counts"] for n in ("knn_edges", "eval_edges", "verify") if n in stages},
            "stage_seconds": {n: stages[n]["seconds"] for n in ("embed", "knn_edges", "verify") if n in stages}}


def demo_world_grid() -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from curation.quality.truth import dedup_quality, edge_components, relative_sources
    from curation.dedup.whitening import Whitening
    from curation.core.rundir import RunDir
    from curation.config import RunConfig
    from pipelines.stages.embedding import dedup_knn_config, read_unique, thresholds

    root = world("small")
    out = SCRATCH / "dedup-quality-run"
    shutil.rmtree(out, ignore_errors=True)
    run_measured([python(), "-m", "pipelines", "curate", "--world", str(root), "--out", str(out), "--until", "eval_embed", "--no-progress"])
    run = RunDir(out)
    run_config = RunConfig.model_validate(run.manifest()["config"])
    truth = {r["source"]: r for r in pq.read_table(root / "truth.parquet").to_pylist()}
    pool = pa.concat_tables([pq.read_table(f, columns=["image_id", "source"]) for f in run.pool_files()])
    uids, emb = read_unique(run, "embeddings")
    eval_ids, eval_emb = read_unique(run, "eval/embeddings")
    index = {u: i for i, u in enumerate(np.char.decode(uids, "utf-8"))}
    group = np.full(len(uids), "", dtype=object)
    eval_copy = np.zeros(len(uids), dtype=bool)
    for image_id, src in zip(pool.column("image_id").to_pylist(), relative_sources(pool.column("source").to_pylist(), root)):
        t = truth[src]
        if t["kind"] in ("original", "copy"):
            group[index[image_id]] = t["dup_group"]
        eval_copy[index[image_id]] |= t["kind"] == "eval-copy"
    labelled = np.flatnonzero(group != "")
    grid = []
    knn_cfg = dedup_knn_config(run_config)
    for dim in (0, 512, 768, 1024):
        w = Whitening.fit(emb, dim, 1e-4) if dim else None
        x = w.apply(emb) if w else emb.astype(np.float32)
        v = w.apply(eval_emb) if w else eval_emb.astype(np.float32)
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        sims = _scores(sims, knn_cfg)
        cross = _scores(v @ x.T, knn_cfg)  # eval x pool
        sims = np.maximum(sims, sims.T)  # an edge found from either end
        best_eval = cross.max(axis=0)
        for t in np.round(np.arange(0.3, 0.96, 0.025), 3):
            adj = coo_matrix(np.triu(sims > t, 1))
            _, labels = connected_components(adj, directed=False)
            pred, good = _pairs(labels[labelled]), _pairs(labels[labelled], group[labelled].astype(str))
            true = _pairs(group[labelled].astype(str))
            grid.append({"whiten_dim": dim, "threshold": float(t), "precision": round(good / max(pred, 1), 4),
                         "recall": round(good / max(true, 1), 4), "eval_recall": round(float((best_eval[eval_copy] > t).mean()), 4),
                         "others_removed": round(float((best_eval[~eval_copy] > t).mean()), 4)})
    ok = [g for g in grid if g["precision"] >= 0.99]
    self_t, rel_t, dim = thresholds(run_config)
    at = {g["threshold"]: g for g in grid if g["whiten_dim"] == dim}
    calibrated = {"model": run_config.dedup_model(), "whiten_dim": dim, "background_rank": knn_cfg.background_rank, "background_weight": knn_cfg.background_weight, "self_threshold": self_t,
                  "relative_threshold": rel_t, "self": at.get(round(self_t, 3)), "relative": at.get(round(rel_t, 3))}
    # The default's recall per transform on the demo world (hash + embedding edges), next to the real photos'.
    comp_rows = pa.table({"image_id": pool.column("image_id"), "source": pool.column("source")})
    edges = pa.concat_tables([pq.read_table(out / "dedup" / f"{n}.parquet").select(["src", "dst", "sim"]) for n in ("hash_edges", "knn_edges")
                              if (out / "dedup" / f"{n}.parquet").exists()])
    demo = dedup_quality(edge_components(comp_rows, edges), pq.read_table(root / "truth.parquet"), root)
    return {"grid": grid, "calibrated": calibrated, "best_self_at_precision_0.99": max(ok, key=lambda g: g["recall"]) if ok else None,
            "demo_world": {k: demo[k] for k in ("precision", "recall", "recall_by_transform")},
            "note": "grid: embedding edges only; the pipeline adds hash edges (exact / re-encode / resize)"}


if __name__ == "__main__":
    main()
