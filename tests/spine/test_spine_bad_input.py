"""Bad user input at the CLI (issue 14, item 7): each case is one line on stderr saying what is wrong
and what to do, exit status 2, no traceback, refused before any heavy work, and nothing already
computed in an existing run directory lost."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main

REPO = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ")


def _images(folder: Path, n: int, side: int, seed: int = 0) -> Path:
    """`n` noise JPEGs (noise barely compresses: each re-encoded image is ~1 byte a pixel)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _images(tmp_path_factory.mktemp("bad-input") / "src", 6, 96)


def _error_line(err: str, command: str) -> str:
    """The one line of a refused command (progress log lines aside), checked to be alone."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lvd {command}: error: "), lines[0]
    return lines[0]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return _error_line(err, argv[0])


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _ingest(images: Path, out: Path, *extra: str) -> list[str]:
    return ["ingest", str(images), "--out", str(out), "--workers", "1", "--no-progress", *extra]


# -- 1, 2: --set keys and values ---------------------------------------------------------------------
@pytest.mark.parametrize("command", ["ingest", "curate"])
def test_unknown_set_key_suggests_the_valid_ones(command: str, images: Path, tmp_path: Path, capsys) -> None:
    argv = _ingest(images, tmp_path / "r") if command == "ingest" else ["curate", "--out", str(tmp_path / "r")]
    line = _refused(argv + ["--set", "dedup.kk=3"], capsys)
    assert "unknown config key dedup.kk" in line and "did you mean dedup.k?" in line
    assert "keys of dedup: k, self_threshold" in line
    assert not (tmp_path / "r").exists()  # refused before anything (curate: before building the demo world)


def test_unknown_set_section_and_top_level_key(images: Path, tmp_path: Path, capsys) -> None:
    line = _refused(_ingest(images, tmp_path / "r", "--set", "dedupp.k=3"), capsys)
    assert "unknown config key dedupp.k" in line and "did you mean dedup?" in line
    line = _refused(_ingest(images, tmp_path / "r", "--set", "shardrows=10"), capsys)
    assert "did you mean shard_rows?" in line


@pytest.mark.parametrize("override,needle", [
    ("dedup.k=abc", "bad config value dedup.k=abc: dedup.k expects an integer (default: 64), e.g. --set dedup.k=64"),
    ("decode.quality=500", "decode.quality expects an integer >= 1 and <= 100"),
    ("knn.index=fast", "knn.index expects one of auto, flat, ivf_flat, ivf_pq, hnsw"),
    ("knn.target_recall=high", "knn.target_recall expects a number > 0 and <= 1, or null"),
    ("safety.nsfw=maybe", "safety.nsfw expects true or false, or null"),
    ("dedup=3", "dedup is a section; set its keys one by one"),
])
def test_set_value_of_the_wrong_type_names_key_and_type(override: str, needle: str, images: Path, tmp_path: Path, capsys) -> None:
    line = _refused(_ingest(images, tmp_path / "r", "--set", override), capsys)
    assert needle in line, line


def test_fetch_flags_and_set_are_checked_too(tmp_path: Path, capsys) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text("http://127.0.0.1:1/a.jpg\n")
    line = _refused(["fetch", str(listing), "--out", str(tmp_path / "r"), "--set", "crawl.retriez=1"], capsys)
    assert "did you mean crawl.retries?" in line


# -- 3: missing inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["curate", "--recipe", "lvd142m", "--pool", "/nonexistent/pool", "--out", "{tmp}/r"],
    ["ingest", "/nonexistent/pool", "--out", "{tmp}/r"],
    ["curate", "--pool", "{tmp}", "--seeds", "caltech101", "--eval", "/nonexistent/eval", "--out", "{tmp}/r"],
])
def test_missing_input_path(argv: list[str], tmp_path: Path, capsys) -> None:
    line = _refused([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert "input not found: /nonexistent/" in line and "check the path" in line
    assert not (tmp_path / "r").exists()


# -- 4: --out that cannot be a run directory ------------------------------------------------------------
def test_out_under_a_file_is_refused(images: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    line = _refused(_ingest(images, tmp_path / "afile" / "run"), capsys)
    assert f"cannot write the run directory {tmp_path / 'afile' / 'run'}" in line and "use --out in a folder you can write" in line
    line = _refused(_ingest(images, tmp_path / "afile"), capsys)
    assert "is a file, not a directory: use an empty or new directory" in line


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder this process cannot write: a read-only mount as root (who ignores modes), else mode 0o555."""
    target = tmp_path / "readonly"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        return target
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only filesystem here")
    return target


def test_unwritable_out_is_refused(images: Path, tmp_path: Path, capsys) -> None:
    target = _read_only_dir(tmp_path)
    try:
        line = _refused(_ingest(images, target / "run"), capsys)
        assert f"cannot write the run directory {target / 'run'}" in line and "an empty or new directory" in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(target)], check=False)
        else:
            target.chmod(0o755)


@pytest.mark.parametrize("command", ["ingest", "curate", "fetch"])
def test_foreign_non_empty_out_is_refused_and_untouched(command: str, images: Path, tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not lvd's")
    (foreign / "notes").mkdir()
    before = _snapshot(foreign)
    listing = tmp_path / "urls.txt"
    listing.write_text("http://127.0.0.1:1/a.jpg\n")
    argv = {"ingest": _ingest(images, foreign), "curate": ["curate", "--out", str(foreign), "--no-progress"],
            "fetch": ["fetch", str(listing), "--out", str(foreign), "--no-progress"]}[command]
    line = _refused(argv, capsys)
    assert f"--out {foreign} is not empty and is not an lvd run directory (it holds holiday.jpg, notes)" in line
    assert line.endswith("use an empty or new directory")
    assert _snapshot(foreign) == before and sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg", "notes"]


# -- 5: a run made with another recipe or another lvd version --------------------------------------
@pytest.fixture()
def ingested(images: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert main(_ingest(images, run)) == 0
    return run


def _edit_manifest(run: Path, **changes) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            manifest.setdefault(key, {}).update(value)
        else:
            manifest[key] = value
    (run / "manifest.json").write_text(json.dumps(manifest))


def test_same_version_resumes(ingested: Path, images: Path, capsys) -> None:
    before = {k: v for k, v in _snapshot(ingested).items() if k != "manifest.json"}
    capsys.readouterr()
    assert main(_ingest(images, ingested)) == 0
    assert "skipped" in capsys.readouterr().out
    assert {k: v for k, v in _snapshot(ingested).items() if k != "manifest.json"} == before


def test_other_lvd_version_is_refused_untouched_unless_reuse(ingested: Path, images: Path, capsys) -> None:
    _edit_manifest(ingested, versions={"lvd-builder": "0.0.1"})
    before = _snapshot(ingested)
    line = _refused(_ingest(images, ingested), capsys)
    assert f"run directory {ingested} was made by lvd 0.0.1, this is lvd " in line
    assert "use a new --out, or pass --reuse to continue in it" in line
    assert _snapshot(ingested) == before
    assert main(_ingest(images, ingested, "--reuse")) == 0
    after = _snapshot(ingested)
    assert all(after[k] == v for k, v in before.items() if k.startswith(("pool/", "_stages/")))  # kept, not recomputed
    assert json.loads((ingested / "manifest.json").read_text())["versions"]["lvd-builder"] != "0.0.1"


def test_other_recipe_is_refused_before_any_work(ingested: Path, tmp_path: Path, capsys) -> None:
    _edit_manifest(ingested, recipe="lvd142m")
    before = _snapshot(ingested)
    line = _refused(["curate", "--out", str(ingested), "--no-progress"], capsys)  # demo recipe, demo world
    assert f"run directory {ingested} was made with recipe 'lvd142m', not 'demo'" in line
    assert "use a new --out, or pass --reuse to rerun it with recipe 'demo'" in line
    assert _snapshot(ingested) == before and not (ingested / "world").exists()  # the demo world was not built
    # A run from before the manifest named its recipe: the retrieve stage's recipe.json says it.
    _edit_manifest(ingested, recipe=None)
    (ingested / "recipe.json").write_text(json.dumps({"name": "seeds:caltech101", "rows": []}))
    line = _refused(["curate", "--out", str(ingested), "--no-progress"], capsys)
    assert "was made with recipe 'seeds:caltech101', not 'demo'" in line


def test_broken_manifest_is_refused(ingested: Path, images: Path, capsys) -> None:
    (ingested / "manifest.json").write_text("{not json")
    line = _refused(_ingest(images, ingested), capsys)
    assert "manifest of" in line and "is not valid JSON" in line and "use a new --out" in line


# -- 6: seeds the demo world lacks, without a pool ------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["curate", "--seeds", "imagenet22k"], "--seeds imagenet22k needs seeds the demo world lacks (imagenet22k)"),
    (["curate", "--recipe", "lvd142m"], "--recipe lvd142m needs seeds the demo world lacks (imagenet22k, imagenet1k"),
])
def test_curate_own_seeds_without_pool(argv: list[str], needle: str, tmp_path: Path, capsys) -> None:
    line = _refused(argv + ["--out", str(tmp_path / "r")], capsys)
    assert needle in line and "--pool SRC... --seeds-config seeds.yaml" in line
    assert not (tmp_path / "r").exists()  # no demo world built


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("extra,needle", [
    ([], "needs your own pool and seed locations: pass POOL=/path/to/pool SEEDS_CONFIG=seeds.yaml"),
    (["POOL=/data/pool"], "needs the seed locations: pass SEEDS_CONFIG=seeds.yaml"),
])
def test_make_curate_own_seeds_without_pool(extra: list[str], needle: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LVD_SEEDS", "POOL", "SEEDS_CONFIG", "MAKEFLAGS")}
    proc = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "curate", "SEEDS=imagenet22k",
                           f"RUN={tmp_path / 'r'}", *extra], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr
    assert proc.stdout == "" and not (tmp_path / "r").exists()  # nothing ran: no install, no demo world


# -- 7: a full disk ------------------------------------------------------------------------------------
def _mount_tmpfs(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small filesystem here: {proc.stderr.strip() or proc.returncode}")


def _lvd(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *argv], capture_output=True, text=True, timeout=120, cwd=REPO)


needs_root = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root to mount a small tmpfs")


def _full_disk_line(line: str, run: Path) -> None:
    assert re.search(rf"error: no space left on device writing {re.escape(str(run))}/\S+ \(stage ingest\) "
                     rf"in the run directory {re.escape(str(run))}: free space on that disk and rerun", line), line


@needs_root
def test_full_disk_is_one_line_and_the_rerun_completes(tmp_path: Path) -> None:
    """The real CLI with worker processes: the disk fills in a worker, whose error the engine re-raises."""
    src = _images(tmp_path / "src", 24, 256, seed=1)  # ~1.6 MB of pool: 6 shards of ~270 kB
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "700k")
    try:
        run = disk / "run"
        argv = ["ingest", str(src), "--out", str(run), "--set", "shard_rows=4", "--workers", "2", "--no-progress"]
        full = _lvd(*argv)
        assert full.returncode == 2, full.stderr
        _full_disk_line(_error_line(full.stderr, "ingest"), run)
        assert not (run / "_stages" / "ingest.json").exists()
        json.loads((run / "manifest.json").read_text())  # still whole
        assert not [p for p in run.rglob(".*.tmp-*")], "a half-written file was left under a temporary name"
        kept = {p.name: p.read_bytes() for p in (run / "pool").glob("part-*.parquet")}
        assert 0 < len(kept) < 6
        subprocess.run(["mount", "-o", "remount,size=16m", "tmpfs", str(disk)], check=True)
        again = _lvd(*argv)
        assert again.returncode == 0, again.stderr
        info = json.loads((run / "_stages" / "ingest.json").read_text())
        assert info["counts"]["kept"] == 24
        final = {p.name: p.read_bytes() for p in (run / "pool").glob("part-*.parquet")}
        assert len(final) == 6 and all(final[name] == data for name, data in kept.items())  # earlier shards kept
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@needs_root
def test_full_disk_in_the_driver_is_one_line(tmp_path: Path, capsys) -> None:
    """One worker: the stage runs in the driver's process, so the error is the driver's own."""
    src = _images(tmp_path / "src", 8, 256, seed=2)
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "300k")
    try:
        run = disk / "run"
        line = _refused(["ingest", str(src), "--out", str(run), "--set", "shard_rows=4", "--workers", "1", "--no-progress"], capsys)
        _full_disk_line(line, run)
        assert not (run / "_stages" / "ingest.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_disk_full_is_found_inside_wrapped_engine_errors() -> None:
    import errno

    from curation.core.errors import disk_full

    class RayTaskError(Exception):  # Ray keeps the worker's exception as `cause`
        def __init__(self, cause: BaseException):
            super().__init__("task failed")
            self.cause = cause

    inner = OSError(errno.ENOSPC, "No space left on device", "/run/pool/part-00001.parquet")
    assert disk_full(RayTaskError(inner)) == ("no space left on device", "/run/pool/part-00001.parquet")
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as exc:
            raise RuntimeError("stage failed") from exc
    except RuntimeError as wrapped:
        assert disk_full(wrapped) == ("disk quota exceeded", None)
    text = RuntimeError("Error in worker: OSError: [Errno 28] No space left on device: '/run/hashes/part-00002.parquet'")
    assert disk_full(text) == ("no space left on device", "/run/hashes/part-00002.parquet")
    assert disk_full(ValueError("bad")) is None and disk_full(OSError(errno.EACCES, "denied")) is None


@needs_root
def test_a_memory_mapped_array_on_a_full_disk_is_an_oserror_not_a_sigbus(tmp_path: Path) -> None:
    """`storage.create_array` reserves its blocks: a memmap larger than the free space raises ENOSPC
    naming the file (writing a sparse memmap's pages on a full disk would kill the process with
    SIGBUS, which no handler turns into the CLI's one line)."""
    import errno

    import numpy as np

    from curation.core.storage import create_array

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "1m")
    try:
        with pytest.raises(OSError) as caught:
            create_array(disk / "big.npy", np.float32, (1024, 1024))  # 4 MiB
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "big.npy")
        assert not (disk / "big.npy").exists()
        small = create_array(disk / "small.npy", np.float32, (256, 256))  # 256 KiB fits
        small[:] = 1.0
        small.flush()
        del small  # an open mapping keeps the filesystem busy: it could not be unmounted
    finally:
        subprocess.run(["umount", str(disk)], check=False)
