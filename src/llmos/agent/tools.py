"""The assistant's built-in tools: an exact calculator and a sandboxed Python runner.

A tool takes the arguments object the model wrote (OpenAI "function" calling) and returns the text
the model reads back. `call_tool` never raises: every failure becomes an "error: ..." result, so a
model's bad call costs one turn instead of the conversation.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from llmos.agent.sandbox import PythonLimits, PythonResult, run_python

__all__ = ["BUILTIN_TOOLS", "PythonLimits", "PythonResult", "Tool", "ToolError", "calculate",
           "call_tool", "run_python"]


# Capabilities whose calls the user confirms first in the web chat: saving a memory, fetching a
# page (a URL can carry the conversation out), asking another model.
SIDE_EFFECTS = {"write-memory", "network", "call-model"}


class ToolError(Exception):
    """A tool refused or failed; the message is shown to the model."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    run: Callable[[dict], str]
    # What it touches, for a profile's grant (agent/profiles.py): compute, read-knowledge,
    # network, read-memory, write-memory, call-model.
    capability: str = "compute"

    @property
    def side_effects(self) -> bool:
        """Whether a call changes something or sends the conversation off this machine: the
        web chat asks the user before it runs (SIDE_EFFECTS)."""
        return self.capability in SIDE_EFFECTS

    def schema(self) -> dict:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


# --------------------------------------------------------------------------- calculator

MAX_EXPRESSION_CHARS = 500
MAX_INT_BITS = 10_000  # about 3000 digits, under Python's 4300-digit limit on printing ints

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor,
    "ceil": math.ceil, "exp": math.exp, "log": math.log, "log2": math.log2, "log10": math.log10,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "atan2": math.atan2, "hypot": math.hypot, "degrees": math.degrees,
    "radians": math.radians,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _divide(a, b):
    """Exact when it can be: 10/2 is 5, not 5.0."""
    if isinstance(a, int) and isinstance(b, int) and b != 0 and a % b == 0:
        return a // b
    return a / b


def _power(a, b):
    # Refuse before computing: 9**9**9 would take minutes and gigabytes.
    if isinstance(b, int) and b > 0 and abs(a) > 1:
        if isinstance(a, int) and b * math.log2(abs(a)) > MAX_INT_BITS:
            raise ToolError("result too large (over about 3000 digits)")
    result = a ** b
    if isinstance(result, complex):
        raise ToolError("result is not a real number")
    return result


def _check_size(x):
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise ToolError("result too large (over about 3000 digits)")
    return x


def _evaluate(node: ast.AST):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp):
        a, b = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Div):
            return _check_size(_divide(a, b))
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(a, b))
        if type(node.op) not in _BINARY:
            raise ToolError(f"operator not allowed: {type(node.op).__name__}")
        return _check_size(_BINARY[type(node.op)](a, b))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name):
        if node.id not in _CONSTANTS:
            raise ToolError(f"unknown name {node.id!r} (constants: {', '.join(_CONSTANTS)})")
        return _CONSTANTS[node.id]
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise ToolError(f"only these functions are allowed: {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise ToolError("keyword arguments are not allowed")
        return _check_size(_FUNCTIONS[node.func.id](*[_evaluate(a) for a in node.args]))
    raise ToolError(f"not allowed in an expression: {type(node).__name__}")


def _format(x) -> str:
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        raise ToolError("result is not a finite number")
    return "0" if x == 0 else f"{x:.12g}"


def calculate(expression: str) -> str:
    """Evaluate arithmetic safely: the expression is parsed, never executed."""
    expression = expression.strip()
    if not expression:
        raise ToolError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long (over {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"invalid expression: {e.msg}") from None
    try:
        return _format(_evaluate(tree))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result too large") from None
    except RecursionError:
        raise ToolError("expression too deeply nested") from None
    except (TypeError, ValueError) as e:  # sqrt(-1), min(1), round(1, 2, 3), ...
        raise ToolError(f"invalid arguments: {e}") from None


# --------------------------------------------------------------------------- tools and calls

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
               "object": dict, "array": list}


def _argument_problem(schema: dict, arguments) -> str | None:
    """What is wrong with the arguments against a flat object schema, or None."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, not {type(arguments).__name__}"
    properties = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in arguments]
    if missing:
        return f"missing argument(s): {', '.join(missing)}"
    if schema.get("additionalProperties") is False:
        extra = [k for k in arguments if k not in properties]
        if extra:
            return f"unexpected argument(s): {', '.join(extra)}; expected: {', '.join(properties)}"
    for key, value in arguments.items():
        kind = properties.get(key, {}).get("type")
        expected = _JSON_TYPES.get(kind)
        # JSON has no separate bool, but Python's bool is an int: refuse true for a number.
        if expected and (not isinstance(value, expected)
                         or (isinstance(value, bool) and kind != "boolean")):
            return f"argument {key!r} must be a {kind}, not {type(value).__name__}"
    return None


def _string_argument(name: str, description: str) -> dict:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}},
            "required": [name], "additionalProperties": False}


_LIMITS = PythonLimits()

BUILTIN_TOOLS: dict[str, Tool] = {
    "calculator": Tool(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly and return the result. Supports numbers, "
            "+ - * / // % ** and parentheses, the functions " + ", ".join(_FUNCTIONS)
            + " and the constants pi, e, tau (^ also means power)."),
        parameters=_string_argument("expression", "The expression, e.g. (17 * 24) / 3"),
        run=lambda args: calculate(args["expression"]),
    ),
    "python": Tool(
        name="python",
        description=(
            "Run a Python 3 program and return what it prints (stdout, then errors). Use print() "
            "to show results. The program runs in a fresh temporary directory with no network "
            f"and no subprocesses, for at most {_LIMITS.cpu_seconds:g} s of CPU and "
            f"{_LIMITS.wall_seconds:g} s in all, with {_LIMITS.memory_mb} MB of memory; "
            f"output past {_LIMITS.output_bytes // 1024} KB is cut off."),
        parameters=_string_argument("code", "The complete program to run"),
        run=lambda args: run_python(args["code"], _LIMITS).as_text(),
    ),
}


def with_confirmation(tools: dict[str, Tool], ask: Callable[[str, dict], bool],
                      granted: set[str]) -> dict[str, Tool]:
    """The tools, those of `granted` with side effects first asking `ask(name, arguments)`
    (`llmos chat` asks at the terminal, as the web chat asks on the page); a "no" reaches the
    model as a refusal."""
    def confirmed(tool: Tool) -> Tool:
        def run(args: dict) -> str:
            if not ask(tool.name, args):
                raise ToolError("the user declined this call")
            return tool.run(args)

        return Tool(tool.name, tool.description, tool.parameters, run, tool.capability)

    return {n: confirmed(t) if t.side_effects and n in granted else t
            for n, t in tools.items()}


def call_tool(name: str, arguments: dict | str, tools: dict[str, Tool] = BUILTIN_TOOLS) -> str:
    """Run a tool call as the model wrote it; every failure comes back as "error: ..."."""
    tool = tools.get(name) if isinstance(name, str) else None
    if tool is None:
        return f"error: unknown tool {name!r}; available tools: {', '.join(tools)}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            return f"error: arguments are not valid JSON ({e.msg} at character {e.pos})"
    problem = _argument_problem(tool.parameters, arguments)
    if problem:
        return f"error: {problem}"
    try:
        return str(tool.run(arguments))
    except ToolError as e:
        return f"error: {e}"
    except Exception as e:  # a bug in a tool must not end the conversation
        return f"error: tool {name!r} failed: {type(e).__name__}: {e}"
