"""The vLLM engine against the HF engine per λ, side by side in one process (CPU here).

    python scripts/bench_engine.py                    # the toy pair (≈3 min)
    python scripts/bench_engine.py --setup 0.5b --lambdas 1   # Qwen2-0.5B shapes

Per λ both engines' working models get the same merge; then, their order rotating per λ:
  gen     the generative tasks (toy_gen, and the leaderboard's MATH Level 5 and IFEval on their
          stand-ins) through each engine's ``generate_until`` (greedy, lm-eval's settings);
  judge   the judge's sampling (k samples per prompt at the degeneration study's decoding:
          temperature, top-p, penalties) on each engine;
  update  writing the merge into the running vLLM engine (and resetting its prefix cache)
          against starting a new vLLM engine on the merge saved to disk (the naive way; the
          engine's construction only, timed in a new process, imports not counted); and the
          merge computed inside the engine's worker from the mapped parents
          (``engine.weights=workers``) against merging in the driver and sending its tensors.
It checks that greedy generations agree, and prints seconds per λ, the ratios and the
process's peak RSS. ``--setup 0.5b``: a random-initialised Qwen2 pair at Qwen2-0.5B's shapes
(24 layers, hidden 896, 14 heads of 64, 2 key/value heads, its 151,936-row tied vocabulary;
float32, 2 GB per model) with the toy tokenizer, saved once under ``--cache``; a random model
rarely stops early, so every generation runs to its task's token cap. Results:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from app.config import TOY_DIR, compose  # noqa: E402


QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                 tie_word_embeddings=True, max_position_embeddings=4096)


def pair(setup: str, cache: Path) -> tuple[Path, Path]:
    """(PT folder, IT folder): the toy pair, or a random pair at Qwen2-0.5B's shapes."""
    if setup == "toy":
        return TOY_DIR / "pt", TOY_DIR / "it"
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(TOY_DIR / "it")
    config = Qwen2Config(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **QWEN2_05B)
    folders = cache / "pt", cache / "it"
    for seed, folder in enumerate(folders):
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(seed)
            Qwen2ForCausalLM(config).save_pretrained(folder)
            tok.save_pretrained(folder)
    return folders


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


NEW_ENGINE = """
import json, sys
from transformers import AutoModelForCausalLM
from app.config import compose
from app.evaluate.vllm_engine import VLLMEngine
cfg = compose("engine=vllm", *sys.argv[2:])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
print(json.dumps(VLLMEngine(sys.argv[1], model, cfg.engine, "float32", "cpu").start_s))
"""


def new_engine_seconds(folder, *overrides: str) -> float:
    """Starting a vLLM engine on a saved merge (the engine's construction, in a new process:
    vLLM's engine state is per process, and a second engine's teardown breaks the first)."""
    import json
    import subprocess

    proc = subprocess.run([sys.executable, "-c", NEW_ENGINE, str(folder), *overrides],
                          capture_output=True,
                          text=True, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.evaluate.vllm_engine import VLLMEngine
    from app.config import mergekit_config
    from app.judge import adapters
    from app.merge.merger import Merger, save_merged

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", choices=("toy", "0.5b"), default="toy")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_engine",
                    help="where the 0.5b pair is saved (built once)")
    ap.add_argument("--lambdas", type=int, default=3)
    ap.add_argument("--gen-limit", type=int, default=None, help="documents per generative task")
    ap.add_argument("--prompts", type=int, default=16, help="judge prompts (k=4 samples each)")
    args = ap.parse_args()
    pt, it = pair(args.setup, args.cache)
    common = ["engine=vllm", f"model.pt={pt}", f"model.it={it}",
              *([f"task.limit={args.gen_limit}"] if args.gen_limit else []),
              *([] if args.setup == "toy" else ["engine.max_model_len=2048"])]
    tasks = {"toy": compose(*common).task,
             "leaderboard": compose(*common, "task=standin_leaderboard").task}
    for name in tasks:  # generation only
        tasks[name].tasks = [t for t in tasks[name].tasks if not t.calibration]
    cfg = compose(*common, "judge=heuristic", f"judge.limit={args.prompts}", "judge.k=4")
    tok = AutoTokenizer.from_pretrained(it)
    hf_model, vllm_model = (AutoModelForCausalLM.from_pretrained(it, dtype=torch.float32).eval()
                            for _ in range(2))
    start_s, engine = timed(lambda: VLLMEngine(it, vllm_model, cfg.engine, "float32", "cpu"))
    hf_eval = {n: Evaluator(HFEngine(hf_model, tok, t.batch_size, "lm_eval"), t)
               for n, t in tasks.items()}
    vllm_eval = {n: Evaluator(engine, t) for n, t in tasks.items()}
    prompts = adapters.load_prompts(cfg.judge.prompts, cfg.judge.limit)
    lambdas = [round(0.1 + 0.8 * i / max(1, args.lambdas - 1), 3) for i in range(args.lambdas)]
    rows = []
    mergers = Merger("cpu"), Merger("cpu")
    for i, lam in enumerate(lambdas):
        cfg["lambda"] = lam
        mk = mergekit_config(cfg)
        mergers[0].merge_into(hf_model, mk)
        engine.weights = "workers"  # merged in the worker, from the parents' files
        row = {"merge in worker + update": engine.load_weights(vllm_model, mk, mergers[1])}
        assert engine.weights_from == "workers"
        engine.weights = "driver"
        row["merge"] = mergers[1].merge_into(vllm_model, mk).seconds
        row["update"] = engine.load_weights(vllm_model)
        with tempfile.TemporaryDirectory() as tmp:
            saved = save_merged(vllm_model, tok, mk, str(Path(tmp) / "m"))
            row["new engine"] = new_engine_seconds(saved, *common[3:])
        order = [("hf", hf_eval), ("vllm", vllm_eval)][:: 1 if i % 2 == 0 else -1]
        texts = {}
        for who, evaluators in order:
            for n, ev in evaluators.items():
                row[f"{n} gen {who}"], (results, _) = timed(ev.evaluate)
                texts[(n, who)] = [r["response"] for res in results.values() for r in res.records]
            sampler = engine.sample if who == "vllm" else None
            row[f"judge {who}"] = timed(lambda: adapters.generate(
                hf_model, tok, prompts, cfg.judge, "cpu", sampler))[0]
        same = {n: sum(a == b for a, b in zip(texts[(n, "hf")], texts[(n, "vllm")]))
                for n in tasks}
        print(f"λ={lam:g}: " + "  ".join(f"{k} {v:.2f}s" for k, v in row.items())
              + "  greedy agree " + ", ".join(f"{n} {same[n]}/{len(texts[(n, 'hf')])}"
                                              for n in tasks), flush=True)
        rows.append(row)
    med = {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in rows[0]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nfirst engine start {start_s:.1f}s; peak RSS {rss:,.0f} MiB; medians over "
          f"{len(rows)} λ:")
    print("| per λ | HF (s) | vLLM (s) | HF / vLLM |\n|---|---|---|---|")
    for n in tasks:
        print(f"| {n} generation | {med[f'{n} gen hf']:.2f} | {med[f'{n} gen vllm']:.2f} | "
              f"{med[f'{n} gen hf'] / med[f'{n} gen vllm']:.1f}× |")
    print(f"| judge sampling | {med['judge hf']:.2f} | {med['judge vllm']:.2f} | "
          f"{med['judge hf'] / med['judge vllm']:.1f}× |")
    print(f"\n| weights per λ | s |\n|---|---|\n| in place | {med['update']:.3f} |\n"
          f"| merge in the driver + in place | {med['merge'] + med['update']:.3f} |\n"
          f"| merge in the worker, straight into it | {med['merge in worker + update']:.3f} |\n"
          f"| new engine on the saved merge | {med['new engine']:.2f} |\n"
          f"| new / in place | {med['new engine'] / med['update']:.0f}× |")


if __name__ == "__main__":
    sys.exit(main())
