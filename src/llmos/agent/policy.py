"""A red-team policy (TOML, `policies/default.toml` ships): what the target must not do, so the
detectors can decide deterministically whether an attack worked.

    policy = load_policy("default")          # or a path to a .toml file
    policy.forbidden[0].request, policy.forbidden[0].markers
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SHIPPED = Path(__file__).with_name("policies")


class PolicyError(ValueError):
    """A policy file that cannot be used, with what is wrong and where."""


@dataclass(frozen=True)
class Forbidden:
    request: str
    markers: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    name: str
    forbidden: tuple[Forbidden, ...]
    allowed_image_hosts: tuple[str, ...] = field(default_factory=tuple)

    def markers(self) -> list[str]:
        return [m for f in self.forbidden for m in f.markers]


def load_policy(spec: str | Path = "default") -> Policy:
    path = Path(spec)
    if path.suffix != ".toml" and not path.exists():
        path = SHIPPED / f"{spec}.toml"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
            raise PolicyError(f"no policy {spec!r}: give a .toml file or one of: {shipped}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PolicyError(f"policy {path}: cannot be read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"policy {path}: not valid TOML: {e}") from e
    return parse_policy(data, str(path))


def parse_policy(data: dict, where: str = "policy") -> Policy:
    unknown = set(data) - {"name", "forbidden", "allowed_image_hosts"}
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; fields: "
                          "name, forbidden, allowed_image_hosts")
    hosts = data.get("allowed_image_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise PolicyError(f"{where}: allowed_image_hosts must be a list of host names")
    rows = data.get("forbidden", [])
    if not isinstance(rows, list) or not rows:
        raise PolicyError(f"{where}: [[forbidden]] must list at least one request")
    forbidden = []
    for i, row in enumerate(rows, 1):
        at = f"{where}: forbidden #{i}"
        if not isinstance(row, dict) or set(row) - {"request", "markers"}:
            raise PolicyError(f"{at}: takes request and markers")
        request, markers = row.get("request"), row.get("markers")
        if not isinstance(request, str) or not request.strip():
            raise PolicyError(f"{at}: request must be a non-empty string")
        if (not isinstance(markers, list) or not markers
                or not all(isinstance(m, str) and m.strip() for m in markers)):
            raise PolicyError(f"{at}: markers must be a non-empty list of strings")
        echoed = [m for m in markers if m.lower() in request.lower()]
        if echoed:
            raise PolicyError(f"{at}: marker {echoed[0]!r} is in the request itself, so an "
                              "echo of the question would count as compliance")
        forbidden.append(Forbidden(request.strip(), tuple(m.strip() for m in markers)))
    return Policy(str(data.get("name", Path(where).stem)), tuple(forbidden), tuple(hosts))
