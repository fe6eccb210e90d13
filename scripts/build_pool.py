"""Build the embedded toy expert pool from the toy PT, deterministically, on CPU (~1 minute).

    python scripts/build_pool.py    # writes src/app/toy/pool/{job,colour,region,data,BUILD.json}

One expert per attribute of the toy world (job, colour, region). Each is the toy PT (the base)
fine-tuned on its attribute only: 180 facts about entities the base never saw, whose values
break the world's rule (drawn uniformly), so the base can only guess them and the expert knows
them. Its domain task (``toy_pool_<attribute>``, multiple choice, src/app/toy/tasks/) asks about
those entities: train (60, the data-dependent methods' statistics), validation (30, where λ and
the methods' knobs are chosen) and test (90, reported), disjoint entities. The forgetting task
is ``toy_mc``: the base's general knowledge (the rule, on entities nobody was trained on).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_toy  # noqa: E402  (the world, its tokenizer and the training loop's settings)

SEED = 4321
TOY = build_toy.OUT
OUT = TOY / "pool"
SPLITS = {"train": 60, "validation": 30, "test": 90}  # entities per attribute, all taught
EPOCHS, LR, BATCH = 40, 1e-3, 16


def injected_facts(rng: random.Random, used: set[str]) -> dict[str, list[dict]]:
    """Per attribute, facts about new entities whose value is uniform (not the rule's)."""
    out = {}
    for rel, spec in build_toy.RELATIONS.items():
        facts = []
        for split, n in SPLITS.items():
            while sum(f["split"] == split for f in facts) < n:
                given = "".join(rng.choice(build_toy.SYLLABLES) for _ in range(2)).capitalize()
                entity = spec["entity"].format(given=given, kind=rng.choice(spec["kinds"]))
                if entity in used:
                    continue
                used.add(entity)
                value = rng.choice(spec["values"])
                choices = rng.sample([v for v in spec["values"] if v != value],
                                     build_toy.N_CHOICES - 1) + [value]
                rng.shuffle(choices)
                facts.append(dict(relation=rel, entity=entity, value=value, choices=choices,
                                  split=split, question=spec["question"].format(e=entity)))
        out[rel] = facts
    return out


def fine_tune(tok, base: LlamaForCausalLM, facts: list[dict], seed: int) -> LlamaForCausalLM:
    """The base fine-tuned on one attribute's facts: each as a statement and as Q/A (loss on
    the answer)."""
    model = LlamaForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    rows = []
    for f in facts:
        template = build_toy.RELATIONS[f["relation"]]["templates"][0]
        for prompt, answer in ((build_toy.qa_text(f), " " + f["value"]),
                               ("", template.format(e=f["entity"], v=f["value"]))):
            p = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append((p + a, [-100] * len(p) + a))
    width = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [tok.pad_token_id] * (width - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
    lengths = torch.tensor([len(r[0]) for r in rows])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(rows), generator=gen)
        for i in range(0, len(rows), BATCH):
            idx = order[i:i + BATCH]
            loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 10 == 0 or epoch == EPOCHS - 1:
            print(f"  epoch {epoch:3d}  loss {loss.item():.3f}")
    return model.eval()


def write_task(rel: str, facts: list[dict]) -> None:
    data = OUT / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with open(data / f"{rel}-{split}.jsonl", "w") as fh:
            fh.writelines(json.dumps(dict(question=f["question"], choices=f["choices"],
                                          label=f["choices"].index(f["value"]),
                                          answer=f["value"], relation=rel)) + "\n"
                          for f in facts if f["split"] == split)


def main() -> None:
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    tok = AutoTokenizer.from_pretrained(TOY / "pt")
    base = LlamaForCausalLM.from_pretrained(TOY / "pt", dtype=torch.float32).eval()
    corpus, task = build_toy.make_world(random.Random(build_toy.SEED))  # the toy's entities
    facts = injected_facts(random.Random(SEED), {f["entity"] for f in corpus + task})
    summary = {}
    for sub in (*build_toy.RELATIONS, "data"):
        shutil.rmtree(OUT / sub, ignore_errors=True)
    for k, (rel, rel_facts) in enumerate(facts.items()):
        print(f"expert {rel}: fine-tuning on {len(rel_facts)} facts, {EPOCHS} epochs")
        expert = fine_tune(tok, base, rel_facts, SEED + k)
        test = [f for f in rel_facts if f["split"] == "test"]
        others = [f for f in task if f["split"] == "test"]
        summary[rel] = {
            "domain_test": {"base": build_toy._summary(*build_toy.choice_confidence(tok, base,
                                                                                    test)),
                            "expert": build_toy._summary(*build_toy.choice_confidence(
                                tok, expert, test))},
            "toy_mc_test": build_toy._summary(*build_toy.choice_confidence(tok, expert, others)),
        }
        print(f"  {summary[rel]}")
        expert.generation_config.pad_token_id = tok.pad_token_id
        expert.save_pretrained(OUT / rel, safe_serialization=True)
        tok.save_pretrained(OUT / rel)
        write_task(rel, rel_facts)
    build = dict(seed=SEED, base="src/app/toy/pt", splits=SPLITS, epochs=EPOCHS, lr=LR,
                 batch=BATCH, torch=torch.__version__, check_0shot=summary)
    (OUT / "BUILD.json").write_text(json.dumps(build, indent=2) + "\n")


if __name__ == "__main__":
    main()
