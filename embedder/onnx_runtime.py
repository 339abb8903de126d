"""ONNX Runtime inference for the embedding models (issue 17): the CPU default, torch the reference.

On 2 CPU cores the packaged EfficientNet-Lite0 runs ~6x faster under onnxruntime than under torch
eager (bench/bench_embed.py): torch's CPU path maps and unmaps its large activation buffers every
batch (sys time equal to user time, page faults by the hundred thousand per second); onnxruntime
plans its memory once. So every CPU model `embedder.models.load_model` builds (packaged classifier,
copy descriptor, timm / ViT / official backbones, TorchScript files, trainer exports) is exported
to ONNX at first use and run by an `OnnxEmbedder`; torch stays the fallback (an export or session
that fails is logged once and the model runs in torch) and the reference of the parity tests.

The exported graph takes the decoded pixels as they come out of `embedder.preprocess` (uint8,
[B, H, W, 3]) and does the float conversion and normalisation itself, with the same constants as
`embedder.inference.normalise`: one fewer pass over every batch in Python. The batch axis is
dynamic; height and width are the model's input size.

Exports are cached on the host under `onnx_cache_dir()` (`LVD_ONNX_CACHE`, else `onnx/` in the
host cache of `curation.core.storage.cache_dir`: `LVD_CACHE_DIR`, else the temp dir), one folder per
key: a hash of the weights' bytes, the architecture, the input size and preprocessing, the opset
and the torch version (the exporter). A folder is written under a temporary name and renamed
into place, so concurrent workers never read half an export.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from curation.core.storage import cache_dir

log = logging.getLogger("lvd")

#: ONNX opset of the exports (LayerNorm, SDPA decomposition and GELU need >= 17).
OPSET = 17
#: Images per onnxruntime call, measured (bench/bench_embed.py `onnx_sweep`, in bench/results.json
#: embed.cpu.onnx_sweep): on 2 cores both demo models run fastest at batch 1 and lose 10-25 % by
#: batch 16-32 (small batches keep the activations in cache). With one single-threaded call per
#: core (`OnnxEmbedder`): copy head 204, 188, 183, 166, 152 img/s at batch 1, 2, 4, 8, 16;
#: retrieval model 183, 177, 176, 155, 152; one call at a time on 2 intra-op threads: 127-151 and
#: 120-152. The bytes do not depend on it (tests/embedder/test_embedder_onnx.py: batches of 1-7).
#: `embed.batch_size` stays the decode batch; it is cut into these.
ONNX_BATCH = 1
#: Bumped when the exported wrapper changes, so old cached exports are not reused.
EXPORT_VERSION = 1
ENV_CACHE = "LVD_ONNX_CACHE"

_WARNED: set[str] = set()


def onnx_cache_dir() -> Path:
    """Where exports are cached on this host (`LVD_ONNX_CACHE`, else `<host cache>/onnx`)."""
    root = os.environ.get(ENV_CACHE)
    path = Path(root) if root else cache_dir() / "onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_digest(module: nn.Module) -> str:
    """Hash of every parameter and buffer (name, dtype, shape, bytes) and of the architecture.

    The weights' bytes, not the file's stat: the export is a derived artifact that must change
    whenever the numbers do. blake2b hashes ~1 GB/s, ViT-H's 2.5 GB once per host."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__qualname__.encode())
    code = getattr(module, "code", None)  # TorchScript: the program itself
    h.update((code if isinstance(code, str) else repr(module)).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_key(model: Any) -> str:
    """Cache key of a `LoadedModel`'s export: weights, architecture, input and preprocessing,
    opset, exporter (torch) version."""
    parts = [weights_digest(model.module), model.input_size, list(model.mean), list(model.std),
             OPSET, EXPORT_VERSION, torch.__version__]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


class _PixelsIn(nn.Module):
    """uint8 [B, H, W, 3] -> the model's embeddings [B, D] (float32, before L2 normalisation)."""

    def __init__(self, module: nn.Module, normaliser: tuple[torch.Tensor, torch.Tensor]):
        super().__init__()
        self.module = module
        # LoadedModel.normaliser's constants: 255·mean subtracted, times 1 / (255·std).
        self.register_buffer("mean", normaliser[0].clone())
        self.register_buffer("inv_std", normaliser[1].clone())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        return self.module(x).float()


def export_onnx(model: Any, path: Path) -> None:
    """Export a CPU `LoadedModel` to `path` (a new folder; weights over 2 GB go to external files
    beside `model.onnx`)."""
    module = model.module
    for_export = getattr(module, "for_export", None)  # e.g. GridDescriptor: static pooling bins
    if callable(for_export):
        module = for_export(model.input_size)
    wrapper: nn.Module = _PixelsIn(module, model.normaliser()).eval().to(model.device)
    if isinstance(module, torch.jit.ScriptModule):
        # A tracer cannot enter a TorchScript module called from a traced one: script the wrapper
        # too and the exporter reads the whole program.
        wrapper = torch.jit.script(wrapper)
    sample = torch.zeros(2, model.input_size, model.input_size, 3, dtype=torch.uint8, device=model.device)
    path.mkdir(parents=True)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
        torch.onnx.export(wrapper, (sample,), str(path / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=["pixels"], output_names=["embedding"],
                          dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}})


def cached_export(model: Any) -> Path:
    """The `model.onnx` of a model's export, exported now unless this host has it already."""
    root = onnx_cache_dir()
    final = root / export_key(model)
    if not (final / "model.onnx").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            export_onnx(model, tmp / "export")
            try:
                os.rename(tmp / "export", final)  # atomic; fails when another process got there first
            except OSError:
                if not (final / "model.onnx").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.onnx"


#: One call's result: its future, or the array itself where the call ran inline.
Part = Union[Future, np.ndarray]


@functools.lru_cache(maxsize=None)
def _call_pool(pid: int, workers: int) -> ThreadPoolExecutor:
    """The threads that run onnxruntime calls in this process (keyed by pid too: a forked child
    must not reuse its parent's, whose threads it does not have)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="lvd-onnx")


@dataclass
class OnnxEmbedder:
    """An onnxruntime session of one model: uint8 pixels -> unit-norm float16 embeddings.

    On the CPU the session has one intra-op thread and `threads` calls run at once, each on its
    own slice of the batch (`start`): on 2 cores two single-threaded calls embed 15-25 % more
    images a second than one call on two threads (bench/bench_embed.py `onnx_sweep`), whose
    threads wait for each other at every layer of these small networks. Every slice is computed by
    the same single-threaded kernels whichever thread runs it, so the bytes do not depend on the
    thread count or the scheduling. On a GPU one call at a time, batches of `batch`.

    Our exports take the pixels as they are (`_PixelsIn`); a user's model file
    (`embedder.model_files`) may take float [B, 3, H, W] instead: `normaliser` (255·mean,
    1 / (255·std), `LoadedModel.normaliser`'s constants) then converts them here."""

    session: Any
    batch: int
    threads: int
    provider: str
    input_name: str = "pixels"
    normaliser: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def workers(self) -> int:
        """Calls in flight: the task's share of the cores on the CPU, one on a GPU."""
        return max(1, self.threads) if self.provider == "CPUExecutionProvider" else 1

    def start(self, pixels: np.ndarray) -> list[Part]:
        """Start the calls of uint8 [B, H, W, 3] pixels (`finish` gathers them). The calls of
        several models started before any is gathered share the process's call threads."""
        pixels = np.ascontiguousarray(pixels)
        chunks = [pixels[i : i + self.batch] for i in range(0, len(pixels), self.batch)]
        if self.workers == 1:
            return [self._run(c) for c in chunks]
        pool = _call_pool(os.getpid(), self.workers)
        return [pool.submit(self._run, c) for c in chunks]

    def finish(self, parts: list[Part]) -> np.ndarray:
        """The started calls' float32 [B, D] rows, in order, each row L2-normalised."""
        arrays = [p.result() if isinstance(p, Future) else p for p in parts]
        feats = np.concatenate(arrays) if len(arrays) != 1 else arrays[0]
        feats = feats.astype(np.float32, copy=False)
        norms = np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)  # F.normalize's eps
        return feats / norms

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> float32 [B, D], each row L2-normalised."""
        return self.finish(self.start(pixels))

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> float16 [B, D], each row L2-normalised in float32 first (as
        `embedder.inference.forward_pixels`: unit norm survives the cast)."""
        return self.features(pixels).astype(np.float16)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: self._input(pixels)})[0]

    def _input(self, pixels: np.ndarray) -> np.ndarray:
        if self.normaliser is None:
            return pixels
        mean, inv_std = self.normaliser
        return np.ascontiguousarray((pixels.transpose(0, 3, 1, 2).astype(np.float32) - mean) * inv_std)


def default_threads() -> int:
    """Intra-op threads: torch's own count, which each engine already sets to its share of the
    cores per task (OMP_NUM_THREADS in Ray actors and Beam workers; all cores for the local
    engine's in-process model tasks): onnxruntime takes the same share, never more."""
    return max(1, torch.get_num_threads())


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spinning between calls: the decode between two batches runs on the same cores, and
    # spinning workers would take them from it.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def open_session(path: str, threads: int, providers: list[str]) -> Any:
    """An onnxruntime session for `threads` cores: on the CPU one intra-op thread (the cores run
    that many calls at once, `OnnxEmbedder.start`), on a GPU `threads` for its host-side work."""
    import onnxruntime as ort

    intra = 1 if providers[0] == "CPUExecutionProvider" else threads
    return ort.InferenceSession(path, session_options(intra), providers=providers)


def providers_for(device: str) -> list[str] | None:
    """onnxruntime providers for a device: CPU; CUDA (then CPU) where onnxruntime-gpu provides it;
    None when the device is a GPU that onnxruntime cannot use (torch runs the model there)."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return None


def build_embedder(model: Any, threads: int | None = None, batch: int = ONNX_BATCH) -> OnnxEmbedder | None:
    """An `OnnxEmbedder` for a loaded model, or None (torch runs it): no provider for its device,
    or an export / session that failed (logged once per model)."""
    providers = providers_for(model.device)
    if providers is None:
        return None
    try:
        path = cached_export(model)
        threads = threads or default_threads()
        session = open_session(str(path), threads, providers)
    except Exception as exc:  # any exporter / runtime failure: torch still embeds, only slower
        if model.key not in _WARNED:
            _WARNED.add(model.key)
            log.warning("model %s: ONNX export or session failed (%s: %s); embedding with torch",
                        model.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            log.debug("ONNX export or session failure of %s", model.name, exc_info=True)
        return None
    return OnnxEmbedder(session, batch, threads, session.get_providers()[0])
