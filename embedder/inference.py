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

import functools
import math
import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from embedder import store
from embedder.models import LoadedModel
from embedder.preprocess import EncodedImages, Preprocess, SharedDecode, collate_checked, collate_shared, collate_uint8


def preprocess_for(model: LoadedModel) -> Preprocess:
    """The CPU-side transform a model's weights expect."""
    return Preprocess(model.input_size, model.crop_pct, model.interpolation, model.crop)


def normalise(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] (any device) -> the float32 input the model expects, on its device."""
    mean, inv_std = model.normaliser()
    return pixels.to(model.device, non_blocking=True).float().sub_(mean).mul_(inv_std)


def forward_pixels(model: LoadedModel, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """uint8 [B, 3, H, W] (any device) -> unit-norm float16 [B, D] on the model's device (on the
    CPU for a model run by onnxruntime); L2-normalised in float32 first, so unit norm survives the
    cast. A list of [1, 3, H, W] images of several sizes (`collate_uint8`): see `forward_features`."""
    return forward_features(model, pixels).half()


def forward_features(model: LoadedModel, pixels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """`forward_pixels` before the float16 cast: unit-norm float32 [B, D]. A list of [1, 3, H, W]
    images of several sizes (a model that does not crop) runs as one batch per size, rows back in
    input order."""
    if isinstance(pixels, list):
        return _forward_by_size(model, pixels)
    if model.onnx is not None:
        return torch.from_numpy(model.onnx.features(_nhwc(pixels)))
    if model.layout == "uint8_nhwc":  # the model takes the pixels as they are, in their memory layout
        x = pixels.to(model.device, non_blocking=True).permute(0, 2, 3, 1).contiguous()  # (a no-op when channels-last)
    else:
        x = normalise(model, pixels)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        feats = model.module(x)
    return F.normalize(feats.float(), dim=1)


def _nhwc(pixels: torch.Tensor) -> np.ndarray:
    # The batch is a channels-last view of the decoded [B, H, W, 3] array: back to that layout
    # without a copy, the layout the exported graph takes.
    return pixels.cpu().permute(0, 2, 3, 1).numpy()


def start_all(models: Sequence[LoadedModel], batches: Sequence[torch.Tensor | list[torch.Tensor]]
              ) -> list[Callable[[], torch.Tensor]]:
    """`forward_pixels` of each model on its own batch, as one callable per model that returns
    it: the onnxruntime calls of every model are started now and run while the caller decodes
    and starts the next batch (no core waits at the end of a batch); other forwards run when
    called. Calling them in order gives the rows in order, whatever ran first."""
    out: list[Callable[[], torch.Tensor]] = []
    for model, pixels in zip(models, batches):
        if model.onnx is not None and not isinstance(pixels, list):
            out.append(functools.partial(_finished, model, model.onnx.start(_nhwc(pixels))))
        else:
            out.append(functools.partial(forward_pixels, model, pixels))
    return out


def _finished(model: LoadedModel, parts: list[Any]) -> torch.Tensor:
    return torch.from_numpy(model.onnx.finish(parts)).half()


def _forward_by_size(model: LoadedModel, images: list[torch.Tensor]) -> torch.Tensor:
    """Images of several sizes: one forward per size (first-seen order, so the same batch always
    runs the same way and gives the same bytes), rows scattered back to input order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    out: torch.Tensor | None = None
    for rows in groups.values():
        feats = forward_features(model, torch.cat([images[i] for i in rows]))
        if out is None:
            out = feats.new_empty((len(images), feats.shape[1]))
        out[torch.tensor(rows, device=feats.device)] = feats
    assert out is not None, "an empty batch"
    return out


def iter_batches(
    model: LoadedModel, images: Sequence[bytes], batch_size: int = 64, num_workers: int = 0, checked: bool = False
) -> Iterator[Any]:
    """Preprocessed uint8 batches, decoded by `num_workers` processes (0: in this process);
    `checked`: (batch, per-image errors) pairs, an image that cannot be decoded as black pixels."""
    dataset = EncodedImages(images, preprocess_for(model), checked=checked)
    yield from _loader(dataset, batch_size, num_workers, collate_checked if checked else collate_uint8,
                       model.device.startswith("cuda"))


def _loader(dataset: EncodedImages, batch_size: int, num_workers: int, collate: Any, pin: bool) -> DataLoader:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin, prefetch_factor=4 if num_workers > 0 else None)


def iter_shared_batches(models: Sequence[LoadedModel], images: Sequence[bytes], batch_size: int = 64,
                        num_workers: int = 0) -> Iterator[tuple[tuple[torch.Tensor, ...], list[str | None]]]:
    """(one uint8 batch per model, per-image errors): each image decoded once for all the models
    (`embedder.preprocess.SharedDecode`), each model's batch preprocessed its own way."""
    shared = SharedDecode([preprocess_for(m) for m in models])
    dataset = EncodedImages(images, shared, checked=True)
    yield from _loader(dataset, batch_size, num_workers, collate_shared, any(m.device.startswith("cuda") for m in models))


def _overlapped(batches: Iterator[Any], models: Sequence[LoadedModel], num_workers: int) -> Iterator[Any]:
    """`batches`, decoded one batch ahead by a thread when onnxruntime runs the models in-process.

    Pillow's decode and resize and onnxruntime's forward both release the GIL, so the next batch
    decodes while the current one runs: on 2 cores decode then hides behind inference instead of
    adding to it (bench/bench_embed.py: pipeline / bare forward). DataLoader workers
    (`num_workers` > 0) already overlap; torch keeps its path as it was (the reference)."""
    if num_workers > 0 or all(m.onnx is None for m in models):
        yield from batches
        return
    ahead: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: tuple[Any, BaseException | None]) -> bool:
        """Hand an item over unless the consumer has left (then never block: it joins us)."""
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
        except BaseException as exc:  # re-raised in the consumer (a strict decode error)
            put((None, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=produce, name="lvd-decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            batch, exc = ahead.get()
            if exc is not None:
                raise exc
            if batch is _DONE:
                return
            yield batch
    finally:
        stop.set()
        thread.join()


_DONE = object()

#: Decode batch of the overlapped onnxruntime path, in onnxruntime calls: the forward cannot start
#: before the whole first batch is decoded, and nothing hides that wait (64 images: 0.28 s on 2
#: loaded cores, 8 % of a 192-image run; 8 images: 0.06 s); later batches overlap at any size.
_AHEAD_CALLS = 4


def _decode_batch(models: Sequence[LoadedModel], batch_size: int, num_workers: int) -> int:
    """The decode batch of an in-process pass in which onnxruntime runs every model: a few of its
    calls, a multiple of each model's call batch, so the calls see the same rows (the same bytes)
    as under any `batch_size` that is such a multiple (64); else (torch, DataLoader workers)
    `batch_size`."""
    if num_workers > 0 or any(m.onnx is None for m in models):
        return batch_size
    step = math.lcm(*(m.onnx.batch * m.onnx.workers for m in models))
    return min(batch_size, _AHEAD_CALLS * step)


class _Gather:
    """Embeddings of one model, gathered in input order. Device results are copied in blocks: a
    copy per batch would make the host wait for the GPU before it can queue the next batch."""

    def __init__(self, n: int, dim: int):
        self.out = np.empty((n, dim), dtype=np.float16)
        self.pending: list[torch.Tensor] = []
        self.done = 0

    def add(self, emb: torch.Tensor) -> None:
        self.pending.append(emb)
        if len(self.pending) >= _FLUSH_BATCHES:
            self.done = _flush(self.pending, self.out, self.done)

    def result(self) -> np.ndarray:
        self.done = _flush(self.pending, self.out, self.done)
        if self.done != len(self.out):
            raise RuntimeError(f"embedded {self.done} of {len(self.out)} images")
        return self.out


def _embed(model: LoadedModel, images: Sequence[bytes], batch_size: int, num_workers: int, checked: bool
           ) -> tuple[np.ndarray, dict[int, str]]:
    batches = iter_batches(model, images, _decode_batch([model], batch_size, num_workers), num_workers, checked)
    embeddings, failed = _pass([model], len(images), _one_model(_overlapped(batches, [model], num_workers), checked))
    return embeddings[0], failed


def _one_model(batches: Iterator[Any], checked: bool) -> Iterator[tuple[Sequence[Any], Sequence[str | None]]]:
    """One model's batches (`iter_batches`: pixels, or (pixels, errors) when `checked`) in the
    shape `_pass` takes: (a one-model tuple of pixels, per-image errors)."""
    for batch in batches:
        yield ((batch[0],), batch[1]) if checked else ((batch,), [None] * len(batch))


def _pass(models: Sequence[LoadedModel], n: int, stream: Iterator[tuple[Sequence[Any], Sequence[str | None]]]
          ) -> tuple[list[np.ndarray], dict[int, str]]:
    """Every model over a stream of (one batch per model, per-image errors) -> (float16 [n, D_m]
    per model, {row: error}). One batch ahead: a batch's forwards are gathered only once the next
    batch's are started (`start_all`), which keeps every call thread busy across batches; rows are
    gathered in order, so the bytes are those of one batch at a time."""
    gathers = [_Gather(n, m.embed_dim) for m in models]
    failed: dict[int, str] = {}
    seen = 0
    pending: list[Callable[[], torch.Tensor]] = []
    for batches, errors in stream:
        failed.update((seen + i, error) for i, error in enumerate(errors) if error is not None)
        seen += len(errors)
        started = start_all(models, batches)
        for gather, result in zip(gathers, pending):
            gather.add(result())
        pending = started
    for gather, result in zip(gathers, pending):
        gather.add(result())
    return [g.result() for g in gathers], failed


def embed_shared(models: Sequence[LoadedModel], images: Sequence[bytes], batch_size: int = 64, num_workers: int = 0
                 ) -> tuple[list[np.ndarray], dict[int, str]]:
    """`embed_checked` for several models in one pass (issue 17, "one decode, every model"): each
    image is decoded once and every model runs on its own preprocessing of those pixels. Returns
    (float16 [n, D_m] per model, {row: error} of the images that could not be decoded); each
    model's rows equal `embed_checked(model, images)`'s."""
    decode_batch = _decode_batch(models, batch_size, num_workers)
    return _pass(models, len(images), _overlapped(iter_shared_batches(models, images, decode_batch, num_workers),
                                                  models, num_workers))


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
