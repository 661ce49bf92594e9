"""Arena battles: read FastChat clean-battle records from JSONL, check them, filter the votes.

A record is one vote between two anonymous answers (DESIGN.md, "Battles"):

    {"model_a": "llmos-d12", "model_b": "llmos-d6", "winner": "model_a", "anony": true,
     "judge": "user-17", "turn": 1, "tstamp": 1714000000.0,
     "conversation_a": [{"role": "user", "content": "..."}, {"role": "assistant", ...}],
     "conversation_b": [...]}

Required: model_a, model_b (different non-empty strings), winner (model_a, model_b, tie or
"tie (bothbad)") and anony (a bool). Optional fields are checked when present: judge/voter
(a string), turn (an int >= 1), tstamp (a number), conversation_a/b (lists of messages with a
string content). Filters are plain functions from a list of battles to a shorter one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from llmos.data.sources import iter_jsonl

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
REQUIRED = ("model_a", "model_b", "winner", "anony")
MAX_LISTED = 20  # lines named in an error; the rest are counted


class BattleFileError(ValueError):
    """A battle file with malformed lines; `.skips` holds every (line number, reason)."""

    def __init__(self, path, skips: list[tuple[int, str]]):
        self.skips = skips
        listed = "; ".join(f"line {n}: {why}" for n, why in skips[:MAX_LISTED])
        more = f"; and {len(skips) - MAX_LISTED} more" if len(skips) > MAX_LISTED else ""
        super().__init__(f"{path}: {len(skips)} malformed battle line(s): {listed}{more}")


class _LineSkips:
    """(line number, reason) of each malformed line, as iter_jsonl and the checks report them."""

    def __init__(self):
        self.lines: list[tuple[int, str]] = []

    def add(self, reason: str, where: str) -> None:
        self.lines.append((int(where.rpartition(":")[2]), reason))


def check_battle(rec) -> str | None:
    """Why `rec` is not a valid battle record, or None when it is."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"missing {', '.join(missing)}"
    for k in ("model_a", "model_b"):
        if not isinstance(rec[k], str) or not rec[k].strip():
            return f"{k} is not a non-empty string"
    if rec["model_a"] == rec["model_b"]:
        return f"model_a == model_b ({rec['model_a']!r})"
    if rec["winner"] not in WINNERS:
        return f"unknown winner {rec['winner']!r} (expected one of {', '.join(WINNERS)})"
    if not isinstance(rec["anony"], bool):
        return f"anony is not a bool ({rec['anony']!r})"
    for k in ("judge", "voter"):
        if k in rec and rec[k] is not None and not isinstance(rec[k], str):
            return f"{k} is not a string"
    turn = rec.get("turn")
    if turn is not None and (not isinstance(turn, int) or isinstance(turn, bool) or turn < 1):
        return f"turn is not an int >= 1 ({turn!r})"
    ts = rec.get("tstamp")
    if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool)):
        return f"tstamp is not a number ({ts!r})"
    for k in ("conversation_a", "conversation_b"):
        conv = rec.get(k)
        if conv is None:
            continue
        if not isinstance(conv, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in conv):
            return f"{k} is not a list of messages with string content"
    return None


def read_battles(path, strict: bool = True) -> tuple[list[dict], list[tuple[int, str]]]:
    """Battles from a JSONL file and the (line number, reason) of each malformed line.

    strict=True (what `llmos arena` uses) raises BattleFileError naming the bad lines when
    there are any; strict=False skips them and returns them. Blank lines are ignored.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such battles file")
    battles, skips = [], _LineSkips()
    for where, rec in iter_jsonl(Path(path), str(path), skips, bad_json="bad JSON"):
        why = check_battle(rec)
        if why:
            skips.add(why, where)
        else:
            battles.append(rec)
    if strict and skips.lines:
        raise BattleFileError(path, skips.lines)
    return battles, skips.lines


# ---- filters -------------------------------------------------------------------------------------


def anonymous_only(battles: list[dict]) -> list[dict]:
    """Votes cast before the voter saw the models' names: the only ones that count by default,
    since a named vote measures the name as much as the answer."""
    return [b for b in battles if b["anony"] is True]


def voter_of(b: dict) -> str | None:
    return b.get("voter") or b.get("judge") or None


def cap_per_voter(battles: list[dict], cap: int) -> list[dict]:
    """Keep at most `cap` votes per voter per unordered model pair (the first ones, in order),
    so one voter cannot flood a pairing. Votes without a voter/judge id are all kept."""
    seen = Counter()
    kept = []
    for b in battles:
        who = voter_of(b)
        if who is not None:
            key = (who, *sorted((b["model_a"], b["model_b"])))
            seen[key] += 1
            if seen[key] > cap:
                continue
        kept.append(b)
    return kept


def reveals_identity(b: dict) -> bool:
    """True when an answer names either model (case-insensitive): the vote was no longer blind.
    Only assistant messages are searched; battles without conversations never match."""
    names = [b["model_a"].lower(), b["model_b"].lower()]
    for k in ("conversation_a", "conversation_b"):
        for m in b.get(k) or []:
            if m.get("role", "assistant") == "assistant":
                text = (m.get("content") or "").lower()
                if any(name in text for name in names):
                    return True
    return False


def drop_identity_reveals(battles: list[dict]) -> list[dict]:
    return [b for b in battles if not reveals_identity(b)]


def filter_battles(battles: list[dict], all_votes: bool = False, voter_cap: int = 0,
                   keep_reveals: bool = False) -> tuple[list[dict], dict]:
    """The votes a leaderboard counts, and how many each filter dropped, applied in this order:
    non-anonymous (unless all_votes), identity reveals (unless keep_reveals), voter cap
    (when voter_cap > 0)."""
    dropped = {}
    kept = battles
    if not all_votes:
        kept, n = anonymous_only(kept), len(kept)
        dropped["not_anonymous"] = n - len(kept)
    if not keep_reveals:
        kept, n = drop_identity_reveals(kept), len(kept)
        dropped["reveals_identity"] = n - len(kept)
    if voter_cap > 0:
        kept, n = cap_per_voter(kept, voter_cap), len(kept)
        dropped["over_voter_cap"] = n - len(kept)
    return kept, dropped


def synthetic_battles(strengths: dict[str, float], n: int, seed: int = 0, tie_rate: float = 0.2,
                      voters: int = 100, base: float = 10, scale: float = 400) -> list[dict]:
    """n anonymous battles between uniformly drawn pairs with known true ratings: a tie with
    probability tie_rate, otherwise model_a wins with the Bradley-Terry probability
    1 / (1 + base^((r_b - r_a)/scale)). For tests, the benchmark and docs/arena.md."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = list(strengths)
    r = np.array([strengths[m] for m in names], dtype=np.float64)
    a = rng.integers(0, len(names), n)
    b = (a + rng.integers(1, len(names), n)) % len(names)  # any other model, uniformly
    p_a = 1 / (1 + base ** ((r[b] - r[a]) / scale))
    tie = rng.random(n) < tie_rate
    a_won = rng.random(n) < p_a
    judge = rng.integers(0, voters, n)
    return [{"model_a": names[a[i]], "model_b": names[b[i]],
             "winner": "tie" if tie[i] else "model_a" if a_won[i] else "model_b",
             "judge": f"voter-{judge[i]}", "turn": 1, "anony": True,
             "tstamp": 1.7e9 + 60.0 * i} for i in range(n)]
