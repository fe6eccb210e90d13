"""Build small local stand-ins of the Open LLM Leaderboard datasets, deterministically.

    python scripts/build_standins.py         # writes src/app/standins/<hub id>/ (≈1 s)

Each stand-in is a folder laid out like the hub dataset it replaces: the same configs (a
README.md with the hub's ``configs:`` metadata), the same splits and the same columns, holding a
few synthetic rows. ``task.data_dir`` pointed at the parent folder makes lm-eval's own
leaderboard tasks (prompts, few-shot samplers, filters, metrics) load these instead of the hub,
so the presets in conf/task run offline end to end. The rows are questions with known
answers, not the real benchmark items; scores on them mean nothing.

``python scripts/build_standins.py --out DIR --mmlu-pro-test N`` writes a larger MMLU-Pro
stand-in (the benchmark script uses it). ``--out DIR --shaped`` writes ``build_shaped``'s
MMLU-Pro and BBH stand-ins, shaped like the real sets (categories, option counts, prompt lengths).
"""

from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "app" / "standins"
SEED = 2024

BBH_SUBTASKS = (
    "boolean_expressions causal_judgement date_understanding disambiguation_qa formal_fallacies "
    "geometric_shapes hyperbaton logical_deduction_five_objects logical_deduction_seven_objects "
    "logical_deduction_three_objects movie_recommendation navigate object_counting "
    "penguins_in_a_table reasoning_about_colored_objects ruin_names "
    "salient_translation_error_detection snarks sports_understanding temporal_sequences "
    "tracking_shuffled_objects_five_objects tracking_shuffled_objects_seven_objects "
    "tracking_shuffled_objects_three_objects web_of_lies"
).split()
MATH_CONFIGS = ("algebra counting_and_probability geometry intermediate_algebra number_theory "
                "prealgebra precalculus").split()
CATEGORIES = ["math", "physics", "economics", "history", "law"]


def write_dataset(folder: Path, configs: dict[str, dict[str, list[dict]]]) -> None:
    """One hub-style dataset: README.md naming each config's per-split JSONL files."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = []
    for config, splits in configs.items():
        files = []
        for split, rows in splits.items():
            name = f"{split}.jsonl" if config == "default" else f"{config}-{split}.jsonl"
            with open(folder / name, "w") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            files.append({"split": split, "path": name})
        meta.append({"config_name": config, "data_files": files})
    header = yaml.safe_dump({"configs": meta}, sort_keys=False)
    (folder / "README.md").write_text(
        f"---\n{header}---\nA local stand-in with this dataset's configs, splits and columns; "
        f"synthetic rows built by scripts/build_standins.py.\n")


def arithmetic(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    op = rng.choice(["+", "-", "*"])
    return f"What is {a} {op} {b}?", eval(f"{a}{op}{b}")  # noqa: S307 - our own digits


def distractors(rng: random.Random, answer: int, k: int) -> list[int]:
    out: set[int] = set()
    while len(out) < k:
        cand = answer + rng.choice([-1, 1]) * rng.randint(1, 12)
        if cand != answer:
            out.add(cand)
    return sorted(out)


def mmlu_pro_rows(n: int, rng: random.Random, start_id: int = 0,
                  n_options: tuple[int, ...] = (10, 10, 10, 9, 8, 4)) -> list[dict]:
    """TIGER-Lab/MMLU-Pro columns; most questions have 10 options, some fewer (as there)."""
    rows = []
    for i in range(n):
        question, answer = arithmetic(rng)
        k = rng.choice(n_options)
        options = [str(x) for x in distractors(rng, answer, k - 1) + [answer]]
        rng.shuffle(options)
        idx = options.index(str(answer))
        category = CATEGORIES[i % len(CATEGORIES)]
        rows.append({"question_id": start_id + i, "question": question, "options": options,
                     "answer": string.ascii_uppercase[idx], "answer_index": idx,
                     "cot_content": f"A: Let's think step by step. The answer is "
                                    f"({string.ascii_uppercase[idx]}).",
                     "category": category, "src": f"standin-{category}"})
    return rows


def gpqa_rows(n: int, rng: random.Random, prefix: str) -> list[dict]:
    """Idavidrein/gpqa columns used by the task, plus its ids and domains."""
    rows = []
    for i in range(n):
        question, answer = arithmetic(rng)
        wrong = distractors(rng, answer, 3)
        rows.append({"Question": f"{question} [ref] Give the exact value.",
                     "Correct Answer": str(answer),
                     "Incorrect Answer 1": str(wrong[0]), "Incorrect Answer 2": str(wrong[1]),
                     "Incorrect Answer 3": str(wrong[2]),
                     "Explanation": f"Computing directly gives {answer}.",
                     "Record ID": f"{prefix}{i:04d}", "High-level domain": "Physics",
                     "Subdomain": "Arithmetic"})
    return rows


def bbh_rows(subtask: str, n: int, rng: random.Random) -> list[dict]:
    """SaylorTwift/bbh columns (input, target); targets drawn from the task's own choices."""
    import lm_eval.tasks.leaderboard as lb
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lb.__path__[0]) / "bbh_mc" / f"{subtask}.yaml", resolve_func=False)
    choices = cfg["doc_to_choice"]
    rows = []
    for i in range(n):
        target = rng.choice(choices)
        listing = "\n".join(f"{c} option {j + 1}" for j, c in enumerate(choices)
                            if c.startswith("("))
        body = f"Stand-in item {i + 1} of {subtask.replace('_', ' ')}."
        rows.append({"input": f"{body}\nOptions:\n{listing}" if listing else body,
                     "target": target})
    return rows


def math_rows(config: str, n: int, rng: random.Random) -> list[dict]:
    """DigitalLearningGmbH/MATH-lighteval columns; one in three rows is not Level 5 (the
    leaderboard task keeps Level 5 only)."""
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        level = "Level 3" if i % 3 == 2 else "Level 5"
        rows.append({"problem": f"Compute ${a} \\cdot {b} + {a}$.",
                     "level": level, "type": config.replace("_", " ").title(),
                     "solution": f"We have ${a} \\cdot {b} + {a} = {a * b} + {a} = "
                                 f"\\boxed{{{a * b + a}}}$."})
    return rows


IFEVAL_PROMPTS = [
    ("Write a short note about rivers. Do not use any commas.",
     ["punctuation:no_comma"], [{}]),
    ("Describe a market in fewer than 40 words, all in lowercase letters.",
     ["length_constraints:number_words", "change_case:english_lowercase"],
     [{"relation": "less than", "num_words": 40}, {}]),
    ("List three fruits as markdown bullet points.",
     ["detectable_format:number_bullet_lists"], [{"num_bullets": 3}]),
    ("Explain tides in fewer than 4 sentences and end with the phrase 'Any questions?'",
     ["length_constraints:number_sentences", "startend:end_checker"],
     [{"relation": "less than", "num_sentences": 4}, {"end_phrase": "Any questions?"}]),
    ("Write about bread using fewer than 2 words in all capital letters, in English.",
     ["change_case:capital_word_frequency", "language:response_language"],
     [{"capital_relation": "less than", "capital_frequency": 2}, {"language": "en"}]),
    ("Name a colour. Wrap your entire response in double quotation marks.",
     ["startend:quotation"], [{}]),
]


def ifeval_rows() -> list[dict]:
    """wis-k/instruction-following-eval columns: key, prompt, instruction_id_list, kwargs."""
    keys = sorted({k for _, _, kws in IFEVAL_PROMPTS for kw in kws for k in kw})
    rows = []
    for i, (prompt, ids, kwargs) in enumerate(IFEVAL_PROMPTS):
        full = [{k: kw.get(k) for k in keys} for kw in kwargs]  # the hub stores every key
        rows.append({"key": 1000 + i, "prompt": prompt, "instruction_id_list": ids,
                     "kwargs": full})
    return rows


def build(out: Path, mmlu_pro_test: int = 30) -> None:
    rng = random.Random(SEED)
    write_dataset(out / "TIGER-Lab" / "MMLU-Pro", {"default": {
        "validation": mmlu_pro_rows(10, rng, start_id=90000),
        "test": mmlu_pro_rows(mmlu_pro_test, rng)}})
    write_dataset(out / "Idavidrein" / "gpqa", {
        "gpqa_main": {"train": gpqa_rows(12, rng, "recM")},
        "gpqa_diamond": {"train": gpqa_rows(8, rng, "recD")}})
    write_dataset(out / "SaylorTwift" / "bbh",
                  {sub: {"test": bbh_rows(sub, 2, rng)} for sub in BBH_SUBTASKS})
    write_dataset(out / "DigitalLearningGmbH" / "MATH-lighteval",
                  {c: {"train": math_rows(c, 2, rng), "test": math_rows(c, 3, rng)}
                   for c in MATH_CONFIGS})
    write_dataset(out / "wis-k" / "instruction-following-eval", {"default": {
        "train": ifeval_rows()}})
    write_punkt_standin(out / "nltk_data")
    musr_rng = random.Random(SEED + 1)  # its own draws: the other stand-ins stay as they were
    write_dataset(out / "TAUR-Lab" / "MuSR", {"default": {
        split: musr_rows(split, 2, musr_rng) for split in MUSR_SPLITS}})


MUSR_SPLITS = ("murder_mysteries", "object_placements", "team_allocation")
MUSR_NAMES = ("Ada", "Bruno", "Chen", "Dara", "Emil", "Faye")


def musr_rows(split: str, n: int, rng: random.Random) -> list[dict]:
    """MuSR's columns (narrative, question, choices as a Python list literal, answer_index,
    answer_choice): a short story whose last sentence gives the answer away."""
    rows = []
    for _ in range(n):
        if split == "murder_mysteries":
            choices = rng.sample(MUSR_NAMES, 2)
            answer = rng.randrange(2)
            narrative = (f"{choices[0]} and {choices[1]} were at the manor that night. The "
                         f"knife was found in {choices[answer]}'s coat.")
            question = "Who is the most likely murderer?"
        elif split == "object_placements":
            choices = rng.sample(["kitchen", "garden", "attic", "garage", "office"], 4)
            answer = rng.randrange(4)
            who = rng.choice(MUSR_NAMES)
            narrative = (f"{who} left the keys in the {choices[(answer + 1) % 4]}. Later the keys "
                         f"were moved to the {choices[answer]} while {who} was away.")
            question = f"Which location is the most likely place {who} would look to find the keys?"
        else:
            a, b, c = rng.sample(MUSR_NAMES, 3)
            choices = [f"Painting: {a}, Cooking: {b} and {c}",
                       f"Painting: {b}, Cooking: {a} and {c}",
                       f"Painting: {c}, Cooking: {a} and {b}"]
            answer = rng.randrange(3)
            painter = (a, b, c)[answer]
            narrative = f"Only {painter} has ever painted; the other two love to cook."
            question = ("Given the story, how would you uniquely allocate each person to make "
                        "sure both tasks are accomplished efficiently?")
        rows.append({"narrative": narrative, "question": question, "choices": repr(choices),
                     "answer_index": answer, "answer_choice": choices[answer]})
    return rows


MMLU_PRO_CATEGORIES = ("biology", "business", "chemistry", "computer science", "economics",
                       "engineering", "health", "history", "law", "math", "other", "philosophy",
                       "physics", "psychology")
NUMERIC = {"chemistry", "engineering", "math", "physics"}
WORDS = (
    "the of and a to in is that for it as was with be by on not he this are or his from at which "
    "but have an they one had you were there all we can her has been if more when will would who "
    "so no time people new year work state world water number day part place case group system "
    "market price cost rate law court right party theory model cell body energy force heat light "
    "value change power form level point city river land child patient doctor student book house "
    "company firm bank trade money income tax demand supply growth test study result method data "
    "process question answer reason effect cause first second small large long high low early late "
    "public social human local general common main clear strong simple given following each other "
    "increase reduce measure show find take make give keep hold move turn play run use need follow"
).split()


def prose(rng: random.Random, n_chars: int) -> str:
    """Sentences of common English words, about ``n_chars`` characters in all."""
    out: list[str] = []
    while (length := sum(len(x) + 1 for x in out)) < n_chars:
        words = rng.choices(WORDS, k=rng.randint(6, 16))
        while len(words) > 3 and length + len(" ".join(words)) > n_chars:
            words.pop()
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def shaped_options(rng: random.Random, k: int, numeric: bool = False,
                   max_words: int = 5) -> list[str]:
    """``k`` distinct options: numbers with units, or phrases of 1 to ``max_words`` words."""
    options: list[str] = []
    while len(options) < k:
        option = (f"{rng.randint(1, 99999) / 100:g} {rng.choice(['J', 'm/s', 'mol', 'kg', 'N'])}"
                  if numeric else " ".join(rng.choices(WORDS, k=rng.randint(1, max_words))))
        if option not in options:
            options.append(option)
    return options


def mmlu_pro_shaped_rows(category: str, n: int, rng: random.Random, start_id: int,
                         n_chars: tuple[int, int], cot: bool) -> list[dict]:
    """MMLU-Pro rows of one category, question and options together ``n_chars`` (a range)
    characters long, about 1.3 characters a toy-tokenizer token; most have 10 options, some 3
    to 9, as in the real set, ``answer`` naming the one right option."""
    rows = []
    for i in range(n):
        k = rng.choices(range(3, 11), weights=(1, 2, 1, 1, 1, 2, 3, 39))[0]
        options = shaped_options(rng, k, category in NUMERIC and rng.random() < 0.5)
        ask = f" Which of the following is {rng.choice(['correct', 'true', 'most likely'])}?"
        budget = rng.randint(*n_chars) - sum(len(o) + 4 for o in options) - len(ask)
        question = prose(rng, max(budget, 40)) + ask
        idx = rng.randrange(k)
        letter = string.ascii_uppercase[idx]
        rows.append({"question_id": start_id + i, "question": question, "options": options,
                     "answer": letter, "answer_index": idx,
                     "cot_content": (f"A: Let's think step by step. {prose(rng, 300)} The "
                                     f"answer is ({letter})." if cot else ""),
                     "category": category, "src": f"ori_mmlu-{category.replace(' ', '_')}"})
    return rows


def bbh_shaped_rows(subtask: str, n: int, rng: random.Random) -> list[dict]:
    """BBH rows of ``subtask`` with inputs of 160 to 420 characters (100 to 300 toy-tokenizer
    tokens): prose, then for lettered choices an ``Options:`` listing of all of them."""
    import lm_eval.tasks.leaderboard as lb
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lb.__path__[0]) / "bbh_mc" / f"{subtask}.yaml", resolve_func=False)
    choices = cfg["doc_to_choice"]
    lettered = choices[0].startswith("(")
    rows = []
    for _ in range(n):
        listing = ("\nOptions:\n" + "\n".join(
            f"{c} {o}" for c, o in zip(choices, shaped_options(rng, len(choices), max_words=3)))
            if lettered else "")
        body = prose(rng, max(rng.randint(160, 420) - len(listing), 60))
        rows.append({"input": body + listing, "target": rng.choice(choices)})
    return rows


def build_shaped(out: Path, mmlu_pro_per_category: int = 20, bbh_per_subtask: int = 10,
                 seed: int = SEED) -> None:
    """MMLU-Pro and BBH stand-ins shaped like the real sets, for benchmarks of evaluation speed:
    MMLU-Pro's 14 categories, each with 5 validation questions (the task's 5-shot block, the
    first five, renders to 1,000 to 1,500 toy-tokenizer tokens) and ``mmlu_pro_per_category``
    test questions of 100 to 250 tokens; BBH's subtasks with ``bbh_per_subtask`` inputs each."""
    rng = random.Random(f"{seed}:mmlu_pro")
    validation, test = [], []
    for c, category in enumerate(MMLU_PRO_CATEGORIES):
        validation += mmlu_pro_shaped_rows(category, 5, rng, 5 * c, (270, 400), cot=True)
        test += mmlu_pro_shaped_rows(category, mmlu_pro_per_category, rng,
                                     70 + mmlu_pro_per_category * c, (130, 330), cot=False)
    write_dataset(out / "TIGER-Lab" / "MMLU-Pro", {"default": {
        "validation": validation, "test": test}})
    rng = random.Random(f"{seed}:bbh")
    write_dataset(out / "SaylorTwift" / "bbh",
                  {sub: {"test": bbh_shaped_rows(sub, bbh_per_subtask, rng)}
                   for sub in BBH_SUBTASKS})


def write_punkt_standin(folder: Path) -> None:
    """An English punkt_tab model with no learned abbreviations or collocations: IFEval's
    sentence and word checks run offline with it (NLTK's trained model splits after known
    abbreviations such as 'Mr.' differently). Real runs use NLTK's own data."""
    lang = folder / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True, exist_ok=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (lang / name).write_text("")
    (folder / "README.md").write_text(
        "Stand-in NLTK data: an untrained English punkt_tab model (empty parameter files).\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--mmlu-pro-test", type=int, default=30)
    parser.add_argument("--shaped", action="store_true",
                        help="write build_shaped's MMLU-Pro and BBH stand-ins (needs --out)")
    args = parser.parse_args()
    if args.shaped and args.out == OUT:
        parser.error("--shaped needs --out (it would replace the committed stand-ins)")
    if args.shaped:
        build_shaped(args.out)
    else:
        build(args.out, args.mmlu_pro_test)
    print(f"wrote {args.out}")
