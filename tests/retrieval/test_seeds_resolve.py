"""Seed registry and SEEDS= resolution: locations from seeds.yaml, one-line errors before any work."""
from __future__ import annotations

from pathlib import Path

import pytest

from curation import paper
from curation.retrieval.seeds import REGISTRY, SEED_FORMATS, load_seeds_config, resolve_seeds
from curation.core.errors import UserError

TABLE_15_NAMES = [
    "imagenet22k", "imagenet1k", "caltech101", "cub200", "dtd", "fgvc_aircraft", "flowers102", "food101",
    "oxford_pets", "stanford_cars", "sun397", "voc2007", "ade20k", "cityscapes", "voc2012_seg", "mapillary_sls",
    "kitti", "nyu_depth_v2", "sun_rgbd", "gldv2", "amstertime_new", "amstertime_old", "met", "roxford", "rparis",
]


@pytest.fixture(autouse=True)
def _no_ambient_seeds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Neither $LVD_SEEDS nor a seeds.yaml in the working directory may leak into these tests.
    monkeypatch.delenv("LVD_SEEDS", raising=False)
    monkeypatch.chdir(tmp_path)


def test_registry_covers_table_15() -> None:
    assert [n for n in REGISTRY if not n.startswith("demo_")] == TABLE_15_NAMES
    assert REGISTRY["imagenet1k"].n == paper.SAMPLE_N_IMAGENET1K
    assert (REGISTRY["met"].task, REGISTRY["met"].split, REGISTRY["met"].images) == ("retrieval", "train", 397_121)
    assert REGISTRY["mapillary_sls"].retrieval == "as_is"
    assert sum(s.images for s in REGISTRY.values() if s.images) == 19_105_933


def test_missing_location_names_the_key_to_add(tmp_path: Path) -> None:
    cfg = tmp_path / "seeds.yaml"
    cfg.write_text("caltech101: {path: /data/caltech, format: imagefolder}\n")
    with pytest.raises(UserError) as info:
        resolve_seeds("caltech101,imagenet22k", cfg)
    assert str(info.value) == f"seed 'imagenet22k' has no location: add `imagenet22k: {{path: ..., format: ...}}` to {cfg}"


def test_missing_locations_without_any_seeds_file() -> None:
    with pytest.raises(UserError) as info:
        resolve_seeds("dtd,met")
    message = str(info.value)
    assert message.startswith("seeds 'dtd', 'met' have no location: add `dtd: {path: ..., format: ...}` `met: {path: ..., format: ...}`")
    assert "seeds.yaml (or set $LVD_SEEDS)" in message and "\n" not in message


def test_unknown_seed_lists_close_matches() -> None:
    with pytest.raises(UserError) as info:
        resolve_seeds("imagenet22")
    assert str(info.value) == "unknown seed 'imagenet22'; did you mean imagenet22k, imagenet1k?"


def test_unknown_seed_checked_before_locations(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown seed 'cub_200'; did you mean cub200"):
        resolve_seeds("imagenet22k,cub_200")


def test_recipe_name_and_relative_paths(tmp_path: Path) -> None:
    world = tmp_path / "world"
    world.mkdir()
    (world / "seeds.yaml").write_text(
        "seeds:\n"
        "  demo_objects: {path: seeds/demo_objects, format: imagefolder}\n"
        "  demo_textures: seeds/demo_textures\n"
        "  demo_scenes: {path: 's3://bucket/scenes', format: parquet}\n"
    )
    seeds = resolve_seeds("demo", world / "seeds.yaml")
    assert [s.name for s in seeds] == ["demo_objects", "demo_textures", "demo_scenes"]
    assert seeds[0].location.path == str(world / "seeds" / "demo_objects")
    assert (seeds[1].location.format, seeds[2].location.path) == (None, "s3://bucket/scenes")
    assert seeds[0].info is REGISTRY["demo_objects"]


def test_custom_seed_from_env_and_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mine"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        (folder / label / "a.jpg").write_bytes(label.encode())
    (tmp_path / "s.yaml").write_text(f"my_set: {{path: {folder}, format: imagefolder}}\n")
    monkeypatch.setenv("LVD_SEEDS", str(tmp_path / "s.yaml"))
    (seed,) = resolve_seeds("my_set")
    assert seed.info is None
    items = list(seed.iter_items())
    assert [(i.meta["label"], i.data) for i in items] == [("cat", b"cat"), ("dog", b"dog")]


def test_repeated_names_resolve_once(tmp_path: Path) -> None:
    (tmp_path / "seeds.yaml").write_text("dtd: /d\n")  # found in the working directory
    assert [s.name for s in resolve_seeds("dtd, dtd")] == ["dtd"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("dtd: {path: /d, format: zip}", "has format 'zip'; use one of " + ", ".join(SEED_FORMATS)),
        ("dtd: {format: imagefolder}", "entry 'dtd' needs a path"),
        ("dtd: {path: /d, fmt: parquet}", "unknown keys ['fmt']"),
        ("- dtd", "must map seed names"),
        ("dtd: [unclosed", "is not valid YAML"),
    ],
)
def test_bad_seeds_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(text + "\n")
    with pytest.raises(UserError) as info:
        load_seeds_config(tmp_path / "bad.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_empty_spec_is_an_error() -> None:
    with pytest.raises(UserError, match="SEEDS is empty"):
        resolve_seeds(" , ")
