"""Probing tasks on disk, their fixed split and their control labels.

The layout (the project's own): one probing task is one JSONL file, grouped by phenomenon,

    <data_dir>/<phenomenon>/<task>.jsonl     {"text": ..., "label": ...} per line

with optional ``"text_pair"`` (a second segment: pairwise tasks, joined to ``text`` with a
space before encoding) and ``"control_key"`` (the word type the control task's label follows;
default: the input's last word, lowercased). Labels are classes (read as strings). Task names
(file stems) are unique across phenomena; any other file (a README.md) is ignored. Metrics
average a phenomenon's tasks, so the folder is the unit results are grouped by.

Holmes and FlashHolmes are not published in this layout: their evaluation code
(github.com/Holmes-Benchmark/holmes-evaluation, ``data/holmes`` and ``data/flash-holmes``)
downloads archives of one CSV per probing dataset with the columns ``inputs`` (the probed
words or spans, with character offsets), ``context`` (the sentence, or a list of two),
``label`` and ``set-<fold>`` (train/dev/test). Converted here, ``context`` becomes ``text``
(and ``text_pair``), ``label`` stays ``label`` and the probed words' text ``control_key``; the
folder is the phenomenon type (morphology, syntax, semantics, reasoning, discourse). Three
differences: the split is this module's (seeded by the inputs' text, not their ``set``
column), the representation pools the whole input rather than the probed span, and their
regression datasets (scored by Pearson correlation) do not fit: probes here are classifiers.

The split depends only on the seed and each row's text: distinct inputs are ordered by a
seeded hash, the first ``test_share`` of them are test, the next ``validation_share`` of the
rest validation (for choosing C), the remainder train. Identical inputs share a split, and two
models (any λ) get the same split. The control task (Hewitt & Liang, 2019) gives each distinct
control key a label drawn, by a seeded hash of the key, from the task's label distribution.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import ConfigError, suggest

TOY_PROBES = Path(__file__).resolve().parents[1] / "toy" / "probes"
SOURCES = {
    "holmes": ("Holmes", "data/holmes/README.md"),
    "flash": ("FlashHolmes", "data/flash-holmes/README.md"),
}
PAIR_SEPARATOR = " "


@dataclass
class ProbeTask:
    """One probing task's rows, in file order."""

    name: str
    phenomenon: str
    texts: list[str]
    pairs: list[str | None]
    labels: list[str]
    control_keys: list[str]

    def inputs(self) -> list[str]:
        """What the model reads: ``text``, and ``text_pair`` after a space where there is one."""
        return [t if p is None else t + PAIR_SEPARATOR + p for t, p in zip(self.texts, self.pairs)]


def data_dir(probe) -> Path:
    return Path(probe.data_dir).expanduser() if probe.data_dir else TOY_PROBES


def _missing(probe, folder: Path) -> ConfigError:
    if probe.name in SOURCES:
        title, readme = SOURCES[probe.name]
        return ConfigError(
            f"probe={probe.name}: probing data {str(folder)!r} is missing (offline, nothing "
            f"there); on a machine with internet fetch {title} as "
            f"github.com/Holmes-Benchmark/holmes-evaluation {readme} says, convert each "
            f"dataset to <phenomenon>/<task>.jsonl (app.probe.data), then set "
            f"probe.data_dir=DIR")
    if not probe.data_dir:
        return ConfigError(f"probe={probe.name}: the toy probing tasks are missing from "
                           f"{str(folder)!r}; build them with `python scripts/build_probes.py`")
    return ConfigError(f"probe.data_dir={probe.data_dir!r}: no such folder (expected "
                       f"DIR/<phenomenon>/<task>.jsonl files)")


def discover(probe) -> dict[str, tuple[str, Path]]:
    """Every task in the data folder: name -> (phenomenon, file), sorted by phenomenon, name."""
    folder = data_dir(probe)
    if not folder.is_dir():
        raise _missing(probe, folder)
    found: dict[str, tuple[str, Path]] = {}
    for path in sorted(folder.glob("*/*.jsonl"), key=lambda p: (p.parent.name, p.stem)):
        if path.stem in found:
            raise ConfigError(f"probe.data_dir={str(folder)!r}: task {path.stem!r} is in both "
                              f"{found[path.stem][0]}/ and {path.parent.name}/; task names must "
                              f"be unique")
        found[path.stem] = (path.parent.name, path)
    if not found:
        raise ConfigError(f"probe.data_dir={str(folder)!r} has no probing tasks (expected "
                          f"<phenomenon>/<task>.jsonl files)")
    clash = set(found) & {p for p, _ in found.values()}
    if clash:
        raise ConfigError(f"probe.data_dir={str(folder)!r}: {sorted(clash)[0]!r} names both a "
                          f"task and a phenomenon; rename one (their metrics would collide)")
    return found


def select(probe) -> list[tuple[str, str, Path]]:
    """The chosen tasks as (name, phenomenon, file): ``probe.tasks`` names tasks or whole
    phenomena; empty, every task."""
    found = discover(probe)
    phenomena = sorted({p for p, _ in found.values()})
    wanted = list(probe.tasks or [])
    for name in wanted:
        if name not in found and name not in phenomena:
            valid = [*found, *phenomena]
            raise ConfigError(f"probe.tasks: {name!r} is not a probing task or phenomenon in "
                              f"{str(data_dir(probe))!r}{suggest(str(name), valid)}; valid: "
                              f"{', '.join(valid)}")
    return [(name, p, path) for name, (p, path) in found.items()
            if not wanted or name in wanted or p in wanted]


def _row(line: str, path: Path, number: int) -> dict | None:
    if not line.strip():
        return None
    where = f"probing file {str(path)!r} line {number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{where} is not an object; each row is "
                          f'{{"text": ..., "label": ...}}')
    for key in ("text", "label"):
        if key not in row or row[key] is None:
            raise ConfigError(f"{where} has no {key!r} column; each row is "
                              f'{{"text": ..., "label": ...}} (optional "text_pair", '
                              f'"control_key")')
    if not isinstance(row["text"], str) or not isinstance(row.get("text_pair") or "", str):
        raise ConfigError(f"{where}: text and text_pair must be strings")
    return row


def check_files(selected: list[tuple[str, str, Path]]) -> None:
    """Each file's first row has the columns a task needs (every row: ``load_tasks``)."""
    for _, _, path in selected:
        with open(path) as fh:
            for number, line in enumerate(fh, 1):
                if _row(line, path, number) is not None:
                    break
            else:
                raise ConfigError(f"probing file {str(path)!r} has no rows")


def default_control_key(text: str) -> str:
    words = re.findall(r"\w+", text.lower())
    return words[-1] if words else ""


def load_tasks(probe) -> list[ProbeTask]:
    """The chosen tasks' rows, every row checked; with ``max_examples``, a seeded subset."""
    tasks = []
    for name, phenomenon, path in select(probe):
        with open(path) as fh:
            rows = [r for n, line in enumerate(fh, 1) if (r := _row(line, path, n)) is not None]
        if not rows:
            raise ConfigError(f"probing file {str(path)!r} has no rows")
        if probe.max_examples and len(rows) > probe.max_examples:
            keys = [input_key(r["text"], r.get("text_pair")) for r in rows]
            order = sorted(range(len(rows)),
                           key=lambda i: (_digest(probe.seed, "subset", keys[i]), i))
            rows = [rows[i] for i in sorted(order[:probe.max_examples])]
        tasks.append(ProbeTask(
            name=name, phenomenon=phenomenon, texts=[r["text"] for r in rows],
            pairs=[r.get("text_pair") for r in rows], labels=[str(r["label"]) for r in rows],
            control_keys=[str(r["control_key"]) if r.get("control_key") is not None else
                          default_control_key(r["text"] + " " + (r.get("text_pair") or ""))
                          for r in rows]))
    return tasks


def input_key(text: str, pair: str | None) -> str:
    return text if pair is None else f"{text}\x1f{pair}"


def _digest(seed: int, purpose: str, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{purpose}\x00{key}".encode()).digest()


@dataclass(frozen=True)
class Split:
    """Row indices of a task: ``train`` (validation included) and ``test``; ``validation``
    marks, per train row, those held out to choose C."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split(task: ProbeTask, seed: int, test_share: float, validation_share: float) -> Split:
    """The task's split, from ``seed`` and its inputs' text alone (see the module doc)."""
    keys = [input_key(t, p) for t, p in zip(task.texts, task.pairs)]
    distinct = sorted(set(keys), key=lambda k: _digest(seed, "split", k))
    n_test = max(1, round(len(distinct) * test_share))
    n_val = max(1, round((len(distinct) - n_test) * validation_share))
    if len(distinct) - n_test - n_val < 2:
        raise ConfigError(f"probe task {task.name}: {len(distinct)} distinct inputs are too few "
                          f"to split into train, validation and test")
    test_keys, val_keys = set(distinct[:n_test]), set(distinct[n_test:n_test + n_val])
    train = np.array([i for i, k in enumerate(keys) if k not in test_keys], dtype=np.int64)
    return Split(train=train,
                 validation=np.array([keys[i] in val_keys for i in train], dtype=bool),
                 test=np.array([i for i, k in enumerate(keys) if k in test_keys], dtype=np.int64))


def control_labels(task: ProbeTask, seed: int) -> list[str]:
    """Hewitt & Liang's control task: each distinct control key gets one label, drawn from
    the task's label distribution by a seeded hash of the key."""
    classes, counts = np.unique(np.array(task.labels), return_counts=True)
    cumulative = np.cumsum(counts) / counts.sum()
    out, memo = [], {}
    for key in task.control_keys:
        if key not in memo:
            u = int.from_bytes(_digest(seed, f"control:{task.name}", key)[:8], "big") / 2.0 ** 64
            memo[key] = str(classes[min(int(np.searchsorted(cumulative, u, side="right")),
                                        len(classes) - 1)])
        out.append(memo[key])
    return out
