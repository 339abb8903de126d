"""Per-item isolation (issue 14): no input stops a stage or loses a good image, and every input that
is not kept gets a reject row with a reason.

A fuzz corpus generated here from installed packages (`curation.demo.fuzz_corpus`: every format Pillow
writes, from scikit-image's photos, times seeded mutations) goes through `decode_items`; the
per-item boundaries of the later map stages (hash, embed, NSFW, face blur) and of the crawl's
archive parsing are each fed a bad item next to good ones; the per-item time limit and the
test-only fault hook (`curation.core.item_guard`) turn a hang into a `timeout` reject.
"""
from __future__ import annotations

import collections
import io
import json
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.demo import fuzz_corpus
from curation.core import schemas
from curation.config import DecodeConfig, HashConfig, RunConfig, SafetyConfig
from curation.sources.images import REASONS, Decoded, Reject, decode_image, decode_items
from curation.core.item_guard import INJECT_ENV
from curation.sources.inputs import SourceItem

#: Four photos x every encoding x every mutation: ~2,100 files, a few seconds.
TEST_PHOTOS = ("astronaut", "chelsea", "coffee", "camera")


@pytest.fixture(scope="module")
def corpus() -> list[fuzz_corpus.FuzzFile]:
    return fuzz_corpus.corpus(copies=1, side=72, seed=0, photo_names=TEST_PHOTOS)


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pool(images: list[bytes]) -> pa.Table:
    n = len(images)
    return pa.table({"image_id": [f"id{i}" for i in range(n)], "source": [f"src{i}" for i in range(n)],
                     "width": [0] * n, "height": [0] * n, "orig_width": [0] * n, "orig_height": [0] * n,
                     "orig_format": ["JPEG"] * n, "image": images, "meta": ["{}"] * n}, schema=schemas.POOL)


@pytest.fixture(scope="module")
def good() -> list[bytes]:
    from skimage import data

    return [_jpeg(data.astronaut()[::4, ::4]), _jpeg(data.coffee()[::4, ::4]), _jpeg(data.rocket()[::4, ::4])]


# -- the fuzz corpus through decode ------------------------------------------------------------


def test_corpus_is_large_varied_and_seeded(corpus):
    assert len(corpus) >= 2000
    assert len({f.name for f in corpus}) == len(corpus)
    originals = [f for f in corpus if f.original]
    assert {f.variant for f in originals} >= {"jpeg-progressive", "jpeg-cmyk", "png-16bit", "apng", "gif-animated",
                                               "webp-animated", "tiff-lzw", "tiff-group4", "bmp", "tga", "ico",
                                               "ppm", "dds", "psd"}
    assert Counter(f.mutation for f in corpus if not f.original and f.mutation != "hostile") == {
        m: len(originals) for m in fuzz_corpus.MUTATIONS}
    again = fuzz_corpus.corpus(copies=1, seed=0, photo_names=["coffee"], variants=["png", "tiff-lzw"])
    assert again == fuzz_corpus.corpus(copies=1, seed=0, photo_names=["coffee"], variants=["png", "tiff-lzw"])
    assert again != fuzz_corpus.corpus(copies=1, seed=1, photo_names=["coffee"], variants=["png", "tiff-lzw"])


def test_fuzz_corpus_every_input_kept_or_rejected_with_a_reason(corpus):
    start = time.perf_counter()
    pool, rejects = decode_items([SourceItem(f.name, f.data) for f in corpus], DecodeConfig())
    seconds = time.perf_counter() - start
    kept = pool.column("source").to_pylist()
    rejected = rejects.column("source").to_pylist()
    # Accounted for: each input exactly once, kept or rejected (no exception escaped).
    assert len(kept) + len(rejected) == len(corpus)
    assert sorted(kept + rejected) == sorted(f.name for f in corpus)
    # Every good original is kept; every hostile input is rejected.
    assert {f.name for f in corpus if f.original} <= set(kept)
    assert {f.name for f in corpus if f.mutation == "hostile"} <= set(rejected)
    reasons = Counter(rejects.column("reason").to_pylist())
    assert set(reasons) <= set(REASONS), reasons
    assert "timeout" not in reasons  # no hang: every item ended within decode.timeout_s
    assert all(rejects.column("message").to_pylist())
    assert set(rejects.column("stage").to_pylist()) == {"decode"}
    # The mutations do reach every kind of reject the decoder knows.
    assert {"truncated", "corrupt", "not-an-image", "decompression-bomb", "decoder-error"} <= set(reasons), reasons
    assert seconds < 120, f"{len(corpus)} files took {seconds:.1f} s"


def test_dxgi_format_93_is_a_reject_not_a_crash():
    """The real-world crash: Pillow's DDS plugin raises NotImplementedError, which no allow-list
    of exception types caught."""
    dds = next(f for f in fuzz_corpus.hostile() if f.variant == "dds-dxgi93")
    result = decode_image(dds.data, dds.name, DecodeConfig())
    assert isinstance(result, Reject)
    assert result.reason == "decoder-error"
    assert result.message == "NotImplementedError: Unimplemented DXGI format 93"


def test_good_images_in_every_encoding_decode_alike():
    """The originals of one photo decode to near-identical pixels whatever their encoding (lossy
    ones and bit-depth changes aside): the corpus's good files are good images."""
    from curation.sources.images import open_rgb

    files = fuzz_corpus.originals(photo_names=["coffee"], variants=["png", "tiff-lzw", "bmp", "tga", "dds", "psd", "qoi",
                                                                     "ppm", "sgi", "webp-lossless"])
    pixels = []
    for f in files:
        out = decode_image(f.data, f.name, DecodeConfig(format="PNG"))
        assert isinstance(out, Decoded), (f.name, out)
        pixels.append(np.asarray(open_rgb(out.image), np.int16))
    for f, px in zip(files[1:], pixels[1:]):
        assert px.shape == pixels[0].shape and np.abs(px - pixels[0]).max() <= 1, f.name


# -- time limit and injected faults -------------------------------------------------------------


def test_injected_hang_becomes_a_timeout_reject(monkeypatch, good):
    monkeypatch.setenv(INJECT_ENV, "hang:stuck.jpg")
    items = [SourceItem("a.jpg", good[0]), SourceItem("stuck.jpg", good[1]), SourceItem("b.jpg", good[2])]
    start = time.perf_counter()
    pool, rejects = decode_items(items, DecodeConfig(timeout_s=0.5))
    assert time.perf_counter() - start < 10
    assert pool.column("source").to_pylist() == ["a.jpg", "b.jpg"]
    assert rejects.to_pylist() == [{"source": "stuck.jpg", "reason": "timeout", "stage": "decode",
                                    "message": "decoding took longer than decode.timeout_s = 0.5 s"}]


def test_injected_exception_becomes_a_reject(monkeypatch, good):
    monkeypatch.setenv(INJECT_ENV, "raise:bad.jpg")
    pool, rejects = decode_items([SourceItem("bad.jpg", good[0]), SourceItem("ok.jpg", good[1])], DecodeConfig())
    assert pool.column("source").to_pylist() == ["ok.jpg"]
    row = rejects.to_pylist()[0]
    assert row["source"] == "bad.jpg" and row["reason"] == "decoder-error" and "RuntimeError" in row["message"]


def test_a_slow_decoder_times_out(monkeypatch, good):
    """A decoder that never finishes (not the fault hook: Pillow itself, patched) costs its item a
    `timeout` reject and the next item decodes normally."""
    from curation.sources import images
    real = images._pixels

    def slow(img, data, *args):
        if data == good[1]:
            while True:
                time.sleep(0.01)
        return real(img, data, *args)

    monkeypatch.setattr(images, "_pixels", slow)
    pool, rejects = decode_items([SourceItem(f"{i}.jpg", g) for i, g in enumerate(good)], DecodeConfig(timeout_s=0.3))
    assert pool.column("source").to_pylist() == ["0.jpg", "2.jpg"]
    assert rejects.column("reason").to_pylist() == ["timeout"]


def test_unexpected_exception_type_of_a_decoder_is_a_decoder_error(monkeypatch, good):
    from curation.sources import images
    def broken(*args):
        raise ZeroDivisionError("a plugin's own bug")

    monkeypatch.setattr(images, "_pixels", broken)
    result = decode_image(good[0], "x.jpg", DecodeConfig())
    assert isinstance(result, Reject)
    assert (result.reason, result.message) == ("decoder-error", "ZeroDivisionError: a plugin's own bug")


# -- later map stages: one bad item next to good ones --------------------------------------------


def test_hash_of_unreadable_bytes_is_invalid_not_a_failure(good):
    from curation.dedup.hashing import PCAHasher, compute_hashes, hash_images, thumbnails

    images = [good[0], b"not an image", good[1], good[2]]
    hasher = PCAHasher.fit(thumbnails(good * 4, 32), 64, 32)
    hashes, valid, failed = hash_images(images, HashConfig(), hasher)
    assert list(valid) == [True, False, True, True] and list(failed) == [1]
    assert failed[1].startswith("UnidentifiedImageError")
    assert np.array_equal(compute_hashes(images, HashConfig(), hasher)[0], hashes)
    ph, pvalid, pfailed = hash_images(images, HashConfig(method="phash"), None)
    assert list(pvalid) == [True, False, True, True] and list(pfailed) == [1] and ph[1] == 0


def test_embedding_skips_an_unreadable_image_and_rejects_it(tmp_path, good):
    from embedder.inference import embed_bytes, embed_checked, embed_table_checked
    from embedder.models import load_model
    from embedder.shards import embed_pool_shard, split_failed
    from embedder.store import read_embeddings
    from curation.config import EmbedConfig
    from curation.core.rundir import write_table
    from curation.core.storage import read_parquet

    model = load_model("efficientnet_lite0", device="cpu", image_size=96)  # small input: a fast test
    images = [good[0], b"\xff\xd8 broken", good[1]]
    emb, failed = embed_checked(model, images, batch_size=2)
    assert list(failed) == [1] and emb.shape == (3, model.embed_dim)
    alone = embed_bytes(model, [good[0], good[1]], batch_size=2)
    assert np.abs(emb[[0, 2]].astype(np.float32) - alone.astype(np.float32)).max() < 1e-3
    with pytest.raises(ValueError, match="image 1 cannot be decoded"):
        embed_bytes(model, images)

    # The engines' file path: every row comes back (row counts must match), the failed one flagged.
    rows = embed_table_checked(_pool(images), model, batch_size=2)
    assert rows.num_rows == 3
    kept, errors = split_failed(rows)
    assert kept.schema.equals(schemas.EMBEDDINGS) and kept.column("image_id").to_pylist() == ["id0", "id2"]
    assert list(errors) == ["id1"]

    # The per-shard path: the row is left out of the embedding file and gets a reject row.
    src, out, rejects = tmp_path / "pool" / "part-00000.parquet", tmp_path / "emb.parquet", tmp_path / "rej.parquet"
    write_table(_pool(images), src)
    stats = embed_pool_shard(src, out, model, EmbedConfig(batch_size=2), rejects_path=rejects, stage="embed")
    assert (stats["rows"], stats["rejected"]) == (2, 1)
    assert list(read_embeddings(out)[0]) == ["id0", "id2"]
    row = read_parquet(rejects).to_pylist()
    assert len(row) == 1 and row[0]["source"] == "src1" and row[0]["stage"] == "embed"
    assert row[0]["reason"] == "decoder-error" and row[0]["message"].startswith("UnidentifiedImageError")
    # Without a place for reject rows (`lvd embed` alone) it stays an error.
    with pytest.raises(ValueError, match="image 1 cannot be decoded"):
        embed_pool_shard(src, tmp_path / "other.parquet", model, EmbedConfig(batch_size=2))


class _FlakySession:
    """Stands for onnxruntime's session: raises on any batch holding an all-black image, sleeps on
    one holding an all-white one (no real model fails on demand)."""

    class _Input:
        name = "images"

    def __init__(self, real):
        self.real = real

    def get_inputs(self):
        return [self._Input()]

    def run(self, outputs, feeds):
        batch = feeds["images"]
        means = batch.reshape(len(batch), -1).mean(axis=1)
        if (means < 0.01).any():
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : non-zero status code")
        if (means > 0.99).any():
            while True:
                time.sleep(0.01)
        return self.real.run(outputs, {self.real.get_inputs()[0].name: batch})


def test_nsfw_rejects_what_it_cannot_score_and_keeps_the_rest(monkeypatch, good):
    from curation.safety import nsfw
    black, white = _jpeg(np.zeros((96, 96, 3), np.uint8)), _jpeg(np.full((96, 96, 3), 255, np.uint8))
    images = [good[0], b"garbage", black, good[1], white, good[2]]
    monkeypatch.setattr(nsfw, "_session", lambda *_, real=nsfw._session(): _FlakySession(real))
    cfg = RunConfig(safety=SafetyConfig(nsfw_batch_size=4, timeout_s=0.5))
    kept, rejects = nsfw.nsfw_filter(_pool(images), cfg)
    assert kept.column("source").to_pylist() == ["src0", "src3", "src5"]
    assert all("nsfw_score" in json.loads(m) for m in kept.column("meta").to_pylist())
    by_source = {r["source"]: r for r in rejects.to_pylist()}
    assert set(by_source) == {"src1", "src2", "src4"}
    assert {r["stage"] for r in by_source.values()} == {"nsfw"}
    assert by_source["src1"]["reason"] == "model-error" and by_source["src1"]["message"].startswith("UnidentifiedImageError")
    assert by_source["src2"]["reason"] == "model-error" and "RuntimeError" in by_source["src2"]["message"]
    assert by_source["src4"]["reason"] == "timeout"
    scores = nsfw.nsfw_scores(images[:3], batch_size=4)
    assert np.isnan(scores[1]) and np.isnan(scores[2]) and not np.isnan(scores[0])


def test_faces_that_cannot_be_checked_are_rejected_not_kept_unblurred(monkeypatch, good):
    from curation.safety import faces
    real = faces.detect_faces

    def flaky(rgb, safety):
        if rgb.mean() < 1:
            raise RuntimeError("OpenCV(4.x) error: (-215:Assertion failed) in cv::dnn")
        if rgb.mean() > 254:
            while True:
                time.sleep(0.01)
        return real(rgb, safety)

    monkeypatch.setattr(faces, "detect_faces", flaky)
    black, white = _jpeg(np.zeros((96, 96, 3), np.uint8)), _jpeg(np.full((96, 96, 3), 255, np.uint8))
    table = _pool([good[0], b"garbage", black, good[1], white])
    cfg = RunConfig(safety=SafetyConfig(face_detector="haar", timeout_s=0.5))
    kept, rejects = faces.face_filter(table, cfg)
    assert kept.column("source").to_pylist() == ["src0", "src3"]
    assert all("faces_blurred" in json.loads(m) for m in kept.column("meta").to_pylist())
    reasons = {r["source"]: (r["stage"], r["reason"]) for r in rejects.to_pylist()}
    assert reasons == {"src1": ("faces", "model-error"), "src2": ("faces", "model-error"), "src4": ("faces", "timeout")}
    with pytest.raises(RuntimeError, match="could not be checked"):
        faces.blur_faces(table, cfg)


# -- crawl parsing ---------------------------------------------------------------------------------


def _warc(pages: int) -> bytes:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for i in range(pages):
        html = (f'<html><head><base href="/b{i}/"></head><body><img src="p{i}.jpg" alt="page {i}">'
                f'<img srcset="s{i}.jpg 1x, s{i}-2x.jpg 2x"></body></html>').encode()
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(f"http://site{i}.org/", "response", payload=io.BytesIO(html),
                                                      http_headers=headers))
        wat = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": f"http://w{i}.org/"},
                            "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": [
                                {"path": "IMG@/src", "url": f"w{i}.jpg", "alt": i},
                                {"path": "IMG@/src", "url": ["not", "a", "url"]},
                                {"path": "IMG@/src", "url": "bad\ud800surrogate.jpg"}]}}}}}
        writer.write_record(writer.create_warc_record(f"http://w{i}.org/", "metadata",
                                                      payload=io.BytesIO(json.dumps(wat).encode()),
                                                      warc_content_type="application/json"))
    return buf.getvalue()


def test_crawl_archives_fuzzed_never_raise(tmp_path):
    from curation.crawl.extract import iter_image_refs
    from curation.crawl.urls import UrlFilter

    data = _warc(12)
    whole = tmp_path / "whole.warc.gz"
    whole.write_bytes(data)
    counts: Counter = Counter()
    refs = list(iter_image_refs([str(whole)], UrlFilter(), counts))
    assert len(refs) == 12 * 3 and "bad-record" not in counts  # hostile WAT links are skipped, not fatal
    rng = np.random.default_rng(0)
    paths = []
    for i in range(150):
        kind = fuzz_corpus.MUTATIONS[i % len(fuzz_corpus.MUTATIONS)]
        if kind == "huge-dims":
            kind = "flip-body"
        path = tmp_path / f"m{i}-{kind}.warc.gz"
        path.write_bytes(fuzz_corpus.mutate(data, kind, rng, other=data[::-1]))
        paths.append(str(path))
    counts = collections.Counter()
    found = list(iter_image_refs(paths, UrlFilter(), counts))  # no exception escapes
    assert counts["bad-archive"] > 0 and found


def test_a_page_that_breaks_the_parser_costs_one_record(monkeypatch, tmp_path):
    from curation.crawl import extract
    from curation.crawl.urls import UrlFilter

    real = extract.image_refs_from_html

    def fragile(html, page_url, charset=None):
        if "site3" in page_url:
            raise RecursionError("maximum recursion depth exceeded")  # e.g. a pathological DOM
        return real(html, page_url, charset)

    monkeypatch.setattr(extract, "image_refs_from_html", fragile)
    path = tmp_path / "a.warc.gz"
    path.write_bytes(_warc(6))
    counts: Counter = Counter()
    refs = list(extract.iter_image_refs([str(path)], UrlFilter(), counts))
    assert counts["bad-record"] == 1 and len(refs) == 6 * 3 - 2
    assert not any("site3" in r.page_url for r in refs)


class _InProcess:
    """An engine that runs the stage's tasks in this process (the stage logic is what is tested)."""

    name = "in-process"

    def map(self, fn, tasks, desc="", total=None, model_bound=False, **kwargs):
        return [fn(*task) for task in tasks]


class _FileJobs(_InProcess):
    """The same with the engines' file path (`map_parquet`, as Ray Data and Beam RunInference run it)."""

    def map_parquet(self, jobs, columns, make_fn, write_fn, desc=""):
        from pipelines.engines.distributed import run_file_job

        fn = make_fn()
        return [run_file_job(fn, write_fn, src, out, columns) for src, out in jobs]


@pytest.mark.parametrize("engine", [_InProcess(), _FileJobs()], ids=["tasks", "file-jobs"])
def test_embed_stage_turns_an_unreadable_pool_image_into_a_reject_row(tmp_path, good, engine):
    from pipelines.context import RunContext
    from curation.core.rundir import RunDir, write_table
    from pipelines.stages.embedding import embed_dir
    from curation.core.storage import read_parquet
    from embedder.store import read_embeddings

    run = RunDir(tmp_path / "run")
    write_table(_pool([good[0], b"\x89PNG broken", good[1]]), run.path("pool", "part-00000.parquet"))
    write_table(_pool([good[2]]).set_column(0, "image_id", pa.array(["id9"])), run.path("pool", "part-00001.parquet"))
    cfg = RunConfig.model_validate({"embed": {"device": "cpu", "image_size": 96, "batch_size": 2}})
    ctx = RunContext(run=run, cfg=cfg, engine=engine, progress=False)
    counts = embed_dir(ctx, "pool", "embeddings", "efficientnet_lite0")
    assert counts["embedded"] == 3 and counts["embed_rejected"] == 1
    ids, _ = read_embeddings(run.path("embeddings", "part-00000.parquet"))
    assert list(ids) == ["id0", "id2"]
    rejects = read_parquet(run.rejects).to_pylist()
    assert [(r["source"], r["reason"], r["stage"]) for r in rejects] == [("src1", "decoder-error", "embed")]
    assert rejects[0]["message"].startswith("UnidentifiedImageError")
