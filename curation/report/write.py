"""`RUN/report.html`: one self-contained page that shows what a curation run did (DESIGN §3, §6).

Sections (each an element with its id): `stages` (timings and counts), `funnel` (inputs ->
rejects -> dedup steps -> retrieved -> final), `recipe` (planned vs retrieved vs final per row),
`duplicates` (largest duplicate components), `clusters` (size histogram, closest images of the
largest clusters), `balanced` (balanced rows only: per level of the hierarchical k-means, cluster
sizes before and after sampling and the caps, and the largest leaf clusters), `retrievals` (query -> neighbours per seed set and mode), `relative`
(evaluation image -> removed pool images), `thresholds` (each k-NN graph's score distribution with
its threshold, and the borderline pairs either side of it: `curation.report.thresholds`), `rejects`
(by reason, source names only: no thumbnails of junk), `quality` (when the manifest has it) and `ablation` (when `lvd ablate` wrote
RUN/ablation/ablation.json: `curation.report.ablation`).

A run that stopped early still gets a page: a section whose inputs are missing says so. Galleries
are small deterministic samples; their thumbnails (96 px JPEG data URIs) come from one pass over
the run's image files. Every string from the data is escaped (`page.esc`), and the page
has no scripts and loads nothing (its CSP forbids both).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from curation.dedup.decisions import LARGEST_KEY
from curation.dedup.knn_scores import HISTOGRAM_KEY
from curation.report import data
from curation.report.ablation import ablation_section
from curation.report.thresholds import threshold_view, thresholds_section
from curation.report.page import Group, bar, esc, fmt_count, gallery, histogram_svg, page, section, table, thumbnail_uri
from curation.output.shards import INDEX_FILE, fetch_images, read_index
from curation.core.storage import as_path, is_url

#: Stage counts the stage table leaves out: the score histogram is drawn in `thresholds`, the largest
#: components are the duplicate gallery's.
DRAWN_ELSEWHERE = frozenset({HISTOGRAM_KEY, LARGEST_KEY})

REPORT_FILE = "report.html"
STAGE_ORDER = ("ingest", "hash", "hash_edges", "embed", "knn_edges", "eval_embed", "eval_edges", "components",
               "seeds", "cluster", "balance", "retrieve", "output", "report")
NAV = (("stages", "stages"), ("funnel", "funnel"), ("recipe", "recipe"), ("duplicates", "duplicates"),
       ("clusters", "clusters"), ("balanced", "balanced"), ("retrievals", "retrievals"), ("relative", "relative dedup"),
       ("thresholds", "thresholds"), ("rejects", "rejects"), ("quality", "quality"), ("ablation", "ablation"))


def _missing(rel: str, stage: str) -> str:
    return f"Nothing to show: RUN/{rel} is missing (stage `{stage}` has not run or wrote nothing)."


def _duplicates_missing(root: Path, manifest: Mapping[str, Any]) -> str:
    if (root / data.COMPONENTS).exists() and data.largest_components(dict(manifest)) is None:
        return ("Nothing to show: the manifest has no record of the largest components (a run from before that"
                " record; rerun the stage with `--force components`).")
    return _missing(data.COMPONENTS, "components")


def stages_section(manifest: Mapping[str, Any]) -> str:
    stages = manifest.get("stages", {})
    if not stages:
        return section("stages", "Stages", "", empty="The manifest lists no completed stage.")
    names = [s for s in STAGE_ORDER if s in stages] + sorted(s for s in stages if s not in STAGE_ORDER)
    rows = []
    for name in names:
        info = stages[name] if isinstance(stages[name], dict) else {}
        counts = info.get("counts", {})
        text = ", ".join(f"{k}={json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}"
                         for k, v in sorted(counts.items()) if k not in DRAWN_ELSEWHERE)
        rows.append((name, info.get("seconds"), info.get("engine", ""), text))
    pending = [s for s in STAGE_ORDER if s not in stages and s not in ("report", "balance")]  # balance: balanced rows only
    note = f'<p class="note">Not run: {esc(", ".join(pending))}.</p>' if pending else ""
    return section("stages", "Stages", table(["stage", "seconds", "engine", "counts"], rows) + note)


def funnel_section(steps: Sequence[data.Step]) -> str:
    top = max((s.count or 0 for s in steps), default=0)
    rows = [(s.label, ("−" if s.removal and s.count else "") + (f"{s.count:,}" if s.count is not None else "–"),
             bar(s.count, top, s.removal), s.detail) for s in steps]
    body = table(["step", "images", "", "detail"], rows, numeric=(1,))
    body += ('<p class="note">Red rows are removals; "–" means the step has not run. '
             "Retrieved rows include the seed images kept as is.</p>")
    return section("funnel", "Funnel", body)


def recipe_section(rows: list[dict[str, Any]] | None, merge: Mapping[str, Any]) -> str:
    if not rows:
        return section("recipe", "Recipe", "", empty=_missing(data.RECIPE, "retrieve") + " No recipe rows and no retrieval yet.")
    cells = [(r["dataset"] or "(none)", r["mode"], r["params"], r["seed_images"], r["planned"], r["retrieved"], r["merged"], r["final"])
             for r in rows]
    body = table(["dataset", "mode", "parameters", "seed images", "planned", "retrieved", "after merge", "final"], cells,
                 numeric=(3, 4, 5, 6, 7))
    body += ('<p class="note">retrieved: rows the recipe row produced; after merge: rows credited to it once every image '
             'is kept once (its first retrieval); final: rows in the output shards (with image bytes).</p>')
    if merge:
        text = ", ".join(f"{key.replace('_', ' ')} {value:,}" for key, value in sorted(merge.items()))
        body += f'<p class="note">Merge: {esc(text)}.</p>'
    return section("recipe", "Recipe: planned vs got", body)


def gallery_section(section_id: str, title: str, groups: list[Group] | None, thumbs: Mapping[str, str],
                    missing: str, intro: str = "") -> str:
    if groups is None:
        return section(section_id, title, "", empty=missing)
    if not groups:
        return section(section_id, title, "", empty="The run has this data, but nothing to show (no groups).")
    note = f'<p class="note">{esc(intro)}</p>' if intro else ""
    return section(section_id, title, note + gallery(groups, thumbs))


def clusters_section(view: data.Clusters | None, thumbs: Mapping[str, str]) -> str:
    if view is None:
        return section("clusters", "Clusters", "", empty=_missing(data.ASSIGNMENTS, "cluster"))
    sizes = sorted(view.sizes)
    empty_clusters = f", {view.k - len(sizes):,} of k={view.k:,} empty" if view.k else ""
    stats = (f"{len(sizes):,} non-empty clusters{empty_clusters}; sizes min {sizes[0]:,}, median {sizes[len(sizes) // 2]:,}, "
             f"max {sizes[-1]:,}." if sizes else "no assignments")
    body = f'<p class="note">{esc(stats)}</p>' + histogram_svg(sizes, label="images per cluster")
    body += "<p class=\"note\">The largest clusters, images closest to the centroid first:</p>" + gallery(view.groups, thumbs)
    return section("clusters", "Clusters", body)


def balanced_section(view: data.Balanced | None, thumbs: Mapping[str, str]) -> str:
    """Balanced rows: per level, cluster sizes before and after sampling (histograms), the cap
    chosen, and a gallery of the largest leaf clusters."""
    if view is None:
        return ""
    body = f'<p class="note">Hierarchical k-means: {esc(view.note)}.</p>'
    for row in view.rows:
        body += (f"<h3>balanced row: target {fmt_count(row['target'])}, got {fmt_count(row['got'])}"
                 f" (leaves: {esc(row['strategy'])})</h3>")
        cells = [(lv.level, lv.clusters, lv.largest_before, lv.largest_after,
                  lv.cap if lv.cap is not None else (f"median {lv.caps_median:g}" if lv.caps_median is not None else "–"))
                 for lv in row["levels"]]
        body += table(["level", "clusters", "largest before", "largest after", "cap x (sum of min(x, size) = target)"],
                      cells, numeric=(0, 1, 2, 3))
        for lv in reversed(row["levels"]):
            body += (f'<p class="note">Level {lv.level}: images per cluster before sampling, then after.</p>'
                     + histogram_svg(lv.before, label=f"level {lv.level}: images per cluster, before")
                     + histogram_svg(lv.after, label=f"level {lv.level}: images sampled per cluster, after"))
    body += '<p class="note">The largest leaf clusters, members closest to the centroid first:</p>' + gallery(view.groups, thumbs)
    return section("balanced", "Balanced rows (hierarchical k-means)", body)


def rejects_section(rows: list[dict[str, Any]] | None) -> str:
    if rows is None:
        return section("rejects", "Rejects", "", empty=_missing(data.REJECTS, "ingest"))
    if not rows:
        return section("rejects", "Rejects", "", empty="No input was rejected.")
    cells = [(r["stage"], r["reason"], r["count"], r["message"], "; ".join(map(str, r["examples"]))) for r in rows]
    body = table(["stage", "reason", "count", "message (first)", "sources (first, sorted)"], cells, numeric=(2,))
    return section("rejects", "Rejects by reason", body)


def quality_section(manifest: Mapping[str, Any]) -> str:
    quality = manifest.get("quality")
    if not quality:
        return ""
    return section("quality", "Quality against the ground truth", table(["metric", "value"], data.flatten(quality)))


def make_thumbs(groups: Sequence[Group], sources: Sequence[Path]) -> dict[str, str]:
    """image_id -> thumbnail data URI for every image the galleries show (one pass over the sources)."""
    ids = {t.image_id for g in groups for t in ([g.lead] if g.lead else []) + g.tiles if t and t.image_id}
    images = fetch_images(ids, sources) if ids and sources else {}
    thumbs = {}
    for image_id in sorted(images):
        uri = thumbnail_uri(images[image_id])
        if uri:
            thumbs[image_id] = uri
    return thumbs


def render_report(run_root: str | Path) -> str:
    """The report page of a run directory, as HTML text (same run -> same text)."""
    root = as_path(run_root)
    manifest = data.read_json(root / "manifest.json")
    index = read_index(root / "output")
    duplicates = data.duplicate_groups(root, manifest)
    clusters = data.cluster_view(root, manifest)
    retrievals = data.retrieval_groups(root)
    relative = data.relative_groups(root)
    balanced = data.balanced_view(root)
    thresholds = threshold_view(root, manifest)
    all_groups = [g for gs in (duplicates, clusters.groups if clusters else None, retrievals, relative,
                               balanced.groups if balanced else None, *[v.groups for v in thresholds or []]) if gs for g in gs]
    thumbs = make_thumbs(all_groups, data.image_files(root))
    sections = [
        stages_section(manifest),
        funnel_section(data.funnel(root, manifest, index)),
        recipe_section(data.recipe_rows(root, index), data.collisions(root)),
        gallery_section("duplicates", "Duplicate groups", duplicates, thumbs, _duplicates_missing(root, manifest),
                        "The largest components; the kept image first, every other member with why it was removed."),
        clusters_section(clusters, thumbs),
        balanced_section(balanced, thumbs),
        gallery_section("retrievals", "Retrievals", retrievals, thumbs, _missing(data.RETRIEVED, "retrieve"),
                        "Per seed set and mode: queries (framed) and their nearest pool images, or images of the retrieved clusters."),
        gallery_section("relative", "Relative dedup hits", relative, thumbs, _missing(data.EVAL_EDGES, "eval_edges"),
                        "Evaluation images (framed) and the pool images close to them; their components were removed whole."),
        thresholds_section(thresholds, thumbs),
        rejects_section(data.reject_rows(root)),
        quality_section(manifest),
        ablation := ablation_section(root),
    ]
    name = manifest.get("recipe", {}).get("name") if isinstance(manifest.get("recipe"), dict) else None
    title = f"LVD curation report{f' · {name}' if name else ''}"
    subtitle = f"run {root if is_url(root) else root.resolve()}" + (f" · output index {INDEX_FILE} present" if index else "")
    nav = [(sid, label) for sid, label in NAV if (sid != "quality" or manifest.get("quality")) and (sid != "balanced" or balanced)
           and (sid != "ablation" or ablation)]
    return page(title, subtitle, nav, [s for s in sections if s])


def write_report(run_root: str | Path) -> Path:
    """Write `RUN/report.html` atomically; returns its path."""
    from curation.core.rundir import write_bytes

    root = as_path(run_root)
    return write_bytes(render_report(root).encode("utf-8"), root / REPORT_FILE)
