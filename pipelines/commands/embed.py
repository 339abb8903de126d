"""`lvd embed RUN`: embed every pool shard of a run directory, resumable per shard.

Reads RUN/pool/part-*.parquet, writes RUN/embeddings/part-XXXXX.parquet (same part names) with
`embedder.shards.embed_pool_shard`; shards already embedded by the same model are skipped.
Settings come from the run's config (manifest "config" -> "embed") with these flags on top.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from tqdm import tqdm

from curation.config import PACKAGED_MODEL, EmbedConfig, dedup_model_for
from curation.core.errors import UserError
from curation.core.rundir import RunDir
from curation.core.storage import parquet_rows

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("embed", help="embed the pool images of a run (resumable per shard)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory (needs RUN/pool/part-*.parquet)")
    p.add_argument("--model", help="default: the run's dedup model (lvd_copy_v1, the packaged "
                   "copy descriptor, unless configured) | efficientnet_lite0 | NAME:/path/weights.safetensors "
                   "| /path/model.torchscript | /path/backbone-export.pt | /path/model.onnx | NAME of an embed.models "
                   "entry in the run's config (a model file with its preprocessing)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="default: auto")
    p.add_argument("--batch-size", type=int, help="images per forward (default: config, 64)")
    p.add_argument("--num-workers", type=int, help="JPEG-decoding worker processes, 0 = in-process")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--runtime", choices=["onnx", "torch"],
                   help="onnx: onnxruntime (default; torch where the export fails) | torch (the reference)")
    p.set_defaults(func=run)


def embed_config(run_dir: RunDir, args: argparse.Namespace) -> EmbedConfig:
    """The run's `embed` config section with the command-line flags applied; the model defaults to
    the run's dedup model, since RUN/embeddings is what the dedup graph reads."""
    config = run_dir.manifest().get("config", {})
    section = config.get("embed", {})
    dedup = config.get("dedup", {})
    model = args.model
    if model is None:
        embed_model = section.get("model", PACKAGED_MODEL) if isinstance(section, dict) else PACKAGED_MODEL
        model = dedup_model_for(embed_model, dedup.get("model") if isinstance(dedup, dict) else None)
    flags = {"model": model, "device": args.device, "batch_size": args.batch_size,
             "num_workers": args.num_workers, "compile": args.compile, "runtime": getattr(args, "runtime", None)}
    merged = {**(section if isinstance(section, dict) else {}), **{k: v for k, v in flags.items() if v is not None}}
    try:
        cfg = EmbedConfig.model_validate(merged)
    except Exception as exc:
        raise UserError(f"bad embed setting: {exc}".splitlines()[0]) from None
    if cfg.batch_size < 1 or cfg.num_workers < 0:
        raise UserError("--batch-size must be >= 1 and --num-workers >= 0")
    return cfg


def run(args: argparse.Namespace) -> int:
    from embedder.models import load_from_config  # torch/timm load only when the command runs
    from embedder.shards import embed_pool_shard

    run_dir = RunDir(args.run)
    shards = run_dir.pool_files()
    if not shards:
        raise UserError(f"no pool shards in {run_dir.pool} (expected part-*.parquet); ingest first")
    cfg = embed_config(run_dir, args)
    model = load_from_config(cfg)
    log.info("embedding %d shards with %s (%d-d) on %s, %s", len(shards), model.name, model.embed_dim, model.device,
             model.runtime)
    total = sum(parquet_rows(p) for p in shards)
    done = skipped = 0
    with tqdm(total=total, unit="img", desc="embed", disable=None) as bar:
        for shard in shards:
            out = run_dir.path("embeddings", shard.name)
            stats = embed_pool_shard(shard, out, model, cfg)
            done += stats["rows"]
            skipped += stats["skipped"]
            bar.update(stats["rows"])
    log.info("embedded %d images in %d shards (%d already current)", done, len(shards), skipped)
    return 0
