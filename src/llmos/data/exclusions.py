"""Documents a user chose to leave out of a corpus: the flagged list of a scan report
(`llmos data scan ... --out REPORT.json`) or a plain list of document sources, one per line (as
`Document.source` names them: `builtin:stdlib:json/decoder.py`, `notes/a.txt`, `f.jsonl:12`)."""

from __future__ import annotations

import json
from pathlib import Path


def read_exclusions(path: str | Path) -> set[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exclude list {p} not found (a scan report .json or a text file "
                                "of document sources)")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            report = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"exclude list {p}: not valid JSON ({e})") from None
        flagged = report.get("flagged") if isinstance(report, dict) else None
        if not isinstance(flagged, list) or not all(
                isinstance(f, dict) and isinstance(f.get("source"), str) for f in flagged):
            raise ValueError(f"exclude list {p}: a scan report needs a 'flagged' list of "
                             "{'source': ...} entries")
        return {f["source"] for f in flagged}
    return {line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")}
