"""Probing tasks on disk, their fixed split and their control labels.

The layout (the project's own): one probing task is one JSONL file, grouped by phenomenon,

    <data_dir>/<phenomenon>/<task>.jsonl     {"text": ..., "label": ...} per line

with optional ``"text_pair"`` (a second segment: pairwise tasks, joined to ``text`` with a
space before encoding) and ``"control_key"`` (the word type the control task's label follows;
default: the input's last word, lowercased). Labels are classes (read as strings). Task names
(file stems) are unique across phenomena; any other file (a README.md) is ignored. Metrics
average a phenomenon's tasks, so the folder is the unit results are grouped by.

Holmes and FlashHolmes are read in their published layout as well (the archives that
github.com/Holmes-Benchmark/holmes-evaluation's ``data/holmes/download.py`` and
``data/flash-holmes/download.py`` unpack; they are not on the hub):

    <data_dir>/<dataset>/samples.csv        columns inputs, context, label, set-0 (and id)
    <data_dir>/<dataset>/config-*.yaml      num_labels (1: a regression dataset), ...
    <phenomena CSV>                         columns "probing dataset", "linguistic subfield"

``inputs`` is a Python tuple literal: the sentence (and the second one of a pair), or for a
token task ``(token, context index, start, end)`` tuples into ``context`` (a list literal of
sentences). A sentence task's text is its sentence(s); a token task's its context, with the
probed tokens as the control key. ``set-0`` (train/dev/test) is the split, dev choosing C. The
phenomenon is the dataset's linguistic subfield (morphology, syntax, semantics, reasoning,
discourse) in the phenomena CSV: ``probe.phenomena``, by default the repository's leaderboard
table next to the data (``<data_dir>/../leaderboards/<data_dir name>.csv``). Regression
datasets (``num_labels: 1``, scored by Pearson there) are left out with a warning: probes here
are classifiers. Unlike Holmes, the representation pools the whole input, not the probed span.

Without a ``set-0`` column the split depends only on the seed and each row's text: distinct
inputs are ordered by a seeded hash, the first ``test_share`` of them are test, the next
``validation_share`` of the rest validation (for choosing C), the remainder train. Identical
inputs share a split, and two models (any λ) get the same split. The control task (Hewitt &
Liang, 2019) gives each distinct control key a label drawn, by a seeded hash of the key, from
the task's label distribution.
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import json
import logging
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
HOLMES_FILE = "samples.csv"  # a Holmes dataset's rows
HOLMES_SETS = {"train": "train", "dev": "validation", "test": "test"}
LOG = logging.getLogger(__name__)


@dataclass
class ProbeTask:
    """One probing task's rows, in file order."""

    name: str
    phenomenon: str
    texts: list[str]
    pairs: list[str | None]
    labels: list[str]
    control_keys: list[str]
    sets: list[str] | None = None  # a published split per row: train | validation | test

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
            f"github.com/Holmes-Benchmark/holmes-evaluation {readme} says (DIR/<dataset>/"
            f"samples.csv), then set probe.data_dir=DIR")
    if not probe.data_dir:
        return ConfigError(f"probe={probe.name}: the toy probing tasks are missing from "
                           f"{str(folder)!r}; build them with `python scripts/build_probes.py`")
    return ConfigError(f"probe.data_dir={probe.data_dir!r}: no such folder (expected "
                       f"DIR/<phenomenon>/<task>.jsonl or DIR/<dataset>/samples.csv files)")


def phenomena_file(probe) -> Path:
    """The Holmes phenomena CSV: ``probe.phenomena``, or the leaderboard table beside the data."""
    if probe.phenomena:
        return Path(probe.phenomena).expanduser()
    folder = data_dir(probe)
    return folder.parent / "leaderboards" / f"{folder.name}.csv"


def holmes_phenomena(probe) -> dict[str, str]:
    """Dataset -> linguistic subfield, from the phenomena CSV."""
    path = phenomena_file(probe)
    if not path.is_file():
        raise ConfigError(f"probe.phenomena: no phenomena table at {str(path)!r}; it maps each "
                          f"Holmes dataset to its subfield (holmes-evaluation's "
                          f"data/leaderboards/<name>.csv): set probe.phenomena=FILE")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"probing dataset", "linguistic subfield"} <= set(rows[0]):
        raise ConfigError(f"probe.phenomena={str(path)!r} has no 'probing dataset' and "
                          f"'linguistic subfield' columns (holmes-evaluation's leaderboard "
                          f"table has both)")
    return {r["probing dataset"]: r["linguistic subfield"] for r in rows}


def _holmes_classifier(path: Path) -> bool:
    """Whether a Holmes dataset is a classification (its config's ``num_labels`` ≠ 1)."""
    import yaml

    for config in sorted(path.parent.glob("config-*.yaml")):
        with open(config) as fh:
            if (yaml.safe_load(fh) or {}).get("num_labels") == 1:
                return False
    return True


def _discover_holmes(probe, folder: Path) -> dict[str, tuple[str, Path]]:
    subfields = holmes_phenomena(probe)
    found, regression, unmapped = {}, [], []
    for path in sorted(folder.glob(f"*/{HOLMES_FILE}")):
        name = path.parent.name
        if not _holmes_classifier(path):
            regression.append(name)
            continue
        if name not in subfields:
            unmapped.append(name)
        found[name] = (subfields.get(name, "other"), path)
    if regression:
        LOG.warning("probe: %d regression dataset(s) left out (probes here are classifiers): "
                    "%s", len(regression), ", ".join(regression))
    if unmapped:
        LOG.warning("probe: %d dataset(s) not in %s, grouped as 'other': %s", len(unmapped),
                    phenomena_file(probe), ", ".join(unmapped))
    return dict(sorted(found.items(), key=lambda kv: (kv[1][0], kv[0])))


def discover(probe) -> dict[str, tuple[str, Path]]:
    """Every task in the data folder: name -> (phenomenon, file), sorted by phenomenon, name
    (the project's layout, or Holmes' where the folder has ``<dataset>/samples.csv``)."""
    folder = data_dir(probe)
    if not folder.is_dir():
        raise _missing(probe, folder)
    found: dict[str, tuple[str, Path]] = {}
    if any(folder.glob(f"*/{HOLMES_FILE}")):
        found = _discover_holmes(probe, folder)
    for path in sorted(folder.glob("*/*.jsonl"), key=lambda p: (p.parent.name, p.stem)):
        if path.stem in found:
            raise ConfigError(f"probe.data_dir={str(folder)!r}: task {path.stem!r} is in both "
                              f"{found[path.stem][0]}/ and {path.parent.name}/; task names must "
                              f"be unique")
        found[path.stem] = (path.parent.name, path)
    if not found:
        raise ConfigError(f"probe.data_dir={str(folder)!r} has no probing tasks (expected "
                          f"<phenomenon>/<task>.jsonl or <dataset>/samples.csv files)")
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


def _holmes_rows(path: Path, first_only: bool = False) -> list[dict]:
    """A Holmes samples.csv as rows in the project's form (text, text_pair, label,
    control_key, set), ordered by ``id``."""
    csv.field_size_limit(1 << 30)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("inputs", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"probing file {str(path)!r} has no {missing[0]!r} column; a "
                              f"Holmes samples.csv has inputs, context, label and set-0")
        raw = [next(reader, None)] if first_only else list(reader)
    raw = [r for r in raw if r is not None]
    if "id" in (raw[0] if raw else {}):
        raw.sort(key=lambda r: float(r["id"]) if _number(r["id"]) else r["id"])
    return [_holmes_row(r, path, n) for n, r in enumerate(raw, 2)]


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _holmes_row(r: dict, path: Path, number: int) -> dict:
    where = f"probing file {str(path)!r} row {number}"
    if r.get("label") in (None, ""):
        raise ConfigError(f"{where} has no 'label' value")
    try:
        inputs = ast.literal_eval(r["inputs"])
        context = ast.literal_eval(r["context"]) if r.get("context") else []
    except (ValueError, SyntaxError):
        raise ConfigError(f"{where}: inputs/context are not Python literals (Holmes writes "
                          f"tuples such as \"('a sentence',)\")") from None
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    context = [context] if isinstance(context, str) else list(context)
    label = r["label"]
    label = str(int(float(label))) if _number(label) and float(label).is_integer() else label
    row = {"label": label}
    if all(isinstance(i, str) for i in inputs):  # a sentence, or a pair of them
        row["text"], row["text_pair"] = inputs[0], (inputs[1] if len(inputs) > 1 else None)
    else:  # probed tokens (token, context index, start, end[, span]) into the context
        if not context:
            raise ConfigError(f"{where}: token inputs need a context")
        row["text"], row["text_pair"] = context[0], (context[1] if len(context) > 1 else None)
        row["control_key"] = " ".join(str(i[0]) for i in inputs)
    sets = r.get("set-0")
    if sets is not None:
        if sets not in HOLMES_SETS:
            raise ConfigError(f"{where}: set-0={sets!r} is not train, dev or test")
        row["set"] = HOLMES_SETS[sets]
    return row


def check_files(selected: list[tuple[str, str, Path]]) -> None:
    """Each file's first row has the columns a task needs (every row: ``load_tasks``)."""
    for _, _, path in selected:
        if path.name == HOLMES_FILE:
            if not _holmes_rows(path, first_only=True):
                raise ConfigError(f"probing file {str(path)!r} has no rows")
            continue
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
        if path.name == HOLMES_FILE:
            rows = _holmes_rows(path)
        else:
            with open(path) as fh:
                rows = [r for n, line in enumerate(fh, 1)
                        if (r := _row(line, path, n)) is not None]
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
                          for r in rows],
            sets=[r["set"] for r in rows]
            if path.name == HOLMES_FILE and all("set" in r for r in rows) else None))
    return tasks


def file_digest(path: Path) -> str:
    """A probing file's content hash (what the fingerprint keys on), computed once per file
    version: a Holmes folder is hashed once per process, not once per job."""
    stat = path.stat()
    return _file_digest(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


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
    """The task's split: its published one (Holmes' ``set-0``) where it has one, else from
    ``seed`` and its inputs' text alone (see the module doc)."""
    if task.sets is not None:
        return _published_split(task)
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


def _published_split(task: ProbeTask) -> Split:
    sets = np.array(task.sets)
    for part in ("train", "validation", "test"):
        if not (sets == part).any():
            raise ConfigError(f"probe task {task.name}: its set-0 column has no "
                              f"{'dev' if part == 'validation' else part} rows")
    train = np.flatnonzero(sets != "test")
    return Split(train=train, validation=sets[train] == "validation",
                 test=np.flatnonzero(sets == "test"))


def classes_of(labels: list[str]) -> list[str]:
    """A task's classes in order: numerically where every label is a number (Holmes' 0..k-1),
    else as text."""
    distinct = set(labels)
    if all(_number(c) for c in distinct):
        return sorted(distinct, key=lambda c: (float(c), c))
    return sorted(distinct)


def control_labels(task: ProbeTask, seed: int) -> list[str]:
    """Hewitt & Liang's control task: each distinct control key gets one label, drawn from
    the task's label distribution by a seeded hash of the key."""
    classes = np.array(classes_of(task.labels))
    counts = np.array([task.labels.count(c) for c in classes])
    cumulative = np.cumsum(counts) / counts.sum()
    out, memo = [], {}
    for key in task.control_keys:
        if key not in memo:
            u = int.from_bytes(_digest(seed, f"control:{task.name}", key)[:8], "big") / 2.0 ** 64
            memo[key] = str(classes[min(int(np.searchsorted(cumulative, u, side="right")),
                                        len(classes) - 1)])
        out.append(memo[key])
    return out
