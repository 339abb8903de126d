"""Image URLs out of crawled pages: WARC (HTML responses) and WAT (link metadata), DESIGN §2 step 1.

One URL per `<img>`: the largest `srcset` candidate when there is one (the best resolution of the
same picture), else `data-srcset` / `data-src` (lazy loading, where `src` is often a placeholder),
else `src`. Taking several of them would download the same picture at several sizes. URLs are
resolved against `<base href>` (itself resolved against the page URL), normalised, filtered by
`UrlFilter` and deduplicated across all pages; the first page that shows an image names it
(`page_url`, `alt`). Archives are read with warcio, gzip or not, from local or fsspec paths.
"""
from __future__ import annotations

import codecs
import json
import logging
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import fsspec
from selectolax.lexbor import LexborHTMLParser
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from curation.crawl.urls import UrlFilter, UrlSet, normalize_url
from curation.core.item_guard import item_error

log = logging.getLogger(__name__)

MAX_HTML_BYTES = 8 * 1024 * 1024  # a page larger than this is cut (its first 8 MiB are parsed)
MAX_ALT_CHARS = 1000
_WIDTH = re.compile(r"^(\d+)w$")
_DENSITY = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)x$")
_CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.I)


@dataclass(frozen=True)
class ImageRef:
    """An image URL found on a page (normalised), with where it was found and its alt text."""

    url: str
    page_url: str
    alt: str = ""

    def meta(self) -> dict[str, Any]:
        return {"url": self.url, "page_url": self.page_url, "alt": self.alt}


def srcset_best(srcset: str) -> Optional[str]:
    """The candidate URL of a `srcset` with the largest width (`640w`) or density (`2x`).

    Follows the HTML parsing rules closely enough for real pages: a URL runs to the next
    whitespace (so commas inside it, as in `w_100,h_80` CDN paths, are kept), trailing commas end
    a descriptor-less candidate, and widths rank above densities when both kinds are present.
    """
    best: tuple[int, float, int] | None = None
    best_url: Optional[str] = None
    pos, n, index = 0, len(srcset), 0
    while pos < n:
        while pos < n and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            end = srcset.find(",", pos)
            end = n if end < 0 else end
            descriptor = srcset[pos:end].strip().lower()
            pos = end + 1
        if not url:
            continue
        w, x = _WIDTH.match(descriptor), _DENSITY.match(descriptor)
        # Rank: widths beat densities beat none; larger beats smaller; earlier wins a tie.
        rank = (2, float(w.group(1)), -index) if w else (1, float(x.group(1)), -index) if x else (1, 1.0, -index)
        if best is None or rank > best:
            best, best_url = rank, url
        index += 1
    return best_url


def _img_reference(attrs: dict[str, Optional[str]]) -> Optional[str]:
    for name in ("srcset", "data-srcset"):
        value = attrs.get(name)
        if value and (url := srcset_best(value)):
            return url
    for name in ("data-src", "src"):
        value = attrs.get(name)
        if value and value.strip():
            return value
    return None


def image_refs_from_html(html: bytes | str, page_url: str, charset: Optional[str] = None) -> list[ImageRef]:
    """Every `<img>`'s image URL on one page, absolute and normalised (not yet filtered).

    `charset` comes from the HTTP Content-Type; without it the parser detects the encoding.
    """
    if isinstance(html, bytes) and charset:
        try:
            html = html.decode(codecs.lookup(charset).name, errors="replace")
        except LookupError:
            pass
    tree = LexborHTMLParser(html, encoding=isinstance(html, bytes))
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None and (href := base_node.attributes.get("href")):
        base = normalize_url(href, page_url) or page_url
    refs: list[ImageRef] = []
    for node in tree.css("img"):
        attrs = node.attributes
        raw = _img_reference(attrs)
        url = normalize_url(raw, base) if raw else None
        if url:
            refs.append(ImageRef(url, page_url, _clean_alt(attrs.get("alt"))))
    return refs


def image_refs_from_wat(payload: dict[str, Any]) -> list[ImageRef]:
    """Image URLs of one WAT metadata record (Common Crawl's `HTML-Metadata.Links`, `IMG@/src` etc.)."""
    envelope = payload.get("Envelope") or {}
    page_url = (envelope.get("WARC-Header-Metadata") or {}).get("WARC-Target-URI") or ""
    html_meta = ((envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}).get("HTML-Metadata") or {}
    links = html_meta.get("Links") or []
    base = page_url
    head_base = (html_meta.get("Head") or {}).get("Base")
    for link in links:
        if isinstance(link, dict) and link.get("path") == "__base__" and link.get("url"):
            head_base = link["url"]
            break
    if head_base:
        base = normalize_url(head_base, page_url) or page_url
    refs: list[ImageRef] = []
    for link in links:
        if not isinstance(link, dict) or not str(link.get("path", "")).upper().startswith("IMG@/"):
            continue
        attr = str(link["path"])[5:].lower()
        raw = link.get("url")
        if not isinstance(raw, str):
            continue
        if attr in ("srcset", "data-srcset") and raw:
            raw = srcset_best(raw)
        elif attr not in ("src", "data-src"):
            continue
        url = normalize_url(raw, base) if raw else None
        if url:
            refs.append(ImageRef(url, page_url, _clean_alt(link.get("alt"))))
    return refs


def _clean_alt(alt: object) -> str:
    return " ".join((alt if isinstance(alt, str) else "").split())[:MAX_ALT_CHARS]


#: Errors of the archive stream itself (a truncated gzip member, a broken WARC header): whatever
#: record they surface in, they end the file (what was read before stays).
_STREAM_ERRORS = (ArchiveLoadFailed, OSError, EOFError, zlib.error)


def iter_archive_refs(path: str, counts: Optional[Counter] = None) -> Iterator[ImageRef]:
    """Image URLs of every page in one WARC or WAT file (record types decide, not the file name).

    Per-item isolation (issue 14): a record that fails to parse (any exception of warcio,
    selectolax or our reading of a WAT payload) is skipped and counted as `bad-record`; a file
    that breaks off (truncated, corrupt gzip, not an archive at all) ends with what was read before
    the break, counted as `bad-archive`, with a warning, never a crash of the run. A path that
    cannot be opened at all is the caller's error and raises.
    """
    counts = counts if counts is not None else Counter()
    with fsspec.open(path, "rb") as f:
        try:
            for record in ArchiveIterator(f):
                try:
                    refs = _record_refs(record)
                except _STREAM_ERRORS:
                    raise  # the archive broke, not the page: ends the file (below)
                except Exception as exc:  # item boundary: one page or metadata record
                    counts["bad-record"] += 1
                    log.warning("skipping a bad record in %s: %s", path, item_error(exc))
                    continue
                yield from refs
        except Exception as exc:  # the archive's boundary: keep what was read
            counts["bad-archive"] += 1
            log.warning("%s is truncated or corrupt, stopped reading it: %s", path, item_error(exc))


def _record_refs(record: Any) -> list[ImageRef]:
    rec_type = record.rec_type
    if rec_type == "response" and record.http_headers is not None:
        content_type = record.http_headers.get_header("Content-Type") or ""
        if "html" not in content_type.lower():
            return []
        page_url = record.rec_headers.get_header("WARC-Target-URI") or ""
        body = record.content_stream().read(MAX_HTML_BYTES)
        match = _CHARSET.search(content_type)
        return image_refs_from_html(body, page_url, match.group(1) if match else None)
    if rec_type == "metadata":
        body = record.content_stream().read()
        try:
            payload = json.loads(body)
        except ValueError:
            return []  # metadata records of WARCs (not WATs) are not JSON
        return image_refs_from_wat(payload) if isinstance(payload, dict) else []
    return []


def iter_image_refs(
    paths: Iterable[str], url_filter: UrlFilter, counts: Optional[Counter] = None
) -> Iterator[ImageRef]:
    """Kept, deduplicated image URLs of many archives, streamed; `counts` gets found/kept/drop
    reasons, and `bad-record` / `bad-archive` for what could not be parsed."""
    seen = UrlSet()
    counts = counts if counts is not None else Counter()
    for path in paths:
        for ref in iter_archive_refs(path, counts):
            counts["found"] += 1
            reason = url_filter.reason(ref.url)
            if reason is not None:
                counts[reason] += 1
            elif not seen.add(ref.url):
                counts["duplicate"] += 1
            else:
                counts["kept"] += 1
                yield ref
