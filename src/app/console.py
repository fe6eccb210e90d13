"""What a person reads of a run, a grid or a search: a header, live progress on a terminal, one
line per job, a closing block.

On a terminal (stdout a TTY, ``TERM`` not ``dumb``) a ``rich`` progress display shows the jobs
done of the total, the current job and its phase (merge, evaluate, judge, probe) and an ETA from
the jobs that ran; off a terminal (CI logs, SLURM output files, pipes) the same lines are plain,
with no control codes. Library output (logging records, Python warnings, progress bars written to
stderr) goes to a log file in Hydra's output folder unless ``verbose=true``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

# loggers that bring their own console handler (and do not propagate): sent to the log file
LIBRARIES = ("transformers", "datasets", "mlflow", "lm_eval", "vllm", "alembic", "optuna")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class Console:
    """The process's console: counts jobs, shows progress on a terminal, prints lines."""

    def __init__(self, stream=None):
        self.stream = stream
        self.progress = None
        self.total = self.finished = 0
        self.spent: list[float] = []  # seconds of each job that ran (skipped ones excluded)
        self.current, self.phase_name, self.note = "", "", ""
        self.started: float | None = None

    @property
    def out(self):
        return self.stream or sys.stdout

    @property
    def terminal(self) -> bool:
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"

    # ------------------------------------------------------------------ lines
    def line(self, text: str = "") -> None:
        """One line above the progress display (or plain)."""
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.out, flush=True)

    def lines(self, text: str) -> None:
        for line in text.splitlines():
            self.line(line)

    # ------------------------------------------------------------------ progress
    def begin(self, total: int, live: bool = True) -> None:
        """Count ``total`` jobs from here; a live display where ``live`` (the jobs run in this
        process) and on a terminal."""
        self.total, self.finished, self.spent = total, 0, []
        if live and self.terminal and self.progress is None and total > 0:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, \
                TextColumn

            self.progress = Progress(
                SpinnerColumn(), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("{task.fields[eta]}"), TextColumn("{task.description}"),
                console=RichConsole(file=self.out, highlight=False), transient=True,
                redirect_stdout=True, redirect_stderr=False)
            self.task = self.progress.add_task("", total=total, eta="")
            self.progress.start()
        self._show()

    def job(self, name: str) -> None:
        """A job (or a reference) starts."""
        self.current, self.phase_name, self.started = name, "", time.perf_counter()
        self._show()

    def phase(self, name: str) -> None:
        """The current job's phase: merge, evaluate, judge, probe, log."""
        self.phase_name = name
        self._show()

    def job_done(self, ran: bool = True, counted: bool = True) -> None:
        """The current job ended; ``ran``: it did the work (its time feeds the ETA);
        ``counted``: it is one of the ``total`` (a reference is not)."""
        if ran and self.started is not None:
            self.spent.append(time.perf_counter() - self.started)
        if counted:
            self.finished += 1
        self.current, self.phase_name, self.started = "", "", None
        self._show()

    def annotate(self, note: str) -> None:
        """A note shown with the progress (the search's best feasible λ so far)."""
        self.note = note
        self._show()

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def eta(self) -> str:
        """The time left, from the mean of the jobs that ran so far; "" before the first."""
        left = max(self.total - self.finished, 0)
        if not self.spent or not left:
            return ""
        return f"ETA {duration(left * sum(self.spent) / len(self.spent))}"

    def status(self) -> str:
        """The progress display's text: the current job and its phase, and the note."""
        parts = [f"{self.current} · {self.phase_name}" if self.phase_name else self.current,
                 self.note]
        return "  ".join(p for p in parts if p)

    def _show(self) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=min(self.finished, self.total),
                                 description=self.status(), eta=self.eta())


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_CONSOLE: list[Console] = []


def console() -> Console:
    """The console every job and callback of this process shares."""
    if not _CONSOLE:
        _CONSOLE.append(Console())
    return _CONSOLE[0]


# ---------------------------------------------------------------------- library output
def route_logs(verbose: bool) -> None:
    """Unless ``verbose``, the libraries that bring their own console handler log through the
    root logger instead, whose handlers (``conf/config.yaml``'s ``hydra.job_logging`` and
    ``hydra.hydra_logging``, via ``log_handlers``) write the log file."""
    if verbose:
        return
    for name in LIBRARIES:
        lib = logging.getLogger(name)
        for h in list(lib.handlers):
            if _to_console(h):
                lib.removeHandler(h)
        lib.propagate = True


def log_handlers(verbose, hydra_verbose=False) -> list[str]:
    """The root logger's handlers in Hydra's logging configs: the log file, and the console
    with ``verbose=true`` or Hydra's own ``hydra.verbose``."""
    return ["file", "console"] if _truthy(verbose) or _truthy(hydra_verbose) else ["file"]


def _truthy(value) -> bool:
    return value not in (None, False, "", "false", "False", [], "[]")


class FolderFileHandler(logging.FileHandler):
    """A log file whose folder is made when the first record comes (the sweep's log is
    configured before its folder exists)."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _to_console(handler: logging.Handler) -> bool:
    return (isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler))


@contextlib.contextmanager
def library_output(log_file: Path | None, verbose: bool) -> Iterator[None]:
    """While the work runs, what libraries write to stderr (warnings, progress bars) goes to
    ``log_file`` (appended); with ``verbose``, or without a file, it stays on the console."""
    if verbose or log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    saved = sys.stderr
    with open(log_file, "a", encoding="utf-8", errors="replace") as fh:
        sys.stderr = fh
        try:
            yield
        finally:
            sys.stderr = saved


def quiet_progress_bars() -> None:
    """No progress bars from the libraries that draw their own (their lines would fill the
    log file): the console's progress is the one to read."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # read where tqdm is imported: child processes
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with contextlib.suppress(ImportError):  # this process has imported them already
        import transformers

        transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()


# ---------------------------------------------------------------------- header and closing
def header_lines(job, what: str, log: str, n_jobs: int = 1, n_done: int = 0) -> list[str]:
    """The lines before the first job: the model set, what runs (``what``: "linear λ=0.5",
    "slerp, ties × λ 0, 0.5"), tasks, engine, device, store, how many jobs are done already,
    and where library messages go (``log``)."""
    models = job.models
    if models.pool:
        first = (f"{models.name} · base {models.base} · {len(models.members)} experts: "
                 + ", ".join(m.name for m in models.members))
    else:
        first = f"{models.name} · PT {models.base} · IT {models.it}"
    tasks = ", ".join(str(t.name) for t in job.task.tasks)
    jobs = f"{n_jobs} jobs: " if n_jobs > 1 else ""
    second = f"{jobs}{what} · tasks {tasks} · engine {job.engine.name} on {job.device}"
    done = f" · {n_done} of {n_jobs} done already (skipped)" if n_done else ""
    third = f"store {store_of(job.tracking)}{done} · library messages: {log} (verbose=true " \
            f"shows them)"
    return [first, second, third]


def store_of(tracking) -> str:
    """Where the runs go, as a person names it: the server's URI or the store's folder."""
    return str(tracking.uri) if tracking.uri else str(tracking.dir)


def ui_command(tracking) -> str:
    """The command that browses the store in the MLflow UI."""
    if tracking.uri:
        return f"mlflow ui  # or open {tracking.uri}"
    db = Path(str(tracking.dir)).expanduser().resolve() / "mlflow.db"
    return f"mlflow ui --backend-store-uri sqlite:///{db} --port 5000"


def next_commands(pairs: list[tuple[str, str]]) -> list[str]:
    """``next: <command>  # what it does``, one per line, aligned."""
    width = max(len(c) for c, _ in pairs)
    return [f"{'next:' if i == 0 else '     '} {c.ljust(width)}  # {why}"
            for i, (c, why) in enumerate(pairs)]


def in_process(config) -> bool:
    """Whether a sweep's jobs run in this process (Hydra's basic launcher): only then can the
    live display follow them (other launchers' jobs print their lines through the launcher)."""
    return str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")
