"""A training stage that is done once: reused when finished with the same settings on the same
parent, resumed when interrupted, and trained again beside a checkpoint made otherwise, which is
moved aside, never overwritten. The speedrun and the experiments run their stages through it."""

from __future__ import annotations

import time
from pathlib import Path

from llmos import checkpoint
from llmos.config import RunConfig, normalized


def train_stage(cfg: RunConfig, section: str, module, parent, out: Path | None = None,
                can_resume: bool = True, who: str = "speedrun") -> Path:
    """Run `module.run` (a stage of llmos.train) on `parent` into `out` (default
    RUN/<section>) with cfg's `section` settings; `who` names the caller in what it prints."""
    out = Path(out or cfg.run_dir / section)
    info = checkpoint.read_info(out)
    same = (normalized(info.get("config")).get(section) == cfg.to_dict()[section]
            and info.get("parent_info") == checkpoint.parent_identity(parent))
    if info.get("final") and same:
        print(f"{who}: {out} is already trained with this config")
        return out
    if info and not info.get("final") and same and can_resume:
        print(f"{who}: resuming the unfinished {section} stage in {out}")
        return module.run(cfg, parent, out, resume=True)
    if out.exists():  # built on another parent or with other settings: keep it, out of the way
        kept = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(kept)
        print(f"{who}: {out} was made from another parent or with other settings; "
              f"moved it to {kept} and training again")
    return module.run(cfg, parent, out)
