"""``python -m app`` and ``python -m app.report``: the entry points, and the only place that
exits. Bad input becomes one ``error:`` line (exit 2), a job's fault one line (exit 1)."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from app.config import conf_dir, register
from app.errors import Abort, ConfigError
from app.messages import user_error

register()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _main(cfg: DictConfig) -> dict[str, float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from app.console import library_output, quiet_progress_bars, route_logs
    from app.pipeline import this_process
    from app.sweep import closing_block, job_context

    hc = HydraConfig.get()
    verbose = bool(cfg.get("verbose")) or bool(hc.verbose)
    log = Path(hc.runtime.output_dir) / f"{hc.job.name}.log"
    route_logs(verbose)
    if not verbose:
        quiet_progress_bars()
    single = hc.mode != RunMode.MULTIRUN
    ctx = job_context()
    if single:
        ctx.header = _shown_path(log)
    try:
        with library_output(log, verbose):
            metrics = this_process().run_job(cfg, ctx)
        if single:
            closing_block(cfg)
        return metrics
    except Exception as e:  # noqa: BLE001 - user errors become one line, bugs re-raise
        line = user_error(e)
        if line is None:
            raise
        _forget_refused_secrets(HydraConfig.get())
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # one job of a sweep: its sweeper decides (a search records a FAIL trial)
        _fail(line)  # exit here, before Hydra reports the job's failure


def _shown_path(path: Path) -> str:
    """A path as the user would type it: relative to the working folder where it is inside."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _forget_refused_secrets(hc) -> None:
    """A key typed where a variable's name belongs was refused; Hydra has already copied the
    overrides into the job's ``.hydra/`` folder: take it out of those copies."""
    from app.sweep import typed_overrides

    typed = [o.split("=", 1)[1] for o in typed_overrides(hc)
             if o.lstrip("+~").startswith("judge.api_key_env=")]
    typed = [v.strip("'\"") for v in typed
             if not re.fullmatch(r"['\"]?[A-Za-z_][A-Za-z0-9_]*['\"]?", v)]
    if not typed or not hc.output_subdir:
        return
    for path in (Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml"):
        text = path.read_text()
        for value in typed:
            text = text.replace(value, "***")
        path.write_text(text)


def main() -> None:
    if {"--help", "-h"} & set(sys.argv[1:]):  # ours; --hydra-help stays Hydra's
        from app.help import app_help

        print(app_help(), end="")
        sys.exit(0)
    from app.compat import check_versions
    from app.faults import JobFailed

    try:
        check_versions()
    except ConfigError as e:
        _fail(str(e))
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us to be reworded
    sys.stderr = _WithoutHydrasJobLine(sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: close the open runs, then stop
    try:
        try:
            _main()
        finally:  # a live progress display gives the terminal back before any last line
            from app.console import console

            console().end()
    except JobFailed as e:  # a fault during work: its run is FAILED with the reason
        again = ("; the sweep's other jobs ran and are kept: fix the cause and run the same "
                 "command again (finished jobs are skipped)") if _multirun() else ""
        print(f"error: {e}{again}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Abort as e:  # a bad config found by the sweep's callback
        _fail(str(e))
    except KeyboardInterrupt:
        forced = any(a.lower() in ("force=true", "force=1", "force=yes") for a in sys.argv)
        how = ("drop force=true to resume (with it every job runs again)" if forced
               else "run the same command again to resume (finished jobs are skipped)")
        print(f"interrupted: the open runs are marked KILLED; {how}", file=sys.stderr,
              flush=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - user errors become one line, bugs re-raise
        line = _unwritable_output_dir(e) or user_error(e)
        if line is None:
            raise
        _fail(line)


def _unwritable_output_dir(e: BaseException) -> str | None:
    """One line where Hydra itself could not create or write an output folder (the run's, the
    sweep's or a job's in it): ``hydra.run.dir``, or ``hydra.sweep.dir`` in a multirun."""
    import sysconfig
    import traceback

    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(e.__traceback__)]
    files = [f for f in files if not f.startswith((sysconfig.get_path("stdlib"), "<frozen"))]
    if not files or not files[-1].startswith(os.path.dirname(hydra.__file__)):
        return None  # raised by a job, a plugin or this project: not Hydra's folder
    while e is not None and not isinstance(e, OSError):  # logging wraps it in a ValueError
        e = e.__cause__ or e.__context__
    if e is None or e.filename is None:
        return None
    key = "hydra.sweep.dir" if _multirun() else "hydra.run.dir"
    return (f"{key}: {str(e.filename)!r} cannot be created or written ({e.strerror}); give a "
            f"folder you can write")


def _multirun() -> bool:
    return "-m" in sys.argv or "--multirun" in sys.argv


class _WithoutHydrasJobLine:
    """stderr without Hydra's "Error executing job with overrides: […]": a failed job has
    already printed its own FAILED line, and the command ends with one error line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides:"):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _fail(line: str) -> None:
    """Print one error line (never a value read from the environment) and exit 2."""
    from app.provenance import env_values, scrubber

    print(f"error: {scrubber(env_values(' '.join(sys.argv)))(line)}", file=sys.stderr,
          flush=True)
    sys.exit(2)


def report_main(argv: list[str] | None = None) -> None:
    """``python -m app.report``: the frontier report of a sweep (see ``app.report``)."""
    from app.report import ReportError, run

    try:
        run(argv)
    except ReportError as e:
        _fail(str(e))
