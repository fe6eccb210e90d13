"""Model-written code runs in a sandbox it cannot leave: each hostile program below is contained,
scored as not passed with the right status, and leaves the machine and the user's files as
they were."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from app.evaluate.sandbox import STATUSES, Limits, isolation, run_untrusted

ROOT = Path(__file__).resolve().parents[2]
SMALL = Limits(cpu_s=1, wall_s=5, memory_mb=256, file_mb=4, processes=8, tmp_mb=16)

# Skipped only where bubblewrap is missing: installed but unable to sandbox is a failure.
# what its private /tmp holds: its program, and the mount point of a checkout's venv under /tmp
OWN = sorted({"main.py"} | {os.path.realpath(p).split("/")[2] for p in (sys.prefix, sys.base_prefix)
                            if os.path.realpath(p).startswith("/tmp/")})
needs_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (apt-get install bubblewrap)")


def run(program: str, limits: Limits = SMALL):
    """run_untrusted, checking what every outcome promises: a known status, one short line."""
    outcome = run_untrusted(program, limits)
    assert outcome.status in STATUSES and outcome.passed == (outcome.status == "passed")
    assert "\n" not in outcome.detail and len(outcome.detail) <= 300
    return outcome


def alive(comm: str) -> list[int]:
    """The live processes named ``comm``, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and Path(entry.path, "comm").read_text().strip() == comm:
                state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in "ZX":
                    found.append(int(entry.name))
        except OSError:
            pass
    return found


@needs_sandbox
def test_a_correct_program_passes_and_a_wrong_one_fails_with_its_assertion():
    solution = "def add(a, b):\n    return a + b\n"
    tests = "assert add(2, 2) == 4, 'add(2, 2) is not 4'\n"
    good = run(solution + tests)
    assert (good.passed, good.status, good.detail) == (True, "passed", "")
    wrong = run(solution.replace("a + b", "a - b") + tests)
    assert (wrong.passed, wrong.status) == (False, "failed")
    assert wrong.detail == "AssertionError: add(2, 2) is not 4"
    assert "\n" not in isolation() and isolation().startswith("bubblewrap")


@needs_sandbox
def test_leaving_before_the_tests_run_is_not_a_pass():
    for leave in ("import sys; sys.exit(0)", "import os; os._exit(0)"):
        outcome = run(f"{leave}\nassert False, 'the tests ran'")
        assert (outcome.passed, outcome.status) == (False, "failed"), leave
        assert "before the end" in outcome.detail


@needs_sandbox
def test_an_endless_program_stops_at_its_cpu_or_wall_clock_limit():
    start = time.monotonic()
    busy = run("while True: pass", Limits(cpu_s=1, wall_s=10))
    assert (busy.passed, busy.status) == (False, "cpu") and busy.seconds < 3
    asleep = run("import time\ntime.sleep(60)", Limits(cpu_s=5, wall_s=1))
    assert (asleep.passed, asleep.status) == (False, "timeout") and asleep.seconds < 3
    assert time.monotonic() - start < 8


@needs_sandbox
@pytest.mark.parametrize("fork", ["os.fork()", "try: os.fork()\n    except OSError: pass"],
                         ids=["plain", "that-outlives-its-errors"])
def test_a_fork_bomb_is_contained_and_leaves_no_process_behind(fork):
    name = f"bomb{os.getpid()}"[:15]  # its processes' name, to look for them afterwards
    bomb = f"open('/proc/self/comm', 'w').write({name!r})\nimport os\nwhile True:\n    {fork}\n"
    outcome = run(bomb, Limits(cpu_s=2, wall_s=1, memory_mb=256, processes=8))
    assert not outcome.passed and outcome.status in ("failed", "timeout", "cpu", "killed")
    assert alive(name) == []
    assert subprocess.run(["true"]).returncode == 0  # the machine can still fork


@needs_sandbox
def test_deleting_or_writing_outside_its_folder_leaves_the_users_files(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "results.json").write_text("{}")
    removed = run(f"import shutil\nshutil.rmtree({str(victim)!r})")
    assert not removed.passed
    assert (victim / "results.json").read_text() == "{}"
    planted = ROOT / "sandbox-victim.txt"
    try:
        written = run(f"open({str(planted)!r}, 'w').write('pwned')")
        assert not written.passed and not planted.exists()
    finally:
        planted.unlink(missing_ok=True)


@needs_sandbox
def test_it_cannot_reach_a_server_on_the_callers_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        outcome = run(f"import socket\n"
                      f"socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')")
        assert not outcome.passed and "Connection refused" in outcome.detail
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection is waiting
            server.accept()


@needs_sandbox
def test_it_starts_in_an_empty_private_folder_with_none_of_the_callers_variables(monkeypatch):
    monkeypatch.setenv("APP_TEST_SECRET", "hunter2")
    first = run(f"import os\n"
                f"assert 'APP_TEST_SECRET' not in os.environ, 'the secret leaked'\n"
                f"assert set(os.environ) <= {{'PATH', 'LANG', 'HOME', 'PWD', 'LC_CTYPE'}}, "
                f"sorted(os.environ)\n"
                f"try:\n"
                f"    seen = open('/proc/{os.getpid()}/environ', 'rb').read()\n"
                f"except OSError:\n"
                f"    seen = b''\n"
                f"assert b'hunter2' not in seen, 'read the caller environment'\n"
                f"assert os.environ['HOME'] == os.getcwd()\n"
                f"assert sorted(os.listdir()) == {OWN!r}, os.listdir()\n"
                f"open('left-behind', 'w').write('x')\n")
    assert first.passed, first.detail
    second = run(f"import os\nassert sorted(os.listdir()) == {OWN!r}, os.listdir()")
    assert second.passed, second.detail


@needs_sandbox
def test_a_ten_gigabyte_file_stops_at_the_file_size_limit(tmp_path, monkeypatch):
    tmp = tmp_path / "host-tmp"  # the caller's temporary folder, this test's alone
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    before, free = set(tmp.iterdir()), shutil.disk_usage(tmp).free
    outcome = run("chunk = b'x' * (1 << 20)\n"
                  "with open('big.bin', 'wb') as f:\n"
                  "    for _ in range(10 * 1024):\n"
                  "        f.write(chunk)\n")
    assert (outcome.passed, outcome.status) == (False, "failed")
    assert "File too large" in outcome.detail and outcome.seconds < 3
    assert set(tmp.iterdir()) <= before  # its folder is gone
    assert shutil.disk_usage(tmp).free > free - (64 << 20)


@needs_sandbox
def test_killing_its_parent_the_test_or_everything_leaves_the_test_running():
    for target in ("os.getppid()", str(os.getpid()), "-1"):
        outcome = run(f"import os, signal\nos.kill({target}, signal.SIGKILL)\n")
        assert outcome.status != "sandbox-error", (target, outcome)
    os.kill(os.getpid(), 0)  # still here (a SIGKILL would have ended the whole session)
    outcome = run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n")
    assert not outcome.passed and "ProcessLookupError" in outcome.detail


@needs_sandbox
def test_a_memory_hog_gets_a_memory_error_not_the_oom_killer():
    outcome = run("x = bytearray(4 * 1024**3)")
    assert (outcome.passed, outcome.status) == (False, "memory")
    assert outcome.detail == "MemoryError" and outcome.seconds < 3


def test_without_bubblewrap_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    assert isolation().startswith("none: bubblewrap is not installed")
    marker = tmp_path / "ran"
    outcome = run(f"open({str(marker)!r}, 'w').write('unsandboxed')")
    assert (outcome.passed, outcome.status) == (False, "sandbox-error")
    assert "bubblewrap" in outcome.detail and not marker.exists()
