"""Readable text and links out of an HTML page, with the standard library's HTML parser: what a
person would read (headings, paragraphs, list items, table cells), not scripts, styles or
navigation chrome. The knowledge base reads HTML files with it; the browser tool reads pages.

    page = readable_html(html, base_url="http://example.org/docs/")
    page.title, page.text, page.links   # links: [(text, absolute URL), ...]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

# Elements whose content is never read: code that runs, styling, and page chrome.
_SKIPPED = {"script", "style", "noscript", "template", "svg", "head", "nav", "footer", "form",
            "button", "select", "iframe"}
# Elements that start a new line of text.
_BLOCKS = {"p", "div", "section", "article", "main", "header", "aside", "br", "hr", "li", "dt",
           "dd", "tr", "table", "ul", "ol", "dl", "pre", "blockquote", "h1", "h2", "h3", "h4",
           "h5", "h6", "figcaption", "caption", "td", "th"}
_HEADINGS = {"h1": "#", "h2": "##", "h3": "###", "h4": "####", "h5": "#####", "h6": "######"}
# ARIA landmarks of page chrome (Sphinx's sidebars and "related" bars are divs marked so), and
# the pilcrow anchors documentation generators put after every heading.
_CHROME_ROLES = {"navigation", "search", "banner", "contentinfo"}
_CHROME_CLASSES = {"headerlink"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source",
         "track", "wbr"}


@dataclass
class Page:
    title: str = ""
    text: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self, base_url: str):
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.lines: list[str] = []
        self.current: list[str] = []
        self.skip_depth = 0
        self.hidden: tuple[str, int] | None = None  # (tag, nesting) of a chrome element
        self.pre_depth = 0
        self.title: list[str] = []
        self.in_title = False
        self.link: tuple[str, list[str]] | None = None
        self.links: list[tuple[str, str]] = []

    def _break(self, prefix: str = "") -> None:
        line = "".join(self.current)
        if not self.pre_depth:
            line = " ".join(line.split())
        if line.strip():
            self.lines.append(line)
        self.current = [prefix] if prefix else []

    def handle_starttag(self, tag, attrs):
        if tag == "title" and not self.title:  # the page's, first in <head>; not an SVG's
            self.in_title = True
        if self.hidden:
            if tag == self.hidden[0]:
                self.hidden = (tag, self.hidden[1] + 1)
            return
        if tag in _SKIPPED:
            if tag not in _VOID:
                self.skip_depth += 1
            return
        if self.skip_depth:
            return
        attributes = dict(attrs)
        if tag not in _VOID and (attributes.get("role") in _CHROME_ROLES or _CHROME_CLASSES
                                 & set((attributes.get("class") or "").split())):
            self.hidden = (tag, 1)
            return
        if tag in _BLOCKS:
            self._break(_HEADINGS.get(tag, "") + (" " if tag in _HEADINGS else "")
                        + ("- " if tag == "li" else ""))
        if tag == "pre":
            self.pre_depth += 1
        if tag == "a":
            href = attributes.get("href")
            if href and not href.startswith(("javascript:", "mailto:", "#")):
                self.link = (urljoin(self.base_url, href), [])

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if self.hidden:
            if tag == self.hidden[0]:
                self.hidden = (tag, self.hidden[1] - 1) if self.hidden[1] > 1 else None
            return
        if tag in _SKIPPED:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag == "a" and self.link:
            url, words = self.link
            label = " ".join("".join(words).split())
            if label:
                self.links.append((label, url))
            self.link = None
        if tag in _BLOCKS:
            self._break()  # before leaving <pre>: its line keeps its line breaks
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)
        if self.skip_depth or self.hidden:
            return
        self.current.append(data)
        if self.link:
            self.link[1].append(data)


def readable_html(html: str, base_url: str = "") -> Page:
    """The page's title, its text one block a line (headings marked with #, list items with -),
    and its links resolved against base_url, in page order, without duplicates."""
    reader = _Reader(base_url)
    reader.feed(html)
    reader.close()
    reader._break()
    text = "\n".join(reader.lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    seen, links = set(), []
    for label, url in reader.links:
        if url not in seen:
            seen.add(url)
            links.append((label, url))
    return Page(title=" ".join("".join(reader.title).split()), text=text, links=links)
