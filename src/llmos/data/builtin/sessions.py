"""``session`` conversations: two or three of the set's questions asked one after another in one
conversation, each answered in turn, the last one with a number (a calculator sum, a sum done in
the head, a Python result). Finetuning on single questions alone taught the model to copy its
previous answer when a chat went on ("Work out 87 - 7 mentally." -> "320 - 353 = -33."); these
teach it to answer the newest question. Parts are drawn from one side of the held-out split, so
a held-out session holds held-out questions only.
"""

from __future__ import annotations

import random
import re

from llmos.data.builtin.turns import SEED, is_heldout
from llmos.data.records import Conversation

NUMBER = re.compile(r"-?\d+(\.\d+)?")
SESSIONS = 1500
EARLIER = ("arithmetic", "mental", "mental2", "python", "docstring", "signature")
LAST = ("arithmetic", "mental", "mental2", "python")  # a number to check


def session_items(items: list[Conversation], n: int = SESSIONS) -> list[Conversation]:
    rng = random.Random(f"{SEED}:sessions")
    pools = {}
    for heldout in (False, True):
        side = [c for c in items if is_heldout(c.subject) == heldout and c.answer
                and c.messages[0]["role"] == "user"]
        pools[heldout] = ([c for c in side if c.task in EARLIER],
                          [c for c in side if c.task in LAST and NUMBER.fullmatch(c.answer)])
    out = []
    for i in range(n):
        earlier, last = pools[i % 10 == 0]  # about a tenth held out, as everywhere else
        if not earlier or not last:
            continue
        parts = rng.sample(earlier, rng.choice((1, 2))) + [rng.choice(last)]
        messages = [m for p in parts for m in p.messages]
        out.append(Conversation(messages=messages, source="builtin:assistant", task="session",
                                subject=parts[-1].subject, answer=parts[-1].answer))
    return out
