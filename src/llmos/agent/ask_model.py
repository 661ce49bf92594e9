"""The `ask_model` tool: one model delegates a question to another, an llmos checkpoint or any
OpenAI-compatible endpoint (agent/peers.py), and reads back its answer.

    tool = ask_model_tool(parse_peers(["helper=openai:http://127.0.0.1:8001/v1#sft"]))
    call_tool("ask_model", {"model": "helper", "question": "What is 17 * 23?"}, {"ask_model": tool})
"""

from __future__ import annotations

from llmos.agent.peers import Peer, answer
from llmos.agent.tools import Tool, ToolError

MAX_QUESTION_CHARS = 4000
MAX_ANSWER_CHARS = 4000


def ask_model_tool(peers: list[Peer], max_tokens: int = 256) -> Tool:
    if not peers:
        raise ValueError("ask_model needs at least one model to ask")
    by_name = {p.name: p for p in peers}

    def run(args: dict) -> str:
        name, question = args["model"], args["question"].strip()
        peer = by_name.get(name)
        if peer is None:
            raise ToolError(f"no model {name!r} to ask; models: {', '.join(by_name)}")
        if not question:
            raise ToolError("empty question")
        if len(question) > MAX_QUESTION_CHARS:
            raise ToolError(f"question too long (over {MAX_QUESTION_CHARS} characters)")
        try:
            text = answer(peer, [{"role": "user", "content": question}], max_tokens, 0.0)
        except Exception as e:  # noqa: BLE001 - a peer down or refusing: told, not raised
            raise ToolError(f"model {name!r} did not answer: {type(e).__name__}: {e}") from None
        return text[:MAX_ANSWER_CHARS] or "(an empty answer)"

    return Tool(
        name="ask_model",
        description=("Ask another model a question and return its answer. Models: "
                     + ", ".join(by_name) + "."),
        parameters={"type": "object", "properties": {
            "model": {"type": "string", "enum": list(by_name)},
            "question": {"type": "string"}},
            "required": ["model", "question"], "additionalProperties": False},
        run=run,
        capability="call-model",
    )
