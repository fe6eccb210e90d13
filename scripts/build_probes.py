"""Build the toy probing tasks from the toy world, deterministically (seconds, no model needed).

    python scripts/build_probes.py         # writes src/app/toy/probes/<phenomenon>/<task>.jsonl
    python scripts/build_probes.py --holmes-layout DIR   # the same tasks in Holmes' layout

``--holmes-layout`` writes a local stand-in of the Holmes data as its archives unpack
(``DIR/holmes/<dataset>/samples.csv`` + ``config-none.yaml``, the subfields in
``DIR/leaderboards/holmes.csv``; layout in ``app.probe.data``): the toy tasks as sentence and
sentence-pair datasets, ``set-0`` holding the split the project's layout gets by default;
``entity_kind_tokens``, entity_kind again as a token task (the given name probed in its
context); and ``name_length``, a regression dataset (``num_labels: 1``) the reader leaves out.

The entities come from the toy world's own generator (``build_toy.make_world``), drawn with
another seed and kept only where neither model ever saw them (not in the corpus, not in the
IT model's questions). The world's rule (which value each kind has) is read off the corpus by
majority, so it is whatever ``build_toy`` applies. One task per phenomenon type:

* morphology/entity_kind: a bare name ("Kalo Hartle") -> person | creature | town, which only
  the name's second part (surname, species, place-name ending) tells;
* semantics/question_attribute: a question -> the attribute it asks about (job | colour |
  region), asked about entities of every kind, so only the question's wording tells;
* reasoning/rule_inference: a sentence naming an entity but none of its values ("Kalo Hartle
  has just moved here.") -> the value the world's rule gives its kind (one of 24): what the
  rule implies for an individual never described;
* discourse/ellipsis: a fact about one entity, then an elliptical sentence about another
  (``text``, ``text_pair``: "Kalo Hartle works as a baker." "Mira Quill does the same.") ->
  the value the second sentence gives its entity, which only the first sentence tells (the
  second entity's own kind mostly has another rule value).

A stated fact's agreement with the rule, or of two sentences with each other, was tried first
and left out: both are matches of two words, which a linear probe on these two-layer toy
models reads at chance. Every row's ``control_key`` is the entity's given name (in discourse,
the second entity's): the control task (Hewitt & Liang) gives each distinct given name a
random label, which nothing in the world predicts.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from build_toy import RELATIONS, SEED, make_world  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "src" / "app" / "toy" / "probes"
PROBE_SEED = 2024
ROWS = 400  # per task
CATEGORY = {"job": "person", "colour": "creature", "region": "town"}
QUESTIONS = {  # the world's question for each attribute, and two paraphrases
    "job": [RELATIONS["job"]["question"], "What is the trade of {e}?",
            "Which job does {e} have?"],
    "colour": [RELATIONS["colour"]["question"], "What is the colour of the {e}?",
               "Which colour does the {e} have?"],
    "region": [RELATIONS["region"]["question"], "In which part of the land is {e}?",
               "Which region is {e} in?"],
}
INTRODUCTIONS = {  # sentences that name an entity but state none of its values
    "job": ["{e} has just moved here.", "Nobody here has met {e} before."],
    "colour": ["A {e} was seen today.", "Nobody here has seen the {e} before."],
    "region": ["Nobody here has been to {e}.", "{e} is far from here."],
}
ELLIPSES = {  # a second sentence whose value is the first sentence's
    "job": "{e} does the same.", "colour": "The {e} is the same colour.",
    "region": "{e} lies there too.",
}


def world_rule(corpus: list[dict]) -> dict[tuple[str, str], str]:
    """(relation, kind) -> the value most corpus facts about that kind state."""
    counts: dict[tuple[str, str], Counter] = {}
    for f in corpus:
        counts.setdefault((f["relation"], kind(f)), Counter())[f["value"]] += 1
    return {key: c.most_common(1)[0][0] for key, c in sorted(counts.items())}


def kind(fact: dict) -> str:
    return fact["entity"].split()[-1]


def given(fact: dict) -> str:
    return fact["entity"].split()[0]


def fresh_facts(seen: set[str]) -> dict[str, list[dict]]:
    """Facts about entities neither model saw, per relation, in the generator's order."""
    corpus, task = make_world(random.Random(PROBE_SEED))
    out: dict[str, list[dict]] = {rel: [] for rel in RELATIONS}
    for f in corpus + task:
        if f["entity"] not in seen:
            out[f["relation"]].append(f)
    return out


def statement(fact: dict, value: str, template: str) -> str:
    return template.format(e=fact["entity"], v=value)


def templates(fact: dict, rng: random.Random, k: int = 1) -> list[str]:
    """``k`` different corpus templates of the fact's relation."""
    return rng.sample(RELATIONS[fact["relation"]]["templates"], k)


def entity_kind(facts, rule, rng) -> list[dict]:
    return [dict(text=f["entity"], label=CATEGORY[f["relation"]], control_key=given(f))
            for f in facts]


def question_attribute(facts, rule, rng) -> list[dict]:
    rows = []
    for i, f in enumerate(facts):
        asked = list(RELATIONS)[i % len(RELATIONS)]
        text = rng.choice(QUESTIONS[asked]).format(e=f["entity"])
        rows.append(dict(text=text, label=asked, control_key=given(f)))
    return rows


def rule_inference(facts, rule, rng) -> list[dict]:
    return [dict(text=rng.choice(INTRODUCTIONS[f["relation"]]).format(e=f["entity"]),
                 label=rule[(f["relation"], kind(f))], control_key=given(f)) for f in facts]


def ellipsis(facts, rule, rng) -> list[dict]:
    rows = []
    for first in facts:
        second = rng.choice([f for f in facts if f["relation"] == first["relation"]
                             and f is not first])
        rows.append(dict(text=statement(first, first["value"], *templates(first, rng)),
                         text_pair=ELLIPSES[first["relation"]].format(e=second["entity"]),
                         label=first["value"], control_key=given(second)))
    return rows


TASKS = {"morphology": entity_kind, "semantics": question_attribute,
         "reasoning": rule_inference, "discourse": ellipsis}


def build() -> dict[tuple[str, str], list[dict]]:
    """(phenomenon, task) -> rows; each task draws its own entities, ROWS of them, evenly
    from the three relations."""
    corpus, seen_task = make_world(random.Random(SEED))
    rule = world_rule(corpus)
    pool = fresh_facts({f["entity"] for f in corpus + seen_task})
    rng = random.Random(PROBE_SEED)
    per_rel = ROWS // len(RELATIONS) + 1
    out = {}
    for t, (phenomenon, make) in enumerate(TASKS.items()):
        facts = [f for rel in RELATIONS for f in pool[rel][t * per_rel:(t + 1) * per_rel]]
        rng.shuffle(facts)
        out[(phenomenon, make.__name__)] = make(facts[:ROWS], rule, rng)
    return out


def readme(tasks: dict[tuple[str, str], list[dict]]) -> str:
    lines = ["# Toy probing tasks", "",
             "Built by `python scripts/build_probes.py` from the toy world (see its docstring); "
             "read by `app.probe.data`, whose docstring describes the layout: one JSONL file "
             "per task, `<phenomenon>/<task>.jsonl`, rows `{\"text\", \"label\"}` with optional "
             "`\"text_pair\"` and `\"control_key\"`.", "",
             "| phenomenon | task | rows | labels |", "|---|---|---|---|"]
    for (phenomenon, name), rows in tasks.items():
        labels = ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["label"] for r in rows).items()))
        lines.append(f"| {phenomenon} | {name} | {len(rows)} | {labels} |")
    return "\n".join(lines) + "\n"


def holmes_layout(out: Path, source: Path = OUT) -> Path:
    """The toy tasks at ``source`` in Holmes' published layout under ``out`` (see the module
    doc); ``out / "holmes"``, the data folder."""
    import csv

    import yaml
    from omegaconf import OmegaConf

    from app.probe.data import load_tasks, split
    from app.probe.schema import ProbeConfig

    cfg = OmegaConf.structured(ProbeConfig(name="toy", data_dir=str(source)))
    sets = {0: "train", 1: "dev", 2: "test"}
    data, table = out / "holmes", []

    def write(name, phenomenon, rows, num_labels, kind):
        folder = data / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "samples.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, ["inputs", "context", "label", "set-0", "id"])
            w.writeheader()
            w.writerows(rows)
        (folder / "config-none.yaml").write_text(yaml.safe_dump(
            {"probe_name": name, "probe_task_type": kind, "control_task_type": "NONE",
             "num_labels": num_labels}))
        table.append({"": len(table), "probing dataset": name, "linguistic subfield": phenomenon,
                      "linguistic phenomena": name, "probe type": kind.lower(),
                      "train portion": 1, "probe": "linear"})

    for task in load_tasks(cfg):
        s = split(task, cfg.seed, cfg.test_share, cfg.validation_share)
        where = np.zeros(len(task.labels), dtype=int)
        where[s.test] = 2
        where[s.train[s.validation]] = 1
        labels = {c: i for i, c in enumerate(sorted(set(task.labels)))}
        rows = [{"inputs": repr((t,) if p is None else (t, p)), "context": "",
                 "label": labels[y], "set-0": sets[where[i]], "id": i}
                for i, (t, p, y) in enumerate(zip(task.texts, task.pairs, task.labels))]
        kind = "SENTENCE" if task.pairs[0] is None else "SENTENCE_PAIR_BI"
        write(task.name, task.phenomenon, rows, len(labels), kind)
        if task.name == "entity_kind":  # the given name probed as a token of its context
            tokens = [{**r, "context": repr([t]), "inputs": repr([(k, 0, 0, len(k))])}
                      for r, t, k in zip(rows, task.texts, task.control_keys)]
            write("entity_kind_tokens", task.phenomenon, tokens, len(labels), "SENTENCE_TOKENS")
            lengths = [{**r, "label": float(len(t))} for r, t in zip(rows, task.texts)]
            write("name_length", task.phenomenon, lengths, 1, "SENTENCE")
    (out / "leaderboards").mkdir(parents=True, exist_ok=True)
    with open(out / "leaderboards" / "holmes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(table[0]))
        w.writeheader()
        w.writerows(table)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--holmes-layout", type=Path, metavar="DIR",
                        help="write the shipped toy tasks in Holmes' published layout to DIR")
    args = parser.parse_args()
    if args.holmes_layout:
        data = holmes_layout(args.holmes_layout)
        print(f"wrote {len(list(data.iterdir()))} datasets to {data} and "
              f"{args.holmes_layout / 'leaderboards' / 'holmes.csv'}")
        return
    tasks = build()
    shutil.rmtree(args.out, ignore_errors=True)
    for (phenomenon, name), rows in tasks.items():
        path = args.out / phenomenon / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "README.md").write_text(readme(tasks))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(tasks)} tasks, {sum(map(len, tasks.values()))} rows, {size / 1024:.0f} KB "
          f"to {args.out}")


if __name__ == "__main__":
    main()
