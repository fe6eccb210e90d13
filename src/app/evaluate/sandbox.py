"""Run model-written Python (a coding task's completion plus its tests) where a hostile
completion cannot leave: bubblewrap namespaces, a read-only root, rlimits and a wall clock.

    outcome = run_untrusted(program, Limits(cpu_s=5))
    outcome.passed, outcome.status, outcome.detail   # True, "passed", ""

``isolation()`` names what is in force here. Without bubblewrap, or where it cannot create its
namespaces, nothing runs: every call returns status "sandbox-error" (docs/sandbox.md).
"""

from __future__ import annotations

import functools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "Outcome", "STATUSES", "isolation", "run_untrusted"]

STATUSES = ("passed", "failed", "timeout", "cpu", "memory", "killed", "sandbox-error")
# A root caller's program runs as an unused uid of its own calling process (no account, no
# files), so RLIMIT_NPROC counts only the processes of this caller's sandboxes
UIDS = (200_000, 100_000)  # first uid, how many


def _sandbox_uid() -> int:
    return UIDS[0] + os.getpid() % UIDS[1]
PATH = "/usr/local/bin:/usr/bin:/bin"
MASKED = ("/home", "/root", "/run", "/var/tmp")  # hidden behind empty folders: keys, sockets
DETAIL_CHARS = 300
STDERR_TAIL = 8192  # bytes of its stderr read back for the detail line

# Runs inside the sandbox as `python -I -c BOOTSTRAP fd cpu_s memory_b file_b processes`: sets
# the limits on itself (so that RLIMIT_NPROC counts only this sandbox's processes), reads the
# program from stdin into ./main.py, says "ready" on fd, runs it, and says "done" only if it
# ran to its end (an early exit(0) is not a pass).
BOOTSTRAP = r"""
import os, resource as r, runpy, sys
fd, cpu, memory, file, processes = map(int, sys.argv[1:6])
def limit(kind, soft, hard):
    top = r.getrlimit(kind)[1]
    top = hard if top == r.RLIM_INFINITY else min(hard, top)
    r.setrlimit(kind, (min(soft, top), top))
limit(r.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at cpu, SIGKILL a second later
limit(r.RLIMIT_AS, memory, memory)
limit(r.RLIMIT_FSIZE, file, file)
limit(r.RLIMIT_NPROC, processes, processes)
limit(r.RLIMIT_CORE, 0, 0)
source = sys.stdin.buffer.read()
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
with open("main.py", "wb") as f:
    f.write(source)
os.set_inheritable(fd, False)
os.write(fd, b"ready\n")
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
os.write(fd, b"done\n")
"""


@dataclass(frozen=True)
class Limits:
    """What one program may use: seconds of CPU and of wall clock, MiB of address space, of its
    largest file and of its private /tmp, and processes at once (itself included)."""

    cpu_s: int = 10
    wall_s: float = 20
    memory_mb: int = 1024
    file_mb: int = 16
    processes: int = 16
    tmp_mb: int = 64

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"sandbox limit {name}={value!r}: must be a positive number")


@dataclass
class Outcome:
    """How one program ended: passed only if it ran to its end and exited 0; status is one of
    STATUSES; detail one line (its exception's last line, cut to 300 characters)."""

    passed: bool
    status: str
    detail: str
    seconds: float


def isolation() -> str:
    """One line naming the isolation in force here ("none: …" when run_untrusted refuses)."""
    return _sandbox(shutil.which("bwrap"), sys.executable)[1]


def run_untrusted(program: str, limits: Limits = Limits()) -> Outcome:
    """Run ``program`` (Python source) in a fresh sandbox under ``limits`` and report how it
    ended; never raises for anything the program does, and leaves no process or file behind."""
    bwrap, python = shutil.which("bwrap"), sys.executable
    works, line = _sandbox(bwrap, python)
    if not works:
        return Outcome(False, "sandbox-error", _one_line(line), 0.0)
    return _run(bwrap, python, program, limits)


@functools.lru_cache(maxsize=8)
def _sandbox(bwrap: str | None, python: str) -> tuple[bool, str]:
    """(whether the sandbox works here, the isolation line), by running a probe in it once."""
    if bwrap is None:
        return False, ("none: bubblewrap is not installed (apt-get install bubblewrap); "
                       "run_untrusted refuses to run code")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip()
    # The probe checks what the line claims: only a loopback interface, pid 2 (bwrap's init
    # is 1), the uid, no caller variables, a writable empty /tmp, a read-only root.
    uid = _sandbox_uid() if os.geteuid() == 0 else os.geteuid()
    own = sorted({"main.py"} | {p.split("/")[2] for p in _interpreter_binds()
                                if p.startswith("/tmp/")})  # and a checkout's mount point
    probe = (
        "import os, socket\n"
        "assert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n"
        f"assert os.getpid() == 2 and os.getuid() == {uid}, (os.getpid(), os.getuid())\n"
        "assert set(os.environ) <= {'PATH', 'LANG', 'HOME', 'PWD', 'LC_CTYPE'}, list(os.environ)\n"
        f"assert sorted(os.listdir('/tmp')) == {own!r}, os.listdir('/tmp')\n"
        "assert os.statvfs('/').f_flag & os.ST_RDONLY\n"
    )
    outcome = _run(bwrap, python, probe, Limits(cpu_s=10, wall_s=30))
    if not outcome.passed:
        return False, (f"none: {version or bwrap} cannot set up its sandbox here "
                       f"({outcome.status}: {outcome.detail}); run_untrusted refuses to run code")
    who = (f"uid {uid} (no account, one per calling process)" if os.geteuid() == 0
           else "the caller's uid")
    user = "" if os.geteuid() == 0 else "user, "
    return True, (f"{version}: new {user}pid, network, ipc, uts, mount namespaces; read-only "
                  f"root; private /tmp as its folder; {', '.join(MASKED)} hidden; {who} "
                  "without capabilities; only PATH, LANG, HOME set")


def _interpreter_binds() -> list[str]:
    """The interpreter's and its environment's folders that a mask or the private /tmp would
    hide (a venv under /home, a checkout under /tmp): bound back, read-only."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                              sys.base_exec_prefix)}
    hidden = (*MASKED, "/tmp", "/dev/shm")
    return sorted(p for p in prefixes if any(p == m or p.startswith(m + "/") for m in hidden))


def _argv(bwrap: str, python: str, info_fd: int, status_fd: int, limits: Limits) -> list[str]:
    """The command line that runs the bootstrap in a new sandbox."""
    mib = 1 << 20
    argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--json-status-fd", str(info_fd),
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for folder in MASKED:
        if os.path.isdir(folder) and not os.path.islink(folder):
            argv += ["--tmpfs", folder]
    for tmp in ("/tmp", "/dev/shm"):
        argv += ["--perms", "1777", "--size", str(limits.tmp_mb * mib), "--tmpfs", tmp]
    for prefix in _interpreter_binds():
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--chdir", "/tmp", "--clearenv", "--setenv", "PATH", PATH,
             "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/tmp"]
    if os.geteuid() == 0:
        # No user namespace: bwrap sets up as root, then the program drops to an unused uid, so
        # the host's permissions apply to it as well as the read-only mounts.
        uid = _sandbox_uid()
        argv += ["--", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    else:
        argv[1:1] = ["--unshare-user", "--disable-userns"]
    return argv + ["--", python, "-I", "-c", BOOTSTRAP, str(status_fd), str(limits.cpu_s),
                   str(limits.memory_mb * mib), str(limits.file_mb * mib), str(limits.processes)]


def _run(bwrap: str, python: str, program: str, limits: Limits) -> Outcome:
    """Run ``program`` in a sandbox made with ``bwrap`` and classify how it ended."""
    with tempfile.TemporaryDirectory(prefix="app-sandbox-") as folder:
        folder = Path(folder)  # the caller's side only: the program's stdin and stderr
        (folder / "program.py").write_bytes(program.encode("utf-8", errors="replace"))
        info_r, info_w = os.pipe()  # bwrap's JSON: the pid of the namespace's init
        status_r, status_w = os.pipe()  # the bootstrap's "ready" and "done"
        try:
            with open(folder / "program.py", "rb") as stdin, \
                    open(folder / "stderr", "wb") as stderr:
                start = time.monotonic()
                try:
                    proc = subprocess.Popen(_argv(bwrap, python, info_w, status_w, limits),
                                            stdin=stdin, stdout=subprocess.DEVNULL,
                                            stderr=stderr,
                                            pass_fds=(info_w, status_w), env={"PATH": PATH},
                                            start_new_session=True)
                except OSError as e:
                    return Outcome(False, "sandbox-error", _one_line(f"{bwrap}: {e}"), 0.0)
                finally:
                    os.close(info_w)
                    os.close(status_w)
                init = _init_of(info_r, start + limits.wall_s)
                code, cpu_s, timed_out = _wait(proc, init, start + limits.wall_s)
                seconds = time.monotonic() - start
                _await_end(init)
            said = _read_all(status_r).split()
            err = _tail(folder / "stderr")
        finally:
            os.close(info_r)
            os.close(status_r)
    status, detail = _classify(code, said, err, max(cpu_s, seconds), timed_out, limits)
    return Outcome(status == "passed", status, _one_line(detail), round(seconds, 3))


def _init_of(info_fd: int, deadline: float) -> tuple[int, str] | None:
    """(pid, start time) of the sandbox's pid-namespace init, from bwrap's first JSON line;
    None if bwrap ended (or hung) before making it."""
    if not select.select([info_fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        return None
    found = re.search(rb'"child-pid": *(\d+)', os.read(info_fd, 4096))
    if not found:
        return None
    pid = int(found[1])
    started = _started(pid)
    return (pid, started) if started else None  # None: it has already ended


def _wait(proc: subprocess.Popen, init: tuple[int, str] | None,
          deadline: float) -> tuple[int, float, bool]:
    """Wait for bwrap until ``deadline``, killing the sandbox then; (exit code, CPU seconds
    its reaped processes used, whether it ran out of time)."""
    pause, timed_out = 0.001, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            # The init's death makes the kernel kill every process in its pid namespace.
            if init:
                _kill(init[0])
            _kill(-proc.pid)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return proc.returncode, usage.ru_utime + usage.ru_stime, timed_out


def _await_end(init: tuple[int, str] | None) -> None:
    """Return once the sandbox's init has exited, which the kernel completes only after every
    other process in its pid namespace is gone (bwrap may exit just before that)."""
    if init is None:
        return
    pid, started = init
    for patience in (5, 5):
        deadline = time.monotonic() + patience
        while _started(pid) == started:  # alive: not exited, not reaped, not a reused pid
            if time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        else:
            return
        _kill(pid)


def _started(pid: int) -> str:
    """The start time of live process ``pid`` ("" once it has exited or is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()
    return "" if fields[0] in "ZX" else fields[19]


def _kill(pid: int) -> None:
    """SIGKILL process ``pid`` (a process group if negative), if it is still there."""
    try:
        os.kill(pid, signal.SIGKILL) if pid > 0 else os.killpg(-pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_all(fd: int) -> str:
    """What is buffered in pipe ``fd`` (every writer is gone by now)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _classify(code: int, said: list[str], err: str, busy_s: float, timed_out: bool,
              limits: Limits) -> tuple[str, str]:
    """(status, detail) from the sandbox's exit code, what the bootstrap said, its stderr and
    how long it ran (at least as long as the CPU time it used)."""
    last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    if timed_out:
        return "timeout", f"still running after {limits.wall_s:g} s (wall clock); killed"
    if "ready" not in said:
        return "sandbox-error", last or f"the sandbox exited with status {code} before the program"
    if code == 0 and "done" in said:
        return "passed", ""
    # bwrap reports a program killed by signal N as exit status 128 + N
    sig = code - 128 if code > 128 else -code if code < 0 else 0
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and busy_s >= limits.cpu_s):
        return "cpu", f"used its {limits.cpu_s} s of CPU time"
    if "MemoryError" in last or "Cannot allocate memory" in last:
        return "memory", last
    if sig in signal.valid_signals():
        name = signal.Signals(sig).name if sig in set(signal.Signals) else f"signal {sig}"
        return "killed", f"killed by {name}" + (f": {last}" if last else "")
    if code == 0:
        return "failed", "exited (status 0) before the end of the program"
    return "failed", last or f"exit status {code}"


def _tail(path: Path) -> str:
    """The last STDERR_TAIL bytes of a file, as text."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - STDERR_TAIL))
        return f.read().decode("utf-8", errors="replace")


def _one_line(text: str) -> str:
    """``text`` as one printable line of at most DETAIL_CHARS characters."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= DETAIL_CHARS else line[:DETAIL_CHARS - 1] + "…"
