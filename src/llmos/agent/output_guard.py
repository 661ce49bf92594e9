"""Output guards: what an answer may not carry out of the assistant, checked after it is written
and before anyone sees it. They know what the deployer knows (the system prompt, the policy,
where images may come from), not what an attacker planted.

    g = Guard(system_prompt, allowed_hosts=["docs.python.org"], markers=policy.markers())
    shown, reasons = g.check(answer_text)

- Markdown images from hosts outside the allow-list are removed (a browser fetching one sends
  whatever the address holds to its host);
- an answer that repeats the system prompt (any 8 words of it in a row, or one of its secret
  lines) is withheld;
- an answer that does what the policy forbids, read also after decoding base64, hex, rot13 and
  leetspeak, is withheld.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{8,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}\s?){8,}")
_LEET = str.maketrans("4310577$@", "aeiostts" + "a")
LEAK_WORDS = 8  # this many words of the system prompt in a row is a leak
WITHHELD = "[withheld by the output guard: {}]"


def image_links(text: str) -> list[str]:
    return IMAGE_LINK.findall(text)


def host_allowed(url: str, allowed: list[str]) -> bool:
    host = (urlparse(url).hostname or "").lower()
    if not host:  # a relative link stays on the page's own site
        return True
    return any(host == h or host.endswith("." + h) for h in allowed)


def decodings(text: str) -> list[str]:
    """The text, and what it reads as when parts of it are base64, hex, rot13 or leetspeak:
    an answer in code says what it says."""
    out = [text, codecs.decode(text, "rot13"), text.translate(_LEET)]
    for piece in _BASE64.findall(text):
        try:
            out.append(base64.b64decode(piece + "=" * (-len(piece) % 4)).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            pass
    for piece in _HEX.findall(text):
        try:
            out.append(bytes.fromhex(piece.replace(" ", "")).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            pass
    return out


def holds_marker(text: str, markers: list[str]) -> bool:
    """Whether the text, or any decoding of it, holds one of the markers (case and spacing
    aside)."""
    wanted = [m.lower() for m in markers]
    readings = [" ".join(r.lower().split()) for r in decodings(text)]
    return any(m in r for m in wanted for r in readings)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@dataclass
class Guard:
    system_prompt: str = ""
    allowed_hosts: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # strings never to be shown

    def __post_init__(self):
        words = _words(self.system_prompt)
        self._grams = {tuple(words[i:i + LEAK_WORDS])
                       for i in range(len(words) - LEAK_WORDS + 1)}

    def leaks(self, text: str) -> bool:
        for reading in decodings(text):
            low = reading.lower()
            if any(s.lower() in low for s in self.secrets):
                return True
            words = _words(reading)
            if any(tuple(words[i:i + LEAK_WORDS]) in self._grams
                   for i in range(len(words) - LEAK_WORDS + 1)):
                return True
        return False

    def check(self, text: str) -> tuple[str, list[str]]:
        """(what may be shown, why anything was changed)."""
        reasons = []
        if self.leaks(text):
            return WITHHELD.format("it repeats the system prompt"), ["system prompt"]
        if self.markers and holds_marker(text, self.markers):
            return WITHHELD.format("it does what the policy forbids"), ["policy"]

        def drop(m: re.Match) -> str:
            if host_allowed(m.group(1), self.allowed_hosts):
                return m.group(0)
            reasons.append(f"image from {m.group(1)}")
            return "[image removed]"

        text = re.sub(IMAGE_LINK.pattern + r"[^)]*\)", drop, text)
        return text, reasons
