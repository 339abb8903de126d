"""Bring your own copy detector (issue 15): ONNX and TorchScript model files with their own
preprocessing, described by `curation.config.ModelFileConfig` (`embed.models: {NAME: ...}`).

A model file maps one batch of images to embeddings [B, D] (the first output of an ONNX graph);
we L2-normalise them. Its input is declared, not guessed:
- `uint8_nhwc`: raw RGB pixels 0-255, [B, H, W, 3] (models that normalise inside the graph);
- `float_nchw`: float32 [B, 3, H, W], (x / 255 - mean) / std.
Images are resized so that their shorter side is `resize` and either centre-cropped to a square
(`crop: true`) or kept whole (`crop: false`, SSCD's evaluation: any size goes in). Whole images
of several sizes are batched with the images of the same size (`embedder.inference`), never
padded: padding would change the pooled descriptor, and copies must embed alike wherever they sit.

Every declaration is checked when the model loads, so a wrong one fails at once with the model's
actual input named, not as a shape error deep in a run: ONNX graphs by their declared input
(rank, element type, channel axis, fixed sizes) and one probe batch; TorchScript programs, whose
input types are not declared, by one probe batch of the declared layout.

ONNX files run in onnxruntime: on the CUDA provider when the device is a GPU and onnxruntime-gpu
is installed, else on the CPU (a GPU without onnxruntime-gpu is no error: the CPU serves, with
one log line). TorchScript files run in torch, on CUDA when the device is a GPU, as written (no
export: the program may take any input size). This module does not import `embedder.models`,
which assembles the `LoadedModel` (see `embedder.models.load_model`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from curation.config import ModelFileConfig
from curation.core.errors import UserError
from embedder.onnx_runtime import ONNX_BATCH, OnnxEmbedder, default_threads, open_session, providers_for
from training import weights

log = logging.getLogger("lvd")

#: Images per onnxruntime call on the CUDA provider: a GPU wants large batches (the CPU wants
#: ONNX_BATCH, see `embedder.onnx_runtime`); the decode batch (`embed.batch_size`) bounds it.
CUDA_BATCH = 256

_ELEMENT = {"uint8_nhwc": "tensor(uint8)", "float_nchw": "tensor(float)"}
_CHANNEL_AXIS = {"uint8_nhwc": 3, "float_nchw": 1}


class ModelFile(NamedTuple):
    """An opened model file: what runs it and what it gives."""

    module: nn.Module | None  # the TorchScript program (None for ONNX)
    runner: OnnxEmbedder | None  # the onnxruntime session (None for TorchScript)
    embed_dim: int
    device: str  # where it runs: cpu | cuda
    source: str  # onnx-file | torchscript-file
    path: Path


def describe(spec: str, models: Mapping[str, ModelFileConfig]) -> ModelFileConfig | None:
    """The model file a spec names: an `embed.models` entry by name, or a path to a `.onnx` file
    (its preprocessing the defaults of `ModelFileConfig`); None: not a model file."""
    if spec in models:
        return models[spec]
    if Path(spec).suffix.lower() == ".onnx":
        name, sep, _ = spec.partition(":")
        if sep and name and "/" not in name and not Path(spec).exists():  # NAME:PATH, the form of timm weights
            raise UserError(f"--model {spec}: an ONNX file carries its architecture, so it takes no NAME: give its "
                            f"path alone, or describe it under embed.models ({{{name}: {{path: ..., input: ...}}}})")
        return ModelFileConfig(path=spec)
    return None


def probe_shape(desc: ModelFileConfig, size: int, batch: int = 1) -> tuple[int, int, int, int]:
    """The shape of a batch of `size` x `size` images in the declared layout."""
    return (batch, size, size, 3) if desc.input == "uint8_nhwc" else (batch, 3, size, size)


def open_model_file(name: str, desc: ModelFileConfig, device: str, threads: int | None, size: int) -> ModelFile:
    """Open and check the model file of `desc` for `device` (cpu | cuda, resolved); `size` is the
    shorter side of its inputs (the square's side when it crops)."""
    path = Path(desc.path).expanduser()
    if not path.is_file():
        raise UserError(f"model file of {name!r} not found: {path}")
    if path.suffix.lower() == ".onnx":
        return _open_onnx(name, path, desc, device, threads or default_threads(), size)
    try:
        kind = weights.file_kind(path)
    except UserError:
        kind = "unreadable"
    if kind != "torchscript":
        raise UserError(f"model file of {name!r} ({path}) is neither an ONNX graph (name it .onnx) nor a "
                        "TorchScript archive (torch.jit.save)")
    return _open_script(name, path, desc, device, size)


def _open_onnx(name: str, path: Path, desc: ModelFileConfig, device: str, threads: int, size: int) -> ModelFile:
    providers = providers_for(device)
    if providers is None:  # a GPU, but no CUDA provider in this onnxruntime
        log.info("model %s: onnxruntime has no CUDA provider here (install onnxruntime-gpu); running on the CPU", name)
        providers = providers_for("cpu")
    try:
        session = open_session(str(path), threads, providers)
    except Exception as exc:  # onnxruntime raises its own types for bad graphs
        raise UserError(f"model file of {name!r} ({path}) cannot be loaded by onnxruntime: {_first_line(exc)}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise UserError(f"model {name!r} ({path}) takes {len(inputs)} inputs "
                        f"({', '.join(_describe_input(i) for i in inputs)}); a model file takes one image batch")
    _check_onnx_input(name, path, inputs[0], desc, size)
    provider = session.get_providers()[0]
    runner = OnnxEmbedder(session, CUDA_BATCH if provider == "CUDAExecutionProvider" else ONNX_BATCH, threads, provider,
                          input_name=inputs[0].name)
    probe = np.zeros(probe_shape(desc, size), dtype=np.uint8 if desc.input == "uint8_nhwc" else np.float32)
    try:
        out = session.run(None, {inputs[0].name: probe})[0]
    except Exception as exc:
        raise UserError(f"model {name!r} ({path}), input {_describe_input(inputs[0])}, fails on a {list(probe.shape)} "
                        f"{probe.dtype} batch: {_first_line(exc)}") from None
    dim = _embedding_dim(name, path, np.asarray(out).shape)
    on = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    return ModelFile(None, runner, dim, on, "onnx-file", path)


def _check_onnx_input(name: str, path: Path, inp: Any, desc: ModelFileConfig, size: int) -> None:
    """The graph's declared input against the declared layout and the preprocessed size."""
    shape = list(inp.shape)
    want = "[B, H, W, 3] uint8" if desc.input == "uint8_nhwc" else "[B, 3, H, W] float32"
    other = "float_nchw" if desc.input == "uint8_nhwc" else "uint8_nhwc"
    hint = f"; is its input {other}? (embed.models.{name}.input)" if inp.type == _ELEMENT[other] else ""
    channels = shape[_CHANNEL_AXIS[desc.input]] if len(shape) == 4 else None  # int, or a name / None: dynamic
    if len(shape) != 4 or inp.type != _ELEMENT[desc.input] or (isinstance(channels, int) and channels != 3):
        raise UserError(f"model {name!r} ({path}) takes {_describe_input(inp)}, not the declared input "
                        f"{desc.input} ({want}){hint}")
    spatial = shape[1:3] if desc.input == "uint8_nhwc" else shape[2:4]
    fixed = [s for s in spatial if isinstance(s, int)]
    if fixed and (not desc.crop or any(s != size for s in fixed)):
        raise UserError(f"model {name!r} ({path}) takes {_describe_input(inp)}: a fixed {spatial[0]} x {spatial[1]} "
                        f"input, but the declared preprocessing gives "
                        f"{f'{size} x {size}' if desc.crop else f'whole images with shorter side {size}'}: "
                        f"set crop: true and resize: {fixed[0]}, or export the model with dynamic height and width")


def _open_script(name: str, path: Path, desc: ModelFileConfig, device: str, size: int) -> ModelFile:
    module, _ = weights.load_torchscript(path)
    module = module.eval().to(device)
    for param in module.parameters():  # (nn.Module.requires_grad_ is missing on ScriptModules)
        param.requires_grad_(False)
    dtype = torch.uint8 if desc.input == "uint8_nhwc" else torch.float32
    probe = torch.zeros(probe_shape(desc, size), dtype=dtype, device=device)
    try:
        with torch.inference_mode():
            out = module(probe)
    except Exception as exc:  # TorchScript declares no input types: one batch of the declared layout tells
        raise UserError(f"model {name!r} ({path}) fails on a {list(probe.shape)} {str(dtype).removeprefix('torch.')} "
                        f"batch, the declared input {desc.input}: {_first_line(exc)}") from None
    if not isinstance(out, torch.Tensor):
        raise UserError(f"model {name!r} ({path}) returns {type(out).__name__}; it must return embeddings [B, D]")
    return ModelFile(module, None, _embedding_dim(name, path, tuple(out.shape)), device, "torchscript-file", path)


def _embedding_dim(name: str, path: Path, shape: tuple[int, ...]) -> int:
    if len(shape) != 2 or shape[0] != 1:
        raise UserError(f"model {name!r} ({path}) maps one image to an output of shape {list(shape)}; "
                        "it must give embeddings [B, D]")
    return int(shape[1])


def _describe_input(inp: Any) -> str:
    dims = ", ".join(str(d) if d is not None else "?" for d in inp.shape)
    return f"{inp.name}: {inp.type} [{dims}]"


def _first_line(exc: BaseException) -> str:
    """The line of an error that says what went wrong: the first, except for the TorchScript
    interpreter's, which ends with the original error after a traceback of the program."""
    lines = str(exc).strip().splitlines() or [""]
    if isinstance(exc, torch.jit.Error) or lines[0].startswith("The following operation failed in the TorchScript"):
        return lines[-1].strip()
    return f"{type(exc).__name__}: {lines[0]}"
