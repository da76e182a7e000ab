"""The live web: SearXNG and Serper search over httpx, and a guarded crawler.

The crawler refuses what a research agent must never reach: non-http(s) schemes, and hosts that resolve to
loopback, private, link-local (cloud metadata at 169.254.169.254), multicast, reserved or unspecified
addresses, unless `research.crawl.allow_hosts` admits them. The check runs on every redirect hop and again
at connect time on the address actually dialled, so DNS rebinding cannot slip past it. Size, time,
redirects and content types are capped.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from oresearcher.config import CrawlConfig, SearchConfig
from oresearcher.research.local_index import SearchHit


class ToolError(RuntimeError):
    """A tool call that failed in a way the agent should see (the message becomes the observation)."""

    transient = False  # True: worth retrying later (timeouts, 5xx); False: the same call will fail again


class TransientToolError(ToolError):
    transient = True


class CrawlRefused(ToolError):
    """The crawler's safety policy refused a URL."""


@dataclass(frozen=True)
class Page:
    url: str  # final URL after redirects
    title: str
    text: str
    date: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Address policy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressPolicy:
    """Which hosts and addresses the crawler may reach."""

    def __init__(self, allow_hosts: list[str]):
        self.allowed_names = {h.lower().strip("[]") for h in allow_hosts if not _is_network(h)}
        self.allowed_nets = [ipaddress.ip_network(h, strict=False) for h in allow_hosts if _is_network(h)]

    def host_allowed(self, host: str) -> bool:
        return host.lower().strip("[]") in self.allowed_names

    def check_address(self, host: str, ip: IPAddress) -> None:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.host_allowed(host) or any(ip in net for net in self.allowed_nets):
            return
        kind = _forbidden_kind(ip)
        if kind is None and ip.version == 6:
            # 6to4 and Teredo addresses embed an IPv4 address that is where the packets really go
            embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
            if embedded is not None and (inner := _forbidden_kind(embedded)):
                kind = f"{inner} (embedded {embedded})"
        if kind:
            what = f"is a {kind} address" if host.strip("[]") == str(ip) else f"resolves to {kind} address {ip}"
            raise CrawlRefused(f"refused: {host} {what} (not allowed for crawling; see research.crawl.allow_hosts)")

    def check_url(self, url: str) -> tuple[str, int]:
        """Scheme and literal-address checks before any network use; returns (host, port)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise CrawlRefused(f"refused: scheme {parts.scheme or '(none)'!r} is not http(s): {url}")
        host = parts.hostname
        if not host:
            raise CrawlRefused(f"refused: no host in {url}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise CrawlRefused(f"refused: bad port in {url}") from None
        try:
            self.check_address(host, ipaddress.ip_address(host))
        except ValueError:
            pass  # a name, not a literal: checked on resolution
        return host, port

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve `host` and return its addresses, refusing if any one of them is forbidden."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ToolError(f"cannot resolve host {host}: {e.strerror}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for addr in addresses:
            self.check_address(host, ipaddress.ip_address(addr.split("%")[0]))
        return addresses


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
        return True
    except ValueError:
        return False


def _forbidden_kind(ip: IPAddress) -> str | None:
    # Most specific first: 240.0.0.0/4 is both "reserved" and (to Python) "private"; say "reserved".
    for kind, flag in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("reserved", ip.is_reserved), ("private", ip.is_private)):
        if flag:
            return kind
    if not ip.is_global:
        return "non-global"
    return None


class _GuardedBackend(httpcore.SyncBackend):
    """Dials only addresses the policy admits; the TLS name and Host header stay the URL's."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = self.policy.resolve(host, port)
        return super().connect_tcp(addresses[0], port, timeout, local_address, socket_options)


def guarded_client(cfg: CrawlConfig) -> httpx.Client:
    transport = httpx.HTTPTransport(retries=0)
    # httpx has no public hook for the connect step; swap its connection pool for one that dials through
    # the policy, so the address check covers the socket actually opened (DNS rebinding included).
    assert hasattr(transport, "_pool"), "httpx internals changed: update guarded_client"
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_GuardedBackend(AddressPolicy(cfg.allow_hosts)))
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False,
                        headers={"User-Agent": cfg.user_agent}, timeout=httpx.Timeout(cfg.timeout_s))


# ---------------------------------------------------------------------------------------------------------------
# Crawling


class WebCrawler:
    def __init__(self, cfg: CrawlConfig):
        self.cfg = cfg
        self.policy = AddressPolicy(cfg.allow_hosts)
        self.client = guarded_client(cfg)

    def fetch(self, url: str) -> Page:
        """The page at `url`; every failure is a ToolError (the agent sees it), never another exception."""
        try:
            return self._fetch(url)
        except ToolError:
            raise
        except (httpx.RemoteProtocolError, httpx.UnsupportedProtocol, httpx.DecodingError, httpx.InvalidURL,
                httpx.TooManyRedirects, ValueError, UnicodeError) as e:  # the page's fault: permanent
            raise ToolError(f"cannot fetch {url}: {type(e).__name__}: {e}") from None
        except httpx.HTTPError as e:
            raise TransientToolError(f"cannot fetch {url}: {type(e).__name__}: {e}") from None

    def _fetch(self, url: str) -> Page:
        deadline = time.monotonic() + self.cfg.timeout_s
        current = url
        for _hop in range(self.cfg.max_redirects + 1):
            self.policy.check_url(current)
            try:
                with self.client.stream("GET", current) as resp:
                    if resp.is_redirect:
                        location = resp.headers.get("location", "")
                        if not location:
                            raise ToolError(f"redirect without a Location from {current}")
                        current = urljoin(current, location)
                        continue
                    return self._read(current, resp, deadline)
            except httpx.TimeoutException:
                raise TransientToolError(f"timed out fetching {current}") from None
            except (httpx.RemoteProtocolError, httpx.UnsupportedProtocol):
                raise
            except httpx.TransportError as e:
                raise TransientToolError(f"network error fetching {current}: {e}") from None
        raise ToolError(f"too many redirects (more than {self.cfg.max_redirects}) from {url}")

    def _read(self, url: str, resp: httpx.Response, deadline: float) -> Page:
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientToolError(f"HTTP {resp.status_code} from {url}")
        if resp.status_code >= 400:
            raise ToolError(f"HTTP {resp.status_code} from {url}")
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in self.cfg.content_types:
            raise ToolError(f"unsupported content type {ctype or '(none)'!r} at {url}")
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) >= self.cfg.max_bytes:
                del body[self.cfg.max_bytes :]
                break  # keep the first max_bytes: the start of a page carries its substance
            if time.monotonic() > deadline:
                raise TransientToolError(f"timed out reading {url} (over {self.cfg.timeout_s:.0f} s)")
        html = body.decode(resp.encoding or "utf-8", errors="replace")
        title, text = extract_main_text(html, url, ctype)
        if not text:
            raise ToolError(f"no readable text at {url}")
        return Page(url, title, text)


def extract_main_text(raw: str, url: str, content_type: str = "text/html") -> tuple[str, str]:
    """(title, main text) of a page: trafilatura's main-content extraction, plain text as it is."""
    if content_type == "text/plain":
        return "", raw.strip()
    import trafilatura

    doc = trafilatura.bare_extraction(raw, url=url, with_metadata=True, include_comments=False,
                                      favor_recall=True)
    if doc is not None and doc.text:
        return doc.title or "", doc.text.strip()
    import lxml.html  # fallback for pages too small for trafilatura's heuristics

    try:
        tree = lxml.html.fromstring(raw)
    except Exception:  # noqa: BLE001 - an unparsable page just has no text
        return "", ""
    for bad in tree.xpath("//script|//style|//noscript"):
        bad.drop_tree()
    title = (tree.findtext(".//title") or "").strip()
    return title, " ".join(tree.text_content().split())


# ---------------------------------------------------------------------------------------------------------------
# Live search


class _JsonSearch:
    """Shared HTTP mechanics of the live search APIs: timeouts and retries with backoff on 429/5xx/timeouts."""

    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg
        self.client = httpx.Client(timeout=httpx.Timeout(cfg.timeout_s), trust_env=False)

    def _request(self, method: str, url: str, **kw) -> dict:
        for attempt in range(self.cfg.retries + 1):
            try:
                resp = self.client.request(method, url, **kw)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise TransientToolError(f"search API answered HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    raise ToolError(f"search API answered HTTP {resp.status_code}: {resp.text[:200]}")
                try:
                    return resp.json()
                except ValueError:
                    raise TransientToolError("search API answered with malformed JSON") from None
            except httpx.TimeoutException:
                err: ToolError = TransientToolError(f"search API timed out after {self.cfg.timeout_s} s")
            except httpx.TransportError as e:
                err = TransientToolError(f"search API unreachable at {url}: {e}")
            except TransientToolError as e:
                err = e
            if attempt < self.cfg.retries:
                time.sleep(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise err


class SearxngSearch(_JsonSearch):
    """A self-hosted SearXNG instance's JSON API (`format=json` must be enabled in its settings)."""

    def search(self, query: str, k: int) -> list[SearchHit]:
        data = self._request("GET", self.cfg.searxng_url.rstrip("/") + "/search",
                             params={"q": query, "format": "json"})
        return [SearchHit(r["url"], r.get("title", ""), r.get("content", "") or "", r.get("publishedDate") or "")
                for r in data.get("results", [])[:k] if r.get("url")]


class SerperSearch(_JsonSearch):
    """Google results through serper.dev; the API key comes from the environment variable the config names."""

    def search(self, query: str, k: int) -> list[SearchHit]:
        key = os.environ.get(self.cfg.serper_api_key_env)
        if not key:
            raise ToolError(f"Serper search needs an API key in ${self.cfg.serper_api_key_env}")
        data = self._request("POST", self.cfg.serper_url, json={"q": query, "num": k},
                             headers={"X-API-KEY": key})
        return [SearchHit(r["link"], r.get("title", ""), r.get("snippet", ""), r.get("date", ""))
                for r in data.get("organic", [])[:k] if r.get("link")]
