"""The Modelfile's TEMPLATE, executed by Go's text/template as Ollama executes it, writes the text
llmos's own renderer writes: plain chat, system prompts, tool definitions, tool calls and results,
think blocks, the generation prompt.

The ollama binary cannot be installed where the tests run, so tests/ollama_render (standard
library only) models what Ollama does around the template (see its main.go) and the test compares
its output with chat_format.render_text. Needs Go (Debian: apt-get install -y golang-go).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmos import chat_format as cf
from llmos.export.ollama import go_template, modelfile
from llmos.export.params import role_affixes

HARNESS = Path(__file__).parent / "ollama_render"

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs Go to run "
                                "text/template: apt-get install -y golang-go")


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """render(template, cases) -> the harness's answer: tag, vars, outputs."""
    tmp = tmp_path_factory.mktemp("ollama_render")
    env = dict(os.environ, GOCACHE=str(tmp / "cache"), GOPATH=str(tmp / "gopath"),
               GOPROXY="off", GOFLAGS="", GO111MODULE="on", GOTOOLCHAIN="local")
    exe = tmp / "ollamarender"
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=HARNESS, env=env, check=True,
                   capture_output=True, timeout=300)

    def run(template: str, cases: list[dict]) -> dict:
        path = tmp / "cases.json"
        path.write_text(json.dumps({"template": template, "cases": cases}))
        r = subprocess.run([str(exe), str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    return run


def ollama_messages(messages: list[dict]) -> list[dict]:
    """OpenAI-shaped messages as a client sends them to Ollama's /api/chat: the think block is
    `thinking`, a tool call is {"function": {"name", "arguments": {...}}}."""
    out = []
    for m in messages:
        o = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("reasoning_content"):
            o["thinking"] = m["reasoning_content"]
        if m.get("tool_calls"):
            o["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                             "arguments": c["function"]["arguments"]}}
                               for c in m["tool_calls"]]
        out.append(o)
    return out


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression, e.g. \"2 < 3 & 4\".",
    "parameters": {"type": "object", "properties": {
        "expression": {"type": "string", "description": "The expression."}},
        "required": ["expression"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search_files",
    # Keys in Go's sorted order: Ollama before its ordered maps holds properties in a Go map.
    "parameters": {"type": "object", "properties": {
        "kinds": {"type": "array", "items": {"type": "string"}, "description": "File kinds."},
        "limit": {"type": "integer"},
        "order": {"type": ["string", "null"], "enum": ["newest", "oldest", None]},
        "query": {"type": "string", "description": "Words to find; ünïcode ok."}},
        "required": ["query", "limit"]}}}
NO_PARAMETERS = {"type": "function", "function": {"name": "now", "description": "The time."}}

SYSTEM = {"role": "system", "content": "You are a careful assistant.\nAnswer briefly."}
USER = {"role": "user", "content": "What is 347 * 29?"}
CALLED = {"role": "assistant", "content": "", "tool_calls": [call("calculator",
                                                                    expression="347 * 29")]}
RESULT = {"role": "tool", "content": "10063"}
ANSWER = {"role": "assistant", "content": "347 * 29 = 10063."}

# (name, messages, tools): every conversation ends in a turn that is not the assistant's, so
# Ollama opens the assistant turn, as render_text does with add_generation_prompt.
CASES = [
    ("plain", [USER, {"role": "assistant", "content": "10063."},
               {"role": "user", "content": "And 2 + 2?"}], None),
    ("system", [SYSTEM, USER], None),
    ("only-system", [SYSTEM], None),
    ("later-system", [USER, ANSWER, {"role": "system", "content": "Be terse."},
                      {"role": "user", "content": "Thanks."}], None),
    ("tools-no-system", [USER], [CALCULATOR]),
    ("tool-result", [SYSTEM, USER, CALLED, RESULT], [CALCULATOR]),
    ("tool-round-trip", [SYSTEM, USER, CALLED, RESULT, ANSWER,
                         {"role": "user", "content": "Now search my notes."}],
     [CALCULATOR, SEARCH, NO_PARAMETERS]),
    ("several-calls", [USER, {
        "role": "assistant", "content": "Two look-ups first.", "tool_calls": [
            call("calculator", expression="1 < 2 && \"quoted\"\nline"),
            call("search_files", kinds=["md", "txt"], limit=5, query="naïve café 中文"),
            call("search_files", filters={"a": 1, "b": [True, False, None]}, limit=2.5)]},
        RESULT, {"role": "tool", "content": "found: notes.md"},
        {"role": "tool", "content": "none"}], [CALCULATOR, SEARCH]),
    ("calls-no-content", [USER, {"role": "assistant", "content": "", "tool_calls": [
        call("now"), call("calculator", expression="1")]}, RESULT], [CALCULATOR, NO_PARAMETERS]),
    ("think", [USER, {"role": "assistant", "content": "10063.",
                      "reasoning_content": "347 * 29 = 347 * 30 - 347."},
               {"role": "user", "content": "Sure?"}], None),
    ("think-and-call", [USER, {"role": "assistant", "content": "", "reasoning_content": "Use it.",
                               "tool_calls": [call("calculator", expression="347 * 29")]},
                        RESULT], [CALCULATOR]),
]


def test_llmos_format_renders_like_llmos(render):
    template = go_template(None, tools=True)
    out = render(template, [{"messages": ollama_messages(m), "tools": t} for _, m, t in CASES])
    for (name, messages, tools), got in zip(CASES, out["outputs"], strict=True):
        want, _ = cf.render_text(messages, tools, add_generation_prompt=True)
        assert got == want, name
    # What Ollama reads off the template: it names .Tools (the tools capability) and the tool
    # parser's tag, the first text inside {{ if .ToolCalls }} trimmed and cut at "{", is
    # "<tool_call>\n", which is how every call the model writes begins.
    assert "tools" in out["vars"] and "thinking" in out["vars"]
    assert out["tag"] == cf.TOOL_CALL + "\n"


def test_last_assistant_message_is_continued(render):
    # Ollama continues a final assistant message (prefill): no end of turn, no new turn.
    messages = [SYSTEM, USER, {"role": "assistant", "content": "The answer is"}]
    out = render(go_template(None, tools=True), [{"messages": ollama_messages(messages)}])
    full, _ = cf.render_text(messages)
    assert full.endswith(cf.IM_END + "\n")
    assert out["outputs"] == [full.removesuffix(cf.IM_END + "\n")]


def test_argument_order_is_gos(render):
    # A Go map (Ollama before its ordered maps) ranges in key order, not the order the model
    # wrote: a known difference, pinned here so a change in either side shows up.
    messages = [USER, {"role": "assistant", "content": "",
                       "tool_calls": [call("search_files", query="x", limit=1)]}, RESULT]
    got = render(go_template(None, tools=True),
                 [{"messages": ollama_messages(messages)}])["outputs"][0]
    assert '"arguments": {"limit": 1, "query": "x"}' in got
    assert '"arguments": {"query": "x", "limit": 1}' in cf.render_text(messages)[0]


LLAMA3_JINJA = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def test_imported_format_without_tools(render):
    template = cf.Template(LLAMA3_JINJA)
    specials = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}
    fmt = role_affixes(template, specials, ["<|eot_id|>"])
    cases = [c for c in CASES if c[2] is None]
    out = render(go_template(fmt), [{"messages": ollama_messages(m)} for _, m, _ in cases])
    for (name, messages, _), got in zip(cases, out["outputs"], strict=True):
        assert got == cf.template_text(template, messages, None, True), name
    # No .Tools in the template: Ollama answers a request with tools that the model does not
    # support them, rather than dropping them silently.
    assert "tools" not in out["vars"] and out["tag"] == ""
    text = modelfile(fmt, fmt["stop"])
    assert "# no tools in TEMPLATE" in text and 'PARAMETER stop "<|eot_id|>"' in text


def test_modelfile_quotes_the_template():
    text = modelfile({"system": ["", ""]}, ["<|im_end|>", "<|endoftext|>"], tools=True)
    assert text.startswith("FROM ./model.gguf\n\nTEMPLATE \"\"\"")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == go_template(None, tools=True)
    assert "{{-" not in template and "{{{" not in template  # trims would eat the format's newlines
    assert text.endswith('\nPARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n')
    with pytest.raises(ValueError, match='"""'):
        go_template({"system": ['"""', ""], "user": ["", ""], "assistant": ["", ""],
                     "generation_prompt": ""})
