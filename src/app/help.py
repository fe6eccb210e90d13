"""``python -m app --help`` and ``docs/reference/configuration.md``, derived from conf/, the
structured-config schemas and the metric registry, so that neither can drift from the code."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
import typing

from omegaconf import MISSING, OmegaConf

from app import config, metrics
from app.judge.schema import SCHEMAS as JUDGES

__all__ = ["groups", "top_keys", "app_help", "configuration_reference"]

WIDTH = 100  # of every help line
# conf/suite/<model>/<task>.yaml is picked by the defaults list from model and task
# (`optional suite@task: ${model}/${task}`): nobody names it, so it is not listed as a group.
INTERNAL = ("suite",)
MEANINGS = {  # the top-level keys' documentation: what each does, what it takes
    "lambda": "0 is PT, 1 is IT; a float, 'range(0,1.01,0.1)' or a,b,c in a multirun",
    "seed": "seeds torch, numpy and the merge masks; an integer in [0, 2^32)",
    "device": "where the merge and the evaluation run: cpu | cuda | cuda:N | auto",
    "force": "re-run jobs whose fingerprint already has a FINISHED MLflow run: true | false",
    "verbose": "show library messages (lm-eval, transformers, datasets, MLflow, Hydra's launch "
               "lines) on the console instead of only in the job's log file: true | false",
    "merge.save_dir": "also write each merged model there (safetensors, tokenizer, mergekit "
                      "YAML); null: not written",
    "merge.parents_on": "where the parents are held while merging: device | host | auto "
                        "(device where they fit within resident_share, else host)",
    "merge.resident_share": "with parents_on=auto: the share of the device's free memory the "
                            "parents may take; (0, 1]",
}
LAUNCHERS = {  # Hydra plugins' launchers: no YAML under conf/ to read a description from
    "basic": "Hydra's own: a multirun's jobs one after another in this process.",
    "joblib": "Jobs in parallel local processes (joblib).",
    "submitit_local": "One local process per job (submitit).",
    "submitit_slurm": "One SLURM job per job (submitit).",
    "chunked_local": "Chunks of λ values in local processes over the GPUs; loads once a chunk.",
    "chunked_slurm": "Chunks of λ values as SLURM array tasks; loads once a chunk.",
}
COMMANDS = (
    ("python -m app", "one run: the toy pair merged at λ=0.5 and evaluated, on the CPU"),
    ("python -m app -m method=slerp,ties 'lambda=range(0,1.01,0.1)'",
     "a grid: every method × λ, the parents evaluated once"),
    ("python -m app -m search=lambda_star",
     "search λ*: the best accuracy whose ECE stays under a limit"),
    ("python -m app.report", "the frontier report of the latest sweep (--help for its options)"),
    ("mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000",
     "browse and compare the runs in the MLflow UI"),
)


def run_yaml() -> dict:
    """conf/config.yaml as written (interpolations unresolved)."""
    return OmegaConf.to_container(OmegaConf.load(config.conf_dir() / "config.yaml"))


def defaults() -> dict[str, str | None]:
    """Each group's default option: conf/config.yaml's defaults list, else Hydra's own."""
    from hydra.conf import HydraConf

    out: dict[str, str | None] = {}
    for entry in [e for e in run_yaml()["defaults"] if isinstance(e, dict)] + [
            {f"hydra/{k}": v for k, v in e.items()} for e in HydraConf().defaults]:
        for key, value in entry.items():
            out.setdefault(key.split()[-1].split("@")[0], value)  # "optional suite@task": suite
    return out


def groups(limit: int | None = 100) -> dict[str, list[tuple[str, str]]]:
    """Each config group under conf/ (``hydra/launcher`` too) → its options, sorted, each with
    its YAML's leading comment (``describe``); the groups in the defaults list's order."""
    root = config.conf_dir()
    found = {p.parent.relative_to(root).as_posix() for p in root.rglob("*.yaml")
             if p.parent != root and p.parent.relative_to(root).parts[0] not in INTERNAL}
    order = list(defaults())
    return {g: [(name, describe(root / g / f"{name}.yaml", limit)
                 if (root / g / f"{name}.yaml").exists() else LAUNCHERS.get(name, ""))
                for name in config.group_options(g)]
            for g in sorted(found, key=lambda g: (order.index(g) if g in order else 99, g))}


def describe(path, limit: int | None = 100) -> str:
    """A YAML's first comment paragraph on one line; with ``limit``, its first sentence cut to
    that many characters where a clause ends (outside parentheses), ``…`` marking a cut."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    para = list(itertools.takewhile(  # it ends at a blank comment or an indented example
        lambda line: line.startswith("#") and line != "#" and not line.startswith("#  "), lines))
    interrupted = any(line.startswith("#  ") for line in lines[len(para):len(para) + 1])
    text = " ".join(line[1:].strip() for line in para)
    if limit is not None:
        text = re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", text, maxsplit=1)[0]
    if limit is None or len(text) <= limit:
        return text + ("…" if interrupted and not text.endswith((".", "!", "?")) else "")
    cuts = [m.start() for m in re.finditer(r" \(|[,;:] | — ", text[:limit])
            if m.start() >= limit // 2
            and text[:m.start()].count("(") == text[:m.start()].count(")")]
    return text[:max(cuts) if cuts else text[:limit - 1].rindex(" ")].rstrip(",;:") + "…"


def top_keys() -> list[tuple[str, str, str]]:
    """The run's own keys (not the groups; ``merge.*`` spelled out): (key, default, meaning)."""
    given, schema, chosen = run_yaml(), config.AppConfig, {*config.GROUPS, *defaults()}
    plain, nested = [], []
    for key, kind in schema.__annotations__.items():
        if key in chosen:  # a group
            continue
        if dataclasses.is_dataclass(kind):  # merge: a row per subkey, after the plain keys
            docs, mine = field_docs(kind), given.get(key) or {}
            nested += [(f"{key}.{f.name}", show(mine.get(f.name, f.default)),
                        MEANINGS.get(f"{key}.{f.name}", docs.get(f.name, "")))
                       for f in dataclasses.fields(kind)]
        else:
            plain.append((key, show(given.get(key, getattr(schema, key))), MEANINGS.get(key, "")))
    return plain + nested


def show(value) -> str:
    """A default as YAML writes it (``required`` where the option's YAML must set it)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return "required" if value == MISSING else str(value)


def app_help() -> str:
    """What ``python -m app --help`` prints: plain text, no line over 100 characters."""
    def wrap(text: str, indent: int, first: str = "") -> list[str]:
        # "a | b" alternatives stay on one line: their spaces are non-breaking while wrapping
        lines = textwrap.wrap(text.replace(" | ", "\xa0|\xa0"), WIDTH, break_long_words=False,
                              break_on_hyphens=False, initial_indent=first.ljust(indent),
                              subsequent_indent=" " * indent) or [first]
        return [line.replace("\xa0", " ") for line in lines]

    out = wrap("Merge a pre-trained (PT) and an instruction-tuned (IT) model with mergekit at "
               "a coefficient λ (0 is PT, 1 is IT), evaluate the merge with lm-eval (accuracy, "
               "calibration) and log it to MLflow. Each setting is a config group (GROUP=OPTION) "
               "or a key (KEY=VALUE), composed by Hydra; -m runs every combination.", 0)
    out += ["", "USAGE", "  python -m app [GROUP=OPTION ...] [KEY=VALUE ...]",
            "  python -m app -m [GROUP=A,B ...] [KEY=V1,V2 ...]", "", "COMMANDS"]
    for command, meaning in COMMANDS:
        out += [f"  {command}", *wrap(meaning, 6, "      ")]
    out += ["", "CONFIG GROUPS (GROUP=OPTION; a group's keys: GROUP.KEY=VALUE)"]
    chosen = defaults()
    for group, options in groups().items():
        out.append(f"  {group}" + ("" if chosen.get(group) else " (none by default)"))
        width = 6 + max(len(name) for name, _ in options)
        for name, text in options:
            out += wrap(("(default) " if name == chosen.get(group) else "") + text, width,
                        f"    {name}")
    out += ["", "KEYS (KEY=VALUE)"]
    rows = [(f"{key}={default}", meaning) for key, default, meaning in top_keys()]
    for key, meaning in rows:
        out += wrap(meaning, 4 + max(len(k) for k, _ in rows), f"  {key}")
    out += ["", *wrap("Hydra's own flags: --hydra-help, --cfg job (print the composed config), "
                      "-m (multirun), --info. Docs: docs/ in the checkout; every group's keys, "
                      "types and defaults and every metric: docs/reference/configuration.md.", 0)]
    return "\n".join(out) + "\n"


def field_docs(cls) -> dict[str, str]:
    """Each field's comment in the source of ``cls`` and its bases: the one on the field's
    line(s), else the comment lines just above it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        except (OSError, TypeError):  # built at run time (AppConfig) or a builtin: no source
            continue
        for node in ast.parse("\n".join(lines)).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own = [line.split("  # ", 1)[1] for line in lines[node.lineno - 1:node.end_lineno]
                       if "  # " in line]
                above = [line.strip().lstrip("#").strip() for line in itertools.takewhile(
                    lambda line: line.strip().startswith("#"), lines[node.lineno - 2::-1])][::-1]
                docs[node.target.id] = " ".join(own or above) or docs.get(node.target.id, "")
    return docs


def schema_rows(cls, prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of each field of ``cls``, a nested schema's keys after its
    own row (``task.selection.share``, ``task.tasks[].name``)."""
    hints, docs, rows = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        listed = typing.get_origin(hints[f.name]) is list
        inner = typing.get_args(hints[f.name])[0] if listed else hints[f.name]
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        shown = "(below)" if dataclasses.is_dataclass(default) else show(default)
        rows.append((f"{prefix}{f.name}", str(f.type), shown, docs.get(f.name, "")))
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            rows += schema_rows(inner, f"{prefix}{f.name}{'[]' if listed else ''}.")
    return rows


def configuration_reference() -> str:
    """The Markdown page docs/reference/configuration.md: keys, groups, schemas, metrics."""
    def cell(text: str, code: bool = False) -> str:
        if code and text not in ("required", "(below)"):
            text = f"`{text}`"
        parts = text.split("`")  # outside code spans, `<dir>` is text, not an HTML tag
        return "`".join(p if i % 2 else p.replace("<", "&lt;")
                        for i, p in enumerate(parts)).replace("|", "\\|")

    def table(header: list[str], rows) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(row) + " |" for row in rows), ""]

    out = ["# Configuration reference", "",
           "> Generated by `python scripts/config_reference.py` from conf/, the schemas and the "
           "metric registry; do not edit.", "",
           "A run is `python -m app [GROUP=OPTION ...] [KEY=VALUE ...]` (`-m`: a multirun). An "
           "option is a YAML file under `conf/<group>/`, checked against the group's schema: a "
           "misspelled key is an error. `python -m app --help` prints this in short.", "",
           "## Top-level keys", ""]
    out += table(["key", "default", "meaning"],
                 [(cell(k, True), cell(d, True), cell(m)) for k, d, m in top_keys()])
    out += ["## Config groups", ""]
    chosen = defaults()
    typed = {**{g: {g: cls} for g, cls in config.GROUPS.items()}, "judge": dict(JUDGES)}
    for group, options in groups(limit=None).items():
        default = chosen.get(group)
        out += [f"### {group}", "", f"`{group}=<option>`; default: "
                + (f"`{default}`." if default else "none."), ""]
        out += table(["option", "description"], [
            (cell(name, True) + (" (default)" if name == default else ""), cell(text))
            for name, text in options])
        if group not in typed:
            out += [f"No schema of the project's: its options set Hydra's own keys; print them "
                    f"with `python -m app {group}=<option> --cfg hydra`.", ""]
            continue
        rows: dict[str, list] = {}  # key → type, defaults, meaning, the options that read it
        for option, cls in typed[group].items():
            for key, kind, value, meaning in schema_rows(cls, f"{group}."):
                row = rows.setdefault(key, [kind, [], meaning, []])
                row[1] += [value] if value not in row[1] else []
                row[2], row[3] = row[2] or meaning, [*row[3], option]
        names = ", ".join(f"`{cls.__name__}`" for cls in typed[group].values())
        every = list(typed[group])  # a key that only some judges read says whose it is
        out += [f"Keys ({names}), set as `{group}.<key>=<value>`:", ""]
        out += table(["key", "type", "default", "meaning"], [
            (cell(key, True), cell(kind, True), " / ".join(cell(v, True) for v in values),
             cell(meaning if readers == every else f"({', '.join(readers)}) {meaning}".rstrip()))
            for key, (kind, values, meaning, readers) in rows.items()])
    out += ["`conf/suite/<model>/<task>.yaml` is not a group to choose: the defaults list picks "
            "it (`optional suite@task: ${model}/${task}`), a model set's own tasks on `task=toy`.",
            "", "## Metrics", "", "Every metric a job can return (`app.metrics.REGISTRY`).", "",
            metrics.markdown_table()]
    return "\n".join(out)
