"""What probing costs per λ, next to the evaluation, and against the naive way and the floor.

    python scripts/bench_probe.py --lambdas 3                    # the toy pair (≈1 min)
    python scripts/bench_probe.py --setups 0.5b --lambdas 1      # Qwen2-0.5B shapes (≈22 min)

Per λ the working model gets (1−λ)·PT + λ·IT, then, side by side in one process:
  eval     the project's Evaluator on the toy tasks (requests built once, not counted);
  probe    ``run_probes`` with ``probe=toy`` (4 tasks × 400 inputs), ``layers=last``:
           hidden states from one batched forward per input batch, then the probes' fits;
  all      the same with ``layers=all`` (every layer's probe fit from the same passes);
  encode   the forward passes alone (``app.probe.encode``: batched, all layers, one logit
           position projected);
  naive    what a script does: one forward per input with ``output_hidden_states`` and full
           logits (measured on ``--naive`` inputs, scaled to all);
  floor    one batched forward over the same inputs with no hidden states kept and one logit
           position: the model's own cost.
It checks that the probe metrics are identical at every λ on a re-run (same seed), and prints
seconds per λ for each. Setups: ``toy`` — the embedded pair; ``0.5b`` — a random-initialised
Qwen2-architecture pair at Qwen2-0.5B's shapes (24 layers, hidden 896, its 151,936-row tied
vocabulary) with the toy tokenizer, on the same probing inputs and (``--eval-limit``) toy
questions. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from bench_eval import set_lambda  # noqa: E402

from app.config import TOY_DIR, compose  # noqa: E402

QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                 tie_word_embeddings=True, max_position_embeddings=4096)


def setup(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    if name == "toy":
        return [AutoModelForCausalLM.from_pretrained(TOY_DIR / w, dtype=torch.float32).eval()
                for w in ("pt", "it")], tokenizer
    config = Qwen2Config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **QWEN2_05B)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(Qwen2ForCausalLM(config).eval())
    return models, tokenizer


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def naive(model, tokenizer, texts: list[str]) -> None:
    with torch.no_grad():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)


def floor(model, tokenizer, texts: list[str], batch_size: int) -> None:
    ids = tokenizer(texts)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = [ids[i] for i in order[start:start + batch_size]]
            width = max(map(len, rows))
            batch = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            model(input_ids=batch, attention_mask=mask, use_cache=False, logits_to_keep=1)


def run(name: str, lambdas: list[float], n_naive: int, eval_limit: int | None) -> dict:
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.probe import load_tasks, run_probes
    from app.probe.encode import encode

    (pt, it), tokenizer = setup(name)
    model = type(pt)(pt.config).eval()
    pt_state, it_state = pt.state_dict(), it.state_dict()
    overrides = [f"task.limit={eval_limit}"] if eval_limit else []
    cfg = compose("probe=toy", *overrides)
    all_layers = compose("probe=toy", "probe.layers=all").probe
    texts = [x for t in load_tasks(cfg.probe) for x in t.inputs()]
    evaluator = Evaluator(HFEngine(model, tokenizer, cfg.task.batch_size, "auto"), cfg.task)
    n_layers = model.config.num_hidden_layers
    times: dict[str, list[float]] = {}
    for lam in lambdas:
        set_lambda(model, pt_state, it_state, lam)
        row = {"eval": timed(evaluator.evaluate)[0]}
        row["probe"], first = timed(lambda: run_probes(model, tokenizer, cfg.probe))
        again = run_probes(model, tokenizer, cfg.probe)
        drop = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
        assert drop(first.metrics) == drop(again.metrics), "a re-run gave other probe metrics"
        row["all"] = timed(lambda: run_probes(model, tokenizer, all_layers))[0]
        row["encode"] = timed(lambda: encode(model, tokenizer, texts, [n_layers], "mean",
                                             cfg.probe.batch_size))[0]
        row["naive"] = timed(lambda: naive(model, tokenizer, texts[:n_naive]))[0] \
            * len(texts) / n_naive
        row["floor"] = timed(lambda: floor(model, tokenizer, texts, cfg.probe.batch_size))[0]
        print(f"{name} λ={lam:g}: " + "  ".join(f"{k} {v:.2f}s" for k, v in row.items()),
              flush=True)
        for k, v in row.items():
            times.setdefault(k, []).append(v)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()} | {"inputs": len(texts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="toy", help="toy and/or 0.5b, comma-separated")
    ap.add_argument("--lambdas", type=int, default=2, help="λ values per setup (evenly spaced)")
    ap.add_argument("--naive", type=int, default=200, help="inputs the naive way is timed on")
    ap.add_argument("--eval-limit", type=int, default=None,
                    help="toy questions per task at 0.5B shapes (default 100; toy: all)")
    args = ap.parse_args()
    torch.manual_seed(0)
    lambdas = [round(i / max(1, args.lambdas - 1), 3) for i in range(args.lambdas)] \
        if args.lambdas > 1 else [0.5]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    rows = {}
    for name in args.setups.split(","):
        limit = args.eval_limit if args.eval_limit else (100 if name == "0.5b" else None)
        rows[name] = run(name, lambdas, args.naive, limit)
    print("\n| setup | eval s/λ | probe s/λ (last) | probe s/λ (all layers) | encode | naive "
          "encode | floor | naive / encode | encode / floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['eval']:.2f} | {r['probe']:.2f} | {r['all']:.2f} | "
              f"{r['encode']:.2f} | {r['naive']:.2f} | {r['floor']:.2f} | "
              f"{r['naive'] / r['encode']:.1f}× | {r['encode'] / r['floor']:.2f}× |")


if __name__ == "__main__":
    main()
