"""The GPU path at paper scale, measured in one go on one lent GPU (issue 17, item 5).

    bash bench/gpu_check.sh [--dry-run]      # installs what it needs, then runs this file

Prints one JSON object with one entry per part; each part has "status" ("ok", "skipped" with
"reason", or "error" with "error") and its numbers:

- `vit_h16`: ViT-H/16 at 224 px, bf16, torch SDPA, channels-last, `torch.compile`: images/s of
  the bare forward and from pinned uint8 batches copied while the previous batch runs (the GPU
  never waits on the host), MFU against the dense bf16 peak (254 GFLOP per image);
- `dedup_descriptor`: the packaged copy descriptor (`efficientnet_lite0_copy`) on the GPU, images/s;
- `knn_graph`: FAISS GPU IVF-Flat k-NN graph of 10M x 256 (k = 64; nlist and nprobe as
  `curation.dedup.knn_index.choose_index` picks them), build and search seconds, recall@k against exact
  search on a sample of queries;
- `kmeans`: FAISS GPU k-means of 10M x 256 into 100k centroids, seconds per iteration;
- `trainer_vitl14`: the trainer's ViT-L/14 training step (bench/bench_train.py's step, bf16).

`--dry-run` runs every part on the CPU at tiny sizes in seconds (tests/infra run it): the same
keys, so the script is exercised where no GPU is. Without a GPU and without `--dry-run` every
part reports "skipped". The data are synthetic, clustered like embeddings (k-NN recall on
isotropic noise says nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PARTS = ("vit_h16", "dedup_descriptor", "knn_graph", "kmeans", "trainer_vitl14")
# Sizes of the real run, and of the dry run (CPU, seconds).
FULL = {"vit_batch": 256, "vit_iters": 20, "desc_batch": 512, "desc_iters": 20, "knn_n": 10_000_000, "dim": 256,
        "k": 64, "recall_queries": 10_000, "kmeans_n": 10_000_000, "kmeans_k": 100_000, "kmeans_iter": 5,
        "train_steps": 5}
DRY = {"vit_batch": 2, "vit_iters": 2, "desc_batch": 2, "desc_iters": 2, "knn_n": 4_000, "dim": 32, "k": 8,
       "recall_queries": 200, "kmeans_n": 4_000, "kmeans_k": 16, "kmeans_iter": 3, "train_steps": 1}


def _timed(fn: Callable[[], Any], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_tflops(cuda: bool) -> float | None:
    from bench.bench_embed import BF16_PEAK_TFLOPS

    name = torch.cuda.get_device_name() if cuda else ""
    return next((peak for key, peak in BF16_PEAK_TFLOPS if cuda and key in name), None)


def vit_h16(s: dict[str, int], cuda: bool) -> dict[str, Any]:
    from curation.paper import VIT_H16_GFLOP
    from embedder.vit import vit_huge

    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    if cuda:
        module, size = vit_huge(patch_size=16), 224
    else:  # the same code path on a two-block toy
        from timm.models.vision_transformer import VisionTransformer

        module, size = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=0), 32
    module = module.to(device).eval().to(memory_format=torch.channels_last)
    b = s["vit_batch"]
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    pixels = [torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8) for _ in range(2)]
    if cuda:
        pixels = [p.pin_memory() for p in pixels]
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    inv_std = 1 / (torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255)
    net = torch.compile(module) if cuda else module  # compiling on CPU would take the dry run's seconds

    def forward(inp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            return net(inp)

    def from_uint8() -> None:  # host->device copy of batch i+1 overlaps the forward of batch i
        for i in range(s["vit_iters"]):
            inp = pixels[i % 2].to(device, non_blocking=True).float().sub_(mean).mul_(inv_std)
            forward(inp.contiguous(memory_format=torch.channels_last))

    start = time.perf_counter()
    forward(x)  # compilation
    compile_s = time.perf_counter() - start
    forward(x)
    bare_s = _timed(lambda: [forward(x) for _ in range(s["vit_iters"])], cuda)
    pipe_s = _timed(from_uint8, cuda)
    out = {"batch": b, "compile_s": round(compile_s, 2), "images_per_s": b * s["vit_iters"] / bare_s,
           "images_per_s_from_uint8": b * s["vit_iters"] / pipe_s,
           "fused_attn": bool(getattr(module.blocks[0].attn, "fused_attn", False))}
    peak = _peak_tflops(cuda)
    out["mfu"] = out["images_per_s"] * VIT_H16_GFLOP * 1e9 / (peak * 1e12) if peak else None
    out["mfu_target"] = 0.50
    return out


def dedup_descriptor(s: dict[str, int], cuda: bool) -> dict[str, Any]:
    from embedder.inference import forward_pixels
    from embedder.models import load_model

    model = load_model("efficientnet_lite0_copy", device="cuda" if cuda else "cpu", runtime="torch")
    b = s["desc_batch"]
    pixels = torch.randint(0, 256, (b, 3, model.input_size, model.input_size), dtype=torch.uint8)
    pixels = pixels.pin_memory() if cuda else pixels
    forward_pixels(model, pixels)
    seconds = _timed(lambda: [forward_pixels(model, pixels) for _ in range(s["desc_iters"])], cuda)
    return {"model": model.name, "batch": b, "images_per_s": b * s["desc_iters"] / seconds}


def clustered(n: int, d: int, seed: int, cuda: bool) -> np.ndarray:
    """n unit vectors around n/500 random centres (float32, built on the GPU in 1M-row blocks)."""
    gen = torch.Generator(device="cuda" if cuda else "cpu").manual_seed(seed)
    device = "cuda" if cuda else "cpu"
    centres = torch.randn(max(1, n // 500), d, generator=gen, device=device)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1_000_000):
        m = min(1_000_000, n - start)
        rows = centres[torch.randint(0, len(centres), (m,), generator=gen, device=device)]
        rows = torch.nn.functional.normalize(rows + 0.6 * torch.randn(m, d, generator=gen, device=device), dim=1)
        out[start : start + m] = rows.cpu().numpy()
    return out


def knn_graph(s: dict[str, int], cuda: bool) -> dict[str, Any]:
    import faiss

    from curation.config import KnnConfig
    from curation.dedup.knn_index import choose_index

    n, d, k = s["knn_n"], s["dim"], s["k"]
    x = clustered(n, d, 0, cuda)
    spec = choose_index(n, d, KnnConfig(index="ivf_flat"))
    res = faiss.StandardGpuResources() if cuda else None
    start = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    train = x[np.random.default_rng(0).choice(n, min(n, spec.nlist * 64), replace=False)]
    if cuda:
        index = faiss.index_cpu_to_gpu(res, 0, index)
    index.train(train)
    index.add(x)
    build_s = time.perf_counter() - start
    if cuda:
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", spec.nprobe)
    else:
        index.nprobe = spec.nprobe
    start = time.perf_counter()
    ids = np.empty((n, k + 1), dtype=np.int64)
    for lo in range(0, n, 65_536):
        ids[lo : lo + 65_536] = index.search(x[lo : lo + 65_536], k + 1)[1]  # +1: the self match
    search_s = time.perf_counter() - start
    queries = np.random.default_rng(1).choice(n, s["recall_queries"], replace=False)
    exact = faiss.IndexFlatIP(d)
    exact = faiss.index_cpu_to_gpu(res, 0, exact) if cuda else exact
    exact.add(x)
    truth = exact.search(x[queries], k + 1)[1]
    hits = [len(set(t[1:]) & set(g[1:])) for t, g in zip(truth, ids[queries])]
    return {"n": n, "dim": d, "k": k, "nlist": spec.nlist, "nprobe": spec.nprobe, "build_s": round(build_s, 2),
            "search_s": round(search_s, 2), "queries_per_s": n / search_s,
            "recall_at_k": float(np.sum(hits) / (k * len(queries))), "recall_queries": len(queries)}


def kmeans(s: dict[str, int], cuda: bool) -> dict[str, Any]:
    import faiss

    n, d, k = s["kmeans_n"], s["dim"], s["kmeans_k"]
    x = clustered(n, d, 2, cuda)
    km = faiss.Kmeans(d, k, niter=s["kmeans_iter"], seed=0, spherical=True, gpu=1 if cuda else False,
                      min_points_per_centroid=1, max_points_per_centroid=math.ceil(n / k) + 1, verbose=False)
    start = time.perf_counter()
    km.train(x)
    seconds = time.perf_counter() - start
    return {"n": n, "dim": d, "k": k, "niter": s["kmeans_iter"], "seconds": round(seconds, 2),
            "seconds_per_iter": seconds / s["kmeans_iter"], "objective": float(km.obj[-1])}


def trainer_vitl14(s: dict[str, int], cuda: bool) -> dict[str, Any]:
    from bench.bench_train import bench_config

    config = "training/configs/vitl14.yaml" if cuda else "training/configs/tiny.yaml"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    # The dry run: the tiny ViT at two images and two local crops, one step in a second or two.
    small = () if cuda else ("train.batch_size_per_gpu=2", "crops.local_crops_number=2")
    r = bench_config(str(ROOT / config), device, s["train_steps"], bf16=cuda, compile_blocks=False, overrides=small)
    return {k: r[k] for k in ("config", "batch", "step_s_median", "images_per_s", "mfu", "peak_memory_GiB") if k in r}


def run_part(name: str, fn: Callable[..., dict[str, Any]], sizes: dict[str, int], cuda: bool, dry: bool) -> dict[str, Any]:
    if not cuda and not dry:
        return {"status": "skipped", "reason": "no CUDA device (use --dry-run to exercise the code on the CPU)"}
    start = time.perf_counter()
    try:
        out = {"status": "ok", **fn(sizes, cuda)}
    except Exception as exc:  # one failing part must not hide the others' numbers
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500],
               "trace": traceback.format_exc().splitlines()[-3:]}
    out["wall_s"] = round(time.perf_counter() - start, 2)
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every part on the CPU at tiny sizes")
    p.add_argument("--only", default="", help="comma list of parts (default: all)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    sizes = DRY if args.dry_run else FULL
    parts = [n for n in (args.only.split(",") if args.only else PARTS) if n]
    result: dict[str, Any] = {"dry_run": args.dry_run, "cuda": cuda, "torch": torch.__version__,
                              "device": torch.cuda.get_device_name() if cuda else "cpu",
                              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    start = time.perf_counter()
    for name in parts:
        result[name] = run_part(name, globals()[name], sizes, cuda, args.dry_run)
        print(f"gpu_check: {name}: {result[name]['status']} ({result[name].get('wall_s', 0)} s)", file=sys.stderr)
    result["total_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result))
    return 0 if all(result[n]["status"] != "error" for n in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
