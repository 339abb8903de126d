"""`python -m training.ablate`: the curated / uncurated / seeds table on a small hand-made run directory
(the real table comes from a demo run, `bench/bench_ablation.py`; here 4 iterations per arm check the
plumbing), the multi-seed statistics, each arm's composition, the generated held-out set (disjoint
from the pool and the seeds), the `web` world the ablation runs on, and the report's section."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jpeg, photos, view, write_image_folder

from training.ablate import composition, main, mean_se, paired, summarise, table


def _shard(path, images):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image_id": [str(i) for i in range(len(images))], "image": pa.array(images, pa.binary())}), path)


@pytest.mark.slow  # three short trainings and four evaluations: ~45 s on 2 shared cores
def test_ablation_table(tmp_path):
    rng = random.Random(0)
    imgs = photos(("astronaut", "chelsea", "coffee", "rocket"), short_side=96)
    crops = {n: [jpeg(view(img, rng, 64)) for _ in range(8)] for n, img in imgs.items()}
    run, world = tmp_path / "run", tmp_path / "world"
    _shard(run / "output" / "part-00000.parquet", crops["astronaut"][:6] + crops["chelsea"][:6])
    _shard(run / "pool" / "part-00000.parquet", [c for n in imgs for c in crops[n]][:20])
    _shard(run / "pool" / "part-00001.parquet", [c for n in imgs for c in crops[n]][20:])
    _shard(run / "seeds" / "set_a" / "pool" / "part-00000.parquet", crops["astronaut"][6:] + crops["chelsea"][6:])
    for concept in ("astronaut", "chelsea"):
        (world / "seeds" / "set_a" / concept).mkdir(parents=True)
    names = ("astronaut", "chelsea", "coffee")
    write_image_folder(world / "eval" / "demo_eval" / "train", 3, seed=1, size=48, names=names)
    write_image_folder(world / "eval" / "demo_eval" / "test", 2, seed=2, size=48, names=names)

    out = tmp_path / "ablation"
    assert main(["--run", str(run), "--world", str(world), "--out", str(out), "--steps", "4", "--seeds", "2", "optim.epochs=2",
                 "train.batch_size_per_gpu=4", "data.num_workers=0", "data.shuffle_buffer=8"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert result["iterations"] == 4 and result["seed_concepts"] == ["astronaut", "chelsea"] and result["seeds"] == [0, 1]
    assert result["heldout"] == {"path": str(world / "eval" / "demo_eval"), "classes": 2, "n_train": 6, "n_test": 4}
    arms = result["arms"]
    assert list(arms) == ["init", "curated", "uncurated", "seeds"]
    assert arms["curated"]["images"] == arms["uncurated"]["images"] == 12 and arms["seeds"]["images"] == 4
    assert all(len(a["top1"]) == 2 and all(0.0 <= v <= 1.0 for v in a["top1"]) for a in arms.values())
    gap = result["paired"]["curated - uncurated"]
    assert gap["diffs"] == pytest.approx([c - u for c, u in zip(arms["curated"]["top1"], arms["uncurated"]["top1"])])
    assert result["curated_beats_uncurated"] == gap["beyond_2se"]
    for s in (0, 1):  # one pool sample per seed, with the pool's ids
        ids = pq.read_table(out / "data" / f"uncurated-{s}" / "part-00000.parquet").column("image_id").to_pylist()
        assert len(ids) == 12 and set(ids) <= {str(i) for i in range(20)}
    assert "(a) curated output" in (out / "ablation.md").read_text()
    # A rerun reads every finished (arm, seed) back instead of retraining.
    stamp = {f: f.stat().st_mtime_ns for f in (out / "results").iterdir()}
    assert main(["--run", str(run), "--world", str(world), "--out", str(out), "--steps", "4", "--seeds", "2", "optim.epochs=2",
                 "train.batch_size_per_gpu=4", "data.num_workers=0", "data.shuffle_buffer=8"]) == 0
    assert {f: f.stat().st_mtime_ns for f in (out / "results").iterdir()} == stamp
    assert json.loads((out / "ablation.json").read_text())["arms"]["curated"]["top1"] == arms["curated"]["top1"]


def test_mean_se_and_paired_difference() -> None:
    st = mean_se([0.70, 0.74, 0.72])
    assert st["n"] == 3 and st["mean"] == pytest.approx(0.72) and st["se"] == pytest.approx(0.02 / 3**0.5)
    assert mean_se([0.5]) == {"n": 1, "mean": 0.5, "se": None} and mean_se([])["mean"] is None
    d = paired([0.80, 0.78, 0.83], [0.70, 0.71, 0.72])
    assert d["diffs"] == pytest.approx([0.10, 0.07, 0.11])
    assert d["mean"] == pytest.approx(0.28 / 3)
    sd = ((0.10 - 0.28 / 3) ** 2 + (0.07 - 0.28 / 3) ** 2 + (0.11 - 0.28 / 3) ** 2) / 2
    assert d["se"] == pytest.approx(sd**0.5 / 3**0.5) and d["beyond_2se"]
    noisy = paired([0.80, 0.70, 0.75], [0.70, 0.78, 0.74])  # +10, -8, +1: mean +1 with SE 5.2
    assert not noisy["beyond_2se"] and noisy["mean"] == pytest.approx(0.01)
    assert not paired([0.9], [0.1])["beyond_2se"]  # one seed: no SE, no claim
    with pytest.raises(ValueError):
        paired([0.1, 0.2], [0.1])
    # The paired SE is not the arms' SEs combined: a seed effect shared by both arms cancels.
    s = summarise({"curated": [0.60, 0.70, 0.80], "uncurated": [0.58, 0.68, 0.78], "seeds": [0.5, 0.6, 0.7]})
    assert s["arms"]["curated"]["se"] == pytest.approx(0.1 / 3**0.5)
    assert s["paired"]["curated - uncurated"]["se"] == pytest.approx(0.0, abs=1e-12)
    assert s["paired"]["curated - uncurated"]["mean"] == pytest.approx(0.02)
    assert s["paired"]["curated - uncurated"]["beyond_2se"]  # +2 points every seed: beyond any noise
    assert list(s["paired"]) == ["curated - uncurated", "curated - seeds"]


def test_composition_counts_concepts_and_duplicates() -> None:
    labels = {"a": ("rings", "g1"), "b": ("rings", "g1"), "c": ("photo:moon", "w1"), "d": ("stripes", "g2"),
              "e": ("photo:moon", "w1"), "f": ("dots", "g3")}
    comp = composition(["a", "b", "c", "d", "e", "f", "a", "zz"], labels, ["rings", "stripes"])
    assert comp["images"] == 8 and comp["on_seed_concept"] == 4  # a, b, d, a
    assert comp["duplicates"] == 3  # b (g1 again), e (w1 again), the second a
    assert comp["on_seed_concept_share"] == 0.5 and comp["duplicate_share"] == 0.375
    assert comp["per_concept"] == {"rings": 3, "photo:moon": 2, "?": 1, "dots": 1, "stripes": 1}


def _result(**paired_over) -> dict:
    gap = {"diffs": [0.05, 0.04, 0.06], "n": 3, "mean": 0.05, "se": 0.0058, "beyond_2se": True, **paired_over}
    arm = lambda v, n, comp=None: {"top1": v, "n": 3, "mean": sum(v) / 3, "se": 0.01, "images": n,  # noqa: E731
                                   **({"composition": comp} if comp else {})}
    return {"iterations": 200, "seeds": [0, 1, 2], "k": 20, "seed_concepts": ["rings"],
            "heldout": {"path": "/w/heldout", "classes": 9, "n_train": 360, "n_test": 900},
            "arms": {"init": arm([0.4, 0.41, 0.42], 0), "curated": arm([0.8, 0.79, 0.81], 700, {"on_seed_concept_share": 0.95, "duplicate_share": 0.0}),
                     "uncurated": arm([0.75, 0.75, 0.75], 700, {"on_seed_concept_share": 0.16, "duplicate_share": 0.3}),
                     "seeds": arm([0.7, 0.7, 0.7], 216)},
            "paired": {"curated - uncurated": gap, "curated - seeds": {**gap, "beyond_2se": False}}}


def test_markdown_table() -> None:
    md = table(_result())
    assert "200 iterations per arm, 3 training seed(s)" in md and "900 held-out images of the 9 seed concepts" in md
    assert "| (a) curated output | 700 | 95 % | 0 % | 80.0 ± 1.0 | 80.0 / 79.0 / 81.0 |" in md
    assert "| (b) uncurated pool sample | 700 | 16 % | 30 % | 75.0 ± 1.0 |" in md
    assert "| (a) − (b) | +5.0 / +4.0 / +6.0 | 5.0 ± 0.6 | yes |" in md
    assert "| (a) − (c) | +5.0 / +4.0 / +6.0 | 5.0 ± 0.6 | no |" in md


def test_report_section_from_ablation_json(tmp_path) -> None:
    from curation.report.ablation import ablation_section
    from curation.report.write import render_report

    run = tmp_path / "run"
    (run / "ablation").mkdir(parents=True)
    assert ablation_section(run) is None
    assert 'id="ablation"' not in render_report(run) and 'href="#ablation"' not in render_report(run)
    result = _result()
    result["arms"]["curated"]["images"] = "<script>x</script>"  # strings from the file are escaped
    result["heldout"]["n_test"] = '"><img src=x>'
    (run / "ablation" / "ablation.json").write_text(json.dumps(result))
    html = ablation_section(run)
    assert html.startswith('<section id="ablation">') and "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&quot;&gt;&lt;img src=x&gt;" in html
    assert "<td>(a) curated output</td>" in html and "<td>80.0 ± 1.0</td>" in html and "<td>95 %</td>" in html
    assert "<td>(a) − (b)</td><td>+5.0 / +4.0 / +6.0</td><td>+5.0 ± 0.6</td><td>yes</td>" in html
    assert "<td>(a) − (c)</td>" in html and "<td>no</td>" in html
    page = render_report(run)
    assert 'href="#ablation"' in page and page.count('<section id="ablation">') == 1
    (run / "ablation" / "ablation.json").write_text("{not json")  # unreadable: no section, no crash
    assert ablation_section(run) is None


def test_heldout_is_disjoint_from_pool_and_seeds_and_web_world_is_mostly_off_concept(tmp_path, monkeypatch) -> None:
    import hashlib
    from collections import Counter

    from curation.demo import world as w

    tiny = dict(originals=40, copy_rate=0.3, seeds_per_concept=3, eval_per_split=2, eval_copies=2, junk_each=1)
    monkeypatch.setitem(w.SIZES, "tiny", w.WorldSize(**tiny))
    monkeypatch.setitem(w.SIZES, "tinyweb", w.WorldSize(**tiny, off_concept=200, off_copies_max=20))
    plain, web = w.build_world(tmp_path / "plain", "tiny"), w.build_world(tmp_path / "web", "tinyweb")

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
                and p.suffix in (".jpg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".bin", ".txt", "")}

    # Off-concept images come from a stream of their own: every other file of the world is unchanged.
    got_plain, got_web = files(plain), files(web)
    assert {k: v for k, v in got_web.items() if not k.startswith("pool/web/")} == got_plain
    truth = pq.read_table(web / "truth.parquet").to_pylist()
    pool = [r for r in truth if r["source"].startswith("pool/") and r["kind"] != "junk"]
    seed_concepts = {c for cs in w.SEED_SETS.values() for c in cs}
    on = sum(r["concept"] in seed_concepts for r in pool)
    off = sum(r["concept"].startswith("photo:") for r in pool)
    assert off > 0.5 * len(pool) and on < 0.3 * len(pool)
    web_groups = Counter(r["dup_group"] for r in pool if r["concept"].startswith("photo:"))
    assert sum(n - 1 for n in web_groups.values()) > 0.3 * len(web_groups) and max(web_groups.values()) >= 4

    held = w.build_heldout(tmp_path / "heldout", sorted(seed_concepts), train=3, test=4, seed=0)
    images = sorted(held.rglob("*.jpg"))
    assert len(images) == len(seed_concepts) * 7
    assert {p.parent.name for p in images} == seed_concepts and {p.parent.parent.name for p in images} == {"train", "test"}
    digest = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    held_digests = {digest(p.read_bytes()) for p in images}
    assert len(held_digests) == len(images)  # train and test do not share an image either
    world_digests = {digest(b) for k, b in got_web.items() if k.startswith(("pool/", "seeds/", "eval/"))}
    assert not held_digests & world_digests
    # Rebuilt only when its spec changes.
    stamp = images[0].stat().st_mtime_ns
    assert w.build_heldout(tmp_path / "heldout", sorted(seed_concepts), train=3, test=4, seed=0) == held
    assert images[0].stat().st_mtime_ns == stamp


def test_lvd_ablate_without_a_curated_run_is_one_line(tmp_path, capsys) -> None:
    from pipelines.cli import main

    assert main(["ablate", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lvd ablate: error: no curated shards" in err[0] and "lvd curate" in err[0]
