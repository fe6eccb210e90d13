"""What a run records about itself: its fingerprint (what determines its result), tags and
params (the resolved config, the package versions, the process)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from app.errors import scrubber  # noqa: F401 - re-exported
from app.metrics import METRICS_VERSION

PACKAGES = {"mergekit": "mergekit", "lm_eval": "lm-eval", "torch": "torch",
            "transformers": "transformers", "mlflow": "mlflow", "hydra": "hydra-core",
            "optuna": "optuna"}


def _eval_key(job) -> dict:
    """What determines every evaluation of a job (its merge's or a reference's), assembled from
    the components' own parts."""
    from app.evaluate import engine_schema
    from app.evaluate.schema import fingerprint_part as task_part
    from app.probe.schema import fingerprint_part as probe_part

    key = {"task": task_part(job.task), "seed": job.seed, **job.models.evaluation_key(),
           "metrics": METRICS_VERSION}
    if (engine := engine_schema.fingerprint_part(job.engine)) is not None:
        key["engine"] = engine
    if job.judge.name != "none":  # judge=none leaves fingerprints as they were
        from app.judge import fingerprint as judge_fingerprint

        key["judge"] = judge_fingerprint(job.judge)
    if (probe := probe_part(job.probe)) is not None:
        key["probe"] = probe
    return key


def job_fingerprint(job) -> str:
    """Hash of everything that determines a job's result (``job``: an ``app.config.Job``): the
    merge (model set, method, parameters, λ, dtype), the seed, the tasks and their settings,
    the metric definitions' version."""
    key = {"merge": job.mk, **_eval_key(job), **job.models.merge_key()}
    if _masks_on_cuda(job.device, job.mk):  # CPU-drawn masks leave fingerprints as they were
        key["masks"] = "cuda"
    return digest(key)


def _masks_on_cuda(device: str, mk: dict) -> bool:
    """Whether this merge draws random masks (DARE, DELLA) with CUDA's generator: the same seed
    gives other masks than on CPU, so it is another merge."""
    from app.merge.sparsify import SPARSIFICATION

    kind = SPARSIFICATION.get(str(mk.get("merge_method")), ("",))[0]
    if kind not in ("random", "della_magprune"):
        return False
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def reference_fingerprint(job, parent: str) -> str:
    """Hash of a reference's evaluation (shared by every method's sweep over the model set)."""
    return digest({**job.models.reference_key(parent), **_eval_key(job)})


def digest(payload: Any) -> str:
    """A stable short hash of a JSON-able payload."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def job_tags(job, lam: float, fingerprint: str, role: str,
             overrides: str = "") -> dict[str, str]:
    """A run's tags (no value read from the environment among them: ``***``)."""
    tags = {"role": role, "method": "reference" if role == "reference" else job.method.name,
            "pair": job.models.name, "model_set": digest(job.models.key()),
            "lambda": f"{lam:g}",
            "tasks": ",".join(t.name for t in job.task.tasks), "seed": str(job.seed),
            "overrides": overrides or "(defaults)", "fingerprint": fingerprint,
            **process_tags()}
    return {k: job.hide(v) for k, v in tags.items()}


def log_config(run, job, lam: float, mk: dict) -> None:
    """The resolved config as params and config.yaml, package versions, mergekit.yaml; a value
    read from the environment (``${oc.env:…}``) is logged as ``***``."""
    import yaml

    resolved = {**job.params, "lambda": lam}
    hide = job.hide
    params = {k: hide(str(v)) for k, v in flatten(resolved).items()
              if not k.startswith("method.mergekit")}
    params.update(package_versions())
    run.log_params(params)
    run.log_text(hide(OmegaConf.to_yaml(OmegaConf.create(resolved))), "config.yaml")
    run.log_text(hide(yaml.safe_dump(mk, sort_keys=False)), "mergekit.yaml")


ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")


def env_values(source: Any) -> list[str]:
    """The values of the environment variables that ``source`` (a config, or text such as the
    command line) interpolates with ``${oc.env:NAME}``."""
    text = json.dumps(OmegaConf.to_container(source, resolve=False), default=str) \
        if isinstance(source, DictConfig) else str(source)
    return [os.environ[name] for name in set(ENV_INTERPOLATION.findall(text))
            if len(os.environ.get(name, "")) >= 4]


def process_tags() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "git_commit": git_commit()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg, dist in PACKAGES.items():
        try:
            out[f"version.{pkg}"] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists → {'a.b.0.c': 'value'} for params."""
    out: dict[str, str] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: str(d)}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
