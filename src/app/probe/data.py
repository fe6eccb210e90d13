"""Probing tasks on disk, their fixed split and their control labels.

The layout (the project's own): one probing task is one JSONL file, grouped by phenomenon,

    <data_dir>/<phenomenon>/<task>.jsonl     {"text": ..., "label": ...} per line

with optional ``"text_pair"`` (a second segment: pairwise tasks, joined to ``text`` with a
space before encoding) and ``"control_key"`` (the word type the control task's label follows;
default: the input's last word, lowercased). Labels are classes (read as strings). Files are
UTF-8. Task names (file stems) are unique across phenomena; any other file (a README.md) is
ignored. Metrics average a phenomenon's tasks, so the folder is the unit results are grouped by.

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

``check_files`` reads every chosen file whole before any model loads: each row well-formed,
and the task it makes split into parts a probe can be fit on (``check_task``).
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import io
import itertools
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
    path: Path | None = None  # the file it was read from

    @property
    def where(self) -> str:
        """What a message about the task names: its file, else its name."""
        return f"probing file {str(self.path)!r}" if self.path else f"probe task {self.name!r}"

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
    rows = list(csv.DictReader(io.StringIO(_utf8(path, "probe.phenomena table"), newline="")))
    if not rows or not {"probing dataset", "linguistic subfield"} <= set(rows[0]):
        raise ConfigError(f"probe.phenomena={str(path)!r} has no 'probing dataset' and "
                          f"'linguistic subfield' columns (holmes-evaluation's leaderboard "
                          f"table has both)")
    return {r["probing dataset"]: r["linguistic subfield"] or "other" for r in rows
            if r["probing dataset"]}


def _holmes_classifier(path: Path) -> bool:
    """Whether a Holmes dataset is a classification (its config's ``num_labels`` ≠ 1)."""
    import yaml

    for config in sorted(path.parent.glob("config-*.yaml")):
        try:
            settings = yaml.safe_load(_utf8(config, "Holmes config"))
        except yaml.YAMLError as e:
            raise ConfigError(f"Holmes config {str(config)!r} is not YAML "
                              f"({str(e).splitlines()[0]})") from None
        if isinstance(settings, dict) and settings.get("num_labels") == 1:
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


def _utf8(path: Path, what: str = "probing file") -> str:
    """A file's text (a leading byte-order mark dropped); where it is not UTF-8, a one-line
    ConfigError naming the file, the line and the byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{what} {str(path)!r} line {line} is not UTF-8 (byte "
                          f"{data[e.start]:#04x}); save it as UTF-8") from None


def _checked(row: dict, where: str) -> dict:
    """``row`` where its values have the types a task needs, else a one-line ConfigError."""
    if not isinstance(row["text"], str) or not row["text"].strip() \
            or not isinstance(row.get("text_pair") or "", str):
        raise ConfigError(f"{where}: text must be a non-empty string and text_pair a string")
    if not isinstance(row["label"], (str, int)) \
            or not isinstance(row.get("control_key") or "", (str, int)):
        raise ConfigError(f"{where}: label and control_key must be strings (or integers)")
    return row


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
    return _checked(row, where)


def read_rows(path: Path) -> list[dict]:
    """Every row of a probing file (either layout), each checked: a one-line ConfigError
    names the file and the line or row."""
    text = _utf8(path)
    if path.name == HOLMES_FILE:
        return _holmes_rows(path, text)
    return [r for n, line in enumerate(text.split("\n"), 1)
            if (r := _row(line, path, n)) is not None]


def _holmes_rows(path: Path, text: str) -> list[dict]:
    """A Holmes samples.csv's text as rows in the project's form (text, text_pair, label,
    control_key, set), ordered by ``id``."""
    csv.field_size_limit(1 << 30)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("inputs", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"probing file {str(path)!r} has no {missing[0]!r} column; a "
                          f"Holmes samples.csv has inputs, context, label and set-0")
    try:
        raw = list(enumerate(reader, 2))
    except csv.Error as e:
        raise ConfigError(f"probing file {str(path)!r} line {reader.line_num} is not CSV "
                          f"({e})") from None
    if "id" in reader.fieldnames:  # numeric ids in numeric order, before any others
        raw.sort(key=lambda nr: (0, float(nr[1]["id"]), "") if _number(nr[1]["id"])
                 else (1, 0.0, str(nr[1]["id"])))
    return [_holmes_row(r, path, n) for n, r in raw]


def _number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _holmes_row(r: dict, path: Path, number: int) -> dict:
    where = f"probing file {str(path)!r} row {number}"
    if r.get("label") in (None, ""):
        raise ConfigError(f"{where} has no 'label' value")
    try:
        inputs = ast.literal_eval(r["inputs"])
        context = ast.literal_eval(r["context"]) if r.get("context") else []
    except (ValueError, SyntaxError, TypeError):
        raise ConfigError(f"{where}: inputs/context are not Python literals (Holmes writes "
                          f"tuples such as \"('a sentence',)\")") from None
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    context = [context] if isinstance(context, str) else list(context)
    label = r["label"]
    label = str(int(float(label))) if _number(label) and float(label).is_integer() else label
    row = {"label": label}
    if inputs and all(isinstance(i, str) for i in inputs):  # a sentence, or a pair of them
        row["text"], row["text_pair"] = inputs[0], (inputs[1] if len(inputs) > 1 else None)
    elif inputs and all(isinstance(i, (tuple, list)) and i for i in inputs):
        # probed tokens (token, context index, start, end[, span]) into the context
        if not context:
            raise ConfigError(f"{where}: token inputs need a context")
        row["text"], row["text_pair"] = context[0], (context[1] if len(context) > 1 else None)
        row["control_key"] = " ".join(str(i[0]) for i in inputs)
    else:
        raise ConfigError(f"{where}: inputs {r['inputs']!r} are neither sentences nor "
                          f"(token, context index, start, end) tuples")
    sets = r.get("set-0")
    if sets is not None:
        if sets not in HOLMES_SETS:
            raise ConfigError(f"{where}: set-0={sets!r} is not train, dev or test")
        row["set"] = HOLMES_SETS[sets]
    return _checked(row, where)


def check_files(probe) -> None:
    """Every chosen file read whole, before any model loads: each row well-formed, and the
    task it makes (after ``max_examples``) one a probe can be fit on (``check_task``). A file
    version is read once per process and settings: a sweep validates every job."""
    for name, phenomenon, path in select(probe):
        stat = path.stat()
        _check_file(name, phenomenon, str(path), stat.st_mtime_ns, stat.st_size, probe.seed,
                    float(probe.test_share), float(probe.validation_share), probe.max_examples)


@functools.lru_cache(maxsize=4096)
def _check_file(name: str, phenomenon: str, path: str, mtime_ns: int, size: int, seed: int,
                test_share: float, validation_share: float, max_examples: int | None) -> None:
    task = load_task(name, phenomenon, Path(path), seed, max_examples)
    check_task(task, seed, test_share, validation_share)


def check_task(task: ProbeTask, seed: int, test_share: float, validation_share: float) -> None:
    """A split with every part (``split``: enough rows), two classes or more, and two or
    more, of the labels and of the control labels, in the training rows a probe is fit on
    (those left when validation is held out); else a one-line ConfigError naming the file."""
    s = split(task, seed, test_share, validation_share)
    classes = classes_of(task.labels)
    if len(classes) < 2:
        raise ConfigError(f"{task.where}: all its {len(task.labels)} rows have label "
                          f"{classes[0]!r}; a probe needs at least two classes: add rows with "
                          f"another label")
    fit = s.train[~s.validation]
    seeded = task.sets is None  # else the published split: the seed draws only control labels
    how = f"the split of probe.seed={seed}" if seeded else "its set-0 split"
    for what, labels, fix in (
            ("label", task.labels, "add rows of another class" + (
                ", or change probe.seed" if seeded else " to its train rows")),
            ("control label", control_labels(task, seed),
             "give its rows more distinct control_key values, or change probe.seed")):
        seen = sorted({labels[i] for i in fit})
        if len(seen) < 2:
            raise ConfigError(f"{task.where}: {how} leaves one {what} ({seen[0]!r}) in the "
                              f"{len(fit)} training rows a probe is fit on; it needs two "
                              f"classes: {fix}")


def default_control_key(text: str) -> str:
    words = re.findall(r"\w+", text.lower())
    return words[-1] if words else ""


def load_task(name: str, phenomenon: str, path: Path, seed: int,
              max_examples: int | None = None) -> ProbeTask:
    """One task's rows, every row checked; with ``max_examples``, a seeded subset."""
    rows = read_rows(path)
    if not rows:
        raise ConfigError(f"probing file {str(path)!r} has no rows; each line is "
                          f'{{"text": ..., "label": ...}}')
    if max_examples and len(rows) > max_examples:
        keys = [input_key(r["text"], r.get("text_pair")) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: (_digest(seed, "subset", keys[i]), i))
        rows = [rows[i] for i in sorted(order[:max_examples])]
    return ProbeTask(
        name=name, phenomenon=phenomenon, texts=[r["text"] for r in rows],
        pairs=[r.get("text_pair") for r in rows], labels=[str(r["label"]) for r in rows],
        control_keys=[str(r["control_key"]) if r.get("control_key") is not None else
                      default_control_key(r["text"] + " " + (r.get("text_pair") or ""))
                      for r in rows],
        sets=[r["set"] for r in rows]
        if path.name == HOLMES_FILE and all("set" in r for r in rows) else None, path=path)


def load_tasks(probe) -> list[ProbeTask]:
    """The chosen tasks (``load_task``)."""
    return [load_task(name, phenomenon, path, probe.seed, probe.max_examples)
            for name, phenomenon, path in select(probe)]


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
    n_test, n_val = _parts(len(distinct), test_share, validation_share)
    if len(distinct) - n_test - n_val < 2:
        raise ConfigError(
            f"{task.where}: {len(distinct)} distinct input(s) are too few for the seeded "
            f"split; with test_share={test_share} and validation_share={validation_share} it "
            f"needs at least {fewest_inputs(test_share, validation_share)} (two or more left "
            f"to train on): add rows")
    test_keys, val_keys = set(distinct[:n_test]), set(distinct[n_test:n_test + n_val])
    train = np.array([i for i, k in enumerate(keys) if k not in test_keys], dtype=np.int64)
    return Split(train=train,
                 validation=np.array([keys[i] in val_keys for i in train], dtype=bool),
                 test=np.array([i for i, k in enumerate(keys) if k in test_keys], dtype=np.int64))


def _parts(n: int, test_share: float, validation_share: float) -> tuple[int, int]:
    """How many of ``n`` distinct inputs the seeded split makes test, and validation."""
    n_test = max(1, round(n * test_share))
    return n_test, max(1, round((n - n_test) * validation_share))


def fewest_inputs(test_share: float, validation_share: float) -> int:
    """The fewest distinct inputs the seeded split leaves two or more to train on."""
    # below 1 / train share, rounding cannot leave two (it moves each part by at most 1/2)
    start = max(4, int(1 / ((1 - test_share) * (1 - validation_share))))
    return next(n for n in itertools.count(start)
                if n - sum(_parts(n, test_share, validation_share)) >= 2)


def _published_split(task: ProbeTask) -> Split:
    sets = np.array(task.sets)
    for part in ("train", "validation", "test"):
        if not (sets == part).any():
            raise ConfigError(f"{task.where}: its set-0 column has no "
                              f"{'dev' if part == 'validation' else part} rows; the published "
                              f"split needs train, dev and test rows")
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
