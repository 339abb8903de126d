"""Recipes: which seed datasets a curated set is retrieved for, how, and with which config.

A recipe is a YAML file (this folder holds the shipped ones: `lvd142m`, `lvd1689m` (a DINOv3-style
mix: a balanced row, retrieval rows and raw sets as is), `demo`, `demo_mix`) with
`name`, `description`, optional `expected_pool` / `expected_total`, an optional `config:` block
(RunConfig overrides) and `rows`, one per (dataset, mode) as in the paper's Table 15:

    rows:
      - {dataset: imagenet22k, mode: as_is}
      - {dataset: imagenet1k, mode: sample, n: paper.SAMPLE_N_IMAGENET1K}
      - {dataset: caltech101, mode: cluster, retrieved: 2_630_000}
      - {mode: balanced, target: 1_000_000}      # seedless, Vo et al. 2024 (the `balance` stage)

Any value outside `config:` may be written `paper.NAME`, a reference into `curation.paper`, so a
recipe never restates the paper's numbers (the config block's defaults already are the paper's). `resolved_rows` fills what a row leaves out: the mode and N from the
seed registry, M / cap / N / balanced target from the run config. A balanced target, like the
`retrieved` numbers, is meant for `expected_pool` when the recipe names one (`planner.balanced_target`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curation import paper
from curation.config import RunConfig
from curation.retrieval.seed_registry import REGISTRY

RECIPES_DIR = Path(__file__).parent
RowMode = Literal["as_is", "sample", "cluster", "balanced"]
_PAPER_PREFIX = "paper."


def _user_error(message: str) -> Exception:
    from curation.core.errors import UserError

    return UserError(message)


class RecipeRow(BaseModel):
    """One row as written; `None` fields are filled by `Recipe.resolved_rows`."""

    model_config = ConfigDict(extra="forbid")

    dataset: Optional[str] = None
    mode: Optional[RowMode] = None
    n: Optional[int] = Field(None, ge=1)  # sample: neighbours per query image
    m: Optional[int] = Field(None, ge=1)  # cluster: images per qualifying cluster
    cap: Optional[int] = Field(None, ge=0)  # cluster: most images per dataset
    retrieved: Optional[int] = Field(None, ge=0)  # cluster: images the paper's run retrieved
    images: Optional[int] = Field(None, ge=0)  # overrides the registry's expected size
    target: Optional[int] = Field(None, ge=0)  # balanced: images to keep

    @model_validator(mode="after")
    def _fields_fit_mode(self) -> "RecipeRow":
        if self.mode != "balanced" and not self.dataset:
            raise ValueError("a row needs a dataset (only `mode: balanced` rows go without)")
        misplaced = {
            "n": self.n is not None and self.mode not in (None, "sample"),
            "m": self.m is not None and self.mode not in (None, "cluster"),
            "cap": self.cap is not None and self.mode not in (None, "cluster"),
            "retrieved": self.retrieved is not None and self.mode not in (None, "cluster"),
            "target": self.target is not None and self.mode != "balanced",
        }
        bad = [key for key, wrong in misplaced.items() if wrong]
        if bad:
            raise ValueError(f"{', '.join(bad)} does not apply to mode {self.mode}")
        return self


@dataclass(frozen=True)
class RowSpec:
    """A row with every default filled in: what the planner and the retrieval stage consume."""

    dataset: Optional[str]
    mode: str
    images: Optional[int] = None
    n: Optional[int] = None
    m: Optional[int] = None
    cap: Optional[int] = None
    retrieved: Optional[int] = None
    target: Optional[int] = None


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    expected_pool: Optional[int] = Field(None, ge=0)  # pool size the recipe's numbers assume
    expected_total: Optional[int] = Field(None, ge=0)  # final size it should produce at that pool
    config: dict[str, Any] = Field(default_factory=dict)
    rows: list[RecipeRow] = Field(min_length=1)

    def run_config(self) -> RunConfig:
        """The recipe's `config:` block as a validated RunConfig (CLI overrides: config.load_config)."""
        try:
            return RunConfig.model_validate(self.config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise _user_error(f"recipe {self.name}: bad config value {where}: {first['msg']}") from None

    def datasets(self) -> list[str]:
        """Seed datasets named by the rows, each once, in row order."""
        return list(dict.fromkeys(r.dataset for r in self.rows if r.dataset))

    def resolved_rows(self, config: RunConfig | None = None) -> list[RowSpec]:
        """Rows with mode, images, N, M, cap and target filled from the registry and the config."""
        config = config or self.run_config()
        ret = config.retrieval
        out = []
        for row in self.rows:
            info = REGISTRY.get(row.dataset) if row.dataset else None
            mode = row.mode or (info.retrieval if info else None)
            if mode is None:
                raise _user_error(f"recipe {self.name}: row {row.dataset!r} needs a mode (as_is, sample, cluster, balanced)")
            images = row.images if row.images is not None else (info.images if info else None)
            spec = RowSpec(dataset=row.dataset, mode=mode, images=images)
            if mode == "sample":
                n = row.n or (info.n if info and info.n else ret.sample_n)
                spec = RowSpec(row.dataset, mode, images, n=n)
            elif mode == "cluster":
                cap = row.cap if row.cap is not None else ret.cluster_cap
                spec = RowSpec(row.dataset, mode, images, m=row.m or ret.cluster_m, cap=cap, retrieved=row.retrieved)
            elif mode == "balanced":
                target = row.target if row.target is not None else config.clustering.balanced.target
                if target is None:
                    raise _user_error(f"recipe {self.name}: the balanced row needs `target` (or clustering.balanced.target)")
                spec = RowSpec(row.dataset, mode, images, target=target)
            out.append(spec)
        return out


def resolve_paper_refs(value: Any, where: str = "recipe") -> Any:
    """Replace every string `paper.NAME` (at any depth) by `curation.paper.NAME`."""
    if isinstance(value, dict):
        return {k: resolve_paper_refs(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_paper_refs(v, where) for v in value]
    if isinstance(value, str) and value.startswith(_PAPER_PREFIX):
        attr = value[len(_PAPER_PREFIX) :]
        if not attr.isupper() or not hasattr(paper, attr):
            names = [n for n in vars(paper) if n.isupper()]
            close = difflib.get_close_matches(attr, names, n=3)
            hint = f"; did you mean {', '.join('paper.' + c for c in close)}?" if close else ""
            raise _user_error(f"{where}: unknown paper constant {value!r}{hint}")
        return getattr(paper, attr)
    return value


def recipe_names() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or any recipe YAML by path; every problem is one UserError line."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        path = candidate
    else:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            close = difflib.get_close_matches(str(name_or_path), recipe_names(), n=3, cutoff=0.4)
            hint = f"did you mean {', '.join(close)}?" if close else f"shipped recipes: {', '.join(recipe_names())}"
            raise _user_error(f"unknown recipe {str(name_or_path)!r}; {hint} (or give a path to a recipe YAML)")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise _user_error(f"recipe file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise _user_error(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise _user_error(f"recipe {path} must be a mapping with `name` and `rows`")
    # The config block stays literal: config.load_config reads it straight from the file too.
    raw = {k: (v if k == "config" else resolve_paper_refs(v, where=f"recipe {path.name}")) for k, v in raw.items()}
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _user_error(f"recipe {path.name}: {where}: {first['msg']}") from None
    recipe.run_config()  # fail now, not mid-run, on a bad config block
    return recipe
