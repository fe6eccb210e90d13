"""Evaluation over a λ sweep: stock lm-eval per λ vs the project's scorings, side by side.

    python scripts/bench_eval.py --per-category 4         # toy, MMLU-Pro-, BBH-shaped (≈40 min)
    python scripts/bench_eval.py --setups mmlu_pro_05b --lambdas 3   # Qwen2-0.5B shapes

Per λ the working model gets (1−λ)·PT + λ·IT, then, side by side in one process (their order
rotating per λ, so machine load falls on all alike):
  stock   a fresh HFLM and one ``simple_evaluate`` that builds the tasks' requests itself and
          returns the per-sample log-likelihoods calibration needs (``log_samples=True``; the
          TaskManager is built once: indexing is not counted against it);
  reused  the project's Evaluator with lm-eval's scoring (``task.scoring=lm_eval``): requests
          and their tokens built once (counted), then only the model is run and lm-eval's
          filters, process_results and aggregation applied;
  shared  the same with ``task.scoring=shared_context`` (one KV-cached pass per document
          context, its choices scored from it);
  trie    the same with ``task.scoring=trie`` (the requests' prefix tree, each distinct
          prefix forwarded once), walked by rows of ``task.batch_size`` (``pack_tokens=0``);
  packs   the same tree in packs of ``--pack-tokens`` tokens under a tree mask (what
          ``pack_tokens=auto`` does on a GPU).
It checks that every λ gives stock's lm-eval metrics on reused, and on shared and trie the
same accuracy and ECE as reused with log-likelihoods within 1e-4 nats, and prints per path
the wall seconds per λ, the tokens forwarded per λ over the trie tokens, and the peak RSS
growth during one of its evaluations (sampled every 5 ms; the largest over the λ).

Setups: ``toy`` — the embedded pair on its tasks (300 multiple-choice + 300 generative
questions, 0-shot); ``mmlu_pro`` / ``bbh`` — a random-initialised Qwen2-architecture pair
(4 layers, hidden 256) with the toy tokenizer on MMLU-Pro- and BBH-shaped stand-ins
(``build_standins.build_shaped``: 14 categories × ``--per-category`` questions (8) under one
≈1.2k-token 5-shot block, up to 10 options; 24 subtasks × as many inputs under their 3-shot
blocks) through lm-eval's
own ``leaderboard_mmlu_pro`` / ``leaderboard_bbh``; ``mmlu_pro_05b`` — the same MMLU-Pro
stand-in, 1 question per category, at Qwen2-0.5B's shapes (24 layers, hidden 896, the toy
tokenizer's 640-token vocabulary). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import psutil  # noqa: E402
import torch  # noqa: E402

from app.config import compose  # noqa: E402

SCORINGS = {"reused": ("lm_eval", 0), "shared": ("shared_context", 0), "trie": ("trie", 0),
            "packs": ("trie", 4096)}
SHAPES = {"small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2),
          "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2)}


def toy_setup(work: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.config import TOY_DIR

    pt = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32).eval()
    it = AutoModelForCausalLM.from_pretrained(TOY_DIR / "it", dtype=torch.float32).eval()
    return pt, it, AutoTokenizer.from_pretrained(TOY_DIR / "pt"), compose().task


def shaped_setup(work: Path, preset: str, shape: str, per_category: int):
    from build_standins import build_shaped
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from app.config import TOY_DIR

    build_shaped(work / "data", mmlu_pro_per_category=per_category, bbh_per_subtask=per_category)
    tokenizer = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(Qwen2ForCausalLM(config).eval())
    task = compose(f"task={preset}", f"task.data_dir={work / 'data'}").task
    return models[0], models[1], tokenizer, task


def set_lambda(model, pt_state, it_state, lam: float) -> None:
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(torch.lerp(pt_state[name], it_state[name], lam))


class PeakRSS:
    """The largest resident set size sampled while the block runs."""

    def __init__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_setup(name: str, pt, it, tokenizer, task_cfg, paths: list[str], lambdas) -> dict:
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.evaluate.stock import stock_evaluate
    from app.evaluate.tasks import in_include_path, task_manager

    model = pt
    pt_state = {k: v.clone() for k, v in pt.state_dict().items()}
    it_state = {k: v.clone() for k, v in it.state_dict().items()}
    with in_include_path(task_cfg):
        manager = task_manager(task_cfg.include_path, [s.name for s in task_cfg.tasks])
    counted = [0, 0]  # tokens, forward passes

    def count(module, args, kwargs):
        counted[0] += (kwargs["input_ids"] if "input_ids" in kwargs else args[0]).numel()
        counted[1] += 1

    model.register_forward_pre_hook(count, with_kwargs=True)
    evaluators, totals = {}, {p: {"wall": 0.0, "tokens": 0, "passes": 0, "rss": 0}
                              for p in paths}
    for path in paths:
        if path != "stock":
            start = time.perf_counter()
            evaluators[path] = Evaluator(HFEngine(model, tokenizer, task_cfg.batch_size,
                                                  *SCORINGS[path]), task_cfg)
            totals[path]["wall"] += time.perf_counter() - start  # the build is counted
    trie_tokens = next(iter(evaluators.values())).costs()["eval/trie_tokens"]
    max_gap = 0.0
    for i, lam in enumerate(lambdas):
        set_lambda(model, pt_state, it_state, lam)
        results = {}
        for path in paths[i % len(paths):] + paths[: i % len(paths)]:
            counted[:] = [0, 0]
            start = time.perf_counter()
            with PeakRSS() as rss:
                if path == "stock":
                    results[path] = (None, stock_evaluate(model, tokenizer, task_cfg, 0,
                                                          manager))
                else:
                    res, out = evaluators[path].evaluate()
                    results[path] = (res, out["results"])
            totals[path]["wall"] += time.perf_counter() - start
            totals[path]["tokens"] += counted[0]
            totals[path]["passes"] += counted[1]
            totals[path]["rss"] = max(totals[path]["rss"], rss.peak - rss.start)
        check(name, lam, results)
        if "reused" in evaluators:
            for path in ("shared", "trie", "packs"):
                if path in evaluators:
                    max_gap = max(max_gap, loglik_gap(evaluators["reused"], evaluators[path]))
        print(f"  {name} λ={lam:g}: " + "  ".join(
            f"{p} {t['wall']:.1f}s" for p, t in totals.items()), flush=True)
    return {"totals": totals, "max_gap": max_gap, "trie_tokens": trie_tokens,
            "n": len(lambdas)}


def check(name: str, lam: float, results: dict) -> None:
    """Stock and reused: the same lm-eval metrics; shared and trie: reused's accuracy and ECE."""
    if "stock" in results and "reused" in results and \
            results["stock"][1] != results["reused"][1]:
        raise SystemExit(f"{name} λ={lam}: stock and reused metrics differ:\n"
                         f"{results['stock'][1]}\n{results['reused'][1]}")
    if "reused" not in results:
        return
    for path in ("shared", "trie", "packs"):
        if path not in results:
            continue
        for task, res in results["reused"][0].items():
            a, b = res.metrics, results[path][0][task].metrics
            if a["acc"] != b["acc"] or abs(a.get("ece", 0) - b.get("ece", 0)) > 1e-6:
                raise SystemExit(f"{name} λ={lam}: {path} {task} acc/ECE "
                                 f"{b['acc']}/{b.get('ece')} vs {a['acc']}/{a.get('ece')}")


def loglik_gap(a, b) -> float:
    """Largest |Δ log-likelihood| between two evaluators' last responses."""
    return max((abs(x.resps[0][0] - y.resps[0][0]) for x, y in zip(a._ll, b._ll)), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="toy,mmlu_pro,bbh")
    parser.add_argument("--paths", default="stock,reused,shared,trie,packs")
    parser.add_argument("--pack-tokens", type=int, default=4096, help="the packs' budget")
    parser.add_argument("--lambdas", type=int, default=11, help="points on [0, 1]")
    parser.add_argument("--per-category", type=int, default=8,
                        help="MMLU-Pro test questions per category (BBH: inputs per subtask)")
    args = parser.parse_args()
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lambdas = [round(i / (args.lambdas - 1), 3) for i in range(args.lambdas)]
    paths = args.paths.split(",")
    SCORINGS["packs"] = ("trie", args.pack_tokens)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    setups = {"toy": lambda w: toy_setup(w),
              "mmlu_pro": lambda w: shaped_setup(w, "mmlu_pro", "small", args.per_category),
              "bbh": lambda w: shaped_setup(w, "bbh", "small", args.per_category),
              "mmlu_pro_05b": lambda w: shaped_setup(w, "mmlu_pro", "0.5b", 1)}
    for name in args.setups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            pt, it, tok, task_cfg = setups[name](Path(tmp))
            out = run_setup(name, pt, it, tok, task_cfg, paths, lambdas)
        t, n, floor = out["totals"], out["n"], out["trie_tokens"]
        print(f"{name}: {n} λ, stock's lm-eval metrics on reused; reused's accuracy and ECE on "
              f"shared, trie and packs (max |Δ loglik| {out['max_gap']:.2e} nats); trie tokens "
              f"{floor:,.0f}")
        for path, v in t.items():
            print(f"  {path:7s} {v['wall'] / n:7.2f} s/λ  forwarded/trie_tokens "
                  f"{v['tokens'] / n / floor:6.2f}  passes/λ {v['passes'] / n:6.0f}  "
                  f"peak RSS +{v['rss'] / 2**20:,.0f} MiB")
        for path in paths[1:]:
            if "stock" in t:
                print(f"  stock/{path} = {t['stock']['wall'] / t[path]['wall']:.2f}×")
        if "trie" in t and "stock" in t:
            print(f"trie: stock/trie = {t['stock']['wall'] / t['trie']['wall']:.2f}×, "
                  f"forwarded/trie_tokens = {t['trie']['tokens'] / n / floor:.2f}")


if __name__ == "__main__":
    main()
