"""llmos: a complete, hackable large-language-model system."""

import os

__version__ = "0.1.0"

# GNU OpenMP (torch's, which llama.cpp shares in this process) sleeps almost at once between
# parallel steps when it counts more of its threads than cores, and it counts a team for each
# thread that starts parallel work: the server's decoding threads, beside the idle main thread.
# Spinning a little first, as it does when not oversubscribed, made the served engine 1.26x
# faster for one client and llama.cpp behind `llmos serve` 4.9x (2 cores; docs/LOG.md,
# 2026-12-03). Read when the OpenMP library loads, so it is set before torch is imported; a
# user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "300000")
