"""Run a model's Python code in a separate, limited process.

Layers, from the hardest to the softest:
- a child process with rlimits (CPU, address space, file size, no core dumps, processes when not
  root) in its own session, killed with its whole process group at the wall-clock limit;
- an OS boundary, the strongest the machine allows (`isolation()` says which):
  - bubblewrap (`bwrap`, Debian's `bubblewrap`), where it works: a new mount namespace whose
    root holds only the system's programs and libraries and the Python installation, read-only,
    and the throwaway working directory (no /etc, /home, /root, /tmp, nor the project; a /proc of
    its own), plus new network, PID, IPC, UTS and user namespaces and no capabilities;
  - else, as root with `unshare`: new network and PID namespaces only;
  - else nothing beyond the rlimits;
  in every case no network interface but a down loopback, and everything the child starts dies
  with it;
- inside the child, an audit hook (PEP 578) that refuses sockets, new processes, ctypes, raising
  rlimits, signalling other processes, writing outside the throwaway working directory, and
  reading outside it and the Python installation (the project's files, home folders, /etc).

This contains mistakes and runaway programs (infinite loops, memory or fork bombs, endless output)
and, under bubblewrap, a program that gets past the audit hook still sees no file of the user's
and no network. What it does not stop (kernel exploits, the CPU and memory it may use within its
limits): docs/security.md.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PythonLimits:
    cpu_seconds: float = 5
    wall_seconds: float = 10
    memory_mb: int = 512  # address space (RLIMIT_AS), so it counts reserved as well as used memory
    output_bytes: int = 16384  # per stream; the program is stopped when either overflows
    file_mb: int = 64  # largest file the program may write (RLIMIT_FSIZE)


@dataclass
class PythonResult:
    stdout: str
    stderr: str
    exit_code: int | None  # None when the sandbox stopped the program or a signal killed it
    timed_out: bool
    truncated: bool
    killed: str | None  # why it was stopped: "wall time limit (10 s)", "signal SIGSEGV", ...
    pid: int | None = None  # the process (and process group) id it ran under

    def as_text(self) -> str:
        """What the model sees: the output, then the errors, then what the sandbox did."""
        parts = [s.rstrip("\n") for s in (self.stdout, self.stderr) if s.strip()]
        if self.truncated:
            parts.append(f"note: output truncated; the program was stopped at the {self.killed}")
        elif self.timed_out:
            parts.append(f"error: timed out; the program was stopped at the {self.killed}")
        elif self.killed:
            parts.append(f"error: the program was killed ({self.killed})")
        elif self.exit_code:
            parts.append(f"error: exit code {self.exit_code}")
        return "\n".join(parts) or "(no output)"


# The child's entry point, run with `python -I -B -c`. It sets the limits itself rather than in a
# preexec_fn, which the subprocess docs warn is unsafe when the parent has threads (a server does).
# Everything lives inside functions so user code finds neither the hook nor its settings in
# `__main__`; the hook keeps what it needs in a closure and is reachable only through `gc`, which
# it refuses.
_CHILD = r'''
import builtins, json, os, resource, signal, sys, sysconfig, traceback, types
import _posixsubprocess
import ctypes  # loaded before the hook (numpy needs it); the hook then refuses new libraries


def limit(kind, soft, hard=None):
    hard = soft if hard is None else hard
    old = resource.getrlimit(kind)[1]
    if old != resource.RLIM_INFINITY:
        soft, hard = min(soft, old), min(hard, old)
    resource.setrlimit(kind, (soft, hard))


def guard(workdir):
    realpath, fsdecode, sep, own_pid = os.path.realpath, os.fsdecode, os.sep, os.getpid()
    isdir = os.path.isdir
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    network = frozenset({
        "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"})
    processes = frozenset({
        "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "os.exec",
        "os.startfile", "subprocess.Popen"})
    other = frozenset({
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
        "resource.setrlimit", "resource.prlimit",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.killpg"})
    # event -> positions of the paths it writes to
    writes = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,),
              "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,),
              "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,)}

    def inside(path):
        if isinstance(path, int):  # an already open descriptor
            return True
        path = realpath(fsdecode(path))
        return path == workdir or path.startswith(workdir + sep) or path == "/dev/null"

    # What a program may read besides its directory: Python's own library and installed
    # packages (imports), the system's shared data (time zones, locales), a few devices. Not
    # the project it runs in, home folders, /etc or /proc; nor a directory outside its own (a
    # descriptor of one opens paths relative to it), nor changing directory, nor a database
    # file outside it (sqlite3 opens files without an "open" event).
    paths = sysconfig.get_paths()
    readable = tuple(sorted({realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib",
                                                           "platlib") if paths.get(k)}
                            | {"/usr/share", "/usr/lib", "/usr/lib64", "/usr/local/lib",
                               "/lib", "/lib64", "/etc/localtime"}))
    devices = frozenset({"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"})

    def may_read(path):
        if inside(path):
            return True
        path = realpath(fsdecode(path))
        if isdir(path):  # a directory's descriptor would open paths relative to it (dir_fd),
            return False  # which the hook sees resolved from the working directory instead
        return path in devices or any(path == r or path.startswith(r + sep) for r in readable)

    def hook(event, args):
        if event in network:
            raise PermissionError(f"sandbox: network access is disabled ({event})")
        if event in processes:
            raise PermissionError(f"sandbox: starting processes is disabled ({event})")
        if event in other or (event == "os.kill" and args[0] != own_pid):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event in ("os.chdir", "os.fchdir"):  # relative paths stay the working directory's
            raise PermissionError("sandbox: changing directory is not allowed")
        if event == "sqlite3.connect" and args[0] not in (":memory:", "") and not inside(
                args[0]):
            raise PermissionError(f"sandbox: cannot open a database outside the working "
                                  f"directory ({args[0]})")
        if event == "object.__setattr__" and args[1] == "__code__":
            raise PermissionError("sandbox: replacing a function's code is not allowed")
        if event == "import" and args[0] == "_posixsubprocess":  # a fresh copy of fork_exec
            raise PermissionError("sandbox: starting processes is disabled (_posixsubprocess)")
        if event == "open" and isinstance(args[2], int) and args[2] & write_flags:
            paths = (0,)
        elif event == "open":
            if args[0] is not None and not may_read(args[0]):
                raise PermissionError(f"sandbox: cannot read {args[0]} (only the working "
                                      "directory and the Python installation)")
            paths = ()
        else:
            paths = writes.get(event, ())
        for i in paths:
            if i < len(args) and args[i] is not None and not inside(args[i]):
                raise PermissionError(f"sandbox: cannot write outside the working directory "
                                      f"({args[i]})")

    def fork_exec(*args, **kwargs):  # multiprocessing calls it directly, with no audit event
        raise PermissionError("sandbox: starting processes is disabled (fork_exec)")

    _posixsubprocess.fork_exec = fork_exec
    sys.addaudithook(hook)


def run(cfg):
    mb = 1024 * 1024
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized file raises OSError instead
    # As PID 1 of a namespace the child ignores SIGXCPU's default action; leave at the soft limit
    # anyway (a C loop that never returns to Python meets the hard limit a second later).
    # The exit code says why to a parent that cannot see the CPU time used (bubblewrap's
    # init does not pass its children's usage on).
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(128 + signal.SIGXCPU))
    limit(resource.RLIMIT_CPU, cfg["cpu"], cfg["cpu"] + 1)  # SIGXCPU, then SIGKILL a second on
    limit(resource.RLIMIT_AS, cfg["memory_mb"] * mb)
    limit(resource.RLIMIT_FSIZE, cfg["file_mb"] * mb)
    limit(resource.RLIMIT_CORE, 0)
    if cfg["nproc"]:
        limit(resource.RLIMIT_NPROC, cfg["nproc"])
    with open("main.py", encoding="utf-8") as f:
        source = f.read()
    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__ = "main.py", builtins
    sys.modules["__main__"], sys.argv = main, ["main.py"]
    guard(os.path.realpath(os.getcwd()))
    try:
        exec(compile(source, "main.py", "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:  # the traceback without this bootstrap's frame
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)


run(json.loads(sys.argv[1]))
'''


@functools.cache
def _namespaces() -> list[str]:
    """The `unshare` prefix for fresh network and PID namespaces, or [] where it is unavailable."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    prefix = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--"]
    return prefix if _works(prefix + ["true"]) else []


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _readable_roots() -> list[str]:
    """What a sandboxed program sees of the machine, read-only: the system's programs and shared
    libraries, the time zone, and the Python installation (a virtual environment's folder alone,
    not the project around it)."""
    paths = sysconfig.get_paths()
    roots = {"/usr", "/bin", "/lib", "/lib64", "/etc/localtime", os.path.realpath(sys.prefix),
             os.path.realpath(sys.base_prefix),
             os.path.dirname(os.path.realpath(sys.executable))}
    roots |= {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")
              if paths.get(k)}
    roots = sorted(r for r in roots if os.path.exists(r))
    return [r for r in roots if not any(r.startswith(o + "/") for o in roots if o != r)]


def _bubblewrap_args(workdir: str) -> list[str]:
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev"]
    for root in _readable_roots():
        args += ["--ro-bind", root, root]
    return args + ["--bind", workdir, workdir, "--chdir", workdir, "--"]


@functools.cache
def _bubblewrap() -> bool:
    """Whether `bwrap` is installed and may make namespaces here (containers often forbid it)."""
    return shutil.which("bwrap") is not None and _works(
        _bubblewrap_args(tempfile.gettempdir()) + ["true"])


def isolation() -> str:
    """The OS boundary run_python puts around a program on this machine."""
    return "bubblewrap" if _bubblewrap() else "namespaces" if _namespaces() else "rlimits only"


def boundary(workdir: str) -> list[str]:
    """The command prefix that runs a program inside the OS boundary (see the module doc)."""
    return _bubblewrap_args(workdir) if _bubblewrap() else _namespaces()


def _nproc_limit() -> int | None:
    """Room for a few more threads than the user already runs. RLIMIT_NPROC counts every task of
    the user, and root ignores it; None where it cannot help."""
    if os.geteuid() == 0 or not os.path.isdir("/proc"):
        return None
    uid, tasks = os.getuid(), 0
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                tasks += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            pass
    return tasks + 32


def _child_env(workdir: str) -> dict[str, str]:
    # -I ignores PYTHON* variables; the rest keeps numeric libraries to one thread and caches in
    # the throwaway directory.
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg", "MPLCONFIGDIR": workdir}


def _kill(pid: int) -> None:
    """SIGKILL the process group, and the leader in case it left the group with setsid()."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _read_capped(proc: subprocess.Popen, limits: PythonLimits, deadline: float):
    """Read stdout and stderr until both close, keeping at most output_bytes of each.
    Returns (stdout, stderr, truncated, timed_out)."""
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return *bufs.values(), False, True
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                room = limits.output_bytes - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    return *bufs.values(), True, False
    return *bufs.values(), False, False


def _wait_exit(pid: int, deadline: float) -> bool:
    """Wait for the process to exit without reaping it, so its group id stays reserved for
    killpg."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.01)
    return False


def run_python(code: str, limits: PythonLimits | None = None) -> PythonResult:
    """Run `code` as a fresh isolated interpreter in a throwaway directory; see the module doc."""
    limits = limits or PythonLimits()
    cpu = max(1, int(-(-limits.cpu_seconds // 1)))  # RLIMIT_CPU counts whole seconds
    cfg = {"cpu": cpu, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
           "nproc": _nproc_limit()}
    # -I: isolated (no user site, no PYTHON* variables, no cwd on sys.path); -u: unbuffered, so
    # what was printed before a kill still arrives.
    python = [sys.executable, "-I", "-B", "-u", "-X", "utf8", "-c", _CHILD, json.dumps(cfg)]
    with tempfile.TemporaryDirectory(prefix="llmos-python-", ignore_cleanup_errors=True) as work:
        work = os.path.realpath(work)
        cmd = boundary(work) + python
        Path(work, "main.py").write_text(code, encoding="utf-8")
        started = time.monotonic()
        deadline = started + limits.wall_seconds
        proc = subprocess.Popen(cmd, cwd=work, env=_child_env(work), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err, truncated, timed_out = _read_capped(proc, limits, deadline)
            if not (truncated or timed_out):
                timed_out = not _wait_exit(proc.pid, deadline)
        finally:
            _kill(proc.pid)  # also whatever it left behind in its group
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc.stdout.close()
            proc.stderr.close()
    rc = proc.returncode
    # A wrapper (bwrap, unshare) reports a child's death by signal N as exit code 128 + N.
    signum = -rc if rc < 0 else rc - 128 if cmd[0] != sys.executable and 128 < rc < 160 else 0
    killed = None
    if truncated:
        killed = f"output limit ({limits.output_bytes} bytes)"
    elif timed_out:
        killed = f"wall time limit ({limits.wall_seconds:g} s)"
    elif rc == 128 + signal.SIGXCPU or (rc != 0 and usage.ru_utime + usage.ru_stime >= cpu - 0.05
                                        ) or (signum == signal.SIGKILL and wall >= cpu + 0.9):
        killed, timed_out = f"cpu time limit ({cpu} s)", True  # SIGKILL: the hard limit
    elif signum:
        killed = f"signal {signal.Signals(signum).name}" if signum in signal.valid_signals() else (
            f"signal {signum}")
    stderr = err.decode(errors="replace")
    # unshare's and bwrap's complaints as they pass on a signal are no business of the model
    stderr = "".join(line for line in stderr.splitlines(keepends=True)
                     if not line.startswith(("unshare: ", "bwrap: ")))
    return PythonResult(stdout=out.decode(errors="replace"), stderr=stderr,
                        exit_code=None if killed else rc, timed_out=timed_out,
                        truncated=truncated, killed=killed, pid=proc.pid)
