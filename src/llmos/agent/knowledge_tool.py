"""The `search_knowledge` tool: the model asks its knowledge bases and reads back passages it can
quote and cite ("[json/__init__.py#2]").

    tool = knowledge_tool([KnowledgeBase.open("llmos.db", "stdlib")], k=1, max_chars=240)
    tools = {**BUILTIN_TOOLS, tool.name: tool}

k and max_chars fit the passages to the model's context: cpu-tiny's 256 tokens hold one passage
of about 240 characters beside the question and the answer.
"""

from __future__ import annotations

from llmos.agent.knowledge import KnowledgeBase
from llmos.agent.tools import Tool, ToolError
from llmos.data.chunking import passage

NAME = "search_knowledge"
MAX_QUERY_CHARS = 500


def format_hits(hits, k: int, max_chars: int) -> str:
    """Up to k passages, one a line, sharing max_chars between them."""
    hits = hits[:k]
    if not hits:
        return "no passages found"
    each = max(80, max_chars // len(hits))
    return "\n".join(passage(h.cite, h.title, h.text, each) for h in hits)


def knowledge_tool(bases: list[KnowledgeBase], k: int = 3, max_chars: int = 1500) -> Tool:
    """A tool that searches every base in `bases` and returns the best k passages overall."""
    if not bases:
        raise ValueError("search_knowledge needs at least one knowledge base")
    names = ", ".join(b.name for b in bases)

    def run(args: dict) -> str:
        query = args["query"].strip()
        if not query:
            raise ToolError("empty query")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolError(f"query too long (over {MAX_QUERY_CHARS} characters)")
        hits = [h for b in bases for h in b.search(query, k)]
        hits.sort(key=lambda h: -h.score)
        return format_hits(hits, k, max_chars)

    return Tool(
        name=NAME,
        description=(f"Search the knowledge bases ({names}) and return up to {k} passages, each "
                     "starting with its citation in brackets. Quote what answers the question "
                     "and cite it, e.g. [file.py#3]."),
        parameters={"type": "object", "properties": {
            "query": {"type": "string", "description": "What to look for: a name or a question"}},
            "required": ["query"], "additionalProperties": False},
        run=run,
        capability="read-knowledge",
    )
