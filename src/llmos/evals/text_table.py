"""Plain-text tables for the terminal: columns padded to their widest cell, a rule under the
header, the first `left` columns flush left and the numbers flush right."""

from __future__ import annotations


def aligned(rows: list, left: int = 1) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
