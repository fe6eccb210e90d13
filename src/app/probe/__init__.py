"""Linear probes on a merge's hidden states (Holmes-style): what its layers encode.

``run_probes`` is the one call a job makes with the working model (``probe=none`` makes it a
no-op). For each probing task (``app.probe.data``: one JSONL file per task, grouped by
phenomenon):

1. the task's rows are split by a seeded hash of their text (the same split for every λ);
2. every input is encoded once: batched forward passes return all requested layers'
   hidden states, pooled per ``probe.representation`` (``app.probe.encode``);
3. a logistic-regression probe per layer, its C chosen on a validation part of train, is
   scored on test (``app.probe.fit``); at the metric layer (the deepest requested) the same
   inputs are also probed for the control task's labels (Hewitt & Liang: a random label per
   word type), and selectivity is the accuracy above that control's.

The metrics (``probe/<task>/{acc,f1,control_acc,selectivity}``, ``probe/<phenomenon>/acc``,
``time/probe_s``) come with ``per_layer`` accuracies and the metric layer's features; saved
(``ProbeResult.save``), those re-score to the logged numbers (``rescore``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.probe.data import ProbeTask, classes_of, control_labels, load_tasks, split
from app.probe.schema import ProbeConfig, resolve_layers, validate

__all__ = ["ProbeConfig", "ProbeResult", "TaskFeatures", "load_tasks", "rescore", "run_probes",
           "validate"]
LOG = logging.getLogger(__name__)
SETTINGS_FILE = "probes.json"


@dataclass
class TaskFeatures:
    """What re-scores one task: the metric layer's train/test features and labels (indices
    into ``classes``), the validation rows of train, and which file rows each split holds."""

    phenomenon: str
    layer: int
    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    control_train: np.ndarray
    validation: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    control_test: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray

    ARRAYS = ("x_train", "y_train", "control_train", "validation", "x_test", "y_test",
              "control_test", "train_rows", "test_rows")


@dataclass
class ProbeResult:
    """``metrics`` as logged, ``per_layer`` {task: {layer: test accuracy}}, ``features`` per
    task, and the settings the probes were fit with (``C_grid``, ``seed``, ...)."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_layer: dict[str, dict[int, float]] = field(default_factory=dict)
    features: dict[str, TaskFeatures] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def save(self, folder) -> Path:
        """``<folder>/probes.json`` (settings, metrics, per-layer accuracies, classes) and one
        ``<folder>/<task>.npz`` of arrays per task; the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tasks = {}
        for name, f in self.features.items():
            np.savez(folder / f"{name}.npz", **{a: getattr(f, a) for a in TaskFeatures.ARRAYS})
            tasks[name] = {"phenomenon": f.phenomenon, "layer": f.layer, "classes": f.classes}
        doc = {"settings": self.settings, "metrics": self.metrics, "tasks": tasks,
               "per_layer": {t: {str(k): v for k, v in d.items()} for t, d in
                             self.per_layer.items()}}
        (folder / SETTINGS_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        return folder


def metrics_of(scores: dict[str, tuple[str, object, object]]) -> dict[str, float]:
    """{task: (phenomenon, probe Score, control Score)} -> the probe/* metrics."""
    out: dict[str, float] = {}
    by_phenomenon: dict[str, list[float]] = {}
    for task, (phenomenon, probe, control) in scores.items():
        out[f"probe/{task}/acc"] = probe.acc
        out[f"probe/{task}/f1"] = probe.f1
        out[f"probe/{task}/control_acc"] = control.acc
        out[f"probe/{task}/selectivity"] = probe.acc - control.acc
        by_phenomenon.setdefault(phenomenon, []).append(probe.acc)
    for phenomenon, accs in sorted(by_phenomenon.items()):
        out[f"probe/{phenomenon}/acc"] = float(np.mean(accs))
    return out


def _score_task(f: TaskFeatures, c_grid, seed: int):
    from app.probe import fit

    probe = fit.score(f.x_train, f.y_train, f.validation, f.x_test, f.y_test, c_grid, seed)
    control = fit.score(f.x_train, f.control_train, f.validation, f.x_test, f.control_test,
                        c_grid, seed)
    return probe, control


def _n_layers(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    return int(config.num_hidden_layers)


def _probe_task(model, tokenizer, task: ProbeTask, probe_cfg, layers: list[int], device):
    """(TaskFeatures at the metric layer, probe Score, control Score, {layer: acc})."""
    from app.probe import fit
    from app.probe.encode import encode

    s = split(task, probe_cfg.seed, probe_cfg.test_share, probe_cfg.validation_share)
    classes = classes_of(task.labels)
    unseen = sorted({task.labels[i] for i in s.test} - {task.labels[i] for i in s.train})
    if unseen:  # a seeded subset of a many-class task often has some: they count as errors
        LOG.warning("probe %s: test label(s) %s are in no training row; the probe cannot "
                    "predict them (more rows, or a larger probe.max_examples)", task.name,
                    ", ".join(map(repr, unseen)))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in task.labels], dtype=np.int64)
    control = np.array([index[c] for c in control_labels(task, probe_cfg.seed)], dtype=np.int64)
    x = encode(model, tokenizer, task.inputs(), layers, probe_cfg.representation,
               probe_cfg.batch_size, device)
    c_grid, seed = list(probe_cfg.C_grid), probe_cfg.seed
    per_layer = {layer: fit.score(x[layer][s.train], y[s.train], s.validation,
                                  x[layer][s.test], y[s.test], c_grid, seed).acc
                 for layer in layers[:-1]}
    features = TaskFeatures(
        phenomenon=task.phenomenon, layer=layers[-1], classes=classes,
        x_train=x[layers[-1]][s.train], y_train=y[s.train], control_train=control[s.train],
        validation=s.validation, x_test=x[layers[-1]][s.test], y_test=y[s.test],
        control_test=control[s.test], train_rows=s.train, test_rows=s.test)
    probe, control_score = _score_task(features, c_grid, seed)
    per_layer[layers[-1]] = probe.acc
    return features, probe, control_score, per_layer


def run_probes(model, tokenizer, probe_cfg, device="cpu") -> ProbeResult:
    """Probe ``model``'s hidden states on ``probe_cfg``'s tasks (see the module doc); the
    model's weights and training flags are left as they were."""
    if probe_cfg.name == "none":
        return ProbeResult()
    start = time.perf_counter()
    n_layers = _n_layers(model)
    validate(probe_cfg, n_layers)
    layers = resolve_layers(probe_cfg.layers, n_layers)
    result = ProbeResult(settings={
        "name": probe_cfg.name, "C_grid": [float(c) for c in probe_cfg.C_grid],
        "seed": probe_cfg.seed, "representation": probe_cfg.representation, "layers": layers,
        "test_share": probe_cfg.test_share, "validation_share": probe_cfg.validation_share})
    scores = {}
    for task in load_tasks(probe_cfg):
        features, probe, control, per_layer = _probe_task(model, tokenizer, task, probe_cfg,
                                                          layers, device)
        result.features[task.name] = features
        result.per_layer[task.name] = per_layer
        result.settings.setdefault("C", {})[task.name] = {"probe": probe.C,
                                                          "control": control.C}
        scores[task.name] = (task.phenomenon, probe, control)
        LOG.info("probe %s: acc %.3f, control %.3f (layer %d, C=%g)", task.name, probe.acc,
                 control.acc, features.layer, probe.C)
    result.metrics = metrics_of(scores)
    result.metrics["time/probe_s"] = time.perf_counter() - start
    return result


def load_features(folder) -> tuple[dict, dict[str, TaskFeatures]]:
    """A saved ``ProbeResult``'s probes.json and its tasks' features."""
    folder = Path(folder)
    doc = json.loads((folder / SETTINGS_FILE).read_text())
    features = {}
    for name, meta in doc["tasks"].items():
        with np.load(folder / f"{name}.npz") as arrays:
            features[name] = TaskFeatures(**meta, **{a: arrays[a] for a in TaskFeatures.ARRAYS})
    return doc, features


def rescore(folder) -> dict[str, float]:
    """The probe/* metrics recomputed from a saved ``ProbeResult`` (no model needed)."""
    doc, features = load_features(folder)
    settings = doc["settings"]
    scores = {name: (f.phenomenon, *_score_task(f, settings["C_grid"], settings["seed"]))
              for name, f in features.items()}
    return metrics_of(scores)


def probe_run(model, tokenizer, probe_cfg, run, device: str = "cpu",
              title: str = "") -> dict[str, float]:
    """Probe the working model as it is now and log to ``run``: the ``probe/*`` metrics
    (returned), ``probes/`` (settings, metrics, per-layer accuracies and the features that
    re-score them: ``rescore``) and ``probes/layers.png`` (titled ``title``); nothing with
    ``probe=none``."""
    if probe_cfg.name == "none":
        return {}
    import tempfile

    result = run_probes(model, tokenizer, probe_cfg, device)
    with tempfile.TemporaryDirectory() as tmp:
        result.save(tmp)
        run.log_artifacts(tmp, "probes")
    if any(len(layers) > 1 for layers in result.per_layer.values()):
        from app.plots import probe_layers_figure

        run.log_figure(probe_layers_figure(result.per_layer, title), "probes/layers.png")
    return result.metrics

