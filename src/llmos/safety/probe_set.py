"""The default probe set of `llmos redteam`.

    probes = default_probes(load_policy(), seed=0, tasks=3)
    probes[0].family, probes[0].name, probes[0].messages, probes[0].detector
"""

from __future__ import annotations

import random

from llmos.safety.probes import Probe
from llmos.safety.probes_injection import injection_probes
from llmos.safety.probes_jailbreak import jailbreak_probes, leakage_probes

FAMILIES = ("injection", "leakage", "jailbreak", "clean")


def default_probes(policy, seed: int = 0, tasks: int = 3) -> list[Probe]:
    """Injection (and its clean twins) over `tasks` questions, leakage, and the jailbreaks of
    the policy's forbidden requests; the planted words drawn from `seed`."""
    rng = random.Random(seed)
    return (injection_probes(policy, rng, tasks) + leakage_probes(rng)
            + jailbreak_probes(policy))
