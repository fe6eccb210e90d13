"""Evaluation over an 11-point λ sweep: stock lm-eval per λ vs the project's reused requests.

    python scripts/bench_eval.py                 # toy + MMLU-Pro-shaped stand-in (≈15 min)
    python scripts/bench_eval.py --setups toy    # one of them

Per λ ∈ {0, 0.1, …, 1} the working model gets (1−λ)·PT + λ·IT, then, side by side in one
process (their order alternating per λ, so machine load falls on both alike):
  stock   a fresh HFLM and one ``simple_evaluate`` that builds the tasks' requests itself and
          returns the per-sample log-likelihoods calibration needs (``log_samples=True``; the
          TaskManager is built once: indexing is not counted against it);
  reused  the project's Evaluator: requests and their tokens built once (counted), then only
          the model is run and lm-eval's filters, process_results and aggregation applied;
  shared  the same with ``task.scoring=shared_context`` (one KV-cached pass of each document's
          context, its choices scored from it), when the task has multiple-choice requests.
It checks that every λ gives identical lm-eval metrics on all paths (shared: log-likelihoods
within 1e-4 nats, same accuracy) and prints wall and CPU seconds and their ratios.

Setups: ``toy`` — the embedded toy pair on its tasks (300 multiple-choice + 300 generative
questions, 0-shot); ``mmlu_pro`` — a random-initialised Qwen2-architecture pair (4 layers,
hidden 256) with the toy tokenizer on a locally built MMLU-Pro stand-in through lm-eval's own
``leaderboard_mmlu_pro`` (5-shot, up to 10 options). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from app.config import compose  # noqa: E402

LAMBDAS = [round(i / 10, 1) for i in range(11)]


def toy_setup(work: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.config import TOY_DIR

    pt = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32).eval()
    it = AutoModelForCausalLM.from_pretrained(TOY_DIR / "it", dtype=torch.float32).eval()
    return pt, it, AutoTokenizer.from_pretrained(TOY_DIR / "pt"), compose().task


def mmlu_pro_setup(work: Path, n_test: int):
    from build_standins import build
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from app.config import TOY_DIR

    build(work / "data", mmlu_pro_test=n_test)
    tokenizer = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(Qwen2ForCausalLM(config).eval())
    task = compose("task=mmlu_pro", f"task.data_dir={work / 'data'}").task
    return models[0], models[1], tokenizer, task


def set_lambda(model, pt_state, it_state, lam: float) -> None:
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(torch.lerp(pt_state[name], it_state[name], lam))


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_setup(name: str, pt, it, tokenizer, task_cfg, shared: bool) -> dict:
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.evaluate.stock import stock_evaluate
    from app.evaluate.tasks import task_manager

    model = pt
    pt_state = {k: v.clone() for k, v in pt.state_dict().items()}
    it_state = {k: v.clone() for k, v in it.state_dict().items()}
    with _chdir(task_cfg.include_path):
        manager = task_manager(task_cfg.include_path, [s.name for s in task_cfg.tasks])
    evaluator, build_wall, build_cpu = timed(lambda: Evaluator(
        HFEngine(model, tokenizer, task_cfg.batch_size), task_cfg))
    totals = {"stock": [0.0, 0.0], "reused": [build_wall, build_cpu]}
    if shared:
        shared_ev, w, c = timed(lambda: Evaluator(
            HFEngine(model, tokenizer, task_cfg.batch_size, "shared_context"), task_cfg))
        totals["shared"] = [w, c]
    max_gap = 0.0
    for i, lam in enumerate(LAMBDAS):
        set_lambda(model, pt_state, it_state, lam)
        order = ["stock", "reused"] if i % 2 == 0 else ["reused", "stock"]
        results = {}
        for path in order:
            if path == "stock":
                out, w, c = timed(lambda: stock_evaluate(model, tokenizer, task_cfg, 0, manager))
                results["stock"] = out
            else:
                (res, out), w, c = timed(evaluator.evaluate)
                results["reused"] = out["results"]
            totals[path][0] += w
            totals[path][1] += c
        if results["stock"] != results["reused"]:
            raise SystemExit(f"{name} λ={lam}: stock and reused metrics differ:\n"
                             f"{results['stock']}\n{results['reused']}")
        if shared:
            (res_s, out_s), w, c = timed(shared_ev.evaluate)
            totals["shared"][0] += w
            totals["shared"][1] += c
            max_gap = max(max_gap, shared_gap(evaluator, shared_ev))
            if {k: v.get("acc,none") for k, v in results["reused"].items()} != \
                    {k: v.get("acc,none") for k, v in out_s["results"].items()}:
                raise SystemExit(f"{name} λ={lam}: shared-context accuracy differs")
        print(f"  {name} λ={lam:g}: " + "  ".join(
            f"{k} {v[0]:.1f}s" for k, v in totals.items()), flush=True)
    return {"totals": totals, "max_gap": max_gap}


def shared_gap(a, b) -> float:
    """Largest |Δ log-likelihood| between two evaluators' last responses."""
    return max((abs(x.resps[0][0] - y.resps[0][0]) for x, y in zip(a._ll, b._ll)), default=0.0)


class _chdir:
    def __init__(self, path):
        self.path, self.old = path, None

    def __enter__(self):
        if self.path:
            self.old = os.getcwd()
            os.chdir(self.path)

    def __exit__(self, *exc):
        if self.old:
            os.chdir(self.old)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default="toy,mmlu_pro")
    parser.add_argument("--mmlu-pro-test", type=int, default=60)
    parser.add_argument("--no-shared", action="store_true")
    args = parser.parse_args()
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.setups.split(","):
            if name == "toy":
                pt, it, tok, task_cfg = toy_setup(Path(tmp))
            else:
                pt, it, tok, task_cfg = mmlu_pro_setup(Path(tmp), args.mmlu_pro_test)
            out = run_setup(name, pt, it, tok, task_cfg, shared=not args.no_shared)
            t = out["totals"]
            print(f"{name}: 11 λ, identical lm-eval metrics on every λ")
            for path, (wall, cpu) in t.items():
                print(f"  {path:7s} wall {wall:7.1f} s  cpu {cpu:7.1f} s")
            print(f"  stock/reused: wall {t['stock'][0] / t['reused'][0]:.2f}×, "
                  f"cpu {t['stock'][1] / t['reused'][1]:.2f}×")
            if "shared" in t:
                print(f"  stock/shared: wall {t['stock'][0] / t['shared'][0]:.2f}×, "
                      f"cpu {t['stock'][1] / t['shared'][1]:.2f}×; reused/shared: wall "
                      f"{t['reused'][0] / t['shared'][0]:.2f}×; max |Δ loglik| "
                      f"{out['max_gap']:.2e} nats")


if __name__ == "__main__":
    main()
