"""The chat format: ChatML turns, Hermes-style tool calls, think blocks.

    <|im_start|>system
    You are a helpful assistant.

    # Tools
    ...
    <tools>
    {"type": "function", "function": {"name": "calculator", ...}}
    </tools>
    ...<|im_end|>
    <|im_start|>user
    What is 347 * 29?<|im_end|>
    <|im_start|>assistant
    <tool_call>
    {"name": "calculator", "arguments": {"expression": "347 * 29"}}
    </tool_call><|im_end|>
    <|im_start|>tool
    <tool_response>
    10063
    </tool_response><|im_end|>
    <|im_start|>assistant
    347 * 29 = 10063.<|im_end|>

`render` (Python) and `CHAT_TEMPLATE` (Jinja, saved in tokenizer_config.json for transformers,
vLLM, llama.cpp...) write the same text; tokenizing that whole text at once gives the tokens,
and the character spans of assistant turns give the loss mask. Tokenizing the whole string
rather than turn by turn keeps our tokens identical to `apply_chat_template(tokenize=True)`.

A model imported from Hugging Face (`llmos import hf`) keeps its own template: `template_for`
finds it and `render` then runs it through Jinja the way transformers does, and the loss mask
comes from rendering the conversation prefix by prefix.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
THINK, THINK_END = "<think>", "</think>"

TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more of these functions. Their signatures are in "
    "<tools></tools>:\n<tools>\n"
)
TOOLS_USAGE = (
    "</tools>\n\nTo call a function, reply with a JSON object inside <tool_call></tool_call>:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

# One line of Jinja per construct; every newline is a quoted literal, so the template renders
# the same under any whitespace settings (transformers uses trim_blocks and lstrip_blocks).
CHAT_TEMPLATE = "".join([
    "{%- set first_system = messages and messages[0]['role'] == 'system' -%}",
    "{%- if tools -%}",
    "{{ '<|im_start|>system\\n' }}",
    "{%- if first_system -%}{{ messages[0]['content'] + '\\n\\n' }}{%- endif -%}",
    "{{ " + json.dumps(TOOLS_PREAMBLE) + " }}",
    "{%- for tool in tools -%}{{ tool | tojson + '\\n' }}{%- endfor -%}",
    "{{ " + json.dumps(TOOLS_USAGE) + " + '<|im_end|>\\n' }}",
    "{%- elif first_system -%}",
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}",
    "{%- endif -%}",
    "{%- for message in messages -%}",
    "{%- if message['role'] == 'system' and loop.first -%}",
    "{%- elif message['role'] == 'assistant' -%}",
    "{{ '<|im_start|>assistant\\n' }}",
    "{%- if message['reasoning_content'] -%}",
    "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n' }}",
    "{%- endif -%}",
    "{%- if message['content'] -%}{{ message['content'] }}{%- endif -%}",
    "{%- for call in message['tool_calls'] or [] -%}",
    "{%- if message['content'] or not loop.first -%}{{ '\\n' }}{%- endif -%}",
    "{%- set fn = call['function'] if call['function'] is defined else call -%}",
    # Arguments as a JSON string (OpenAI's wire shape) are written as they are; an object is
    # serialized. The Python renderer does the same, so both give one text.
    "{%- set args = fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson -%}",
    "{{ '<tool_call>\\n{\"name\": ' + fn['name'] | tojson + ', \"arguments\": ' + args"
    " + '}\\n</tool_call>' }}",
    "{%- endfor -%}",
    "{{ '<|im_end|>\\n' }}",
    "{%- elif message['role'] == 'tool' -%}",
    "{{ '<|im_start|>tool\\n<tool_response>\\n' + message['content']"
    " + '\\n</tool_response><|im_end|>\\n' }}",
    "{%- else -%}",
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}",
    "{%- endif -%}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
])


class ChatFormatError(ValueError):
    """A conversation that cannot be rendered: unknown role, bad tool call, ..."""


def _json(obj) -> str:
    # What Jinja's `tojson` writes under transformers: json.dumps, non-ASCII kept.
    return json.dumps(obj, ensure_ascii=False)


def tool_arguments(raw) -> dict:
    """A tool call's arguments as a dict: OpenAI clients send a JSON string, we keep objects."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as e:
            raise ChatFormatError(f"tool call arguments are not valid JSON: {e}") from None
        if isinstance(value, dict):
            return value
    raise ChatFormatError("tool call arguments must be a JSON object")


def render_text(messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text, and the character spans the model is trained to write
    (assistant turns: content, think block, tool calls and the closing <|im_end|>)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    size = 0

    def put(text: str, trained: bool = False) -> None:
        nonlocal size
        if trained and text:
            spans.append((size, size + len(text)))
        out.append(text)
        size += len(text)

    first_system = bool(messages) and messages[0].get("role") == "system"
    if tools:
        system = messages[0]["content"] + "\n\n" if first_system else ""
        listed = "".join(_json(t) + "\n" for t in tools)
        put(f"{IM_START}system\n{system}{TOOLS_PREAMBLE}{listed}{TOOLS_USAGE}{IM_END}\n")
    elif first_system:
        put(f"{IM_START}system\n{messages[0]['content']}{IM_END}\n")
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"message {i}: unknown role {role!r} (expected one of {ROLES})")
        content = m.get("content") or ""
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i}: content must be a string")
        if role == "system" and i == 0:
            continue
        if role == "assistant":
            put(f"{IM_START}assistant\n")
            body = ""
            if m.get("reasoning_content"):
                body += f"{THINK}\n{m['reasoning_content']}\n{THINK_END}\n"
            body += content
            for j, call in enumerate(m.get("tool_calls") or []):
                fn = call.get("function", call)
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ChatFormatError(f"message {i}: a tool call needs a function name")
                raw = fn.get("arguments", {})
                tool_arguments(raw)  # must be a JSON object, as text or as a dict
                args = raw if isinstance(raw, str) else _json(raw)
                sep = "\n" if content or j else ""
                body += (f'{sep}{TOOL_CALL}\n{{"name": {_json(fn["name"])}, "arguments": {args}}}'
                         f"\n{TOOL_CALL_END}")
            put(body + IM_END, trained=True)
            put("\n")
        elif role == "tool":
            put(f"{IM_START}tool\n<tool_response>\n{content}\n</tool_response>{IM_END}\n")
        else:
            put(f"{IM_START}{role}\n{content}{IM_END}\n")
    if add_generation_prompt:
        put(f"{IM_START}assistant\n")
    return "".join(out), spans


@dataclass
class ChatTokens:
    ids: list[int]
    mask: list[int]  # 1 where the model is trained to predict this token


@dataclass(frozen=True)
class Template:
    """A model's own Jinja chat template with the special tokens it may refer to."""

    source: str
    bos_token: str | None = None
    eos_token: str | None = None


def render(tok, messages: list[dict], tools: list[dict] | None = None,
           add_generation_prompt: bool = False, template: Template | None = None) -> ChatTokens:
    """Tokens and loss mask of a conversation. A token is trained when it starts inside an
    assistant span, so the mask follows the text even where a merge crosses a turn border.
    The template is `template`, else the one `tokenizer.load` found with the model
    (`tok.chat_template`), else llmos's ChatML. Under a model's own template a prompt ending in
    the generation prompt is for inference and gets no mask (all zeros)."""
    template = template or getattr(tok, "chat_template", None)
    if template is None:
        text, spans = render_text(messages, tools, add_generation_prompt)
    else:
        text, spans = render_template_text(template, messages, tools, add_generation_prompt,
                                           spans=not add_generation_prompt)
    enc = tok.encode(text, add_special_tokens=False)
    mask, k = [], 0
    for start, _ in enc.offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        mask.append(int(k < len(spans) and spans[k][0] <= start))
    return ChatTokens(list(enc.ids), mask)


# ---- a model's own template (imported checkpoints) --------------------------------------------


def template_for(model_dir: str | Path) -> Template | None:
    """The chat template of an imported model, or None for llmos's ChatML. Only checkpoints whose
    llmos.json says `"chat_template": "model"` (written by `llmos import hf`, kept by `llmos sft`)
    use their own: an llmos checkpoint may carry an older version of our template, and the
    Python renderer is the current one."""
    d = Path(model_dir)
    if not d.is_dir():
        d = d.parent
    info = d / "llmos.json"
    if not info.exists() or json.loads(info.read_text()).get("chat_template") != "model":
        return None
    return read_template(d)


def read_template(d: Path) -> Template | None:
    """A Hugging Face folder's chat template: chat_template.jinja (transformers 5) or the
    `chat_template` of tokenizer_config.json (a string, or a list of named templates)."""
    config = {}
    if (d / "tokenizer_config.json").exists():
        config = json.loads((d / "tokenizer_config.json").read_text())
    source = config.get("chat_template")
    if (d / "chat_template.jinja").exists():
        source = (d / "chat_template.jinja").read_text()
    if isinstance(source, list):
        source = {t.get("name"): t.get("template") for t in source}.get("default")
    if not source or source == CHAT_TEMPLATE:
        return None
    return Template(source, _token_text(config.get("bos_token")),
                    _token_text(config.get("eos_token")))


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value  # AddedToken or string


@lru_cache(maxsize=8)
def _compile(source: str):
    # The environment transformers gives templates (they come from the Hub: sandboxed).
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, \
        sort_keys=False: json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                                    separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def template_text(template: Template, messages: list[dict], tools: list[dict] | None = None,
                  add_generation_prompt: bool = False) -> str:
    import jinja2
    import jinja2.ext

    try:
        return _compile(template.source).render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
            bos_token=template.bos_token or "", eos_token=template.eos_token or "")
    except jinja2.exceptions.TemplateError as e:
        raise ChatFormatError(f"the model's chat template: {e}") from None


def render_template_text(template: Template, messages: list[dict],
                         tools: list[dict] | None = None, add_generation_prompt: bool = False,
                         spans: bool = True) -> tuple[str, list[tuple[int, int]]]:
    """Text and assistant spans under a model's template. Assistant message i is the text that
    rendering messages[:i + 1] adds to messages[:i] rendered with the generation prompt; a
    template that rewrites earlier turns (so one render is not a prefix of the next) cannot be
    masked this way and is refused."""
    text = template_text(template, messages, tools, add_generation_prompt)
    found: list[tuple[int, int]] = []
    for i, m in enumerate(messages if spans else []):
        if m.get("role") != "assistant":
            continue
        prompt = template_text(template, messages[:i], tools, True)
        upto = template_text(template, messages[:i + 1], tools, False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise ChatFormatError(f"message {i}: the model's chat template does not render the "
                                  "conversation prefix by prefix, so its loss mask is unknown")
        if len(upto) > len(prompt):
            found.append((len(prompt), len(upto)))
    return text, found


# ---- reading what the model wrote -------------------------------------------------------------


@dataclass
class AssistantTurn:
    content: str
    tool_calls: list[dict] = field(default_factory=list)  # OpenAI shape, arguments as dicts
    reasoning: str = ""
    errors: list[str] = field(default_factory=list)  # malformed tool calls, told to the model

    def message(self) -> dict:
        m: dict = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            m["tool_calls"] = self.tool_calls
        if self.reasoning:
            m["reasoning_content"] = self.reasoning
        return m


def parse_assistant(text: str) -> AssistantTurn:
    """Split generated assistant text (special tokens kept, <|im_end|> removed) into content,
    think block and tool calls. A malformed call becomes an error entry, never an exception."""
    text = text.removesuffix(IM_END)
    reasoning = ""
    stripped = text.lstrip()
    if stripped.startswith(THINK):
        body, closed, rest = stripped[len(THINK):].partition(THINK_END)
        reasoning, text = body.strip(), rest if closed else ""
    content_parts, calls, errors = [], [], []
    rest = text
    while TOOL_CALL in rest:
        before, _, after = rest.partition(TOOL_CALL)
        content_parts.append(before)
        raw, closed, rest = after.partition(TOOL_CALL_END)
        try:
            call = json.loads(raw)
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError('expected {"name": ..., "arguments": {...}}')
            args = tool_arguments(call.get("arguments", {}))
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": call["name"], "arguments": args}})
        except (ValueError, ChatFormatError) as e:  # an unclosed call that parses is kept
            unclosed = "" if closed else " (no closing </tool_call>)"
            errors.append(f"malformed tool call {raw.strip()[:200]!r}{unclosed}: {e}")
    content_parts.append(rest)
    return AssistantTurn("".join(content_parts).strip(), calls, reasoning, errors)


# ---- reading what the model writes as it streams: visible content, stop strings -------------


class TurnText:
    """Raw text of one assistant turn, as it streams -> ("content" | "reasoning_content", text)
    pieces. Tool call markup is hidden, tags split across pieces are held back, and each field
    is stripped as `parse_assistant` strips it, so the pieces add up to its result."""

    def __init__(self):
        self.buf, self.mode = "", "start"  # start | think | content | call
        self.started = {"content": False, "reasoning_content": False}
        self.ws = {"content": "", "reasoning_content": ""}
        self.out: list[tuple[str, str]] = []

    def _emit(self, key: str, text: str) -> None:
        if not self.started[key]:
            text = text.lstrip()
            if not text:
                return
            self.started[key] = True
        body = text.rstrip()
        if body:
            self.out.append((key, self.ws[key] + body))
            self.ws[key] = text[len(body):]
        else:
            self.ws[key] += text

    def _until(self, tag: str, key: str | None) -> bool:
        """Emit buf up to `tag` (True: found, buf is past it); else emit what cannot start it."""
        i = self.buf.find(tag)
        if i >= 0:
            if key:
                self._emit(key, self.buf[:i])
            self.buf = self.buf[i + len(tag):]
            return True
        keep = next((n for n in range(min(len(tag) - 1, len(self.buf)), 0, -1)
                     if tag.startswith(self.buf[-n:])), 0)
        if key:
            self._emit(key, self.buf[:len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def push(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        while True:
            if self.mode == "start":
                s = self.buf.lstrip()
                if not s or (THINK.startswith(s) and s != THINK):
                    break  # not yet known whether the turn opens with a think block
                self.mode = "think" if s.startswith(THINK) else "content"
                self.buf = s[len(THINK):] if self.mode == "think" else s
            elif self.mode == "think":
                if not self._until(THINK_END, "reasoning_content"):
                    break
                self.mode = "content"
            elif self.mode == "content":
                if not self._until(TOOL_CALL, "content"):
                    break
                self.mode = "call"
            else:
                if not self._until(TOOL_CALL_END, None):
                    break
                self.mode = "content"
        out, self.out = self.out, []
        return out

    def finish(self) -> list[tuple[str, str]]:
        if self.mode in ("think", "content") and self.buf:
            self._emit("reasoning_content" if self.mode == "think" else "content", self.buf)
        self.buf = ""
        out, self.out = self.out, []
        return out


class StopText:
    """Finds stop sequences in streamed text, holding back a tail that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops, self.held = stops, ""

    def push(self, text: str) -> tuple[str, bool]:
        text = self.held + text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if s.startswith(text[-n:])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held
