"""What a person reads: the real command under a pseudo-terminal (live progress) and without
one (plain lines), library messages kept in the log files, and a closing table whose numbers are
the store's and whose λ* and Pareto marks are ``python -m app.report``'s."""

import os
import pty
import re
import select
import subprocess
import sys

import pytest

from helpers import LIMIT, run_app, runs

CONTROL = re.compile(r"\x1b\[|\r")
LIBRARY = re.compile(r"\]\[(WARNING|INFO)\]|\[HYDRA\]|Launching \d+ jobs|it/s\]|Generating "
                     r"train split|kwarg is not of type")
GRID = ["method=slerp,ties", "lambda=0,0.5,1"]


def in_terminal(tmp_path, *args, timeout=600):
    """``python -m app`` with a pseudo-terminal as its stdout and stderr: (exit code, text)."""
    cmd = [sys.executable, "-m", "app", *args, f"tracking.dir={tmp_path}/mlruns",
           f"hydra.run.dir={tmp_path}/outputs", f"hydra.sweep.dir={tmp_path}/multirun"]
    main, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, env=env,
                            close_fds=True)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("no output for %ss" % timeout)
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


def closing_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The closing table's rows: (model, λ) → the cells after them."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model  λ"))
    rows = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if len(cells) < 3 or not re.fullmatch(r"[\d.]+", cells[1]):
            break
        rows[(cells[0], cells[1])] = cells[2:]
    return rows


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 6-job grid run under a pseudo-terminal, then a 10-job grid that contains it run
    without one (its 6 jobs skipped)."""
    tmp = tmp_path_factory.mktemp("console")
    code, tty = in_terminal(tmp, "-m", LIMIT, *GRID)
    assert code == 0, tty[-3000:]
    plain = run_app(tmp, "-m", LIMIT, "method=slerp,ties", "lambda=0,0.25,0.5,0.75,1")
    return tmp, tty, plain


def test_a_terminal_shows_live_progress_and_a_pipe_gets_plain_lines(grid):
    _, tty, plain = grid
    # on a terminal: rich's live display (control codes), jobs counted, an ETA once a job ran
    assert "\x1b[" in tty and re.search(r"\d/6", tty) and "ETA " in tty
    assert "slerp λ=0.5  toy_gen/acc=" in tty and "model  λ" in tty
    # off a terminal: no control code at all, the same job lines, the header and closing block
    out = plain.stdout + plain.stderr
    assert not CONTROL.search(out), repr(CONTROL.search(out))
    header = plain.stdout.splitlines()[:3]
    assert header[0].startswith("toy · PT ") and " · IT " in header[0]
    assert header[1].startswith("10 jobs: slerp, ties × λ 0, 0.25, 0.5, 0.75, 1 · tasks toy_mc")
    assert "6 of 10 done already (skipped)" in header[2] and "sweep.log" in header[2]
    assert plain.stdout.count("[done: run ") == 6  # the 6 jobs the terminal run did
    # nothing from the libraries on either console; all of it in the log files
    assert not LIBRARY.search(out), LIBRARY.search(out)
    assert not LIBRARY.search(tty), LIBRARY.search(tty)
    logs = "".join(p.read_text() for p in grid[0].glob("multirun/**/*.log"))
    assert "Launching 10 jobs locally" in logs and "[lm_eval" in logs


def test_the_closing_table_is_the_stores_and_its_marks_are_the_reports(grid, tmp_path):
    tmp, _, plain = grid
    rows = closing_rows(plain.stdout)
    client, found = runs(tmp)
    parent = next(r for r in found if r.data.tags.get("role") == "sweep"
                  and "0.25" in r.data.tags["overrides"])
    children = [r for r in found
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # the sweep is its parent's runs (as for the report): the 4 jobs it ran, and PT and IT
    assert len(children) == 4 and len(rows) == 6
    for run in children:
        cells = rows[(run.data.tags["method"], f"{float(run.data.params['lambda']):g}")]
        m = run.data.metrics
        assert cells[0] == f"{m['toy_mc/acc']:.4f}" and cells[1] == f"{m['toy_mc/ece']:.4f}"
        assert cells[-1] == f"{m['toy_gen/acc']:.4f}"
    # the report on the same sweep: its Pareto sets and λ* per method
    rep = subprocess.run([sys.executable, "-m", "app.report", "--parent", parent.info.run_id,
                          "--tracking-dir", str(tmp / "mlruns"), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr[-2000:]
    summary = (tmp_path / "r" / "summary.md").read_text()
    stars = re.search(r"^λ\* \(.*\): (.*)$", plain.stdout, re.M).group(1)
    for method in ("slerp", "ties"):
        section = re.search(rf"^\*\*{method}\*\*$(.*?)(?=^\*\*\w+\*\*$|\Z)", summary,
                            re.S | re.M).group(1)
        front = re.search(r"Pareto set \(λ\): (.*)", section).group(1).split(", ")
        own = [lam for meth, lam in rows if meth == method]  # PT and IT stand in for the rest
        marked = [lam for lam in own if "◆" in rows[(method, lam)]]
        assert sorted(marked, key=float) == sorted(set(front) & set(own), key=float), \
            (method, marked, front)
        star = re.search(r"λ\* \(best[^)]*\): ([^;\s(]+)", section).group(1).rstrip(":;")
        assert f"{method} {star}" in stars, (method, star, stars)
        starred = [lam for lam in own if "λ*" in rows[(method, lam)]]
        assert starred == ([star] if star in own else [])
    assert f"python -m app.report --parent {parent.info.run_id}" in plain.stdout


def test_the_default_run_prints_a_header_its_line_and_a_closing_block(tmp_path):
    proc = run_app(tmp_path, LIMIT)
    lines = proc.stdout.splitlines()
    assert proc.stderr == "" and not CONTROL.search(proc.stdout)
    assert lines[0].startswith("toy · PT ") and lines[1].startswith("linear λ=0.5 · tasks ")
    assert "library messages: " in lines[2] and "cli.log" in lines[2]
    assert lines[3].startswith("linear λ=0.5  toy_gen/acc=")
    assert lines[4].startswith("store: ") and lines[5].startswith("next: python -m app -m ")
    assert "mlflow ui --backend-store-uri sqlite:///" in lines[6] and len(lines) == 7
    log = next((tmp_path / "outputs").glob("*.log")).read_text()
    assert "kwarg is not of type" in log  # lm-eval's warning: kept, in the log


def test_verbose_brings_the_library_messages_back(tmp_path):
    proc = run_app(tmp_path, LIMIT, "verbose=true")
    out = proc.stdout + proc.stderr
    assert "kwarg is not of type" in out and "[lm_eval" in out
    assert "linear λ=0.5  toy_gen/acc=" in proc.stdout
