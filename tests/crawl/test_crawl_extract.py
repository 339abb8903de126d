"""Image URL extraction: srcset, <base>, normalisation, filters, dedup, WARC and WAT, URL lists."""
from __future__ import annotations

import io
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.config import CrawlConfig
from curation.crawl.extract import image_refs_from_html, iter_image_refs, srcset_best
from curation.crawl.urllist import iter_url_list
from curation.crawl.urls import UrlFilter, UrlSet, domain_matches, normalize_url

PAGE = "http://shop.example.com/cat/page.html"


@pytest.mark.parametrize(
    "srcset,best",
    [
        ("a.jpg 320w, b.jpg 1280w, c.jpg 640w", "b.jpg"),
        ("a.jpg 1x, b.jpg 3x, c.jpg 2x", "b.jpg"),
        ("a.jpg, b.jpg 1.5x", "b.jpg"),
        ("https://cdn.x/w_100,h_80/a.jpg 100w, https://cdn.x/w_900,h_700/a.jpg 900w", "https://cdn.x/w_900,h_700/a.jpg"),
        ("only.jpg", "only.jpg"),
        ("  ", None),
        ("a.jpg 2x, b.jpg 200w", "b.jpg"),  # widths rank above densities
    ],
)
def test_srcset_best(srcset, best):
    assert srcset_best(srcset) == best


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("../img/a b.JPG#frag", "http://shop.example.com/img/a%20b.JPG"),
        ("//CDN.Example.com:80/x/./y.png", "http://cdn.example.com/x/y.png"),
        ("HTTPS://Example.com:443/p?q=1&r=%2F", "https://example.com/p?q=1&r=%2F"),
        ("https://bücher.de/ä.jpg", "https://xn--bcher-kva.de/%C3%A4.jpg"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("data:image/png;base64,AAAA", None),
        ("javascript:void(0)", None),
        ("ftp://example.com/a.jpg", None),
        ("http://example.com:99999/a.jpg", None),
        ("", None),
    ],
)
def test_normalize_url(raw, expected):
    assert normalize_url(raw, PAGE) == expected


def test_html_refs_srcset_base_data_src_and_alt():
    html = """<html><head><base href="/static/v2/"><meta charset="utf-8"></head><body>
    <img src="small.jpg" srcset="small.jpg 300w, large.jpg 1200w" alt="  Big   café  ">
    <img src="spinner.gif" data-src="lazy.jpg">
    <img src="/root.jpg">
    <img alt="no source">
    <img src="data:image/gif;base64,R0lGOD">
    </body></html>""".encode()
    refs = image_refs_from_html(html, PAGE)
    assert [r.url for r in refs] == [
        "http://shop.example.com/static/v2/large.jpg",
        "http://shop.example.com/static/v2/lazy.jpg",
        "http://shop.example.com/root.jpg",
    ]
    assert refs[0].alt == "Big café" and refs[0].page_url == PAGE
    assert refs[0].meta() == {"url": refs[0].url, "page_url": PAGE, "alt": "Big café"}


def test_html_charset_from_header():
    html = '<img src="/a.jpg" alt="caf\xe9">'.encode("latin-1")
    assert image_refs_from_html(html, PAGE, charset="iso-8859-1")[0].alt == "café"


def test_domain_filter_and_lists(tmp_path):
    (tmp_path / "block.txt").write_text("# ads\nads.example.net\n*.tracker.org\n\n")
    (tmp_path / "unsafe.txt").write_text("badsite.com\n")
    f = UrlFilter.from_config(
        CrawlConfig(domains_blocklist=str(tmp_path / "block.txt"), unsafe_domains=str(tmp_path / "unsafe.txt"))
    )
    assert f.reason("http://ads.example.net/a.jpg") == "blocked-domain"
    assert f.reason("http://img.ads.example.net/a.jpg") == "blocked-domain"
    assert f.reason("http://x.tracker.org/a.jpg") == "blocked-domain"
    assert f.reason("http://notads.example.net/a.jpg") is None  # label boundary, not substring
    assert f.reason("http://cdn.badsite.com/a.jpg") == "unsafe-domain"
    assert f.reason("http://anything.xxx/a.jpg") == "unsafe-domain"  # built-in list
    assert f.reason("http://example.com/logo.SVG") == "extension"
    assert f.reason("http://example.com/photo.jpg") is None
    assert domain_matches("a.b.c", frozenset({"b.c"})) and not domain_matches("ab.c", frozenset({"b.c"}))


def test_url_set():
    s = UrlSet(["http://a/1"])
    assert "http://a/1" in s and s.add("http://a/2") and not s.add("http://a/2") and len(s) == 2


def write_warc(path, pages: dict[str, bytes], extra_records: bool = True) -> None:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages.items():
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(html), http_headers=headers))
        if extra_records:
            img = StatusAndHeaders("200 OK", [("Content-Type", "image/jpeg")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record("http://x.org/a.jpg", "response", payload=io.BytesIO(b"\xff\xd8"), http_headers=img))
            writer.write_record(writer.create_warc_record("http://x.org/", "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))


def test_warc_refs_filtered_and_deduplicated(tmp_path):
    pages = {
        "http://a.org/index.html": b'<img src="/p/1.jpg" alt="first"><img src="http://b.org/2.jpg"><img src="x.svg">',
        "http://a.org/other.html": b'<img src="http://a.org/p/1.jpg#top" alt="second"><img src="http://evil.xxx/3.jpg">',
    }
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, pages)
    counts: Counter = Counter()
    refs = list(iter_image_refs([str(path)], UrlFilter.from_config(CrawlConfig()), counts))
    assert [(r.url, r.page_url, r.alt) for r in refs] == [
        ("http://a.org/p/1.jpg", "http://a.org/index.html", "first"),
        ("http://b.org/2.jpg", "http://a.org/index.html", ""),
    ]
    assert counts == Counter({"found": 5, "kept": 2, "duplicate": 1, "extension": 1, "unsafe-domain": 1})


def test_truncated_warc_keeps_what_was_read(tmp_path):
    pages = {f"http://a.org/{i}.html": f'<img src="/p/{i}.jpg">'.encode() + b" " * 5000 for i in range(6)}
    path = tmp_path / "whole.warc.gz"
    write_warc(path, pages, extra_records=False)
    data = path.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    refs = list(iter_image_refs([str(cut)], UrlFilter()))
    assert 1 <= len(refs) < 6 and refs[0].url == "http://a.org/p/0.jpg"
    garbage = tmp_path / "garbage.warc"
    garbage.write_bytes(b"not a warc at all\n" * 10)
    assert list(iter_image_refs([str(garbage), str(path)], UrlFilter()))[-1].url == "http://a.org/p/5.jpg"


def test_wat_refs(tmp_path):
    wat = {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Target-URI": "http://w.org/dir/page"},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {
                    "HTML-Metadata": {
                        "Head": {"Base": "http://static.w.org/base/"},
                        "Links": [
                            {"path": "IMG@/src", "url": "a.jpg", "alt": "An  image"},
                            {"path": "A@/href", "url": "http://w.org/link"},
                            {"path": "IMG@/srcset", "url": "s.jpg 1x, s2.jpg 2x"},
                            {"path": "IMG@/data-src", "url": "/lazy.png"},
                            {"path": "IMG@/longdesc", "url": "desc.html"},
                        ],
                    }
                }
            },
        }
    }
    path = tmp_path / "x.warc.wat.gz"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        writer.write_record(writer.create_warc_record(
            "http://w.org/dir/page", "metadata", payload=io.BytesIO(json.dumps(wat).encode()), warc_content_type="application/json"
        ))
    refs = list(iter_image_refs([str(path)], UrlFilter()))
    assert [r.url for r in refs] == ["http://static.w.org/base/a.jpg", "http://static.w.org/base/s2.jpg", "http://static.w.org/lazy.png"]
    assert refs[0].alt == "An image" and refs[0].page_url == "http://w.org/dir/page"


def test_url_lists_streamed(tmp_path):
    (tmp_path / "l.txt").write_text("# comment\nhttp://a.org/1.jpg\n\nnot a url\nhttps://b.org/2.jpg\n")
    (tmp_path / "l.csv").write_text('url,caption\nhttp://a.org/1.jpg,"a, cat"\nmailto:x@y,bad\n')
    pq.write_table(pa.table({"URL": ["http://a.org/1.jpg", None], "TEXT": ["dog", None]}), tmp_path / "l.parquet")
    counts: dict = {}
    txt = list(iter_url_list(str(tmp_path / "l.txt"), counts))
    assert [r.url for r in txt] == ["http://a.org/1.jpg", "https://b.org/2.jpg"] and counts == {"bad-url": 1}
    csv_refs = list(iter_url_list(str(tmp_path / "l.csv")))
    assert [(r.url, r.alt) for r in csv_refs] == [("http://a.org/1.jpg", "a, cat")]
    pq_refs = list(iter_url_list(str(tmp_path / "l.parquet")))
    assert [(r.url, r.alt) for r in pq_refs] == [("http://a.org/1.jpg", "dog")]
    (tmp_path / "nourl.csv").write_text("link\nhttp://a.org/1.jpg\n")
    from curation.core.errors import UserError

    with pytest.raises(UserError, match="no URL column"):
        list(iter_url_list(str(tmp_path / "nourl.csv")))
