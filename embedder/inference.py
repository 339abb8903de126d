"""Batched inference: encoded images -> L2-normalised float16 embeddings.

One path for every model and device. DataLoader workers decode and crop (uint8); the model's
device converts to float, normalises, runs the forward (bf16 autocast on CUDA; fp32 on CPU) and
L2-normalises in float32 before the cast to float16, so unit norm survives the cast.

Per-item isolation (issue 14): `embed_checked` / `embed_table_checked` embed every image that
decodes and report the others ({row: "Type: message"}) instead of failing the whole batch; the
embed stage drops their rows and writes them reject rows. `embed_bytes` / `embed_table` keep the
strict contract (an image that cannot be decoded raises, naming its index).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from embedder import store
from embedder.models import LoadedModel
from embedder.preprocess import EncodedImages, Preprocess, collate_checked, collate_uint8


def preprocess_for(model: LoadedModel) -> Preprocess:
    """The CPU-side transform a model's weights expect."""
    return Preprocess(model.input_size, model.crop_pct, model.interpolation)


def normalise(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] (any device) -> the float32 input the model expects, on its device."""
    mean, inv_std = model.normaliser()
    return pixels.to(model.device, non_blocking=True).float().sub_(mean).mul_(inv_std)


def forward_pixels(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] (any device) -> unit-norm float16 [B, D] on the model's device."""
    x = normalise(model, pixels)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        feats = model.module(x)
    return F.normalize(feats.float(), dim=1).half()


def iter_batches(
    model: LoadedModel, images: Sequence[bytes], batch_size: int = 64, num_workers: int = 0, checked: bool = False
) -> Iterator[Any]:
    """Preprocessed uint8 batches, decoded by `num_workers` processes (0: in this process);
    `checked`: (batch, per-image errors) pairs, an image that cannot be decoded as black pixels."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loader = DataLoader(
        EncodedImages(images, preprocess_for(model), checked=checked),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_checked if checked else collate_uint8,
        pin_memory=model.device.startswith("cuda"),
        prefetch_factor=4 if num_workers > 0 else None,
    )
    yield from loader


def _embed(model: LoadedModel, images: Sequence[bytes], batch_size: int, num_workers: int, checked: bool
           ) -> tuple[np.ndarray, dict[int, str]]:
    out = np.empty((len(images), model.embed_dim), dtype=np.float16)
    failed: dict[int, str] = {}
    pending: list[torch.Tensor] = []
    done = seen = 0
    for batch in iter_batches(model, images, batch_size, num_workers, checked):
        pixels, errors = batch if checked else (batch, ())
        failed.update((seen + i, error) for i, error in enumerate(errors) if error is not None)
        seen += len(pixels)
        # Device results are gathered and copied in blocks: a copy per batch would make the
        # host wait for the GPU before it can queue the next batch.
        pending.append(forward_pixels(model, pixels))
        if len(pending) >= _FLUSH_BATCHES:
            done = _flush(pending, out, done)
    done = _flush(pending, out, done)
    if done != len(images):
        raise RuntimeError(f"embedded {done} of {len(images)} images")
    return out, failed


def embed_bytes(
    model: LoadedModel, images: Sequence[bytes], batch_size: int = 64, num_workers: int = 0
) -> np.ndarray:
    """Embed encoded images: float16 [n, D], each row L2-normalised, in input order. An image that
    cannot be decoded raises (`embed_checked` reports it instead)."""
    return _embed(model, images, batch_size, num_workers, checked=False)[0]


def embed_checked(
    model: LoadedModel, images: Sequence[bytes], batch_size: int = 64, num_workers: int = 0
) -> tuple[np.ndarray, dict[int, str]]:
    """`embed_bytes` that never fails on an image: (float16 [n, D], {row: error} of the images
    that could not be decoded; their rows hold the embedding of black pixels, to be dropped)."""
    return _embed(model, images, batch_size, num_workers, checked=True)


_FLUSH_BATCHES = 16


def _flush(pending: list[torch.Tensor], out: np.ndarray, done: int) -> int:
    if pending:
        block = torch.cat(pending).cpu().numpy()
        out[done : done + len(block)] = block
        done += len(block)
        pending.clear()
    return done


def embed_table(table: pa.Table, model: LoadedModel, batch_size: int = 64, num_workers: int = 0) -> pa.Table:
    """A POOL-like table (needs `image_id` and `image`) -> an EMBEDDINGS table in the same row order."""
    missing = {"image_id", "image"} - set(table.column_names)
    if missing:
        raise ValueError(f"embed_table needs columns image_id and image; missing {sorted(missing)}")
    images = table.column("image").to_pylist()
    emb = embed_bytes(model, images, batch_size=batch_size, num_workers=num_workers)
    return store.embeddings_table(table.column("image_id"), emb)


#: Extra column of `embed_table_checked`: the error of an image that could not be embedded (else null).
ERROR_COLUMN = "error"


def embed_table_checked(table: pa.Table, model: LoadedModel, batch_size: int = 64, num_workers: int = 0) -> pa.Table:
    """`embed_table` that never fails on an image: every input row, in order, plus an `error`
    column (null when embedded); rows with an error hold a meaningless vector, to be dropped
    (`embedder.shards.split_failed`). Same row count as the input, as engines' file jobs require."""
    missing = {"image_id", "image"} - set(table.column_names)
    if missing:
        raise ValueError(f"embed_table needs columns image_id and image; missing {sorted(missing)}")
    images = table.column("image").to_pylist()
    emb, failed = embed_checked(model, images, batch_size=batch_size, num_workers=num_workers)
    out = store.embeddings_table(table.column("image_id"), emb)
    errors = pa.array([failed.get(i) for i in range(table.num_rows)], pa.string())
    return out.append_column(ERROR_COLUMN, errors)
