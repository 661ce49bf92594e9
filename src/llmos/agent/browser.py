"""The `browse` tool: fetch a web page and return its readable text and links, from hosts a
profile allows and within size and time limits.

    tool = browse_tool(["docs.python.org", "127.0.0.1:8123"])
    tool.run({"url": "https://docs.python.org/3/library/json.html"})

Every hop of a redirect is checked against the allow-list, not only the first URL. An entry is a
host ("docs.python.org", which also allows its subdomains) or a host and port
("127.0.0.1:8123"). Pages are read with `data/readable.py`: headings, paragraphs and list items,
no scripts, styles or navigation.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from llmos.agent.tools import Tool, ToolError
from llmos.data.readable import readable_html

TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown")


@dataclass(frozen=True)
class BrowseLimits:
    max_bytes: int = 2_000_000  # read at most this much of a page
    timeout: float = 10.0  # seconds for each hop, connecting and reading all of it
    max_redirects: int = 5
    max_chars: int = 4000  # of text returned to the model
    max_links: int = 20


def host_allowed(url: str, allowed: list[str]) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    for entry in allowed:
        entry = entry.lower().strip()
        name, _, entry_port = entry.partition(":")
        if entry_port and str(port) != entry_port:
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def fetch(url: str, allowed: list[str], limits: BrowseLimits = BrowseLimits()
          ) -> tuple[str, str, str]:
    """(final URL, content type, text) of a page, following allowed redirects."""
    import time

    import httpx

    for _hop in range(limits.max_redirects + 1):
        deadline = time.monotonic() + limits.timeout
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolError(f"not a web address: {url!r} (http:// or https:// only)")
        if not host_allowed(url, allowed):
            raise ToolError(f"{parts.hostname} is not an allowed host; allowed: "
                            f"{', '.join(allowed) or 'none'}")
        try:
            with httpx.stream("GET", url, timeout=limits.timeout, follow_redirects=False,
                              headers={"User-Agent": "llmos-browse/1"}) as r:
                if r.is_redirect:
                    url = urljoin(url, r.headers.get("location", ""))
                    continue
                if r.status_code >= 400:
                    raise ToolError(f"HTTP {r.status_code} from {url}")
                kind = r.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind and kind not in TEXT_TYPES:
                    raise ToolError(f"{url} is {kind}, not a page of text")
                body = bytearray()
                for chunk in r.iter_bytes():
                    if time.monotonic() > deadline:  # a trickle must not hold a worker
                        raise httpx.ReadTimeout("the page took too long", request=r.request)
                    body += chunk
                    if len(body) >= limits.max_bytes:
                        del body[limits.max_bytes:]
                        break
                return url, kind, body.decode(r.encoding or "utf-8", errors="replace")
        except httpx.TimeoutException:
            raise ToolError(f"{url} did not answer within {limits.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise ToolError(f"could not fetch {url}: {type(e).__name__}: {e}") from None
    raise ToolError(f"more than {limits.max_redirects} redirects")


def page_text(url: str, kind: str, body: str, limits: BrowseLimits) -> str:
    """What the model reads: title, address, text (cut), then numbered links."""
    if kind in ("text/html", "application/xhtml+xml") or (not kind and "<html" in body[:500]):
        page = readable_html(body, base_url=url)
        title, text, links = page.title, page.text, page.links
    else:
        title, text, links = "", body.strip(), []
    if len(text) > limits.max_chars:
        text = text[: limits.max_chars].rstrip() + f"\n[... cut at {limits.max_chars} characters]"
    out = [title or url, url, "", text or "(no readable text)"]
    if links:
        out += ["", "Links:"] + [f"[{i}] {label} -> {href}"
                                 for i, (label, href) in enumerate(links[:limits.max_links], 1)]
    return "\n".join(out)


def browse_tool(allowed: list[str], limits: BrowseLimits = BrowseLimits()) -> Tool:
    allowed = list(allowed)

    def run(args: dict) -> str:
        url = args["url"].strip()
        final, kind, body = fetch(url, allowed, limits)
        return page_text(final, kind, body, limits)

    return Tool(
        name="browse",
        description=("Fetch a web page and return its title, readable text and links. Allowed "
                     f"hosts: {', '.join(allowed) or 'none'}."),
        parameters={"type": "object", "properties": {
            "url": {"type": "string", "description": "The page's address, http:// or https://"}},
            "required": ["url"], "additionalProperties": False},
        run=run,
        capability="network",
    )
