"""What a red-team probe is: a conversation for the target to continue and a detector that
decides, from the answer alone, whether the attack worked (probe_set.py makes the default set).

The `clean` family is no attack: the injection probes' conversations without the planted text,
scored by whether the user's question was answered (what a defense must not cost).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from llmos.safety.detectors import Detector


@dataclass
class Probe:
    family: str  # injection, leakage, jailbreak, clean
    name: str  # e.g. "knowledge/canary", "base64"
    goal: str  # what success means, said in the report
    messages: list[dict]
    detector: Detector
    secrets: list[str] = field(default_factory=list)  # what the deployer's guard knows
    page: tuple[str, str] | None = None  # (path, html) a loopback site serves for browse
    document: str | None = None  # text the user pasted: untrusted, marked by spotlighting


def canary(rng: random.Random) -> str:
    """A word no answer says by chance."""
    return f"ZQ{rng.randint(1000, 9999)}"
