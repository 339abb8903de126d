"""Trainer configuration: YAML files with inheritance plus `key=value` overrides.

`configs/default.yaml` holds every key and its DINOv2 default; other files start with
`_base_: default.yaml` (relative to themselves) and override a subset. The default file is the
schema: a key it does not define, in a file or an override, is a user error (catches typos), and
an override must keep the default's type (an int may stand for a float; null may stand for anything).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from curation.core.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_PATH = CONFIG_DIR / "default.yaml"


class Config(dict):
    """A nested dict with attribute access (`cfg.optim.base_lr`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    @classmethod
    def wrap(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return cls({k: cls.wrap(v) for k, v in data.items()})
        if isinstance(data, list):
            return [cls.wrap(v) for v in data]
        return data

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list):
                return [plain(x) for x in v]
            return v

        return plain(self)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping at the top level")
    return data


def _check_type(key: str, default: Any, value: Any, where: str) -> None:
    if default is None or value is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")


def _coerce_number(default: Any, value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string; accept it where the default is a number."""
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _merge(base: dict[str, Any], update: dict[str, Any], schema: dict[str, Any], where: str, prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise UserError(f"{where}: unknown config key {dotted!r}")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{where}: {dotted} must be a mapping")
            _merge(base[key], value, schema[key], where, dotted + ".")
        else:
            value = _coerce_number(schema[key], value)
            _check_type(dotted, schema[key], value, where)
            base[key] = copy.deepcopy(value)


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its `_base_` ancestors, root first."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"config inheritance loop through {path}")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    chain = _chain((path.parent / base), seen + (path,)) if base else []
    return chain + [(path, data)]


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a bundled config (`tiny`, `vits14.yaml`, ...)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if not path.parent.name and candidate.is_file():
            return candidate
    return path  # _read_yaml reports it as missing


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"override {item!r}: bad value ({exc})") from exc
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the inheritance chain of `path`, then `overrides` (`optim.base_lr=1e-3`)."""
    schema = _read_yaml(DEFAULT_PATH)
    cfg = copy.deepcopy(schema)
    if path is not None:
        for file, data in _chain(resolve_config_path(path)):
            if file != DEFAULT_PATH.resolve():
                _merge(cfg, data, schema, str(file))
    for item in overrides:
        keys, value = parse_override(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(cfg, nested, schema, f"override {item!r}")
    validate(cfg)
    return Config.wrap(cfg)


def validate(cfg: dict[str, Any]) -> None:
    """Cross-field checks the type check cannot express."""
    from training.models.vit import ARCHS

    if cfg["model"]["arch"] not in ARCHS:
        raise UserError(f"model.arch {cfg['model']['arch']!r} is not one of {', '.join(ARCHS)}")
    if cfg["teacher"]["centering"] not in ("centering", "sinkhorn_knopp"):
        raise UserError("teacher.centering must be 'centering' or 'sinkhorn_knopp'")
    if cfg["optim"]["scaling_rule"] not in ("sqrt_wrt_1024", "linear_wrt_1024", "none"):
        raise UserError("optim.scaling_rule must be sqrt_wrt_1024, linear_wrt_1024 or none")
    lo, hi = cfg["ibot"]["mask_ratio_min_max"]
    if not 0.0 <= lo <= hi <= 1.0:
        raise UserError("ibot.mask_ratio_min_max must satisfy 0 <= min <= max <= 1")
    # With model.init the released checkpoint sets the patch size (training.official_init checks again).
    for section in ("crops", "highres") if not cfg["model"].get("init") else ():
        for key in ("global_crops_size", "local_crops_size"):
            if cfg[section][key] % cfg["model"]["patch_size"]:
                raise UserError(f"{section}.{key} ({cfg[section][key]}) must be a multiple of model.patch_size")
    if cfg["optim"]["schedule"] not in ("cosine", "constant"):
        raise UserError("optim.schedule must be cosine or constant")
    if cfg["model"]["pos_embed"] not in ("learned", "rope"):
        raise UserError("model.pos_embed must be learned or rope")
    if not 0.0 <= cfg["data"]["homogeneous_fraction"] <= 1.0:
        raise UserError("data.homogeneous_fraction must be in [0, 1]")
    gram = cfg["gram"]
    if gram["enabled"] and (gram["teacher_crops_scale"] <= 0 or gram["update_frequency"] < 1 or gram["start_iteration"] < 0):
        raise UserError("gram: teacher_crops_scale must be > 0, update_frequency >= 1, start_iteration >= 0")
    if cfg["train"]["precision"] not in ("auto", "bf16", "fp32"):
        raise UserError("train.precision must be auto, bf16 or fp32")
    if cfg["train"]["batch_size_per_gpu"] < 2:
        raise UserError("train.batch_size_per_gpu must be >= 2 (KoLeo needs a neighbour)")


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
