"""A model behind a name: whoever answers a conversation, behind one small interface. The
arena's contestants, a model the agent asks for help, a red-team target are all peers.

    p = parse_peer("sft=runs/cpu-tiny/sft")                            # an llmos checkpoint
    p = parse_peer("gpt=openai:https://api.openai.com/v1#gpt-4o-mini")  # any OpenAI API
    for piece in p.stream([{"role": "user", "content": "Hi"}], max_tokens=128, temperature=0):
        print(piece, end="")

A spec is `[NAME=]DIR` for a checkpoint (named after its folder unless NAME is given) or
`NAME=openai:BASE_URL#MODEL[;key=ENV]` for a model behind an OpenAI-compatible endpoint (the
API key comes from the environment variable ENV, else OPENAI_API_KEY, else none). A checkpoint
answers through the agent loop, so its built-in tools (calculator, python) run as in `llmos
chat`; what streams out is the visible answer text, tool-call markup and think blocks hidden.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmos import checkpoint
from llmos import tokenizer as tk
from llmos.agent.loop import TokenStream, engine_stream, respond
from llmos.chat_format import TurnText
from llmos.infer.engine import Engine, SamplingParams

OPENAI_PREFIX = "openai:"


def visible_text(generate: TokenStream, tok, messages: list[dict], params: SamplingParams,
                 tools: dict | None = None) -> Iterator[str]:
    """The answer's content as it streams: what `llmos serve` sends as `content` deltas (tool
    markup and think blocks hidden; after a built-in tool's result the answer goes on after a
    blank line)."""
    turn, said, said_this_turn = TurnText(), False, False
    events = respond(generate, tok, messages, params, tools=tools)
    try:
        for ev in events:
            if ev.kind == "text":
                pieces = turn.push(ev.text)
            elif ev.kind == "turn":
                pieces, turn = turn.finish(), TurnText()
            else:
                continue
            for key, text in pieces:
                if key != "content":
                    continue
                if said and not said_this_turn:
                    text = "\n\n" + text
                said = said_this_turn = True
                yield text
            if ev.kind == "turn":
                said_this_turn = False
    finally:
        events.close()


@dataclass
class CheckpointPeer:
    """An llmos checkpoint answering with its own engine (one conversation at a time)."""

    name: str
    path: Path
    device: str = "cpu"
    tools: dict | None = None  # None: the built-in tools; {} for none
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _loaded: tuple | None = field(default=None, repr=False)

    def load(self) -> tuple:
        if self._loaded is None:
            model = checkpoint.load_model(self.path, self.device)
            self._loaded = (engine_stream(Engine(model)), tk.load(Path(self.path)),
                            model.cfg.max_seq_len)
        return self._loaded

    def stream(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.7,
               seed: int | None = None) -> Iterator[str]:
        with self._lock:  # the Engine holds one KV cache: answers take turns
            generate, tok, context = self.load()
            params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature,
                                    top_p=1.0, seed=seed)
            yield from visible_text(fit_context(generate, context), tok, messages, params,
                                    self.tools)


def fit_context(generate: TokenStream, context: int) -> TokenStream:
    """A token stream that refuses a prompt longer than the model's context with a clear
    error instead of failing inside the model."""

    def bounded(prompt: list[int], params: SamplingParams) -> Iterator[int]:
        if len(prompt) >= context:
            raise ValueError(f"the prompt is {len(prompt)} tokens; the model's context is "
                             f"{context}")
        yield from generate(prompt, params)

    return bounded


@dataclass
class OpenAIPeer:
    """A model behind an OpenAI-compatible /v1/chat/completions (streamed)."""

    name: str
    base_url: str
    model: str
    key_env: str | None = None
    timeout: float = 120.0
    _client: object = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            from openai import OpenAI

            env = self.key_env or "OPENAI_API_KEY"
            key = os.environ.get(env)
            if self.key_env and not key:
                raise ValueError(f"model {self.name!r}: the environment variable {env} "
                                 "(its API key) is not set")
            # the client insists on a key; a server without --api-key ignores it
            self._client = OpenAI(base_url=self.base_url, api_key=key or "none",
                                  timeout=self.timeout, max_retries=1)
        return self._client

    def stream(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.7,
               seed: int | None = None) -> Iterator[str]:
        extra = {} if seed is None else {"seed": seed}
        chunks = self.client().chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens,
            temperature=temperature, stream=True, **extra)
        try:
            for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        yield choice.delta.content
        finally:
            chunks.close()


@dataclass
class StreamPeer:
    """Any function (messages, max_tokens, temperature, seed) -> text pieces, under a name
    (the server wraps its own batched models this way)."""

    name: str
    fn: Callable[..., Iterator[str]]

    def stream(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.7,
               seed: int | None = None) -> Iterator[str]:
        return self.fn(messages, max_tokens, temperature, seed)


Peer = CheckpointPeer | OpenAIPeer | StreamPeer


def parse_openai(target: str) -> tuple[str, str, str | None]:
    """`BASE_URL#MODEL[;key=ENV]` -> (base_url, model, key_env)."""
    target, _, key = target.partition(";key=")
    url, hash_, model = target.rpartition("#")
    if not hash_ or not url or not model:
        raise ValueError(f"{OPENAI_PREFIX}{target!r}: expected openai:BASE_URL#MODEL[;key=ENV], "
                         "e.g. openai:http://127.0.0.1:8000/v1#sft")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url, model, key or None


def parse_peer(spec: str, device: str = "cpu", noun: str = "model") -> Peer:
    """`[NAME=]DIR` -> a checkpoint; `NAME=openai:URL#MODEL[;key=ENV]` -> an endpoint."""
    name, eq, target = spec.partition("=")
    if not eq or Path(spec).exists() or OPENAI_PREFIX in name:
        name, target = "", spec
    if target.startswith(OPENAI_PREFIX):
        url, model, key_env = parse_openai(target.removeprefix(OPENAI_PREFIX))
        return OpenAIPeer(name or model, url, model, key_env)
    path = Path(target)
    if not (path / "config.json").exists():
        raise ValueError(f"{noun} {spec!r}: {path} is not a checkpoint folder (no "
                         "config.json); an endpoint is NAME=openai:URL#MODEL")
    return CheckpointPeer(name or path.resolve().name, path, device)


def parse_peers(specs: list[str], device: str = "cpu", noun: str = "model") -> list[Peer]:
    """Several specs; `noun` names them in errors ("contestant" in the arena)."""
    out = [parse_peer(s, device, noun) for s in specs]
    names = [c.name for c in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two {noun}s are named {', '.join(twice)}; name them NAME=SPEC")
    return out


def answer(peer: Peer, messages: list[dict], max_tokens: int = 256,
           temperature: float = 0.0, seed: int | None = None) -> str:
    """The whole answer as one string."""
    return "".join(peer.stream(messages, max_tokens, temperature, seed)).strip()


__all__ = ["CheckpointPeer", "Peer", "OpenAIPeer", "StreamPeer",
           "answer", "parse_peer", "parse_peers", "visible_text"]
