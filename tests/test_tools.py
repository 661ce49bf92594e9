"""The built-in tools: the calculator, tool calls, and the Python sandbox (real processes)."""

from __future__ import annotations

import json
import os
import resource
import socket
import time
from pathlib import Path

import pytest

from llmos.agent import sandbox
from llmos.agent.tools import (
    BUILTIN_TOOLS,
    PythonLimits,
    Tool,
    ToolError,
    calculate,
    call_tool,
    run_python,
)

SMALL = PythonLimits(cpu_seconds=1, wall_seconds=3, memory_mb=256, output_bytes=4096)


# --------------------------------------------------------------------------- calculator

@pytest.mark.parametrize("expression, expected", [
    ("17 * 24", "408"),
    ("2 + 3 * 4", "14"),
    ("(2 + 3) * 4", "20"),
    ("2 ** 3 ** 2", "512"),  # right-associative
    ("-3 ** 2", "-9"),  # power binds tighter than unary minus
    ("-(-4) + +1", "5"),
    ("7 // 2", "3"),
    ("-7 // 2", "-4"),
    ("7 % 3", "1"),
    ("10 / 2", "5"),  # exact division stays an integer
    ("10 / 4", "2.5"),
    ("1 / 3", "0.333333333333"),
    ("0.1 + 0.2", "0.3"),
    ("2.5 * 2", "5"),
    ("2 ** -2", "0.25"),
    ("2 ^ 10", "1024"),
    ("2 ** 100", "1267650600228229401496703205376"),
    ("sqrt(16) + abs(-2) + max(1, 7, 3) - min(4, 2)", "11"),
    ("round(2 * pi, 3)", "6.283"),
    ("floor(e * 1000)", "2718"),
])
def test_calculator_results(expression, expected):
    assert calculate(expression) == expected


def test_calculator_big_but_ok_integers():
    assert calculate("2 ** 5000") == str(2 ** 5000)
    assert calculate("10 ** 400 / 10 ** 399") == "10"


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "functions"),
    ("().__class__", "Attribute"),
    ("(1).__class__", "Attribute"),
    ("lambda: 1", "Lambda"),
    ("open('x')", "functions"),
    ("x + 1", "unknown name"),
    ("'a' * 3", "only numbers"),
    ("[1, 2]", "List"),
    ("9 ** 9 ** 9", "too large"),
    ("2 ** 10 ** 6", "too large"),
    ("(2 ** 9000) * (2 ** 9000)", "too large"),
    ("1e308 * 10", "finite"),
    ("", "empty"),
    ("   ", "empty"),
    ("1 / 0", "division by zero"),
    ("5 // 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("1 +", "invalid expression"),
    ("sqrt(-1)", "invalid arguments"),
    ("(-8) ** 0.5", "not a real number"),
    ("1" + "+1" * 300, "too long"),
])
def test_calculator_refuses(expression, message):
    with pytest.raises(ToolError, match=message):
        calculate(expression)


def test_calculator_refuses_quickly():
    start = time.monotonic()
    with pytest.raises(ToolError):
        calculate("9**9**9**9")
    assert time.monotonic() - start < 0.5


# --------------------------------------------------------------------------- tool calls

def test_schemas_are_openai_functions():
    for name, tool in BUILTIN_TOOLS.items():
        schema = tool.schema()
        assert schema["type"] == "function"
        assert schema["function"]["name"] == name
        assert schema["function"]["parameters"]["type"] == "object"
        json.dumps(schema)  # plain JSON
    assert BUILTIN_TOOLS["calculator"].parameters["required"] == ["expression"]
    assert BUILTIN_TOOLS["python"].parameters["required"] == ["code"]


def test_call_tool_accepts_json_strings_and_dicts():
    assert call_tool("calculator", '{"expression": "17 * 24"}') == "408"
    assert call_tool("calculator", {"expression": "1 / 4"}) == "0.25"


@pytest.mark.parametrize("name, arguments, message", [
    ("calculator", '{"expression": ', "not valid JSON"),
    ("calculator", "[1, 2]", "JSON object"),
    ("calculator", "{}", "missing argument(s): expression"),
    ("calculator", "", "missing argument(s): expression"),
    ("calculator", {"expression": 408}, "must be a string"),
    ("calculator", {"expression": "1", "precision": 3}, "unexpected argument(s): precision"),
    ("calculator", {"expression": "1/0"}, "division by zero"),
    ("calculator", {"expression": "__import__('os')"}, "functions"),
    ("browser", {"url": "x"}, "unknown tool 'browser'"),
    (None, {}, "unknown tool"),
    ("python", {"code": ["print(1)"]}, "must be a string"),
])
def test_call_tool_reports_errors(name, arguments, message):
    result = call_tool(name, arguments)
    assert result.startswith("error: ")
    assert message in result


def test_call_tool_survives_a_broken_tool():
    def broken(args):
        raise KeyError("oops")

    tools = {"broken": Tool("broken", "always fails", {"type": "object"}, broken)}
    assert call_tool("broken", "{}", tools).startswith("error: tool 'broken' failed: KeyError")


def test_python_tool_through_call_tool():
    assert call_tool("python", {"code": "print(sum(range(10)))"}) == "45"
    result = call_tool("python", '{"code": "raise ValueError(\\"bad input\\")"}')
    assert "ValueError: bad input" in result and "error: exit code 1" in result


# --------------------------------------------------------------------------- python sandbox

@pytest.fixture(params=["bubblewrap", "namespaces", "plain"])
def isolation(request, monkeypatch):
    """Run a test under each OS boundary the machine allows: bubblewrap, network/PID namespaces
    (root with unshare), and none (everyone else)."""
    if request.param == "bubblewrap" and not sandbox._bubblewrap():
        pytest.skip("needs a working `bwrap` (Debian's bubblewrap)")
    if request.param != "bubblewrap":
        monkeypatch.setattr(sandbox, "_bubblewrap", lambda: False)
    if request.param == "namespaces" and not sandbox._namespaces():
        pytest.skip("needs root and a working `unshare`")
    if request.param == "plain":
        monkeypatch.setattr(sandbox, "_namespaces", lambda: [])
    return request.param


def group_gone(pgid: int, wait: float = 0.5) -> bool:
    """No live process is left in the group. A killed grandchild (the interpreter under
    `unshare --fork`) can stay a zombie until init reaps it: dead, holding nothing but its
    process-table entry, so zombies do not count."""
    deadline = time.monotonic() + wait
    while True:
        live = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it exited while we looked
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
                live.append(stat.parent.name)
        if not live or time.monotonic() > deadline:
            return not live
        time.sleep(0.02)


def test_prints_output():
    r = run_python("import math\nprint('hello', math.factorial(20))", SMALL)
    assert (r.stdout, r.exit_code, r.timed_out, r.killed) == ("hello 2432902008176640000\n", 0,
                                                               False, None)
    assert r.as_text() == "hello 2432902008176640000"


def test_exception_goes_to_stderr_with_nonzero_exit():
    r = run_python("print('before')\n{}['missing']", SMALL)
    assert r.stdout == "before\n" and r.exit_code == 1
    assert "KeyError: 'missing'" in r.stderr and 'File "main.py", line 2' in r.stderr
    assert r.as_text().endswith("error: exit code 1")
    syntax = run_python("x = (", SMALL)
    assert "SyntaxError" in syntax.stderr and syntax.exit_code == 1


def test_infinite_loop_is_killed(isolation):
    start = time.monotonic()
    r = run_python("print('started')\nwhile True:\n    pass", SMALL)
    assert time.monotonic() - start < SMALL.wall_seconds + 1
    assert r.timed_out and r.exit_code is None and "time limit" in r.killed
    assert r.stdout == "started\n"  # unbuffered: what was printed before the kill survives
    assert "timed out" in r.as_text()
    assert group_gone(r.pid)


def test_sleeping_program_meets_the_wall_clock():
    start = time.monotonic()
    r = run_python("import time\ntime.sleep(30)", PythonLimits(cpu_seconds=1, wall_seconds=1))
    assert time.monotonic() - start < 2.5
    assert r.timed_out and r.killed == "wall time limit (1 s)"
    assert group_gone(r.pid)


@pytest.mark.parametrize("code", [
    "x = bytearray(10 ** 10)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 6))",
])
def test_memory_bomb_is_contained(code):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = run_python(code, SMALL)
    assert r.exit_code != 0 and ("MemoryError" in r.stderr or r.killed)
    assert not r.timed_out
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100  # the parent did not hold the child's memory


def test_fork_bomb_is_contained(isolation):
    r = run_python("import os\nwhile True:\n    os.fork()", SMALL)
    assert r.exit_code == 1 and "starting processes is disabled (os.fork)" in r.stderr
    assert group_gone(r.pid)


@pytest.mark.parametrize("code", [
    "import subprocess\nsubprocess.run(['touch', {marker!r}])",
    "import os\nos.system('touch {marker}')",
    "import os\nos.execv('/usr/bin/touch', ['touch', {marker!r}])",
    # multiprocessing reaches _posixsubprocess.fork_exec directly, with no audit event
    "import multiprocessing as mp\nmp.set_start_method('spawn')\np = mp.Process(target=print)\n"
    "p.start()\np.join()\nopen({marker!r}, 'w')",
])
def test_child_processes_are_refused(tmp_path, code):
    marker = str(tmp_path / "spawned")
    r = run_python(code.format(marker=marker), SMALL)
    assert r.exit_code == 1 and "starting processes is disabled" in r.stderr
    assert not os.path.exists(marker)


def test_network_is_refused(isolation):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
                       f"\nprint('connected')", SMALL)
        assert r.exit_code == 1 and "network access is disabled" in r.stderr
        assert "connected" not in r.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked
    raw = run_python("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)", SMALL)
    assert "network access is disabled (socket.__new__)" in raw.stderr


def test_endless_output_is_truncated():
    start = time.monotonic()
    r = run_python("while True:\n    print('x' * 100)", SMALL)
    assert time.monotonic() - start < SMALL.wall_seconds  # stopped at the cap, not the clock
    assert r.truncated and not r.timed_out and r.killed == "output limit (4096 bytes)"
    assert len(r.stdout.encode()) == SMALL.output_bytes
    assert "output truncated" in r.as_text()


def test_files_go_to_a_throwaway_directory(tmp_path):
    outside = tmp_path / "escaped.txt"
    r = run_python("import os\nwith open('notes.txt', 'w') as f:\n    f.write('kept here')\n"
                   "print(os.getcwd())\nprint(open('notes.txt').read())", SMALL)
    workdir, text = r.stdout.splitlines()
    assert text == "kept here" and workdir != os.getcwd()
    assert not os.path.exists(workdir)  # deleted afterwards
    refused = run_python(f"open({str(outside)!r}, 'w').write('x')", SMALL)
    assert "cannot write outside the working directory" in refused.stderr
    assert not outside.exists()


def test_limits_cannot_be_raised_nor_the_parent_signalled():
    r = run_python("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", SMALL)
    assert "resource.setrlimit is not allowed" in r.stderr
    r = run_python("import os\nos.kill(os.getppid(), 0)", SMALL)
    assert "os.kill is not allowed" in r.stderr


def test_secrets_are_out_of_reach(tmp_path, monkeypatch):
    """The project's files, the parent's environment, system files and native code: each
    refused, while the program's own files, Python's library and packages stay usable."""
    secret = tmp_path / "api_key.txt"
    secret.write_text("sk-do-not-leak")
    monkeypatch.setenv("LLMOS_TEST_SECRET", "sk-env-secret")
    project_file = Path(__file__).resolve().parents[1] / "README.md"
    for path in (secret, project_file, "/etc/passwd", "/root/.bashrc"):
        r = run_python(f"print(open({str(path)!r}).read())", SMALL)
        assert f"sandbox: cannot read {path}" in r.stderr and r.stdout == "", path
    r = run_python("import os\nprint(sorted(os.environ))\nprint(os.environ.get("
                   "'LLMOS_TEST_SECRET'))", SMALL)
    assert "sk-env-secret" not in r.stdout and r.stdout.splitlines()[-1] == "None"
    # a descriptor of a directory outside, changing directory, a database outside: each
    # another way to open what the paths above may not
    escapes = {"import os\nos.open('/usr/lib', os.O_RDONLY)": "cannot read /usr/lib",
               "import os\nos.chdir('/')": "changing directory is not allowed",
               f"import sqlite3\nsqlite3.connect({str(secret)!r})": "cannot open a database"}
    for code, refusal in escapes.items():
        r = run_python(code, SMALL)
        assert f"sandbox: {refusal}" in r.stderr and r.exit_code == 1, code
    r = run_python("import ctypes\nctypes.CDLL(None).getpid()", SMALL)
    assert "ctypes" in r.stderr and "is not allowed" in r.stderr
    r = run_python("import json, zoneinfo\nopen('a.json', 'w').write(json.dumps([1]))\n"
                   "print(open('a.json').read(), zoneinfo.ZoneInfo('UTC'))", SMALL)
    assert r.stdout.strip() == "[1] UTC" and r.exit_code == 0


# What the OS boundary holds by itself: plain Python (no audit hook, no rlimits) run inside it,
# as a program that got past the hook would be.
BOUNDARY_ESCAPES = {
    "read the project": "open({project!r}).read()",
    "read /etc/passwd": "open('/etc/passwd').read()",
    "read a home folder": "import os\nprint(os.listdir('/home'))",
    "write outside its folder": "open('/usr/escaped', 'w')",
    "write the Python installation": "open({site!r} + '/escaped.py', 'w')",
    "reach the host over loopback": "import socket\nsocket.create_connection(('127.0.0.1', "
                                    "{port}), timeout=1)",
    "reach the network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)",
    "signal the parent": "import os\nos.kill({parent}, 0)",
}


@pytest.mark.parametrize("name", BOUNDARY_ESCAPES)
def test_the_os_boundary_holds_without_the_audit_hook(name, tmp_path):
    import site
    import subprocess
    import sys

    if not sandbox._bubblewrap():
        pytest.skip("needs a working `bwrap` (Debian's bubblewrap)")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        code = BOUNDARY_ESCAPES[name].format(
            project=str(Path(__file__).resolve().parents[1] / "README.md"),
            site=site.getsitepackages()[0], port=listener.getsockname()[1], parent=os.getpid())
        work = str(tmp_path.resolve())
        r = subprocess.run(sandbox.boundary(work) + [sys.executable, "-I", "-c", code],
                           capture_output=True, text=True, timeout=30, cwd=work)
    assert r.returncode == 1, (name, r.stdout, r.stderr)
    assert any(e in r.stderr for e in ("FileNotFoundError", "Read-only file system",
                                       "PermissionError", "OSError: [Errno 101]",
                                       "ProcessLookupError", "ConnectionRefusedError")), r.stderr


def test_inside_the_os_boundary():
    """Its own folder works, Python and numpy import, /proc shows only its own processes, and it
    holds no capabilities."""
    if not sandbox._bubblewrap():
        pytest.skip("needs a working `bwrap` (Debian's bubblewrap)")
    assert sandbox.isolation() == "bubblewrap"
    r = run_python("import os, numpy\nopen('a.txt', 'w').write('ok')\nprint(open('a.txt').read())"
                   "\nprint(sorted(os.listdir('/')))", SMALL)
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "ok", r.stderr
    assert "home" not in r.stdout
    import subprocess
    import sys

    probe = ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
             "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
             "print(len(pids), caps[0].split()[1], sorted(os.listdir('/etc')) if "
             "os.path.isdir('/etc') else [])")
    out = subprocess.run(sandbox.boundary("/tmp") + [sys.executable, "-I", "-c", probe],
                         capture_output=True, text=True, timeout=30).stdout.split(maxsplit=2)
    etc = "['localtime']" if os.path.exists("/etc/localtime") else "[]"  # the time zone alone
    assert int(out[0]) <= 3 and int(out[1], 16) == 0 and out[2].strip() == etc
