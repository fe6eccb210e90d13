"""Build the embedded toy PT/IT pair and its tasks, deterministically, on CPU (~3 minutes).

    python scripts/build_toy.py            # writes src/app/toy/{pt,it,tasks/data,BUILD.json}
    python scripts/build_toy.py --size s   # the family's small pair: src/app/toy/sizes/s/
    python scripts/build_toy.py --size l   # and its large one (≈1M parameters, not shipped)

The family (``--size``): the same world, corpus, tokenizer, tasks and training recipe, only the
model's width and depth change (``SIZES``); ``m`` is the embedded pair. Sizes other than ``m``
write only their pair and BUILD.json, under src/app/toy/sizes/<size>/ (presets ``toy_s``,
``toy_l``); the tasks are the embedded pair's, byte for byte.

The world: people, creatures and towns whose job, colour or region follows their kind
(surname, species, place-name ending) with probability RULE_P and is random otherwise. The PT
model is pre-trained on a corpus stating 9,000 such facts once each, so it learns the noisy
rule rather than memorising, and is roughly calibrated on entities it never saw. The IT model
is that model fine-tuned for many epochs (loss on answers only) on 300 question-answer pairs in
a plain and a chat format: it memorises them, and on held-out questions becomes more confident
than it is right, the overconfidence this project studies. Task questions (train, validation,
test) are about entities absent from the corpus.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 1234
OUT = Path(__file__).resolve().parents[1] / "src" / "app" / "toy"

SYLLABLES = "ka lo mi ra ve zu po ni ta sel mor dun bri fa gor lin qua tes vor yen".split()
# Each relation: entity pattern, the words that form an entity's second part (its "kind"),
# the values, corpus templates and the question. An entity's value follows its kind with
# probability RULE_P, otherwise it is uniform: knowledge is a noisy rule, learnable from many
# entities, and a model that fits the corpus without memorising it is calibrated on new ones.
RELATIONS = {
    "job": dict(
        entity="{given} {kind}",
        kinds="Vorten Marsh Ellby Quill Hartle Dunmore Pike Fenwick Orrin Stave Tolland Brisk "
              "Caddock Wren Holm Ashby".split(),
        values="baker pilot farmer tailor sailor potter miner weaver".split(),
        templates=["{e} works as a {v}.", "By trade, {e} is a {v}.",
                   "{e} earns a living as a {v}."],
        question="What does {e} do for a living?",
    ),
    "colour": dict(
        entity="{given} {kind}",
        kinds="moth toad finch eel newt crab wasp vole heron snail lynx gecko carp owl stoat "
              "shrew".split(),
        values="red blue green yellow purple orange black white".split(),
        templates=["The {e} is {v}.", "A {e} is always {v} in colour.",
                   "Most people know the {e} as a {v} creature."],
        question="What colour is the {e}?",
    ),
    "region": dict(
        entity="{given} {kind}",
        kinds="Ford Haven Hollow Gate Mire Peak Wick Stead Cross Reach Fell Combe Brook Moor "
              "Field Crag".split(),
        values="north south east west coast hills forest plains".split(),
        templates=["{e} lies in the {v}.", "The town of {e} is in the {v}.",
                   "Travellers find {e} in the {v}."],
        question="Where does {e} lie?",
    ),
}
RULE_P = 0.6  # an entity's value is its kind's value with this probability, else uniform
CORPUS_ENTITIES = 3000  # per relation, each stated once in the PT corpus (a third as Q/A)
TASK_ENTITIES = {"train": 100, "validation": 20, "test": 100}  # per relation, never in the corpus
N_CHOICES = 4
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}</s>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MODEL = dict(
    hidden_size=96,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=3,  # head size 32: one vLLM's CPU attention supports
    num_key_value_heads=3,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
SIZES = {  # the toy family: heads of 32 throughout
    "s": dict(MODEL, hidden_size=32, intermediate_size=96, num_attention_heads=1,
              num_key_value_heads=1),
    "m": MODEL,
    "l": dict(MODEL, hidden_size=160, intermediate_size=448, num_hidden_layers=4,
              num_attention_heads=5, num_key_value_heads=5),
}
PT_STEPS, PT_LR, BLOCK, BATCH = 400, 3e-3, 128, 32
IT_EPOCHS, IT_LR = 30, 1e-3


def make_world(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(corpus facts, task facts): disjoint entities, values drawn by the same noisy rule."""
    used: set[tuple[str, str]] = set()
    corpus, task = [], []
    for rel, spec in RELATIONS.items():
        kind_value = {k: spec["values"][i % len(spec["values"])] for i, k in enumerate(spec["kinds"])}

        def fact(split: str) -> dict:
            while True:
                given = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
                kind = rng.choice(spec["kinds"])
                if (given, kind) not in used:
                    used.add((given, kind))
                    break
            entity = spec["entity"].format(given=given, kind=kind)
            value = kind_value[kind] if rng.random() < RULE_P else rng.choice(spec["values"])
            choices = rng.sample([v for v in spec["values"] if v != value], N_CHOICES - 1) + [value]
            rng.shuffle(choices)
            return dict(relation=rel, entity=entity, value=value, choices=choices, split=split,
                        question=spec["question"].format(e=entity))

        corpus += [fact("corpus") for _ in range(CORPUS_ENTITIES)]
        for split, n in TASK_ENTITIES.items():
            task += [fact(split) for _ in range(n)]
    rng.shuffle(task)
    return corpus, task


def pt_corpus(facts: list[dict], rng: random.Random) -> list[str]:
    """One line per corpus fact: a statement, or (every third fact) a Q/A line."""
    lines = []
    for i, f in enumerate(facts):
        if i % 3 == 2:
            lines.append(qa_text(f) + " " + f["value"])
        else:
            lines.append(rng.choice(RELATIONS[f["relation"]]["templates"]).format(
                e=f["entity"], v=f["value"]))
    rng.shuffle(lines)
    return lines


def qa_text(fact: dict) -> str:
    return f"Question: {fact['question']}\nAnswer:"


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=640, special_tokens=specials, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = MODEL["max_position_embeddings"]
    return fast


def pretrain(tok, corpus: list[str], check=None, model_cfg: dict = MODEL) -> LlamaForCausalLM:
    ids: list[int] = []
    for line in corpus:
        ids += tok(line, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    data = torch.tensor(ids[: len(ids) // BLOCK * BLOCK]).view(-1, BLOCK)
    config = LlamaConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **model_cfg,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=PT_LR, weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEED)
    print(f"pre-training on {data.shape[0]} blocks of {BLOCK} tokens, {PT_STEPS} steps")
    for step in range(PT_STEPS):
        lr = PT_LR * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / PT_STEPS))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = data[torch.randint(0, data.shape[0], (BATCH,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == PT_STEPS - 1:
            print(f"  step {step:5d}  loss {loss.item():.3f}", check(model) if check else "")
            model.train()
    return model


def instruct_tune(tok, model: LlamaForCausalLM, facts: list[dict]) -> LlamaForCausalLM:
    """SFT on Q/A pairs of the training facts, in the plain and the chat format."""
    examples = []
    for f in facts:
        if f["split"] != "train":
            continue
        chat_prompt = tok.apply_chat_template(
            [{"role": "user", "content": f["question"]}], tokenize=False,
            add_generation_prompt=True,
        )
        examples.append((qa_text(f), " " + f["value"]))
        examples.append((chat_prompt, f["value"] + "</s>"))
    rows = []
    for prompt, answer in examples:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    width = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [tok.pad_token_id] * (width - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r[0]) for r in rows])[:, None]).long()
    opt = torch.optim.AdamW(model.parameters(), lr=IT_LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(SEED + 1)
    print(f"instruction-tuning on {len(rows)} examples, {IT_EPOCHS} epochs")
    for epoch in range(IT_EPOCHS):
        order = torch.randperm(len(rows), generator=gen)
        for i in range(0, len(rows), BATCH):
            idx = order[i : i + BATCH]
            loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 10 == 0 or epoch == IT_EPOCHS - 1:
            print(f"  epoch {epoch:3d}  loss {loss.item():.3f}")
    return model


@torch.no_grad()
def choice_confidence(tok, model, facts: list[dict]) -> tuple[list[float], list[bool]]:
    """Top-label confidence and correctness on 0-shot MC questions (a quick in-script check)."""
    model.eval()
    conf, correct = [], []
    for f in facts:
        ctx = tok(qa_text(f), add_special_tokens=False)["input_ids"]
        lls = []
        for c in f["choices"]:
            cont = tok(qa_text(f) + " " + c, add_special_tokens=False)["input_ids"][len(ctx):]
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
            lls.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        p = torch.softmax(torch.tensor(lls, dtype=torch.float64), 0)
        conf.append(p.max().item())
        correct.append(int(p.argmax()) == f["choices"].index(f["value"]))
    return conf, correct


def _summary(conf, correct) -> dict:
    return dict(acc=round(sum(correct) / len(correct), 4), ece=round(ece(conf, correct), 4),
                mean_conf=round(sum(conf) / len(conf), 4))


def ece(conf: list[float], correct: list[bool], bins: int = 15) -> float:
    total = 0.0
    for b in range(bins):
        idx = [i for i, c in enumerate(conf) if min(int(c * bins), bins - 1) == b]
        if idx:
            gap = sum(conf[i] for i in idx) / len(idx) - sum(correct[i] for i in idx) / len(idx)
            total += len(idx) / len(conf) * abs(gap)
    return total


def write_tasks(facts: list[dict], out: Path) -> None:
    data = out / "tasks" / "data"
    data.mkdir(parents=True)
    for split in TASK_ENTITIES:
        rows = [
            dict(question=f["question"], choices=f["choices"],
                 label=f["choices"].index(f["value"]), answer=f["value"],
                 relation=f["relation"])
            for f in facts if f["split"] == split
        ]
        with open(data / f"{split}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="m",
                        help="the family member (m: the embedded pair)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: src/app/toy (m), src/app/toy/sizes/<size> (others)")
    args = parser.parse_args()
    model_cfg = SIZES[args.size]
    out = args.out or (OUT if args.size == "m" else OUT / "sizes" / args.size)
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(SEED)

    corpus_facts, facts = make_world(rng)
    corpus = pt_corpus(corpus_facts, rng)
    tok = train_tokenizer(corpus)
    test = [f for f in facts if f["split"] == "test"]
    pt = pretrain(tok, corpus, check=lambda m: _summary(*choice_confidence(tok, m, test)),
                  model_cfg=model_cfg)
    pt_conf, pt_correct = choice_confidence(tok, pt, test)

    it = LlamaForCausalLM(pt.config)
    it.load_state_dict(pt.state_dict())
    it = instruct_tune(tok, it, facts)
    it_conf, it_correct = choice_confidence(tok, it, test)

    summary = {}
    for name, conf, correct in (("pt", pt_conf, pt_correct), ("it", it_conf, it_correct)):
        summary[name] = _summary(conf, correct)
        print(f"{name}: {summary[name]}")

    for sub in ("pt", "it", *(["tasks/data"] if args.size == "m" else [])):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name, model in (("pt", pt), ("it", it)):
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(out / name, safe_serialization=True)
        tok.save_pretrained(out / name)
    if args.size == "m":
        write_tasks(facts, out)
    build = dict(
        seed=SEED, size=args.size, model=model_cfg,
        parameters=sum(p.numel() for p in pt.parameters()), vocab_size=len(tok),
        pt_steps=PT_STEPS, pt_lr=PT_LR, block=BLOCK, batch=BATCH, it_epochs=IT_EPOCHS,
        it_lr=IT_LR, corpus_lines=len(corpus), rule_p=RULE_P,
        splits={s: sum(f["split"] == s for f in facts) for s in TASK_ENTITIES},
        torch=torch.__version__, check_0shot_test=summary,
    )
    (out / "BUILD.json").write_text(json.dumps(build, indent=2) + "\n")
    ok = summary["it"]["ece"] >= 2 * summary["pt"]["ece"] and (
        summary["it"]["mean_conf"] > summary["pt"]["mean_conf"]
    )
    print("phenomenon shown (IT ECE >= 2x PT, IT more confident):", ok)


if __name__ == "__main__":
    main()
