"""Submitit launchers whose unit of work is a λ-chunk: one process runs several jobs.

The stock ``submitit_local``/``submitit_slurm`` launchers start one process per job, and each
process loads the parents, the working model and the tasks again. These launchers group the
sweep's jobs by everything but ``lambda`` (one group per pair, method, task, …) and hand each
group, cut into chunks of ``chunk_size`` λ values, to one process, which runs its jobs one
after the other and so loads everything once. ``chunked_local`` also spreads the processes
over the local GPUs (``gpus``, default all visible): process *i* sees GPU
``gpus[i % len(gpus)]`` only (the stock local launcher shows every job GPU 0).

A ``chunked_local`` sweep ends like a sequential one: its workers' stdout (one line per job) is
relayed to the command's, and Ctrl-C or SIGTERM stops every worker (its open run KILLED) before
the command exits.
"""


import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)

LOG = logging.getLogger(__name__)
HERE = "hydra_plugins.chunked_submitit.chunked_submitit"


class LauncherConfigError(ValueError):
    """A bad `hydra.launcher.*` setting; the message is one line naming the key."""


def plan_chunks(job_overrides: Sequence[Sequence[str]], chunk_size: int) -> List[List[int]]:
    """Job positions grouped by their overrides other than ``lambda``, each group cut into
    chunks of ``chunk_size`` (0: the whole group); groups keep their first job's order."""
    if chunk_size < 0:
        raise LauncherConfigError(f"hydra.launcher.chunk_size={chunk_size}: must be >= 0 "
                          "(0: one process per pair and method)")
    groups: Dict[tuple, List[int]] = {}
    for i, overrides in enumerate(job_overrides):
        key = tuple(o for o in overrides if not o.lstrip("+~").startswith("lambda="))
        groups.setdefault(key, []).append(i)
    chunks = []
    for members in groups.values():
        size = chunk_size or len(members)
        chunks += [members[i : i + size] for i in range(0, len(members), size)]
    return chunks


class _Chunked(BaseSubmititLauncher):
    def __init__(self, chunk_size: int = 0, gpus: Optional[List[int]] = None,
                 **params: Any) -> None:
        self.chunk_size = chunk_size
        self.gpus = None if gpus is None else list(gpus)
        super().__init__(**params)

    def __call__(self, chunk: List[tuple], singleton_state: Dict[type, Singleton]
                 ) -> List[JobReturn]:  # type: ignore[override]
        """Run a chunk's jobs in this process, in order (a failed job does not stop the rest:
        Hydra's run_job returns it as a FAILED JobReturn)."""
        return [BaseSubmititLauncher.__call__(self, overrides, "hydra.sweep.dir", num,
                                              f"job_id_for_{num}", singleton_state)
                for overrides, num in chunk]

    def _executor(self):
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items()
            if k not in ("submitit_folder", "max_num_timeout")})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        chunks = plan_chunks(job_overrides, self.chunk_size)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        work = []
        for c, members in enumerate(chunks):
            work.append([(list(job_overrides[i]), initial_job_idx + i) for i in members])
            LOG.info("\tprocess #%d: %s", c, " | ".join(
                " ".join(filter_overrides(job_overrides[i])) for i in members))
        returns = self._submit(work, state)
        by_position = {}
        for members, rets in zip(chunks, returns):
            by_position.update(zip(members, rets))
        return [by_position[i] for i in range(len(job_overrides)) if i in by_position]

    def _submit(self, work: List[list], state) -> List[List[JobReturn]]:
        executor = self._executor()
        jobs = executor.map_array(self, work, [state] * len(work))
        return [j.results()[0] for j in jobs]


def local_gpus() -> List[int]:
    """The GPU ids visible to this process (none without CUDA)."""
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def gpu_for(process: int, gpus: Sequence[int]) -> Optional[int]:
    """The GPU the ``process``-th process gets: round robin over ``gpus`` (None: CPU)."""
    return gpus[process % len(gpus)] if gpus else None


class ChunkedLocalLauncher(_Chunked, LocalLauncher):
    def __call__(self, chunk: List[tuple], singleton_state: Dict[type, Singleton]
                 ) -> List[JobReturn]:  # type: ignore[override]
        # in the worker: the launching process stops it with SIGTERM; end as Ctrl-C would
        signal.signal(signal.SIGTERM, _interrupt_once)
        return super().__call__(chunk, singleton_state)

    def _submit(self, work: List[list], state) -> List[List[JobReturn]]:
        gpus = local_gpus() if self.gpus is None else self.gpus
        executor = self._executor()
        jobs, relay = [], StdoutRelay()
        try:
            with sigint_blocked():  # inherited: a Ctrl-C at the terminal is ours to pass on
                for c, chunk in enumerate(work):  # one visible GPU per process, round robin
                    gpu = gpu_for(c, gpus)
                    executor._executor.update_parameters(  # submitit's per-job GPU setting
                        gpus_per_node=0 if gpu is None else 1,
                        visible_gpus=() if gpu is None else [gpu])
                    jobs.append(executor.submit(self, chunk, state))
            while not all(j.done() for j in jobs):
                relay(jobs)
                time.sleep(0.2)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (app.cli): the workers stop first
            stop(jobs)
            raise
        finally:
            relay(jobs)
        return [j.results()[0] for j in jobs]


@contextlib.contextmanager
def sigint_blocked():
    """SIGINT blocked in this process, and in every process it starts meanwhile (the mask is
    inherited): Ctrl-C reaches the terminal's whole process group, and a worker must get one
    stop signal only, from ``stop``."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a Ctrl-C meanwhile arrives now


def _interrupt_once(signum, frame) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a repeated signal must not cut the run's closing
    raise KeyboardInterrupt(f"signal {signum}")


class StdoutRelay:
    """Prints what local jobs' workers write to their stdout, as it comes (a line per job, as
    the other launchers show); submitit's own lines stay in its log."""

    def __init__(self) -> None:
        self.read: Dict[Path, int] = {}

    def __call__(self, jobs: Sequence) -> None:
        for job in jobs:
            path = job.paths.stdout
            lines, self.read[path] = new_lines(path, self.read.get(path, 0))
            for line in lines:
                if not line.startswith("submitit "):
                    print(line, flush=True)


def new_lines(path: Path, offset: int) -> Tuple[List[str], int]:
    """The whole lines written to ``path`` past byte ``offset``, and the offset after them."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read()
    except FileNotFoundError:  # the worker has not started yet
        return [], offset
    text = text[: text.rfind(b"\n") + 1]
    return text.decode(errors="replace").splitlines(), offset + len(text)


def stop(jobs: Sequence, every_s: float = 1.0) -> None:
    """Stop the workers still running and wait for them: SIGTERM to each job's controller and
    to its worker (the controller passes it on too, but may not yet have set that up); the
    worker closes its open run KILLED and exits. Sent again each second: a process still
    starting may miss it (a worker acts on the first only)."""
    running = [j._process for j in jobs if j._process is not None]
    while running := [p for p in running if p.poll() is None]:
        for process in running:
            for pid in [process.pid, *children(process.pid)]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            running[0].wait(every_s)


def children(pid: int) -> List[int]:
    """The child processes of ``pid`` (Linux's /proc; [] elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(c) for c in path.read_text().split()]
    return []


class ChunkedSlurmLauncher(_Chunked, SlurmLauncher):
    def __init__(self, preview: bool = False, **params: Any) -> None:
        self.preview = preview
        super().__init__(**params)

    def _submit(self, work: List[list], state) -> List[List[JobReturn]]:
        if not self.preview:
            return super()._submit(work, state)
        from unittest import mock

        import submitit

        # submitit's own SlurmExecutor renders the script; off a cluster it finds no `srun`
        with mock.patch.object(submitit.SlurmExecutor, "affinity", return_value=1):
            executor = self._executor()._executor
        executor.parameters["map_count"] = len(work)
        text = executor._make_submission_file_text(executor._submitit_command_str, "preview")
        path = Path(str(self.config.hydra.sweep.dir)) / "submission.sbatch"
        path.write_text(text)
        print(f"{len(work)} array tasks; nothing submitted (preview). Script: {path}\n{text}")
        return [[] for _ in work]


@dataclass
class ChunkedLocalConf(LocalQueueConf):
    _target_: str = f"{HERE}.ChunkedLocalLauncher"
    chunk_size: int = 0  # λ values per process; 0: one process per (pair, method, …) group
    gpus: Optional[List[int]] = None  # GPU ids to spread processes over; None: all visible


@dataclass
class ChunkedSlurmConf(SlurmQueueConf):
    _target_: str = f"{HERE}.ChunkedSlurmLauncher"
    chunk_size: int = 0  # λ values per SLURM array task; 0: one task per (pair, method, …)
    preview: bool = False  # write and print the sbatch script, submit nothing


ConfigStore.instance().store(group="hydra/launcher", name="chunked_local",
                             node=ChunkedLocalConf(), provider="app")
ConfigStore.instance().store(group="hydra/launcher", name="chunked_slurm",
                             node=ChunkedSlurmConf(), provider="app")
