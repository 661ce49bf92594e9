"""The browse tool against a real web site served on loopback: readable text and links,
redirects checked hop by hop against the allow-list, and the size, time and type limits."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmos.agent import profiles
from llmos.agent.browser import BrowseLimits, browse_tool, host_allowed
from llmos.agent.tools import call_tool

PAGE = ("<html><head><title>Kettles</title><style>p {color: red}</style></head><body>"
        "<nav><a href='/'>Home</a></nav><h1>Electric kettles</h1>"
        "<p>A kettle switches itself off when the water boils.</p>"
        "<p>See <a href='/care.html'>care</a> and <a href='https://example.org/x'>more</a>.</p>"
        "<script>document.write('tracking')</script></body></html>")


class Site(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status: int, kind: str, body: bytes, **headers) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path == "/kettle.html":
            self.send(200, "text/html; charset=utf-8", PAGE.encode())
        elif self.path == "/moved":
            self.send(302, "text/plain", b"", Location="/kettle.html")
        elif self.path == "/away":  # the same server under a name the allow-list lacks
            self.send(302, "text/plain", b"", Location=f"http://localhost:{port}/kettle.html")
        elif self.path == "/notes.txt":
            self.send(200, "text/plain", b"Descale every month.")
        elif self.path == "/big.txt":
            self.send(200, "text/plain", b"x" * 3_000_000)
        elif self.path == "/photo.png":
            self.send(200, "image/png", b"\x89PNG")
        elif self.path == "/slow":
            time.sleep(2)
            self.send(200, "text/plain", b"late")
        else:
            self.send(404, "text/plain", b"no")


@pytest.fixture(scope="module")
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def browse(site, path, **limits):
    tool = browse_tool([site], BrowseLimits(**limits))
    return call_tool("browse", {"url": f"http://{site}{path}"}, {"browse": tool})


def test_a_page_reads_as_text_and_links(site):
    out = browse(site, "/kettle.html")
    lines = out.splitlines()
    assert lines[0] == "Kettles" and lines[1] == f"http://{site}/kettle.html"
    assert "# Electric kettles" in out and "switches itself off" in out
    assert "tracking" not in out and "color" not in out and "Home" not in out
    assert f"[1] care -> http://{site}/care.html" in out
    assert "[2] more -> https://example.org/x" in out
    assert browse(site, "/notes.txt").splitlines()[-1] == "Descale every month."


def test_redirects_are_followed_only_to_allowed_hosts(site):
    assert "switches itself off" in browse(site, "/moved")
    out = browse(site, "/away")
    assert out.startswith("error: localhost is not an allowed host")


def test_limits_and_bad_input_are_clear_errors(site):
    assert browse(site, "/missing").startswith("error: HTTP 404")
    assert "not a page of text" in browse(site, "/photo.png")
    assert "did not answer within 0.5 s" in browse(site, "/slow", timeout=0.5)
    big = browse(site, "/big.txt", max_bytes=10_000, max_chars=500)
    assert "[... cut at 500 characters]" in big and len(big) < 700
    tool = {"browse": browse_tool([site])}
    assert "not an allowed host" in call_tool("browse", {"url": "http://example.org/"}, tool)
    assert "http:// or https://" in call_tool("browse", {"url": "file:///etc/passwd"}, tool)
    port = site.split(":")[1]
    assert "could not fetch" in call_tool(  # nothing listens on the next port
        "browse", {"url": f"http://127.0.0.1:{int(port) + 1}/"},
        {"browse": browse_tool([f"127.0.0.1:{int(port) + 1}"])})


def test_allow_list_matching():
    assert host_allowed("https://docs.python.org/3/", ["python.org"])
    assert not host_allowed("https://evilpython.org/", ["python.org"])
    assert host_allowed("http://127.0.0.1:8123/x", ["127.0.0.1:8123"])
    assert not host_allowed("http://127.0.0.1:9999/x", ["127.0.0.1:8123"])
    assert not host_allowed("http://127.0.0.1/x", [])


def test_profiles_grant_browse_with_hosts():
    p = profiles.parse({"name": "web", "model": "m", "tools": ["browse"],
                        "browse": {"hosts": ["docs.python.org"]}})
    assert "docs.python.org" in p.build_tools()["browse"].description
    with pytest.raises(profiles.ProfileError, match="go together"):
        profiles.parse({"name": "web", "model": "m", "tools": ["browse"]})
    with pytest.raises(profiles.ProfileError, match="go together"):
        profiles.parse({"name": "web", "model": "m", "browse": {"hosts": ["x.org"]}})


def test_an_allow_list_entry_must_be_a_host():
    for bad in (":8080", "https://docs.python.org", "evil.com."):
        with pytest.raises(profiles.ProfileError, match="hosts are names like"):
            profiles.parse({"name": "web", "model": "m", "tools": ["browse"],
                            "browse": {"hosts": [bad]}})
