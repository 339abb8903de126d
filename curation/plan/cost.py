"""The recipe-level cost of `lvd plan`: embedding GPU-hours at an assumed MFU, index memory, disk,
and whether the embedding fits the paper's GPU budget (the whole funnel, stage by stage and per
engine, is `curation.plan.scale_model.scale_estimate`)."""
from __future__ import annotations

from typing import Any

from curation import paper
from curation.plan.scale_model import (
    ASSUMED_MFU,
    AVG_IMAGE_BYTES,
    DEFAULT_IMAGES_PER_SECOND,
    ID_BYTES,
    PQ_CODE_BYTES,
    V100_FP16_TFLOPS,
    VIT_H_DIM,
    ivfpq_list_bytes,
    raw_embedding_bytes,
)


def index_bytes(vectors: int, dim: int = VIT_H_DIM, pq_code_bytes: int = PQ_CODE_BYTES) -> dict[str, int]:
    """Memory of the retrieval index: IVF-PQ lists (code + id per vector) and flat float16 (n x d x 2)."""
    return {
        "ivfpq_bytes_per_vector": pq_code_bytes + ID_BYTES,
        "ivfpq": ivfpq_list_bytes(vectors, pq_code_bytes),
        "flat_float16": raw_embedding_bytes(vectors, dim),
    }


def disk_bytes(pool_size: int, final: int, avg_image_bytes: int = AVG_IMAGE_BYTES, dim: int = VIT_H_DIM) -> dict[str, int]:
    """Disk for the pool's images, its float16 embeddings, and the curated output's images."""
    return {
        "avg_image_bytes": avg_image_bytes,
        "pool_images": pool_size * avg_image_bytes,
        "pool_embeddings": raw_embedding_bytes(pool_size, dim),
        "output_images": final * avg_image_bytes,
    }


def embedding_gpu_hours(images: int, images_per_second: float) -> float:
    """GPU-hours to embed `images` at a per-GPU rate."""
    return images / images_per_second / 3600.0


def cost_estimate(
    pool_size: int,
    final_total: int,
    seed_images: int,
    images_per_second: float = DEFAULT_IMAGES_PER_SECOND,
    gpus: int = paper.PAPER_GPUS,
    hours: float = paper.PAPER_HOURS,
    dim: int = VIT_H_DIM,
    pq_code_bytes: int = PQ_CODE_BYTES,
    avg_image_bytes: int = AVG_IMAGE_BYTES,
) -> dict[str, Any]:
    """Embedding GPU-hours (pool + seed images), index memory, disk, and fit within gpus x hours."""
    to_embed = pool_size + seed_images
    gpu_hours = embedding_gpu_hours(to_embed, images_per_second)
    return {
        "images_to_embed": to_embed,
        "images_per_second_per_gpu": images_per_second,
        "embedding_gpu_hours": gpu_hours,
        "gpus": gpus,
        "embedding_wall_hours": gpu_hours / gpus,
        "budget_hours": hours,
        "budget_gpu_hours": gpus * hours,
        "fits": gpu_hours <= gpus * hours,
        "index": index_bytes(pool_size, dim, pq_code_bytes),
        "disk": disk_bytes(pool_size, final_total, avg_image_bytes, dim),
        "assumptions": {
            "rate": (
                f"ViT-H/16 at {paper.VIT_H16_GFLOP:g} GFLOP/img, {ASSUMED_MFU:.0%} MFU of a V100 "
                f"({V100_FP16_TFLOPS:g} TFLOP/s fp16)"
                if images_per_second == DEFAULT_IMAGES_PER_SECOND
                else "given"
            ),
            "dim": dim,
            "pq_code_bytes": pq_code_bytes,
        },
    }

