"""Image URLs: resolution against the page, normalisation, and the drop rules (DESIGN §2 step 1).

The paper keeps image URLs from `<img>` tags and drops "unsafe or domain-restricted" ones. Here a
URL is kept when it is http(s), its host is on no blocklist (the user's `--domains-blocklist`, the
built-in unsafe list below plus the user's unsafe file) and its path does not end in an extension
that is never a raster photo. Normalisation makes the same image found through different spellings
of its URL download once: lower-case scheme and host, IDNA host, no default port, no fragment,
dot segments removed, unsafe characters percent-encoded (already-encoded ones are kept as they are).
"""
from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable, Optional
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import fsspec

from curation.config import CrawlConfig

#: Top-level domains reserved for adult content (ICANN sponsored/generic TLDs). Deliberately small:
#: a curated unsafe list is a policy decision, so users extend it with `unsafe_domains` (a file).
BUILTIN_UNSAFE_DOMAINS: frozenset[str] = frozenset({"xxx", "adult", "porn", "sex"})

_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 reserved + unreserved + '%': everything else (spaces, quotes, non-ASCII) gets encoded.
_SAFE_PATH = "/:@!$&'()*+,;=-._~%"
_SAFE_QUERY = _SAFE_PATH + "?"


def normalize_url(url: str, base: Optional[str] = None) -> Optional[str]:
    """Absolute, canonical http(s) URL, or None when the reference is not a usable web URL.

    `base` is the page URL (or its `<base href>` already resolved against the page).
    """
    if not isinstance(url, str) or not (url := url.strip()):
        return None  # a WAT payload's JSON can hold any type where a URL should be
    try:
        absolute = urljoin(base, url) if base else url
        parts = urlsplit(absolute)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            return None
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return None
        host = _idna(host)
        port = parts.port
    except ValueError:  # bad port, bad IPv6 literal, bad IDNA label
        return None
    if host is None:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = posixpath.normpath(parts.path) if parts.path else "/"
    if parts.path.endswith("/") and not path.endswith("/"):
        path += "/"  # normpath drops the trailing slash, which is significant in URLs
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    try:
        path = quote(path, safe=_SAFE_PATH)
        query = quote(parts.query, safe=_SAFE_QUERY)
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800" in a WAT record): no URL
        return None
    return urlunsplit((scheme, netloc, path, query, ""))


def _idna(host: str) -> Optional[str]:
    host = host.lower()
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def url_host(url: str) -> str:
    """Lower-case host of a normalised URL ('' when it has none)."""
    return (urlsplit(url).hostname or "").lower()


def url_extension(url: str) -> str:
    """Lower-case extension of the URL's last path segment, with the dot ('' when none)."""
    return PurePosixPath(urlsplit(url).path).suffix.lower()


def domain_matches(host: str, domains: frozenset[str] | set[str]) -> bool:
    """True when `host` is one of `domains` or a subdomain of one (label boundary, not substring)."""
    labels = host.lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in domains for i in range(len(labels)))


def read_domain_list(path: Optional[str]) -> frozenset[str]:
    """One domain per line (local or fsspec path); `#` comments, blank lines and `*.` prefixes ignored."""
    if not path:
        return frozenset()
    out: set[str] = set()
    with fsspec.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            entry = line.split("#", 1)[0].strip().lower().lstrip("*").strip(".")
            if entry:
                out.add(_idna(entry) or entry)
    return frozenset(out)


@dataclass(frozen=True)
class UrlFilter:
    """The drop rules for image URLs; `reason(url)` says why a normalised URL is dropped."""

    blocked_domains: frozenset[str] = frozenset()
    unsafe_domains: frozenset[str] = BUILTIN_UNSAFE_DOMAINS
    blocked_extensions: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: CrawlConfig) -> "UrlFilter":
        """The filter of a run: its lists read from the files the config names."""
        return cls(
            blocked_domains=read_domain_list(cfg.domains_blocklist),
            unsafe_domains=BUILTIN_UNSAFE_DOMAINS | read_domain_list(cfg.unsafe_domains),
            blocked_extensions=frozenset("." + e.lower().lstrip(".") for e in cfg.blocked_extensions),
        )

    def reason(self, url: str) -> Optional[str]:
        """None when the URL is kept, else a short code: `blocked-domain`, `unsafe-domain`, `extension`."""
        host = url_host(url)
        if domain_matches(host, self.unsafe_domains):
            return "unsafe-domain"
        if domain_matches(host, self.blocked_domains):
            return "blocked-domain"
        if url_extension(url) in self.blocked_extensions:
            return "extension"
        return None


def url_key(url: str) -> int:
    """A 64-bit key of a URL: sets of keys take ~8x less memory than sets of strings."""
    return int.from_bytes(hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class UrlSet:
    """Membership of many URLs in bounded memory (a 64-bit hash per URL; a collision, ~n²/2⁶⁵,
    would make one URL look seen: negligible below billions of URLs)."""

    def __init__(self, urls: Iterable[str] = ()):
        self._keys: set[int] = {url_key(u) for u in urls}

    def add(self, url: str) -> bool:
        """Add `url`; True when it was not there yet."""
        key = url_key(url)
        if key in self._keys:
            return False
        self._keys.add(key)
        return True

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and url_key(url) in self._keys

    def __len__(self) -> int:
        return len(self._keys)
