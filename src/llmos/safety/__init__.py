"""LLM security (docs/security.md): attack your own models and assistants, defend them, and
measure both. `redteam.py` runs probe families (`probes_*.py`) against a target and scores each
answer with deterministic detectors (`detectors.py`); spotlighting (`llmos/spotlight.py`) and
the output guard (`guard.py`) are the defenses it measures."""
