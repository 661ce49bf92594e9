"""`llmos chat`: talk to a checkpoint in the terminal, with streaming and tools in the loop.

Commands inside the chat: /reset (forget the conversation), /save [FILE] (write it as JSONL
{"messages": [...]}, the format `llmos sft` reads), /system TEXT (set the system prompt),
/quit. Tool calls and their results are printed as they happen. With a System-2 strategy
(`--think vote --budget 8`), each answer is the strategy's pick among its samples, followed by a
line saying what it spent and what it weighed; tools are not run then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmos import chat_format, checkpoint
from llmos import tokenizer as tokenizers_
from llmos.agent.context import ContextBudget
from llmos.agent.loop import describe_call, engine_stream, model_summarizer, respond
from llmos.agent.tools import BUILTIN_TOOLS
from llmos.infer.engine import Engine, SamplingParams
from llmos.infer.llamacpp import LlamaCppDecoder
from llmos.infer.strategies import think
from llmos.infer.streamed import StreamedModel
from llmos.infer.think import LocalModel, Think, Thought

HELP = "commands: /reset  /save [FILE]  /system TEXT  /quit"


class Session:
    def __init__(self, model_dir: str, system: str = "", params: SamplingParams | None = None,
                 tools: bool | dict = True, out=None, thinking: Think | None = None,
                 summarize: bool = False, prepare=None, llamacpp=None):
        self.tok = tokenizers_.load(Path(model_dir))
        self.thinking = thinking.check() if thinking else None
        if llamacpp is not None:  # llama.cpp decodes; prompts, tools and stops stay ours
            decoder = LlamaCppDecoder(model_dir, llamacpp)
            self.generate, context = decoder.stream, decoder.context
            self.lm = StreamedModel(decoder, self.tok) if thinking else None
        else:
            model = checkpoint.load_model(model_dir)
            self.generate, context = engine_stream(Engine(model)), model.cfg.max_seq_len
            self.lm = LocalModel(model, self.tok) if thinking else None
        self.params = params or SamplingParams(max_new_tokens=256, temperature=0.7, top_p=0.95)
        # The context window as RAM: each turn's prompt fits it, keeping a quarter (at most the
        # answer's length) for the answer; what gives way is printed.
        self.budget = ContextBudget(context, min(self.params.max_new_tokens, context // 4))
        self.summarize = model_summarizer(self.generate, self.tok, context) if summarize else None
        # True: the built-in tools; False: none; a dict: those (a profile's, agent/profiles.py).
        self.tools = tools if isinstance(tools, dict) else BUILTIN_TOOLS if tools else {}
        self.system, self.messages, self.out = system, [], out or sys.stdout
        # messages -> what the model is shown (a profile's memories); the chat keeps the rest
        self.prepare = prepare or (lambda messages: messages)

    def reset(self) -> None:
        self.messages = []

    def conversation(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def ask(self, text: str) -> str:
        """Send one user message; stream the answer (and tool activity) to `out`."""
        self.messages.append({"role": "user", "content": text})
        if self.thinking:
            thought = think(self.lm, self.conversation(), self.thinking)
            self.messages.append({"role": "assistant", "content": thought.text})
            self.write(thought.text + "\n" + describe_thought(thought) + "\n")
            return thought.text
        hiding = False  # the raw <tool_call> markup is shown formatted instead
        printed = False  # whether this turn wrote any text (a pure tool call writes none)
        for event in respond(self.generate, self.tok, self.prepare(self.conversation()),
                             self.params,
                             tools=self.tools, window=self.budget, summarize=self.summarize):
            if event.kind == "text" and not hiding:
                before, tag, _ = event.text.partition(chat_format.TOOL_CALL)
                self.write(before)
                hiding, printed = bool(tag), printed or bool(before)
            elif event.kind == "turn":
                if printed:
                    self.write("\n")
                hiding = printed = False
            elif event.kind == "tool_call":
                self.write(f"  [tool call] {describe_call(event.data)}\n")
            elif event.kind == "tool_result":
                self.write(f"  [tool result] {event.text.strip()}\n")
            elif event.kind == "error":
                self.write(f"  [tool error] {event.text}\n")
            elif event.kind == "context":
                self.write(f"  [context: {event.text}]\n")
            elif event.kind == "done":
                self.messages += event.data["messages"]
                if event.data["finish_reason"] != "stop":
                    self.write(f"  [finished: {event.data['finish_reason']}]\n")
        return self.messages[-1].get("content", "")

    def save(self, path: str) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"messages": self.conversation()}, ensure_ascii=False) + "\n")
        self.write(f"saved to {path}\n")

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def describe_thought(t: Thought) -> str:
    """'[vote: 8 samples, 312 tokens, 0.41s; 85 x5, 86 x3]', '[best-of: ...; 85 x2 (1), 86 x6
    (0)]': each answer weighed, with its samples and (best-of, search) its best score."""
    weighed = ", ".join(f"{c['answer']} x{c['votes']}" if "votes" in c
                        else f"{c['answer']} x{c['samples']} ({c['score']:g})" if "score" in c
                        else str(c['answer']) for c in t.candidates[:5])
    return (f"  [{t.strategy}: {t.samples} samples, {t.tokens} tokens, {t.seconds:.2f}s"
            + (f"; {weighed}" if weighed else "") + "]")


def ask_at_terminal(name: str, arguments: dict) -> bool:
    """Whether the user allows a tool call with side effects (agent/tools.with_confirmation)."""
    shown = json.dumps(arguments, ensure_ascii=False)
    try:
        answer = input(f"\n  allow {name}({shown})? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def repl(session: Session, save_path: str = "chat.jsonl") -> None:
    session.write(f"llmos chat ({HELP})\n")
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            session.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            session.reset()
            session.write("(conversation cleared)\n")
        elif line.startswith("/save"):
            session.save(line[5:].strip() or save_path)
        elif line.startswith("/system"):
            session.system = line[7:].strip()
            session.write(f"(system prompt {'set' if session.system else 'cleared'})\n")
        elif line.startswith("/"):
            session.write(f"unknown command {line.split()[0]}; {HELP}\n")
        else:
            session.write("assistant> ")
            try:
                session.ask(line)
            except KeyboardInterrupt:  # stop this answer, keep the chat
                session.messages.pop()
                session.write("\n(interrupted)\n")
