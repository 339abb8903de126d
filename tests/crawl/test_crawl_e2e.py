"""End to end: a WARC written here with warcio, crawled by `lvd crawl` from a loopback server into a pool."""
from __future__ import annotations

import io
import json

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.crawl.status import FETCH
from curation.sources.images import image_id_of
from pipelines.cli import main
from curation.core.rundir import RunDir, read_tables
from curation.core.storage import files, read_parquet


def page_a(base: str) -> bytes:
    return f"""<html><body>
<img src="{base}/img/1.jpg" alt="first photo">
<img src="/img/2.jpg" srcset="/img/3.jpg 480w, /img/4.jpg 960w" alt="responsive">
<img data-src="/img/5.jpg" src="/spinner.gif">
<img src="/private/6.jpg" alt="disallowed by robots">
<img src="/noai.jpg">
<img src="/status/404.jpg">
<img src="/icons/logo.svg">
<img src="http://cdn.example.xxx/x.jpg">
</body></html>""".encode()


def page_b(base: str) -> bytes:
    return f"""<html><head><base href="{base}/img/"></head><body>
<img src="1.jpg" alt="duplicate of the first">
<img src="7.jpg" alt="via base">
<img src="{base}/page.jpg">
</body></html>""".encode()


def write_warc(path, base: str) -> None:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in ((f"{base}/pages/a.html", page_a(base)), (f"{base}/pages/b.html", page_b(base))):
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(html), http_headers=headers))


def status_rows(run: RunDir) -> dict[str, dict]:
    table = read_tables(files(run.path("fetch"), "part-*.parquet"))
    assert table.schema == FETCH
    return {r["url"]: r for r in table.to_pylist()}


@pytest.fixture
def warc(tmp_path, server):
    path = tmp_path / "pages.warc.gz"
    write_warc(path, server.base)
    return str(path)


@pytest.fixture(params=["path", "s3"])
def run_out(request, tmp_path) -> str:
    """A run directory on the local disk, or on the test object store (an S3 server on loopback)."""
    return str(tmp_path / "run") if request.param == "path" else request.getfixturevalue("object_store")("crawl")


def test_crawl_warc_into_pool_then_resume(run_out, server, warc, capsys):
    out = run_out
    args = ["crawl", warc, "--out", str(out), "--allow-private", "--no-progress", "--set", "crawl.retries=0"]
    assert main(args) == 0
    run = RunDir(out)
    b = server.base
    rows = status_rows(run)
    # 8 distinct candidate URLs survive filters and dedup (the svg, the .xxx domain and the duplicate do not).
    assert sorted(rows) == sorted(
        [f"{b}/img/1.jpg", f"{b}/img/4.jpg", f"{b}/img/5.jpg", f"{b}/private/6.jpg", f"{b}/noai.jpg",
         f"{b}/status/404.jpg", f"{b}/img/7.jpg", f"{b}/page.jpg"]
    )
    errors = {u: r["error"] for u, r in rows.items()}
    assert errors == {
        f"{b}/img/1.jpg": None, f"{b}/img/4.jpg": None, f"{b}/img/5.jpg": None, f"{b}/img/7.jpg": None,
        f"{b}/private/6.jpg": "robots", f"{b}/noai.jpg": "x-robots-tag",
        f"{b}/status/404.jpg": "http-404", f"{b}/page.jpg": "content-type",
    }
    assert rows[f"{b}/img/1.jpg"]["status"] == 200 and rows[f"{b}/img/1.jpg"]["bytes"] > 1000

    pool = read_tables(run.pool_files())
    assert pool.num_rows == 4
    by_source = {r["source"]: r for r in pool.to_pylist()}
    assert set(by_source) == {u for u, e in errors.items() if e is None}
    first = json.loads(by_source[f"{b}/img/1.jpg"]["meta"])
    assert first["page_url"] == f"{b}/pages/a.html" and first["alt"] == "first photo"
    assert json.loads(by_source[f"{b}/img/7.jpg"]["meta"])["page_url"] == f"{b}/pages/b.html"
    assert all(r["image_id"] == image_id_of(r["image"]) for r in by_source.values())
    assert server.hits["/private/6.jpg"] == 0 and server.hits["/robots.txt"] == 1 and server.hits["/img/1.jpg"] == 1

    rejects = read_parquet(run.rejects).to_pylist()
    reasons = {r["source"]: r["reason"] for r in rejects}
    assert reasons[f"{b}/private/6.jpg"] == "fetch-robots" and reasons[f"{b}/status/404.jpg"] == "fetch-http-404"

    manifest = run.manifest()["crawl"]
    assert manifest["urls"] == 8 and manifest["downloaded"] == 4 and manifest["success_ratio"] == 0.5
    assert manifest["extract"] == {"duplicate": 1, "extension": 1, "found": 11, "kept": 8, "unsafe-domain": 1}
    assert "4/8 downloaded" in capsys.readouterr().out

    # Rerun: every URL has a status row, nothing is requested again, the pool is unchanged.
    server.reset()
    assert main(args) == 0
    assert sum(server.hits.values()) == 0
    assert run.manifest()["crawl"]["skipped_done"] == 8 and run.manifest()["crawl"]["urls"] == 0
    assert read_tables(run.pool_files()).num_rows == 4


def test_crawl_refuses_loopback_without_allow_private(tmp_path, server, warc):
    out = tmp_path / "run"
    assert main(["crawl", warc, "--out", str(out), "--no-progress"]) == 0
    rows = status_rows(RunDir(out))
    assert len(rows) == 8 and {r["error"] for r in rows.values()} == {"blocked-address"}
    assert all("loopback" in r["message"] for r in rows.values())
    assert sum(server.hits.values()) == 0  # not even robots.txt
    assert not RunDir(out).pool_files() or read_tables(RunDir(out).pool_files()).num_rows == 0


def test_fetch_url_list(tmp_path, server):
    urls = [server.url(f"/img/{i}.jpg") for i in range(10)] + [server.url("/img/3.jpg"), "not-a-url", server.url("/status/500.jpg")]
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    out = tmp_path / "run"
    assert main(["fetch", str(listing), "--out", str(out), "--allow-private", "--no-progress", "--retries", "1"]) == 0
    run = RunDir(out)
    rows = status_rows(run)
    assert len(rows) == 11 and rows[server.url("/status/500.jpg")]["attempts"] == 2
    assert read_tables(run.pool_files()).num_rows == 10
    summary = run.manifest()["fetch"]
    assert summary["list"] == {"bad-url": 1, "duplicate": 1} and summary["errors"] == {"http-500": 1}
