"""Embedding throughput on CPU (torch vs ONNX Runtime, decode, pipeline, one decode for two
models, the demo before/after) and ViT-H/16 MFU on a GPU.

    python bench/bench_embed.py --out bench/scratch/embed.json [--images 256] [--gpu-only] [--no-demo]

CPU, per model of the demo (dedup: `efficientnet_lite0_copy`, retrieval: `efficientnet_lite0`), on
pool-like JPEGs (longer side <= 512), every variant timed alternately, medians of `--repeats`:
- decode alone (bytes -> the model's uint8 crop), and one shared decode for both models;
- bare forward: torch eager (channels-last, batch 64 and 16) and onnxruntime (uint8 in, batch
  `ONNX_BATCH`) on already decoded pixels;
- pipeline (`embed_bytes`: decode + forward + L2) with torch and with onnxruntime, and the ratio
  pipeline / bare ONNX forward (target >= 0.8); both models through `embed_shared` (one decode)
  against the two passes;
- the onnxruntime batch x intra-op threads sweep (and single-threaded calls side by side) that
  chose `ONNX_BATCH` and the layout: one intra-op thread, as many calls in flight as cores.
Demo (`--no-demo` skips it): `lvd curate` of the small demo world up to `seeds` before (torch, one
decode per model: as before issue 17) and after (the defaults), in this run; embedding seconds
are the `embed`, `eval_embed` and `seeds` stages'.
GPU (when CUDA is visible): ViT-H/16 at 224 px under bf16 autocast, images/s of the bare forward
(eager and torch.compile) and of `forward_pixels` from uint8 batches, and MFU against the device's
dense bf16 peak with 254 GFLOP per image (curation.paper.VIT_H16_GFLOP); target >= 50 %.
Speed is measured here, never in tests; the JSON records the machine's load beside each number
(on a shared 2-core machine absolute rates move with the load: compare ratios of one run).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.paper import VIT_H16_GFLOP  # noqa: E402
from embedder.inference import embed_bytes, embed_shared, forward_pixels, normalise, preprocess_for  # noqa: E402
from embedder.models import LoadedModel, load_model, vit_huge  # noqa: E402
from embedder.onnx_runtime import OnnxEmbedder, cached_export, session_options  # noqa: E402
from embedder.preprocess import SharedDecode, collate_uint8  # noqa: E402
from embedder.vit import SSL_CROP_PCT, SSL_MEAN, SSL_STD  # noqa: E402

# Dense bf16 tensor-core peaks (vendor datasheets, no sparsity), TFLOP/s; matched in this order.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0))
DEMO_MODELS = {"dedup": "efficientnet_lite0_copy", "retrieval": "efficientnet_lite0"}
#: Issue 15's speed floor for a copy descriptor, images/s per 2 cores with decode: the trained one
#: (`lvd_copy_v1`) is measured beside the packaged default, the same images in the same run.
COPY_MODELS = {"trained_dedup": "lvd_copy_v1"}
DESCRIPTOR_FLOOR_IMG_S = 40.0


def pool_like_jpegs(n: int, seed: int = 0, max_side: int = 512) -> list[bytes]:
    """n JPEGs cut from the photos bundled with scikit-image, sized like re-encoded pool images."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), data.stereo_motorcycle()[0]]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(a[y : y + ch, x : x + cw])
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _timed(fn: Callable[[], Any], sync: bool = False) -> float:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _alternate(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run in turn `repeats` times (load from other users hits
    every variant alike), after one warm-up call each."""
    for fn in variants.values():
        fn()
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(_timed(fn))
    return {k: statistics.median(v) for k, v in runs.items()}


def _torch_bare(model: LoadedModel, pixels: torch.Tensor, batch: int) -> Callable[[], None]:
    x = normalise(model, pixels).contiguous(memory_format=torch.channels_last)
    batches = list(x.split(batch))

    def run() -> None:
        with torch.inference_mode():
            for b in batches:
                model.module(b)
    return run


def _onnx_bare(session: Any, nhwc: np.ndarray, batch: int) -> Callable[[], None]:
    """One call at a time on already decoded pixels."""
    return lambda: [session.run(None, {"pixels": nhwc[i : i + batch]}) for i in range(0, len(nhwc), batch)]


def _onnx_calls(embedders: list[Any], nhwcs: list[np.ndarray]) -> Callable[[], None]:
    """The pipeline's calls on already decoded pixels: `workers` in flight, every model's calls
    started before any is gathered (as `embedder.inference.start_all`)."""
    def run() -> None:
        started = [e.start(x) for e, x in zip(embedders, nhwcs)]
        for e, parts in zip(embedders, started):
            e.finish(parts)
    return run


def bench_model(spec: str, images: list[bytes], repeats: int) -> dict[str, Any]:
    """Decode, bare forwards and pipelines of one model, torch and ONNX Runtime."""
    torch_m, onnx_m = load_model(spec, device="cpu"), load_model(spec, device="cpu", runtime="onnx")
    assert onnx_m.onnx is not None, f"{spec}: ONNX export failed"
    pre = preprocess_for(torch_m)
    nhwc = np.stack([pre(b) for b in images])
    pixels = collate_uint8(list(nhwc))
    n = len(images)
    med = _alternate({
        "decode": lambda: [pre(b) for b in images],
        "torch_bare_b64": _torch_bare(torch_m, pixels, 64),
        "torch_bare_b16": _torch_bare(torch_m, pixels, 16),
        "onnx_bare": _onnx_calls([onnx_m.onnx], [nhwc]),
        "torch_pipeline": lambda: embed_bytes(torch_m, images, 64),
        "onnx_pipeline": lambda: embed_bytes(onnx_m, images, 64),
    }, repeats)
    rates = {f"{k}_img_s": n / v for k, v in med.items()}
    return {"model": spec, "embed_dim": torch_m.embed_dim, "onnx_batch": onnx_m.onnx.batch,
            "onnx_threads": onnx_m.onnx.threads, "onnx_calls_in_flight": onnx_m.onnx.workers,
            "decode_ms_per_image": 1e3 * med["decode"] / n, **rates,
            "onnx_over_torch_bare": rates["onnx_bare_img_s"] / rates["torch_bare_b64_img_s"],
            "onnx_over_torch_pipeline": rates["onnx_pipeline_img_s"] / rates["torch_pipeline_img_s"],
            "pipeline_over_bare_onnx": rates["onnx_pipeline_img_s"] / rates["onnx_bare_img_s"],
            "pipeline_over_bare_target": 0.8}


def _one_call_at_a_time(model: LoadedModel) -> LoadedModel:
    """The model as it ran before: one call at a time, on a session with the task's threads."""
    import onnxruntime as ort

    threads = model.onnx.threads
    session = ort.InferenceSession(str(cached_export(model)), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    return replace(model, onnx=OnnxEmbedder(session, model.onnx.batch, 1, "CPUExecutionProvider"))


def bench_shared(images: list[bytes], repeats: int) -> dict[str, Any]:
    """The demo's default pair of models (dedup descriptor, retrieval) through one decode
    (`embed_shared`) against one pass per model, and against one call at a time on sessions with
    the task's intra-op threads (the layout before the calls ran side by side)."""
    specs = [COPY_MODELS["trained_dedup"], DEMO_MODELS["retrieval"]]
    models = [load_model(spec, device="cpu", runtime="onnx") for spec in specs]
    sequential = [_one_call_at_a_time(m) for m in models]
    shared = SharedDecode([preprocess_for(m) for m in models])
    pres = [preprocess_for(m) for m in models]
    nhwcs = [np.stack([p(b) for b in images]) for p in pres]
    n = len(images)
    med = _alternate({
        "decode_shared": lambda: [shared(b) for b in images],
        "decode_separate": lambda: [p(b) for p in pres for b in images],
        "bare_both": _onnx_calls([m.onnx for m in models], nhwcs),
        "bare_both_one_call_at_a_time": _onnx_calls([m.onnx for m in sequential], nhwcs),
        "two_passes": lambda: [embed_bytes(m, images, 64) for m in models],
        "one_pass": lambda: embed_shared(models, images, 64),
        "one_pass_one_call_at_a_time": lambda: embed_shared(sequential, images, 64),
    }, repeats)
    return {"models": specs, "calls_in_flight": models[0].onnx.workers, **{f"{k}_s": v for k, v in med.items()},
            "one_pass_img_s": n / med["one_pass"], "two_passes_img_s": n / med["two_passes"],
            "one_pass_one_call_at_a_time_img_s": n / med["one_pass_one_call_at_a_time"],
            "calls_in_flight_speedup": med["one_pass_one_call_at_a_time"] / med["one_pass"],
            "one_pass_speedup": med["two_passes"] / med["one_pass"],
            "pipeline_over_bare_onnx": med["bare_both"] / med["one_pass"]}


def onnx_sweep(spec: str, images: list[bytes], repeats: int, threads: tuple[int, ...], batches: tuple[int, ...]
               ) -> dict[str, float]:
    """images/s of the bare ONNX forward by (intra-op threads, batch): how ONNX_BATCH and the
    threads default were chosen."""
    import onnxruntime as ort

    model = load_model(spec, device="cpu")
    path = str(cached_export(model))
    pre = preprocess_for(model)
    nhwc = np.stack([pre(b) for b in images])
    variants = {}
    for t in threads:
        session = ort.InferenceSession(path, session_options(t), providers=["CPUExecutionProvider"])
        for b in batches:
            variants[f"threads{t}_batch{b}"] = _onnx_bare(session, nhwc, b)
            if t == 1 and max(threads) > 1:  # single-threaded calls, as many in flight as cores
                calls = OnnxEmbedder(session, b, max(threads), "CPUExecutionProvider")
                variants[f"calls{max(threads)}_batch{b}"] = _onnx_calls([calls], [nhwc])
    return {k: len(images) / v for k, v in _alternate(variants, repeats).items()}


def _demo_embed_seconds(world: Path, out: Path, sets: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pipelines", "curate", "--world", str(world), "--out", str(out), "--no-progress",
           "--until", "seeds"] + [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    embed = {k: stages[k]["seconds"] for k in ("embed", "eval_embed", "seeds") if k in stages}
    return {"wall_s": wall, "stage_seconds": {k: v["seconds"] for k, v in stages.items()},
            "embedding_s": sum(embed.values()), "embedding_stages": embed}


def bench_demo() -> dict[str, Any]:
    """The small demo world curated up to `seeds`, before (torch, a decode per model) and after."""
    from bench.common import world

    root = world("small")
    before_sets = ["embed.runtime=torch", "embed.shared_decode=false"]
    with tempfile.TemporaryDirectory(prefix="bench-embed-demo-") as tmp:
        after = _demo_embed_seconds(root, Path(tmp) / "after", [])  # (exports the ONNX models first)
        before = _demo_embed_seconds(root, Path(tmp) / "before", before_sets)
    return {"world": "small", "until": "seeds", "before": {"sets": before_sets, **before}, "after": after,
            "embedding_speedup": before["embedding_s"] / after["embedding_s"],
            "wall_speedup": before["wall_s"] / after["wall_s"], "embedding_speedup_target": 4.0}


def bench_cpu(n_images: int, repeats: int, demo: bool) -> dict[str, Any]:
    images = pool_like_jpegs(n_images)
    out: dict[str, Any] = {"images": n_images, "repeats": repeats, "torch_threads": torch.get_num_threads(),
                           "load_avg_before": os.getloadavg()}
    out["models"] = {role: bench_model(spec, images, repeats) for role, spec in {**DEMO_MODELS, **COPY_MODELS}.items()}
    for role in ("dedup", *COPY_MODELS):
        m = out["models"][role]
        m.update(floor_img_s=DESCRIPTOR_FLOOR_IMG_S, meets_floor=m["onnx_pipeline_img_s"] >= DESCRIPTOR_FLOOR_IMG_S,
                 over_packaged_dedup=m["onnx_pipeline_img_s"] / out["models"]["dedup"]["onnx_pipeline_img_s"])
    out["shared_decode"] = bench_shared(images, repeats)
    threads = tuple(sorted({1, torch.get_num_threads()}))
    out["onnx_sweep"] = {spec: onnx_sweep(spec, images[:64], repeats, threads, (1, 2, 4, 8, 16, 32, 64))
                         for spec in DEMO_MODELS.values()}
    if demo:
        out["demo"] = bench_demo()
    out["load_avg_after"] = os.getloadavg()
    return out


def _peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def bench_gpu(batch_size: int, iters: int, compile: bool, n_images: int) -> dict[str, Any]:
    name = torch.cuda.get_device_name()
    peak = _peak_tflops(name)
    torch.manual_seed(0)
    module = vit_huge(patch_size=16).cuda().eval().to(memory_format=torch.channels_last)
    model = LoadedModel(module=module, name="vit_huge_patch16_224", embed_dim=1280, input_size=224, mean=SSL_MEAN,
                        std=SSL_STD, interpolation="bicubic", crop_pct=SSL_CROP_PCT, device="cuda")
    x = torch.randn(batch_size, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    pixels = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8).pin_memory()

    def rate(fn: Callable[[], Any]) -> float:
        for _ in range(3):
            fn()
        seconds = _timed(lambda: [fn() for _ in range(iters)], sync=True)
        return batch_size * iters / seconds

    def bare(m: torch.nn.Module) -> Callable[[], Any]:
        def step() -> Any:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                return m(x)
        return step

    out: dict[str, Any] = {"device": name, "bf16_peak_tflops": peak, "gflop_per_image": VIT_H16_GFLOP,
                           "batch_size": batch_size, "iters": iters, "fused_attn": bool(module.blocks[0].attn.fused_attn)}
    out["eager_img_s"] = rate(bare(module))
    out["pipeline_from_uint8_img_s"] = rate(lambda: forward_pixels(model, pixels))  # H2D + normalise + L2
    if compile:
        compiled = torch.compile(module)
        t0 = time.perf_counter()
        bare(compiled)()
        out["compile_s"] = time.perf_counter() - t0
        out["compiled_img_s"] = rate(bare(compiled))
        model.module = compiled
        out["pipeline_from_uint8_compiled_img_s"] = rate(lambda: forward_pixels(model, pixels))
    best = max(v for k, v in out.items() if k.endswith("_img_s"))
    if peak:
        for key in [k for k in out if k.endswith("_img_s")]:
            out[key.replace("_img_s", "_mfu")] = out[key] * VIT_H16_GFLOP * 1e9 / (peak * 1e12)
        out["best_mfu"] = best * VIT_H16_GFLOP * 1e9 / (peak * 1e12)
    out["mfu_target"] = 0.50
    # End to end from JPEG bytes: decoding in DataLoader workers feeds the GPU.
    workers = min(16, os.cpu_count() or 1)
    images = pool_like_jpegs(n_images)
    embed_bytes(model, images[:batch_size], batch_size=batch_size, num_workers=workers)
    seconds = _timed(lambda: embed_bytes(model, images, batch_size=batch_size, num_workers=workers), sync=True)
    out["end_to_end_jpeg_img_s"] = n_images / seconds
    out["end_to_end_workers"] = workers
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/scratch/embed.json")
    p.add_argument("--images", type=int, default=192, help="CPU benchmark images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-demo", action="store_true", help="skip the demo curation before/after")
    p.add_argument("--gpu-only", action="store_true", help="skip the CPU part")
    p.add_argument("--gpu-batch-size", type=int, default=256)
    p.add_argument("--gpu-iters", type=int, default=20)
    p.add_argument("--gpu-images", type=int, default=4096, help="JPEGs for the GPU end-to-end rate")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile on GPU")
    args = p.parse_args(argv)

    result: dict[str, Any] = {
        "bench": "embed", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(),
    }
    if not args.gpu_only:
        result["cpu"] = bench_cpu(args.images, args.repeats, not args.no_demo)
    if torch.cuda.is_available():
        result["gpu"] = bench_gpu(args.gpu_batch_size, args.gpu_iters, not args.no_compile, args.gpu_images)
    else:
        result["gpu"] = {"skipped": "no CUDA device"}
    result["load_avg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
