"""The whole run's schema, assembled from each component's, and composing it as the CLI does.

Every shipped YAML extends its group's schema (``defaults: [base_<group>]``; a judge's is
``base_judge_<name>``), so a key the code never reads is an error, not a silent no-op. Each
component checks its own settings (``validate`` next to its schema); ``validate`` here runs
them all, before any model is loaded. ``lambda`` is a top-level value (a Python keyword, so
read it as ``cfg["lambda"]``): 0 is the PT model, 1 the IT model.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from app import models
from app.errors import ConfigError, clean_lambda, scrubber, suggest  # noqa: F401 - re-exported
from app.evaluate import engine_schema
from app.evaluate import schema as task_schema
from app.judge import schema as judge_schema
from app.merge import methods
from app.modelset import ModelSet
from app.probe import schema as probe_schema
from app.tracking import TrackingConfig

TOY_DIR = Path(__file__).resolve().parent / "toy"
STANDINS_DIR = Path(__file__).resolve().parent / "standins"  # local leaderboard dataset stand-ins
GROUPS = {"model": models.PairConfig, "method": methods.MethodConfig,
          "task": task_schema.EvalConfig, "tracking": TrackingConfig,
          "probe": probe_schema.ProbeConfig, "engine": engine_schema.EngineConfig}


def _app_config_class() -> type:
    # `lambda` is a keyword: build the schema class by hand, without the generated methods
    # whose source would spell `self.lambda`.
    annotations = {
        "model": models.PairConfig, "method": methods.MethodConfig,
        "task": task_schema.EvalConfig, "judge": Any, "tracking": TrackingConfig,
        "probe": probe_schema.ProbeConfig, "engine": engine_schema.EngineConfig,
        "merge": methods.MergeSettings, "lambda": float,
        "seed": int, "device": str, "force": bool, "verbose": bool,
    }
    defaults = {
        "model": MISSING, "method": MISSING, "task": MISSING, "judge": MISSING,
        "probe": MISSING, "engine": field(default_factory=engine_schema.EngineConfig),
        "tracking": field(default_factory=TrackingConfig),
        "merge": field(default_factory=methods.MergeSettings), "lambda": 0.5, "seed": 0,
        "device": "cpu", "force": False, "verbose": False,
    }
    namespace = {"__annotations__": annotations, "__doc__": "The whole run.", **defaults}
    return dataclass(init=False, repr=False, eq=False)(type("AppConfig", (), namespace))


AppConfig = _app_config_class()


def register() -> None:
    """Register the schemas and the resolvers the YAMLs use; idempotent."""
    cs = ConfigStore.instance()
    cs.store(name="base_app", node=AppConfig)
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=node)
    for name, node in judge_schema.SCHEMAS.items():
        cs.store(group="judge", name=f"base_judge_{name}", node=node)
    if not OmegaConf.has_resolver("toy"):
        OmegaConf.register_new_resolver("toy", lambda sub: str(TOY_DIR / sub))
        OmegaConf.register_new_resolver("standins", lambda sub="": str(STANDINS_DIR / sub))
        OmegaConf.register_new_resolver("one_minus", lambda x: round(1.0 - float(x), 12))
        from app.console import log_handlers

        OmegaConf.register_new_resolver("log_handlers", log_handlers)  # conf/config.yaml


def schema_keys(name: str) -> list[str]:
    """Valid keys of a schema, by class name ('MethodConfig') or group name ('method')."""
    classes = [AppConfig, task_schema.TaskSpec, models.ExtraModel, models.Expert, methods.MergeSettings,
               judge_schema.JudgeThresholds, *GROUPS.values(), *judge_schema.SCHEMAS.values()]
    by_class = {cls.__name__: cls for cls in classes}
    cls = by_class.get(name) or GROUPS.get(name)
    if cls is None:
        return []
    return [f.name for f in dataclasses.fields(cls)] if cls is not AppConfig \
        else list(cls.__annotations__)


def conf_dir() -> Path:
    """The shipped config folder (``conf/`` at the repository root)."""
    return Path(__file__).resolve().parents[2] / "conf"


def compose(*overrides: str):
    """The shipped config composed with ``overrides``, as ``python -m app`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """A config group's options: the shipped YAMLs and, for Hydra's own groups
    (``hydra/launcher``, ``hydra/sweeper``), those its plugins register."""
    names = {p.stem for p in (conf_dir() / group).glob("*.yaml")}
    if group.startswith("hydra/"):
        from hydra.core.plugins import Plugins

        Plugins.instance()  # imports the plugins, which register their configs
        with contextlib.suppress(Exception):  # a group no plugin fills
            names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)
                      if n.endswith(".yaml")}
    return sorted(names)


def experiment_name(cfg) -> str:
    return cfg.tracking.experiment


@dataclass(frozen=True)
class Job:
    """One job's settings: the run config turned, once, into each component's own slice (its
    section, resolved and detached from the rest) and the few facts they share (λ, the seed,
    the device, the model set). Only ``pipeline`` and ``sweep`` hold the whole config."""

    models: ModelSet
    method: DictConfig  # its section; ``mk`` is its mergekit template resolved at λ
    lam: float
    mk: dict
    task: DictConfig
    judge: DictConfig
    probe: DictConfig
    engine: DictConfig
    merge: DictConfig
    tracking: DictConfig
    seed: int
    device: str
    force: bool
    params: dict  # the resolved config: the run's params and config.yaml
    secrets: tuple[str, ...] = ()  # values read from the environment: never written

    def hide(self, text: str) -> str:
        """``text`` with every value read from the environment written ``***``."""
        return scrubber(list(self.secrets))(text)


def job_settings(cfg) -> Job:
    """The job a (validated) run config describes: the method's mergekit template resolved at
    λ with the model set's fine-tunes, each section resolved and detached."""
    from app.merge.mergekit_adapter import with_pair_settings  # (imports torch)
    from app.provenance import env_values

    lam = clean_lambda(cfg["lambda"])
    model_set = ModelSet.from_config(cfg.model)
    resolving = cfg.copy()
    resolving["lambda"] = lam
    try:
        template = OmegaConf.to_container(resolving.method.mergekit, resolve=True)
    except Exception as e:  # an interpolation in the method YAML that does not resolve
        raise ConfigError(f"method={cfg.method.name}: mergekit template does not resolve: {e}")
    params = OmegaConf.to_container(cfg, resolve=True)
    params["lambda"] = lam
    return Job(models=model_set, lam=lam,
               mk=with_pair_settings(model_set.with_members(template), model_set),
               seed=int(cfg.seed), device=str(cfg.device), force=bool(cfg.force), params=params,
               secrets=tuple(env_values(cfg)),
               **{k: OmegaConf.create(params[k]) for k in SECTIONS})


SECTIONS = ("method", "task", "judge", "probe", "engine", "merge", "tracking")  # a Job's slices


def mergekit_config(cfg) -> dict[str, Any]:
    """The mergekit configuration (a plain dict, as in a mergekit-yaml file) of a run config."""
    return job_settings(cfg).mk


def validate(cfg) -> None:
    """Every component's checks that need no model loaded; ConfigError with one line."""
    model_set = ModelSet.from_config(cfg.model)  # first: before anything resolves model.it
    check_keys(cfg)
    clean_lambda(cfg["lambda"])
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} must be ≥ 0 (it seeds torch, numpy and the masks)")
    check_seeds(cfg)
    check_device(cfg.device)
    check_experiment(cfg)
    methods.validate(cfg.method, clean_lambda(cfg["lambda"]), model_set)
    methods.validate_settings(cfg.merge)
    check_save_dir(cfg.merge, model_set, cfg.tracking)
    models.validate(model_set)
    task_schema.validate(cfg.task, model_set)
    judge_schema.validate(cfg.judge)
    probe_schema.validate(cfg.probe, models.num_layers(model_set)
                          if cfg.probe.name != "none" else None)
    engine_schema.validate(cfg.engine, model_set, cfg.device)


def check_keys(node, path: str = "") -> None:
    """Every key is one its schema declares, however it was written (``+key=…`` bypasses
    Hydra's own check); a method's ``params`` are the knobs its mergekit template reads."""
    from omegaconf import DictConfig, ListConfig

    kind = OmegaConf.get_type(node)
    if isinstance(node, DictConfig) and dataclasses.is_dataclass(kind):
        valid = [f.name for f in dataclasses.fields(kind)]
        for key in node.keys():
            if key not in valid:
                raise ConfigError(f"{path}{key} is not a config key{suggest(str(key), valid)}; "
                                  f"valid: {', '.join(valid)}")
            if kind is methods.MethodConfig and key == "params":
                template = OmegaConf.to_yaml(node.mergekit)  # unresolved: it names the knobs
                knobs = [k for k in node.params if f"method.params.{k}" in template]
                for knob in node.params:
                    if knob not in knobs:
                        raise ConfigError(
                            f"method.params.{knob} is not a knob of method={node.name}"
                            f"{suggest(str(knob), knobs)}; valid: {', '.join(knobs) or 'none'}")
            elif not OmegaConf.is_missing(node, key):
                check_keys(node[key], f"{path}{key}.")
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_keys(item, f"{path[:-1]}[{i}].")


SEED_MAX = 2**32 - 1  # numpy's, torch's and Python's generators all take a 32-bit seed


def check_seeds(node, path: str = "") -> None:
    """Every seed (a key ``seed`` or ``*_seed``, anywhere) is an integer in [0, 2³²)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        where = f"{path}{key}" if isinstance(node, dict) else f"{path[:-1]}[{key}]"
        if isinstance(value, (dict, list)):
            check_seeds(value, f"{where}.")
        elif isinstance(key, str) and (key == "seed" or key.endswith("_seed")) \
                and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                           or not 0 <= value <= SEED_MAX):
            raise ConfigError(f"{where}={value} is not a valid seed; use an integer from 0 to "
                              f"{SEED_MAX} (the random generators take 32-bit seeds)")


def check_experiment(cfg) -> None:
    """The experiment's name is stored and shown in clear: no value read from the environment
    (``${oc.env:…}``, which every record shows as ``***``) may be part of it."""
    from app.provenance import env_values

    name = str(cfg.tracking.experiment)
    if any(secret in name for secret in env_values(cfg)):
        raise ConfigError("tracking.experiment holds a value read from the environment "
                          "(${oc.env:…}); an experiment's name is stored and shown in clear: "
                          "give the name itself, e.g. tracking.experiment=merge-study")


def check_save_dir(merge, model_set: ModelSet, tracking) -> None:
    """A save never replaces what the run reads or writes: a model of the set, the store."""
    if not merge.save_dir:
        return
    save = Path(merge.save_dir).expanduser().resolve()
    named = {**model_set.model_keys(), "tracking.dir": tracking.dir}
    for key, ref in named.items():
        path = Path(str(ref)).expanduser().resolve()
        if path == save or save in path.parents or (key != "tracking.dir"
                                                    and path in save.parents):
            raise ConfigError(f"merge.save_dir={merge.save_dir!r} would replace {key}={ref!r} "
                              f"(or what holds it): a save never replaces what the run reads or "
                              f"writes; give another folder")


def check_device(device: str) -> None:
    """``cpu``, ``auto``, or a CUDA device this machine has."""
    import re

    m = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if device in ("cpu", "auto"):
        return
    if m is None:
        raise ConfigError(f"device={device!r} is not valid; use cpu, cuda, cuda:N or auto")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(m.group(1) or 0)
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ConfigError(f"device={device!r}: this machine has {have}; use device=cpu or "
                          f"device=auto")
