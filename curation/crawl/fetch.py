"""Polite, bounded, SSRF-safe image download with aiohttp (DESIGN §2 step 1, §6).

`Downloader.fetch(url)` runs one URL to a `FetchResult`; it never raises. Each hop (the request
and every redirect, which are followed here by hand so that each one is checked) is admitted by,
in order: the URL filter (redirects can lead to blocked domains), the SSRF guard (resolve, refuse
non-public addresses, pin), robots.txt of its origin (fetched through the same checks), then the
per-host gate (at most `max_per_host` in flight and `host_delay` between starts). A response must be 2xx, carry no
refusing `X-Robots-Tag`, have an allowed content type and fit in `max_bytes` (the body is
streamed and aborted as soon as it is larger). 5xx and timeouts are retried with exponential
backoff; nothing else is.

`fetch_stream(items, cfg)` is the streaming driver: the event loop runs in its own thread, the
URL iterator is read in chunks off the loop, and results come back through a bounded hand-off,
so memory is flat whatever the length of the list and the consumer (decode in a process pool)
never blocks the loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from curation.config import CrawlConfig
from curation.crawl.guard import AddressGuard, BlockedAddress, ResolveFailed
from curation.crawl.robots import RobotsCache, x_robots_refusal
from curation.crawl.status import FetchResult
from curation.crawl.urls import UrlFilter, normalize_url

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least 500 KiB, ignore the rest
CHUNK = 64 * 1024


class FetchError(Exception):
    """A hop failed; `code` goes to the status row, `retryable` for 5xx and timeouts."""

    def __init__(self, code: str, message: str = "", status: int = 0, retryable: bool = False):
        super().__init__(message or code)
        self.code, self.message, self.status, self.retryable = code, message, status, retryable


@dataclass
class _Response:
    status: int
    url: str
    location: Optional[str] = None
    data: bytes = b""
    content_type: str = ""


class _HostGate:
    """Per-host concurrency and spacing of request starts."""

    def __init__(self, limit: int):
        self.sem = asyncio.Semaphore(limit)
        self.next_start = 0.0
        self.users = 0


class Downloader:
    """One aiohttp session with its guard, robots cache and host gates. Use `async with`."""

    def __init__(
        self,
        cfg: CrawlConfig,
        url_filter: Optional[UrlFilter] = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ):
        self.cfg = cfg
        self.url_filter = url_filter
        self.trace_configs = list(trace_configs)
        self.guard = AddressGuard(cfg.allow_private, cfg.allow_networks)
        self.robots = RobotsCache(self._fetch_robots, cfg.user_agent)
        self._gates: dict[str, _HostGate] = {}
        self.session: Optional[aiohttp.ClientSession] = None

    async def __aenter__(self) -> "Downloader":
        cfg = self.cfg
        connector = aiohttp.TCPConnector(
            resolver=self.guard.resolver(),
            use_dns_cache=False,  # the guard's pins are the cache: one lookup per host, checked
            limit=cfg.concurrency,
            limit_per_host=0,  # host gates enforce max_per_host (robots.txt included)
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": cfg.user_agent, "Accept": "image/avif,image/webp,image/*,*/*;q=0.5"},
            timeout=aiohttp.ClientTimeout(
                total=cfg.total_timeout, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # never route through an environment proxy the guard cannot see
            trace_configs=self.trace_configs,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    # -- one URL -------------------------------------------------------------------------
    async def fetch(self, url: str) -> FetchResult:
        """Download one image URL (already normalised); every outcome is a `FetchResult`."""
        start = time.perf_counter()
        result = FetchResult(url)
        for attempt in itertools.count(1):
            result.attempts = attempt
            try:
                response = await self._follow(url, robots_txt=False)
            except FetchError as exc:
                if exc.retryable and attempt <= self.cfg.retries:
                    await asyncio.sleep(self.cfg.backoff * 2 ** (attempt - 1))
                    continue
                result.error, result.message, result.status = exc.code, exc.message[:500], exc.status
            except Exception as exc:  # a bug or an unforeseen client error must not end the run
                log.warning("unexpected error fetching %s", url, exc_info=True)
                result.error, result.message = "error", f"{type(exc).__name__}: {exc}"[:500]
            else:
                result.status, result.final_url = response.status, response.url
                result.data, result.bytes = response.data, len(response.data)
                result.content_type = response.content_type
            break
        result.elapsed = time.perf_counter() - start
        return result

    async def _follow(self, url: str, robots_txt: bool) -> _Response:
        """Request `url`, following at most `max_redirects` redirects, each hop admitted first."""
        current = url
        for _ in range(self.cfg.max_redirects + 1):
            await self._admit(current, robots_txt)
            response = await self._request(current, robots_txt)
            if response.location is None:
                return response
            target = normalize_url(response.location, current)
            if target is None:
                raise FetchError("bad-redirect", f"redirect to a non-http(s) URL: {response.location[:200]}", response.status)
            current = target
        raise FetchError("too-many-redirects", f"more than {self.cfg.max_redirects} redirects", response.status)

    async def _admit(self, url: str, robots_txt: bool) -> None:
        """Refuse a hop before any connection: URL filter, SSRF guard, then robots.txt."""
        if not robots_txt and self.url_filter is not None:
            reason = self.url_filter.reason(url)
            if reason is not None:
                raise FetchError("filtered-url", f"{reason}: {url[:200]}")
        parts = urlsplit(url)
        try:
            await self.guard.check(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        except (BlockedAddress, ResolveFailed) as exc:
            raise FetchError(exc.code, str(exc)) from None
        if not robots_txt and self.cfg.robots and not await self.robots.allowed(url):
            raise FetchError("robots", "disallowed by robots.txt")

    async def _request(self, url: str, robots_txt: bool) -> _Response:
        assert self.session is not None, "use `async with Downloader(...)`"
        async with self._host_slot(url):
            try:
                async with self.session.get(URL(url, encoded=True), allow_redirects=False) as resp:
                    if resp.status in REDIRECT_STATUSES and resp.headers.get("Location"):
                        return _Response(resp.status, url, location=resp.headers["Location"])
                    if robots_txt:  # the caller reads any status (RFC 9309 semantics)
                        return _Response(resp.status, url, data=await self._read(resp, ROBOTS_MAX_BYTES, truncate=True))
                    self._check_response(resp)
                    data = await self._read(resp, self.cfg.max_bytes, truncate=False)
                    return _Response(resp.status, url, data=data, content_type=resp.headers.get("Content-Type", ""))
            except FetchError:
                raise
            except asyncio.TimeoutError:  # includes aiohttp's connect and read timeouts
                raise FetchError("timeout", "timed out", retryable=True) from None
            except aiohttp.InvalidURL as exc:
                raise FetchError("bad-url", str(exc)) from None
            except aiohttp.ClientPayloadError as exc:
                raise FetchError("truncated", str(exc)[:300]) from None
            except (aiohttp.ClientConnectionError, OSError) as exc:
                raise FetchError("connection", f"{type(exc).__name__}: {exc}"[:300]) from None
            except aiohttp.ClientResponseError as exc:  # malformed response line or headers
                raise FetchError("bad-response", str(exc)[:300], exc.status) from None

    def _check_response(self, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        if not 200 <= status < 300:
            raise FetchError(f"http-{status}", resp.reason or "", status, retryable=500 <= status < 600)
        cfg = self.cfg
        if cfg.x_robots_tag:
            refusal = x_robots_refusal(resp.headers.getall("X-Robots-Tag", []), cfg.user_agent, cfg.x_robots_directives)
            if refusal is not None:
                raise FetchError("x-robots-tag", f"X-Robots-Tag: {refusal}", status)
        ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if cfg.content_types and not any(ctype.startswith(p) for p in cfg.content_types):
            raise FetchError("content-type", f"content type {ctype[:100]!r}", status)
        if resp.content_length is not None and resp.content_length > cfg.max_bytes:
            raise FetchError("too-large", f"Content-Length {resp.content_length} > max_bytes {cfg.max_bytes}", status)

    async def _read(self, resp: aiohttp.ClientResponse, limit: int, truncate: bool) -> bytes:
        """The body, at most `limit` bytes: cut there (`truncate`) or aborted with `too-large`."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > limit:
                resp.close()  # drop the connection: the rest of the body is never read
                if truncate:
                    chunks.append(chunk[: limit - (size - len(chunk))])
                    break
                raise FetchError("too-large", f"body exceeds max_bytes {limit}", resp.status)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _fetch_robots(self, robots_url: str) -> tuple[int, bytes]:
        response = await self._follow(robots_url, robots_txt=True)
        return response.status, response.data

    @contextlib.asynccontextmanager
    async def _host_slot(self, url: str) -> AsyncIterator[None]:
        host = urlsplit(url).netloc
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = _HostGate(self.cfg.max_per_host)
        gate.users += 1
        try:
            async with gate.sem:
                delay = max(self.cfg.host_delay, self.robots.known_crawl_delay(url) if self.cfg.robots else 0.0)
                if delay > 0:
                    now = time.monotonic()
                    wait = gate.next_start - now
                    gate.next_start = max(now, gate.next_start) + delay
                    if wait > 0:
                        await asyncio.sleep(wait)
                yield
        finally:
            gate.users -= 1
            if gate.users == 0 and gate.next_start <= time.monotonic():
                self._gates.pop(host, None)  # idle and not spacing requests: forget it


_DONE = object()
_READ_CHUNK = 256  # URLs taken from the input iterator per trip off the loop
_CREDIT_BATCH = 64  # results consumed before their credits go back to the loop in one wake-up


def fetch_stream(
    items: Iterable[tuple[str, dict[str, Any]]],
    cfg: CrawlConfig,
    url_filter: Optional[UrlFilter] = None,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> Iterator[tuple[FetchResult, dict[str, Any]]]:
    """Download `(url, meta)` items concurrently; yield `(result, meta)` in completion order.

    At most `cfg.queue_size` URLs wait to be fetched and at most `cfg.queue_size` results wait to
    be consumed, so a 1M-URL list streams in flat memory. Closing the generator early stops the
    downloads and joins the loop thread.
    """
    results: queue.Queue = queue.Queue()  # bounded by `credits` below, not by maxsize
    stop = threading.Event()
    state: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> None:
        credits = asyncio.Semaphore(cfg.queue_size)  # results not yet taken by the consumer
        state["credits"], state["loop"], state["task"] = credits, asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        todo: asyncio.Queue = asyncio.Queue(maxsize=cfg.queue_size)
        workers = cfg.concurrency

        async def produce() -> None:
            source = iter(items)
            while not stop.is_set():
                # Reading the input (parsing HTML, reading Parquet) happens in a worker thread.
                chunk = await asyncio.to_thread(lambda: list(itertools.islice(source, _READ_CHUNK)))
                if not chunk:
                    break
                for item in chunk:
                    await todo.put(item)
            for _ in range(workers):
                await todo.put(None)

        async def work(downloader: Downloader) -> None:
            while (item := await todo.get()) is not None:
                await credits.acquire()
                results.put((await downloader.fetch(item[0]), item[1]))

        async with Downloader(cfg, url_filter, trace_configs) as downloader:
            await asyncio.gather(produce(), *(work(downloader) for _ in range(workers)))

    def run() -> None:
        try:
            asyncio.run(main())
            results.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            results.put(exc)
        finally:
            started.set()

    def give_back(n: int) -> None:
        """Return `n` credits to the loop in one thread-safe call (one wake-up of the loop)."""
        loop = state.get("loop")
        if n and loop is not None and not loop.is_closed():

            def release() -> None:
                for _ in range(n):
                    state["credits"].release()

            with contextlib.suppress(RuntimeError):  # the loop closed between check and call
                loop.call_soon_threadsafe(release)

    thread = threading.Thread(target=run, name="lvd-fetch-loop", daemon=True)
    thread.start()
    started.wait()
    owed = 0  # credits of consumed results not yet given back: batched, always before blocking
    try:
        while True:
            try:
                item = results.get_nowait()
            except queue.Empty:
                give_back(owed)
                owed = 0
                item = results.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                if isinstance(item, asyncio.CancelledError) and stop.is_set():
                    return
                raise item
            owed += 1
            if owed >= _CREDIT_BATCH:
                give_back(owed)
                owed = 0
            yield item
    finally:
        stop.set()
        loop, task = state.get("loop"), state.get("task")
        if thread.is_alive() and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        thread.join()
