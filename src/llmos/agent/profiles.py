"""Custom GPTs: a profile is a name, instructions, knowledge bases, the tools it may use, a base
model, its sampling and System-2 settings, written as TOML:

    name = "stdlib-helper"
    description = "Answers questions about the Python standard library from its source."
    model = "runs/cpu-tiny/sft"
    database = "runs/cpu-tiny/llmos.db"       # where its knowledge bases are
    instructions = "Look things up with search_knowledge and cite the passage."
    knowledge = ["stdlib"]
    tools = ["search_knowledge", "calculator", "python"]
    peers = []          # whom ask_model may ask: ["helper=openai:http://127.0.0.1:8001/v1#sft"]

    [search]            # what search_knowledge returns: passages and their size in characters
    passages = 1
    chars = 240

    [sampling]
    temperature = 0.0
    max_tokens = 256

    [think]             # optional: answer with a System-2 strategy (docs/system2.md), no tools
    strategy = "vote"   # greedy, vote, best-of, search
    n = 8               # samples (search: rows per step)
    answer_kind = "number"

Tools: calculator, python, search_knowledge (reads `knowledge`), browse (fetches only from
`[browse] hosts = ["docs.python.org", ...]`), ask_model (asks `peers`), remember and recall
(the user's memories, agent/memory.py).

`llmos chat --profile NAME|FILE` talks to it; `llmos serve --profile NAME|FILE` serves it as a
model of its own name. A NAME is one of the profiles shipped in llmos/profiles/.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from llmos.agent.tools import BUILTIN_TOOLS, Tool, ToolError

SHIPPED = Path(__file__).resolve().parent.parent / "profiles"
KNOWLEDGE_TOOL = "search_knowledge"
BROWSE_TOOL = "browse"
ASK_TOOL = "ask_model"
MEMORY_TOOLS = ("remember", "recall")  # bound to a user per conversation: memory_tools()
# What each tool touches (Tool.capability): a profile grants a tool, and with it that.
CAPABILITIES = {"calculator": "compute", "python": "compute", KNOWLEDGE_TOOL: "read-knowledge",
                BROWSE_TOOL: "network", ASK_TOOL: "call-model", "remember": "write-memory",
                "recall": "read-memory"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(\.{_LABEL})*(:\d{{1,5}})?$")  # a host name or IPv4, a port
_KEYS = {"name", "description", "model", "database", "instructions", "knowledge", "tools",
         "search", "sampling", "browse", "peers", "think"}
THINK_STRATEGIES = ("greedy", "vote", "best-of", "search")
ANSWER_KINDS = ("number", "choice", "code", "text")
_SAMPLING = {"temperature", "top_p", "max_tokens"}


class ProfileError(ValueError):
    """A profile that cannot be used, with what is wrong and where."""


@dataclass
class Profile:
    name: str
    model: str
    instructions: str = ""
    description: str = ""
    database: str = "llmos.db"
    knowledge: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=lambda: ["calculator", "python"])
    passages: int = 3
    passage_chars: int = 1500
    sampling: dict = field(default_factory=dict)
    think: dict = field(default_factory=dict)  # {"strategy", "n", "answer_kind"}, or none
    hosts: list[str] = field(default_factory=list)  # what browse may fetch from
    peers: list[str] = field(default_factory=list)  # whom ask_model may ask (agent/peers.py)
    path: str = ""  # the file it came from, for messages

    def to_dict(self) -> dict:
        """The fields of its TOML file (what `parse` reads back), defaults left out."""
        full = self._fields()
        default = Profile(name=self.name, model=self.model)._fields()
        return {k: v for k, v in full.items() if k in ("name", "model", "tools") or v != default[k]}

    def _fields(self) -> dict:
        return {"name": self.name, "description": self.description, "model": self.model,
                "database": self.database, "instructions": self.instructions,
                "knowledge": self.knowledge, "tools": self.tools, "peers": self.peers,
                "search": {"passages": self.passages, "chars": self.passage_chars},
                "sampling": self.sampling, "think": self.think,
                "browse": {"hosts": self.hosts} if self.hosts else {}}

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def messages(self, messages: list[dict]) -> list[dict]:
        """The conversation as the model sees it: the profile's instructions first, before
        (and joined with) any system message of the caller's."""
        if not self.instructions:
            return list(messages)
        if messages and messages[0].get("role") == "system":
            first = dict(messages[0])
            first["content"] = f"{self.instructions}\n\n{first.get('content') or ''}".strip()
            return [first, *messages[1:]]
        return [{"role": "system", "content": self.instructions}, *messages]

    def _refusal(self, name: str) -> Tool:
        capability = CAPABILITIES[name]

        def refuse(_args: dict) -> str:
            raise ToolError(f"{name} ({capability}) is not allowed: profile {self.name!r} grants "
                            f"only {', '.join(self.tools) or 'no tools'}")

        return Tool(name, f"(not granted: {capability})", {"type": "object"}, refuse,
                    capability)

    @property
    def uses_memory(self) -> bool:
        return any(t in self.tools for t in MEMORY_TOOLS)

    def memory_store(self, database: str | None = None):
        from llmos.agent.memory import MemoryStore

        return MemoryStore.open(database or self.database)

    def with_user(self, tools: dict[str, Tool], messages: list[dict], store, user: str
                  ) -> tuple[dict[str, Tool], list[dict]]:
        """The tools and messages of one user's conversation: the memory tools this profile
        grants, bound to the user, and (when it grants recall) the user's memories in the
        system message."""
        from llmos.agent.memory import memory_tools, with_memories

        if not self.uses_memory:
            return tools, messages
        granted = {k: v for k, v in memory_tools(store, user).items() if k in self.tools}
        if "recall" in self.tools:
            messages = with_memories(messages, store.list(user))
        return {**tools, **granted}, messages

    def build_tools(self, database: str | None = None) -> dict[str, Tool]:
        """The tools this profile may use, ready to run: built-ins by name and search_knowledge
        over its knowledge bases (opened in `database`, else the profile's own). Every other
        tool is there too, as a refusal the model and the user read."""
        tools = {name: self._refusal(name) for name in CAPABILITIES if name not in self.tools}
        for name in self.tools:
            if name == KNOWLEDGE_TOOL:
                from llmos.agent.knowledge import KnowledgeBase, KnowledgeError
                from llmos.agent.knowledge_tool import knowledge_tool
                from llmos.db import DatabaseMissing, open_database

                db = database or self.database
                try:
                    open_database(db, must_exist=True)
                    bases = [KnowledgeBase.open(db, b) for b in self.knowledge]
                except DatabaseMissing as e:
                    raise ProfileError(f"profile {self.name!r}: {e}, where its knowledge bases "
                                       f"({', '.join(self.knowledge)}) should be") from e
                except KnowledgeError as e:
                    raise ProfileError(f"profile {self.name!r}: {e} (database {db})") from e
                tools[name] = knowledge_tool(bases, self.passages, self.passage_chars)
            elif name in MEMORY_TOOLS:
                continue  # per user: memory_tools
            elif name == BROWSE_TOOL:
                from llmos.agent.browser import browse_tool

                tools[name] = browse_tool(self.hosts)
            elif name == ASK_TOOL:
                from llmos.agent.ask_model import ask_model_tool
                from llmos.agent.peers import parse_peers

                try:
                    peers = parse_peers(self.peers)
                except ValueError as e:
                    raise ProfileError(f"profile {self.name!r}: {e}") from e
                for peer in peers:  # a checkpoint asked runs only the tools granted here
                    if hasattr(peer, "tools"):
                        peer.tools = {k: t for k, t in BUILTIN_TOOLS.items() if k in self.tools}
                tools[name] = ask_model_tool(peers)
            else:
                tools[name] = BUILTIN_TOOLS[name]
        return tools


def available_tools() -> list[str]:
    return [*BUILTIN_TOOLS, KNOWLEDGE_TOOL, BROWSE_TOOL, ASK_TOOL, *MEMORY_TOOLS]


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def resolve(spec: str) -> Path:
    """A file path, or the name of a shipped profile."""
    path = Path(spec).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ProfileError(f"profile file {spec!r} not found")
        return path
    if (SHIPPED / f"{spec}.toml").is_file():
        return SHIPPED / f"{spec}.toml"
    raise ProfileError(f"no profile {spec!r}: give a .toml file or one of: "
                       f"{', '.join(shipped()) or 'none'}")


def parse(data: dict, where: str = "profile") -> Profile:
    """A Profile from parsed TOML (or the same dict from JSON), checked field by field."""
    unknown = set(data) - _KEYS
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                           f"fields: {', '.join(sorted(_KEYS))}")
    for key in ("name", "model"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ProfileError(f"{where}: {key!r} is required (a string)")
    name = data["name"].strip()
    if not _NAME.match(name):
        raise ProfileError(f"{where}: bad name {name!r}: letters, digits, '.', '_', '-'")
    for key in ("instructions", "description", "database"):
        if key in data and not isinstance(data[key], str):
            raise ProfileError(f"{where}: {key!r} must be a string")
    lists = {}
    for key in ("knowledge", "tools"):
        value = data.get(key, [] if key == "knowledge" else ["calculator", "python"])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{where}: {key!r} must be a list of names")
        lists[key] = list(dict.fromkeys(value))
    bad = [t for t in lists["tools"] if t not in available_tools()]
    if bad:
        raise ProfileError(f"{where}: unknown tool(s) {', '.join(bad)}; available: "
                           f"{', '.join(available_tools())}")
    if lists["knowledge"] and KNOWLEDGE_TOOL not in lists["tools"]:
        raise ProfileError(f"{where}: knowledge bases are read with the {KNOWLEDGE_TOOL} tool: "
                           "add it to tools")
    if KNOWLEDGE_TOOL in lists["tools"] and not lists["knowledge"]:
        raise ProfileError(f"{where}: {KNOWLEDGE_TOOL} needs knowledge bases to search "
                           "(knowledge = [\"NAME\", ...])")
    browse = data.get("browse", {})
    hosts = browse.get("hosts", []) if isinstance(browse, dict) else None
    if (hosts is None or set(browse) - {"hosts"} or not isinstance(hosts, list)
            or not all(isinstance(h, str) and h.strip() for h in hosts)):
        raise ProfileError(f"{where}: [browse] takes hosts, a list of host names")
    bad_hosts = [h for h in hosts if not _HOST.match(h.strip())]
    if bad_hosts:
        raise ProfileError(f"{where}: [browse] hosts are names like docs.python.org or "
                           f"127.0.0.1:8123 (a name allows every port), not {bad_hosts[0]!r}")
    if (BROWSE_TOOL in lists["tools"]) != bool(hosts):
        raise ProfileError(f"{where}: the browse tool and [browse] hosts go together: list the "
                           "hosts it may fetch from, and browse in tools")
    peers = data.get("peers", [])
    if not isinstance(peers, list) or not all(isinstance(x, str) and x for x in peers):
        raise ProfileError(f"{where}: peers must be a list of model specs ([NAME=]DIR or "
                           "NAME=openai:URL#MODEL)")
    if (ASK_TOOL in lists["tools"]) != bool(peers):
        raise ProfileError(f"{where}: the ask_model tool and peers go together: list the models "
                           "it may ask, and ask_model in tools")
    search = data.get("search", {})
    sampling = data.get("sampling", {})
    if not isinstance(search, dict) or set(search) - {"passages", "chars"}:
        raise ProfileError(f"{where}: [search] takes passages and chars")
    if not isinstance(sampling, dict) or set(sampling) - _SAMPLING:
        raise ProfileError(f"{where}: [sampling] takes {', '.join(sorted(_SAMPLING))}")
    passages, chars = search.get("passages", 3), search.get("chars", 1500)
    if not (isinstance(passages, int) and 1 <= passages <= 20
            and isinstance(chars, int) and 80 <= chars <= 20000):
        raise ProfileError(f"{where}: [search] passages must be 1-20 and chars 80-20000")
    think = data.get("think", {})
    if not isinstance(think, dict) or set(think) - {"strategy", "n", "answer_kind"}:
        raise ProfileError(f"{where}: [think] takes strategy, n and answer_kind")
    if think and think.get("strategy") not in THINK_STRATEGIES:
        raise ProfileError(f"{where}: [think] strategy must be one of "
                           f"{', '.join(THINK_STRATEGIES)}")
    n = think.get("n", 8)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
        raise ProfileError(f"{where}: [think] n must be 1-64")
    if think.get("answer_kind", "number") not in ANSWER_KINDS:
        raise ProfileError(f"{where}: [think] answer_kind must be one of "
                           f"{', '.join(ANSWER_KINDS)}")
    for key, value in sampling.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ProfileError(f"{where}: [sampling] {key} must be a number >= 0")
    return Profile(name=name, model=data["model"], instructions=data.get("instructions", ""),
                   description=data.get("description", ""),
                   database=data.get("database", "llmos.db"), knowledge=lists["knowledge"],
                   tools=lists["tools"], passages=passages, passage_chars=chars,
                   sampling=dict(sampling), think=dict(think), hosts=list(hosts),
                   peers=list(peers),
                   path=where)


def from_toml(text: str, where: str = "profile") -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{where}: not valid TOML: {e}") from e
    return parse(data, where)


def load(spec: str) -> Profile:
    """A profile by file path or shipped name (profile_store.find also looks in a database)."""
    path = resolve(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"profile {path}: cannot be read: {e}") from e
    return from_toml(text, str(path))
