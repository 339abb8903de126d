"""The report's `ablation` section: the table `lvd ablate` wrote to RUN/ablation/ablation.json (the
paper's Table 2 at our scale: k-NN accuracy of a tiny ViT trained on the curated output, on an
equal-size random sample of the uncurated pool and on the seeds alone). Absent file: no section.

Reads the JSON only (the trainer is a floor above); every value from it is escaped by `table` /
`esc`, numbers are formatted here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from curation.report.data import read_json
from curation.report.page import esc, section, table

ABLATION = "ablation/ablation.json"
ARMS = (("init", "untrained"), ("curated", "(a) curated output"), ("uncurated", "(b) uncurated pool sample"),
        ("seeds", "(c) seeds alone"))
PAIR_LABELS = {"curated - uncurated": "(a) − (b)", "curated - seeds": "(a) − (c)"}


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _points(mean: Any, se: Any = None, sign: bool = False) -> str:
    """A fraction as percentage points: '73.3 ± 1.2' ('–' when unknown)."""
    m, s = _num(mean), _num(se)
    if m is None:
        return "–"
    text = f"{100 * m:+.1f}" if sign else f"{100 * m:.1f}"
    return text + (f" ± {100 * s:.1f}" if s is not None else "")


def _share(comp: Any, key: str) -> str:
    v = _num(comp.get(key)) if isinstance(comp, Mapping) else None
    return "–" if v is None else f"{100 * v:.0f} %"


def _list(values: Any, sign: bool = False) -> str:
    if not isinstance(values, list):
        return "–"
    return " / ".join(_points(v, sign=sign) for v in values)


def ablation_section(root: Path) -> str | None:
    """The section's HTML, or None when the run has no ablation result."""
    result = read_json(root / ABLATION)
    if not result:
        return None
    arms = result.get("arms") if isinstance(result.get("arms"), Mapping) else {}
    rows = []
    for key, label in ARMS:
        row = arms.get(key)
        if not isinstance(row, Mapping):
            continue
        comp = row.get("composition")
        rows.append([label, row.get("images"), _share(comp, "on_seed_concept_share"), _share(comp, "duplicate_share"),
                     _points(row.get("mean"), row.get("se")), _list(row.get("top1"))])
    pairs = result.get("paired") if isinstance(result.get("paired"), Mapping) else {}
    pair_rows = [[PAIR_LABELS.get(str(name), str(name)), _list(d.get("diffs"), sign=True),
                  _points(d.get("mean"), d.get("se"), sign=True), "yes" if d.get("beyond_2se") else "no"]
                 for name, d in pairs.items() if isinstance(d, Mapping)]
    held = result.get("heldout") if isinstance(result.get("heldout"), Mapping) else {}
    seeds = result.get("seeds") if isinstance(result.get("seeds"), list) else []
    note = (f'<p class="note">Tiny ViT, {esc(result.get("iterations"))} iterations per arm, {len(seeds)} training '
            f'seed(s); k-NN top-1 (k {esc(result.get("k", 20))}) on {esc(held.get("n_test"))} held-out images of '
            f'{esc(held.get("classes"))} seed concepts ({esc(held.get("n_train"))} in the k-NN bank); mean ± '
            "standard error over seeds; paired: per-seed difference in points. DINOv2 Table 2: uncurated 73.6 &lt; "
            "curated 85.8 (ViT-g/14, ImageNet-1k linear).</p>")
    body = (note + table(["data", "images", "on a seed concept", "duplicates", "k-NN top-1 (%)", "per seed"], rows, numeric=(1,))
            + table(["paired difference (points)", "per seed", "mean ± SE", "beyond 2 SE"], pair_rows))
    return section("ablation", "Ablation: curated vs uncurated pretraining data", body)
