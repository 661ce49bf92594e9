"""The Ollama Modelfile next to a GGUF: FROM, a TEMPLATE in Ollama's Go-template language, the
stop tokens.

Ollama renders a chat prompt by executing the TEMPLATE (Go `text/template`, option
missingkey=zero, plus Ollama's one helper `json`, which is Go's `json.Marshal`) once over the
whole conversation when the template mentions `.Messages` (template/template.go, `Execute`). The
data it gets: `.System` (every system message joined), `.Messages` (each with `.Role`, `.Content`,
`.Thinking`, `.ToolCalls`, whose items have `.Function.Name` and `.Function.Arguments`; a run of
same-role messages other than tool results is merged into one, joined by a blank line) and
`.Tools` (`.Type`, `.Function.Name`, `.Function.Description`, `.Function.Parameters` with `.Type`,
`.Properties`, `.Required`). A Modelfile SYSTEM line reaches it as a first system message.

For llmos's own chat format (`chat_format.render_text`) the TEMPLATE writes the same text:
the tools block in the system turn, `<tool_call>` turns, `<|im_start|>tool` results and think
blocks. JSON is written as Python's json.dumps writes it (", " and ": " separators, non-ASCII
kept), since Go's `json` writes neither the spaces nor a raw < > &: strings through `printf "%q"`
(the same text for every printable character), objects and lists key by key. Known differences,
all from what Ollama keeps of a request: object keys come in Go's sorted order where Ollama holds
a Go map (before its ordered maps); numbers as Go writes a float64; a tool definition keeps only
the fields Ollama's structs have, in the conventional order (type, function: name, description,
parameters: type, properties, required; a property: type, items, description, enum).

A model imported from Hugging Face keeps its own chat format: its per-role text is rendered, but
the Modelfile has no tools (there is no way to know how its Jinja template writes them).
"""

from __future__ import annotations

import json

from llmos import chat_format as cf

GGUF_NAME = "model.gguf"

# Ollama continues a final assistant message rather than opening a new turn (its own templates
# close every assistant turn but the last), and opens the assistant turn after anything else.
LAST = "{{ $last := eq (len (slice $.Messages $i)) 1 }}"

# A JSON value as json.dumps writes it. `printf "%T"` tells the kinds apart: strings are quoted by
# %q, lists and objects recurse, a Go map ranges in key order; Ollama's ordered arguments (a
# struct) range over their All() iterator; numbers, booleans and null go through `json`.
VALUE = (
    '{{ define "llmos.value" }}{{ $t := printf "%T" . }}'
    '{{ if eq $t "string" }}{{ printf "%q" . }}'
    '{{ else if or (eq $t "[]interface {}") (eq $t "[]string") }}[{{ $sep := "" }}'
    '{{ range . }}{{ $sep }}{{ $sep = ", " }}{{ template "llmos.value" . }}{{ end }}]'
    '{{ else if or (eq $t "bool") (eq $t "float64") (eq $t "<nil>") (eq $t "json.Number") }}'
    "{{ json . }}"
    '{{ else if eq (printf "%.4s" (printf "%v" .)) "map[" }}{{ "{" }}{{ $sep := "" }}'
    '{{ range $k, $v := . }}{{ $sep }}{{ $sep = ", " }}{{ printf "%q" $k }}: '
    '{{ template "llmos.value" $v }}{{ end }}}'
    '{{ else if eq $t "api.ToolCallFunctionArguments" }}{{ "{" }}{{ $sep := "" }}'
    '{{ range $k, $v := .All }}{{ $sep }}{{ $sep = ", " }}{{ printf "%q" $k }}: '
    '{{ template "llmos.value" $v }}{{ end }}}'
    "{{ else }}{{ json . }}{{ end }}{{ end }}"
)

# One tool property (Ollama's ToolProperty): its type is a list of names, one written as a string.
PROPERTY = (
    '{{ define "llmos.property" }}{{ "{" }}{{ $sep := "" }}'
    '{{ with .Type }}{{ $sep }}{{ $sep = ", " }}"type": {{ if eq (len .) 1 }}'
    '{{ printf "%q" (index . 0) }}{{ else }}[{{ $s := "" }}{{ range . }}{{ $s }}{{ $s = ", " }}'
    '{{ printf "%q" . }}{{ end }}]{{ end }}{{ end }}'
    '{{ with .Items }}{{ $sep }}{{ $sep = ", " }}"items": {{ template "llmos.value" . }}{{ end }}'
    '{{ with .Description }}{{ $sep }}{{ $sep = ", " }}"description": {{ printf "%q" . }}{{ end }}'
    '{{ with .Enum }}{{ $sep }}{{ $sep = ", " }}"enum": {{ template "llmos.value" . }}{{ end }}}'
    "{{ end }}"
    # The properties: a Go map, or Ollama's ordered map (a pointer, maybe nil) with All().
    '{{ define "llmos.properties" }}{{ "{" }}{{ $sep := "" }}'
    '{{ if eq (printf "%.4s" (printf "%v" .)) "map[" }}{{ range $k, $v := . }}{{ $sep }}'
    '{{ $sep = ", " }}{{ printf "%q" $k }}: {{ template "llmos.property" $v }}{{ end }}'
    '{{ else if . }}{{ range $k, $v := .All }}{{ $sep }}{{ $sep = ", " }}{{ printf "%q" $k }}: '
    '{{ template "llmos.property" $v }}{{ end }}{{ end }}}{{ end }}'
)

TOOL = (
    '{"type": {{ printf "%q" .Type }}, "function": {"name": {{ printf "%q" .Function.Name }}'
    '{{ with .Function.Description }}, "description": {{ printf "%q" . }}{{ end }}'
    '{{ with .Function.Parameters }}{{ if .Type }}, "parameters": {"type": {{ printf "%q" .Type }}'
    ', "properties": {{ template "llmos.properties" .Properties }}'
    '{{ with .Required }}, "required": {{ template "llmos.value" . }}{{ end }}}{{ end }}{{ end }}}}'
)


def literal(text: str) -> str:
    """Text for a template: a "{{" would open an action, so it is printed by one."""
    return text.replace("{{", '{{ "{{" }}')


def llmos_template() -> str:
    """llmos's ChatML with tools, think blocks and tool results (chat_format.render_text)."""
    S, E = cf.IM_START, cf.IM_END
    system_block = (
        '{{ $sys := "" }}{{ $hasSys := false }}{{ if .Messages }}{{ with index .Messages 0 }}'
        '{{ if eq .Role "system" }}{{ $hasSys = true }}{{ $sys = .Content }}{{ end }}{{ end }}'
        "{{ end }}"
        f"{{{{ if .Tools }}}}{S}system\n{{{{ if $hasSys }}}}{{{{ $sys }}}}\n\n{{{{ end }}}}"
        + literal(cf.TOOLS_PREAMBLE) + "{{ range .Tools }}" + TOOL + "\n{{ end }}"
        + literal(cf.TOOLS_USAGE) + f"{E}\n"
        f"{{{{ else if $hasSys }}}}{S}system\n{{{{ $sys }}}}{E}\n{{{{ end }}}}"
    )
    # Ollama finds the tool-call tag as the first text inside the first {{ if .ToolCalls }}
    # (tools/template.go, parseTag): so that block starts with <tool_call>, and the separator
    # before it tests $m.ToolCalls, a variable, which that search does not look at.
    call = (
        f'{cf.TOOL_CALL}\n{{"name": {{{{ printf "%q" .Function.Name }}}}, "arguments": '
        '{{ template "llmos.value" .Function.Arguments }}}\n' + cf.TOOL_CALL_END
    )
    assistant = (
        f"{S}assistant\n{{{{ if .Thinking }}}}{cf.THINK}\n{{{{ .Thinking }}}}\n{cf.THINK_END}\n"
        "{{ end }}{{ .Content }}{{ if and .Content $m.ToolCalls }}\n{{ end }}"
        "{{ if .ToolCalls }}{{ range $j, $c := .ToolCalls }}" + call
        + "{{ if ne (len (slice $m.ToolCalls $j)) 1 }}\n{{ end }}{{ end }}{{ end }}"
        f"{{{{ if not $last }}}}{E}\n{{{{ end }}}}"
    )
    messages = (
        "{{ range $i, $m := .Messages }}" + LAST
        + '{{ if and (eq $i 0) (eq .Role "system") }}'
        + '{{ else if eq .Role "assistant" }}' + assistant
        + f'{{{{ else if eq .Role "tool" }}}}{S}tool\n<tool_response>\n{{{{ .Content }}}}\n'
        f"</tool_response>{E}\n"
        f"{{{{ else }}}}{S}{{{{ .Role }}}}\n{{{{ .Content }}}}{E}\n{{{{ end }}}}"
        f'{{{{ if and $last (ne .Role "assistant") }}}}{S}assistant\n{{{{ end }}}}{{{{ end }}}}'
    )
    return VALUE + PROPERTY + system_block + messages


def format_template(fmt: dict) -> str:
    """An imported model's format: a fixed prefix and suffix per role, its generation prompt.
    Tool calls and results have no known form there and are left out."""
    parts = ["{{ range $i, $m := .Messages }}" + LAST]
    for n, role in enumerate(("system", "user", "assistant")):
        prefix, suffix = (literal(t) for t in fmt[role])
        if role == "assistant":
            suffix = "{{ if not $last }}" + suffix + "{{ end }}"
        parts.append(("{{ if" if n == 0 else "{{ else if") + f' eq .Role "{role}" }}}}'
                     + prefix + "{{ .Content }}" + suffix)
    parts.append('{{ end }}{{ if and $last (ne .Role "assistant") }}'
                 + literal(fmt["generation_prompt"]) + "{{ end }}{{ end }}")
    return "".join(parts)


def go_template(fmt: dict, tools: bool = False) -> str:
    """The TEMPLATE text: llmos's full format when `tools`, else `fmt`'s per-role text. Only
    plain {{ }} actions: a {{- would trim the newlines the format needs."""
    text = llmos_template() if tools else format_template(fmt)
    if '"""' in text:
        raise ValueError('the chat format contains """, which a Modelfile cannot quote')
    return text


def modelfile(fmt: dict | None, stops: list[str], note: str | None = None,
              tools: bool = False) -> str:
    """The Modelfile. `tools`: the checkpoint uses llmos's own chat format (tools rendered)."""
    lines = [f"FROM ./{GGUF_NAME}", ""]
    if fmt is not None:
        if not tools:
            lines += ["# no tools in TEMPLATE: the model keeps its own chat template, whose "
                      "tool-call format is not known here", ""]
        lines += ['TEMPLATE """' + go_template(fmt, tools) + '"""', ""]
    else:
        lines += [f"# no TEMPLATE: {note}", ""]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    return "\n".join(lines) + "\n"
