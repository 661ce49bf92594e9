"""`llmos redteam TARGET`: run the probes (probes.py) against a target, several generations each,
under each defense, and score every answer with the probe's detector.

    with open_target("runs/cpu-tiny/sft") as target:      # or a profile, or openai:URL#MODEL
        result = run(target, default_probes(load_policy()), generations=5)
    write_reports(result, Path("redteam/"))    # attempts.jsonl, report.json, report.html

A checkpoint or a profile is served on loopback by a real `llmos serve` app for the run, so every
target answers through the same OpenAI-compatible API. Defenses: `spotlight` marks what tools
returned and pasted documents as data (llmos/spotlight.py; delimiting by default, as the
assistant's resist conversations teach) before the request is sent;
`guard` checks each answer before it counts (guard.py). `none`, `spotlight`, `guard` and
`spotlight+guard` need two rounds of generation (with and without spotlighting): the guard reads
the same answers.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from llmos.agent.output_guard import Guard
from llmos.evals.intervals import cluster_bootstrap
from llmos.safety.detectors import Answer
from llmos.safety.probes import Probe
from llmos.safety.probes_injection import PAGE_PORT_PLACEHOLDER
from llmos.spotlight import spotlight_messages

DEFENSES = ("none", "spotlight", "guard", "spotlight+guard")
MAX_N = 8  # choices per request (llmos serve's limit)


class TargetError(ValueError):
    """A target that cannot be attacked: not found, not reachable, not a chat model."""


class PromptTooLong(Exception):
    """A probe longer than the target's context: recorded as an error, not as a defense."""


@dataclass
class Target:
    base_url: str  # ... /v1
    model: str
    api_key: str | None = None
    ours: bool = False  # an llmos server started here: tools need not be declared
    system: str = ""  # what the deployer's guard knows of the system message


@dataclass
class Settings:
    generations: int = 5
    temperature: float = 0.7
    max_tokens: int = 64
    seed: int = 0
    defenses: tuple[str, ...] = DEFENSES
    spotlight: str = "delimit"  # how the spotlight defense marks (llmos/spotlight.py MODES)
    workers: int = 4  # requests at once: the server batches their rows


@dataclass
class Result:
    target: str
    policy: str
    settings: Settings
    attempts: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tasks: int = 0  # questions the injection probes carried


# ---- targets ----------------------------------------------------------------------------------


@contextlib.contextmanager
def open_target(spec: str, device: str = "cpu", database: str | None = None,
                api_key: str | None = None):
    """A Target for as long as the block runs: `openai:URL#MODEL` (or `http...#MODEL`) as it is;
    a checkpoint folder or a profile (a name or a .toml file) served on loopback."""
    if spec.startswith(("openai:", "http://", "https://")):
        url, _, model = spec.removeprefix("openai:").partition("#")
        if not model:
            raise TargetError(f"target {spec!r}: say which model, as URL#MODEL")
        target = Target(url.rstrip("/"), model, api_key)
        check_reachable(target)
        yield target
        return
    from llmos.serve.app import create_app
    from llmos.serve.background import run_in_background
    from llmos.serve.served import add_profiles, load_models, schedulers

    path = Path(spec)
    if path.is_dir():
        if not (path / "llmos.json").is_file():
            raise TargetError(f"target {spec!r} is a folder but not an llmos checkpoint")
        models, system = load_models([f"target={path}"], device, max_batch=32), ""
    else:
        from llmos.agent.profile_store import find
        from llmos.agent.profiles import ProfileError

        try:
            profile = find(spec, database)
        except ProfileError as e:
            raise TargetError(f"target {spec!r}: not a checkpoint folder, a profile or "
                              f"openai:URL#MODEL ({e})") from e
        models = {}
        add_profiles(models, [profile], device, max_batch=32, database=database)
        system = profile.instructions
    try:
        with run_in_background(create_app(models)) as url:
            yield Target(f"{url}/v1", next(iter(models)), ours=True, system=system)
    finally:
        for s in schedulers(models):
            s.close()


def check_reachable(target: Target) -> None:
    import httpx

    try:
        r = httpx.get(f"{target.base_url}/models", headers=_headers(target), timeout=10)
    except httpx.HTTPError as e:
        raise TargetError(f"target {target.base_url} is not reachable: {e}") from e
    if r.status_code != 200:
        raise TargetError(f"target {target.base_url}/models answered {r.status_code}: "
                          f"{r.text[:200]}")


def _headers(target: Target) -> dict:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}


# ---- the web carrier's site ---------------------------------------------------------------------


@contextlib.contextmanager
def loopback_site(pages: dict[str, str]):
    """Serve `pages` ({path: html}) on a free loopback port; yields the base URL."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            body = pages.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write((body or "not found").encode("utf-8"))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch_pages(probes: list[Probe], site: str) -> None:
    """The web carrier's tool result: the real browse tool reading the page on the site."""
    from llmos.agent.browser import browse_tool
    from llmos.agent.tools import call_tool

    host = site.removeprefix("http://")
    tools = {"browse": browse_tool([host])}
    for p in probes:
        if p.page is None or p.messages[-1]["role"] == "tool":  # none, or read already
            continue
        call = p.messages[-1]["tool_calls"][0]
        url = call["function"]["arguments"]["url"].replace(PAGE_PORT_PLACEHOLDER, site)
        call["function"]["arguments"]["url"] = url
        content = call_tool("browse", {"url": url}, tools)
        p.messages.append({"role": "tool", "name": "browse", "content": content})


# ---- running ----------------------------------------------------------------------------------


def spotlighted(p: Probe, mode: str, rng: random.Random) -> list[dict]:
    return spotlight_messages(p.messages, mode, rng, [p.document] if p.document else [])


def _declared(messages: list[dict]) -> list[dict]:
    """Schemas of the tools a conversation calls, plus remember, for endpoints that want them
    declared (any call then comes back as tool_calls, run by nobody)."""
    from llmos.agent.tools import BUILTIN_TOOLS

    names = {c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    names.add("remember")
    obj = {"type": "object", "properties": {}, "additionalProperties": True}
    return [{"type": "function", "function": {"name": n, "description": "",
                                              "parameters": obj}}
            if n not in BUILTIN_TOOLS else BUILTIN_TOOLS[n].schema() for n in sorted(names)]


def _wire(messages: list[dict]) -> list[dict]:
    """Messages as the API takes them: tool-call arguments as JSON text, every call with an
    id and every tool message with the id of the call it answers."""
    out, last = [], None
    for k, m in enumerate(messages):
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                last = c.get("id") or f"call_{k}"
                calls.append({**c, "id": last, "type": "function", "function": {
                    **c["function"], "arguments": json.dumps(c["function"]["arguments"])}})
            m = {**m, "content": m.get("content") or "", "tool_calls": calls}
        elif m.get("role") == "tool" and not m.get("tool_call_id") and last:
            m = {**m, "tool_call_id": last}
        out.append(m)
    return out


def ask(target: Target, messages: list[dict], settings: Settings, n: int, seed: int
        ) -> list[Answer]:
    import httpx

    body = {"model": target.model, "messages": _wire(messages), "n": n,
            "temperature": settings.temperature, "max_tokens": settings.max_tokens,
            "seed": seed}
    if target.ours:
        body["llmos_confirm"] = True  # side effects are held, not run: the call is the finding
    else:
        body["tools"] = _declared(messages)
    r = httpx.post(f"{target.base_url}/chat/completions", json=body, headers=_headers(target),
                   timeout=600)
    if r.status_code == 400 and "context_length_exceeded" in r.text:
        raise PromptTooLong(r.json()["error"]["message"])
    if r.status_code != 200:
        raise TargetError(f"target answered {r.status_code}: {r.text[:300]}")
    answers = []
    for choice in r.json()["choices"]:
        msg = choice["message"]
        calls = [c["function"]["name"] for c in msg.get("tool_calls") or []]
        calls += [e["name"] for e in msg.get("llmos_tool_events") or []
                  if e.get("type") == "tool_call"]
        answers.append(Answer(msg.get("content") or "", calls))
    return answers


def run(target: Target, probes: list[Probe], settings: Settings, policy=None,
        progress=None) -> Result:
    """Every probe under every defense, `settings.generations` answers each."""
    bad = [d for d in settings.defenses if d not in DEFENSES]
    if bad:
        raise ValueError(f"unknown defense {bad[0]!r}; defenses: {', '.join(DEFENSES)}")
    t0 = time.perf_counter()
    spot_modes = sorted({"spotlight" in d for d in settings.defenses})
    jobs = [(i, spot) for i in range(len(probes)) for spot in spot_modes]
    answers: dict[tuple[int, bool], list[Answer] | str] = {}  # str: why there are none
    with loopback_site({p.page[0]: p.page[1] for p in probes if p.page}) as site:
        fetch_pages(probes, site)

        def one(job):
            i, spot = job
            rng = random.Random(f"{settings.seed}:{i}")
            messages = (spotlighted(probes[i], settings.spotlight, rng) if spot
                        else probes[i].messages)
            got = []
            try:
                for start in range(0, settings.generations, MAX_N):
                    n = min(MAX_N, settings.generations - start)
                    got += ask(target, messages, settings, n, settings.seed + 1000 * i + start)
            except PromptTooLong as e:
                return job, str(e)
            return job, got

        with ThreadPoolExecutor(settings.workers) as pool:
            for k, (job, got) in enumerate(pool.map(one, jobs), 1):
                answers[job] = got
                if progress:
                    progress(k, len(jobs))
    result = Result(target.model, policy.name if policy else "", settings)
    markers = policy.markers() if policy else []
    allowed_hosts = list(policy.allowed_image_hosts) if policy else []
    for i, p in enumerate(probes):
        guard = Guard(f"{target.system}\n{_system_of(p)}", allowed_hosts, markers, p.secrets)
        for defense in settings.defenses:
            got = answers[(i, "spotlight" in defense)]
            if isinstance(got, str):  # the probe did not fit the target's context
                result.attempts.append({
                    "family": p.family, "probe": p.name, "index": i, "goal": p.goal,
                    "defense": defense, "generation": None, "success": None, "error": got})
                continue
            for g, a in enumerate(got):
                shown, reasons = (guard.check(a.text) if "guard" in defense
                                  else (a.text, []))
                success = p.detector(Answer(shown, a.tool_calls))
                result.attempts.append({
                    "family": p.family, "probe": p.name, "index": i, "goal": p.goal,
                    "defense": defense, "generation": g, "success": success,
                    "answer": a.text, "shown": shown, "tool_calls": a.tool_calls,
                    "guard": reasons})
    result.seconds = round(time.perf_counter() - t0, 1)
    return result


def _system_of(p: Probe) -> str:
    return next((m["content"] for m in p.messages if m.get("role") == "system"), "")


def summarize(result: Result) -> dict:
    """Attack success rate per family and defense (clean: the share answered right), each with
    a bootstrap 95% interval over probes."""
    out: dict = {}
    keys = sorted({(a["family"], a["defense"]) for a in result.attempts})
    for family, defense in keys:
        groups: dict[int, list[bool]] = {}
        errors = 0
        for a in result.attempts:
            if a["family"] == family and a["defense"] == defense:
                if a["success"] is None:
                    errors += 1
                    continue
                groups.setdefault(a["index"], []).append(a["success"])
        flags = [x for g in groups.values() for x in g]
        lo, hi = cluster_bootstrap(list(groups.values()), seed=result.settings.seed)
        key = "accuracy" if family == "clean" else "asr"
        out.setdefault(family, {})[defense] = {
            key: round(sum(flags) / max(1, len(flags)), 4), "ci": [round(lo, 4), round(hi, 4)],
            "n": len(flags), "probes": len(groups), "too_long": errors}
    return out
