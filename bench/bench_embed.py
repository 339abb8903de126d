"""Embedding throughput: CPU default model with pipeline overhead, and ViT-H/16 MFU on a GPU.

    python bench/bench_embed.py --out bench/scratch/embed.json [--images 128] [--gpu-only]

CPU: images/s of `embed_bytes` with the packaged EfficientNet-Lite0 (and the dedup models) on pool-like JPEGs (longer
side <= 512), against a bare `model.module` forward on the same, already decoded and normalised
tensors, timed alternately; overhead = pipeline / bare - 1 (target <= 20 %).
GPU (when CUDA is visible): ViT-H/16 at 224 px under bf16 autocast, images/s of the bare forward
(eager and torch.compile) and of `forward_pixels` from uint8 batches, and MFU against the device's
dense bf16 peak with 254 GFLOP per image (curation.paper.VIT_H16_GFLOP); target >= 50 %.
Speed is measured here, never in tests; the JSON records the machine's load beside each number.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.paper import VIT_H16_GFLOP  # noqa: E402
from embedder.inference import embed_bytes, forward_pixels, normalise, preprocess_for  # noqa: E402
from embedder.models import LoadedModel, load_model, packaged_classifier, vit_huge  # noqa: E402
from embedder.preprocess import collate_uint8  # noqa: E402
from embedder.vit import SSL_CROP_PCT, SSL_MEAN, SSL_STD  # noqa: E402

# Dense bf16 tensor-core peaks (vendor datasheets, no sparsity), TFLOP/s; matched in this order.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0))


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


def bench_cpu(n_images: int, batch_size: int, repeats: int, model_name: str = "efficientnet_lite0") -> dict[str, Any]:
    model = load_model(model_name, device="cpu")
    images = pool_like_jpegs(n_images)
    pre = preprocess_for(model)
    decode_s = _timed(lambda: [pre(b) for b in images])
    pixels = collate_uint8([pre(b) for b in images])
    x = normalise(model, pixels).contiguous(memory_format=torch.channels_last)
    batches = list(x.split(batch_size))

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                model.module(b)

    embed_bytes(model, images[:batch_size], batch_size=batch_size)  # warm up oneDNN kernels
    bare()
    runs: dict[str, list[float]] = {"bare": [], "pipeline_w0": [], "pipeline_w1": []}
    for _ in range(repeats):  # alternate, so that load from other users hits all variants alike
        runs["bare"].append(_timed(bare))
        runs["pipeline_w0"].append(_timed(lambda: embed_bytes(model, images, batch_size, num_workers=0)))
        runs["pipeline_w1"].append(_timed(lambda: embed_bytes(model, images, batch_size, num_workers=1)))
    med = {k: statistics.median(v) for k, v in runs.items()}

    rates = {
        "model": model.name, "embed_dim": model.embed_dim, "input_size": model.input_size, "images": n_images,
        "batch_size": batch_size, "repeats": repeats, "threads": torch.get_num_threads(),
        "decode_ms_per_image": 1e3 * decode_s / n_images,
        "bare_forward_img_s": n_images / med["bare"],
        "pipeline_img_s_workers0": n_images / med["pipeline_w0"],
        "pipeline_img_s_workers1": n_images / med["pipeline_w1"],
        "overhead_workers0": med["pipeline_w0"] / med["bare"] - 1,
        "overhead_workers1": med["pipeline_w1"] / med["bare"] - 1,
        "overhead_target": 0.20,
    }
    if model_name != "efficientnet_lite0":
        return {**rates, "raw_seconds": runs}
    # Memory layout of the weights: the reason the loader converts modules to channels-last.
    net = packaged_classifier()
    net.reset_classifier(0)
    layout = {}
    for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        net.to(memory_format=fmt)
        xs = x.contiguous(memory_format=fmt).split(batch_size)
        with torch.inference_mode():
            net(xs[0])
            layout[name] = statistics.median(_timed(lambda: [net(b) for b in xs]) for _ in range(repeats))
    return {
        **rates,
        "forward_s_channels_last": layout["channels_last"], "forward_s_contiguous": layout["contiguous"],
        "raw_seconds": runs,
    }


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
    p.add_argument("--images", type=int, default=128, help="CPU benchmark images")
    p.add_argument("--batch-size", type=int, default=64, help="CPU batch size")
    p.add_argument("--repeats", type=int, default=3)
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
        result["cpu"] = bench_cpu(args.images, args.batch_size, args.repeats)
        # The dedup default (the trained copy descriptor, flip-invariant: two forwards per image;
        # target >= 40 images/s on 2 cores including decode), against the earlier grid head.
        from curation.config import GRID_COPY_MODEL, PACKAGED_COPY_MODEL

        result["cpu_dedup"] = {name: {k: v for k, v in bench_cpu(args.images, args.batch_size, args.repeats, name).items() if k != "raw_seconds"}
                               for name in (PACKAGED_COPY_MODEL, GRID_COPY_MODEL)}
    if torch.cuda.is_available():
        result["gpu"] = bench_gpu(args.gpu_batch_size, args.gpu_iters, not args.no_compile, args.gpu_images)
    else:
        result["gpu"] = {"skipped": "no CUDA device"}
    result["load_avg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.get("cpu", {}).items() if k != "raw_seconds"}
    print(json.dumps({"cpu": summary, "cpu_dedup": result.get("cpu_dedup"), "gpu": result["gpu"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
