"""The console's bookkeeping: the ETA counts only jobs that did the work; off a terminal nothing
but the lines is written."""

import io

from app.console import Console, duration, log_handlers


def test_the_eta_is_the_mean_of_the_jobs_that_ran_times_the_jobs_left():
    shown = Console(io.StringIO())
    shown.begin(5)
    assert shown.eta() == ""  # nothing ran yet: no guess
    shown.job("linear λ=0")
    shown.job_done(ran=False)  # skipped, or a reused reference: instant, says nothing
    assert shown.finished == 1 and shown.eta() == ""
    shown.spent.append(30.0)  # one job that did the work, as job_done records it
    shown.finished = 2
    assert shown.eta() == "ETA 1m30s"  # 3 left × 30 s
    shown.job("reference PT")
    shown.job_done(counted=False)  # a reference is not one of the grid's jobs
    assert shown.finished == 2


def test_off_a_terminal_the_console_writes_plain_lines_only():
    out = io.StringIO()
    shown = Console(out)
    shown.begin(2)
    shown.job("slerp λ=0.5")
    shown.phase("evaluate")
    shown.line("slerp λ=0.5  toy_mc/acc=0.69")
    shown.job_done()
    shown.end()
    assert out.getvalue() == "slerp λ=0.5  toy_mc/acc=0.69\n" and shown.progress is None


def test_durations_and_the_log_handlers_verbose_picks():
    assert [duration(s) for s in (0.4, 59, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]
    assert log_handlers(False, False) == ["file"]
    assert log_handlers(True) == log_handlers("false", ["app"]) == ["file", "console"]
