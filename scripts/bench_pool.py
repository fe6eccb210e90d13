"""Expert-pool methods' costs at Qwen2-0.5B shapes with 3 experts, next to task arithmetic's.

    python scripts/bench_pool.py                    # all methods, one process each
    python scripts/bench_pool.py --examples 8       # statistics over 8 documents per expert

A random Qwen2 base at Qwen2-0.5B's shapes (24 layers, hidden 896, 151,936-row tied vocabulary,
float32) and three experts (the base plus seeded noise), built once under --cache. For each
method, in its own process: the first merge (statistics + τ*, ``time/stats_s`` and the rest),
then the per-λ merge (τ* kept), and the process's peak RSS. Documents are the toy pool's
training questions (toy tokenizer).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import QWEN2_05B  # noqa: E402

from app.config import TOY_DIR  # noqa: E402

METHODS = {
    "task_arithmetic": {},
    "fisher": {"examples": None, "labels": "empirical"},
    "regmean": {"alpha": 0.9, "examples": None},
    "localize_stitch": {"sparsity": 0.1, "masks": "trained", "examples": None,
                        "mask_steps": None, "mask_lr": 0.2},
    "localize_stitch_dataless": {"sparsity": 0.1, "masks": "dataless"},
    "consensus_ta": {"tall_factor": 0.4, "min_agree": 2},
}


def build(cache: Path) -> list[Path]:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    folders = [cache / "base", *(cache / f"expert{i}" for i in range(3))]
    if all((f / "model.safetensors").exists() for f in folders):
        return folders
    config = Qwen2Config(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **QWEN2_05B)
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(config)
    base.save_pretrained(folders[0])
    tok.save_pretrained(folders[0])
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for i, folder in enumerate(folders[1:]):
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for k, p in base.state_dict().items():
                p.copy_(state[k] + 0.01 * torch.randn(p.shape, generator=gen))
        base.save_pretrained(folder)
        tok.save_pretrained(folder)
    return folders


def one(method: str, folders: list[Path], examples: int, mask_steps: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.merge.merger import Merger

    model = AutoModelForCausalLM.from_pretrained(folders[0], dtype=torch.float32).eval()
    merger = Merger("cpu", seed=0)
    tok = AutoTokenizer.from_pretrained(folders[0])
    rows = [json.loads(line) for line in (TOY_DIR / "pool" / "data" / "job-train.jsonl").open()]
    merger.pool.tokenizer = tok
    for f in folders[1:]:
        merger.pool.examples[str(f.resolve())] = [
            (f"Question: {r['question']}\nAnswer:", f" {r['answer']}") for r in rows]
    params = {k: (examples if k == "examples" else mask_steps if k == "mask_steps" else v)
              for k, v in METHODS[method].items()}
    name = method.replace("_dataless", "")

    def mk(lam: float) -> dict:
        if name == "task_arithmetic":
            return {"merge_method": name, "base_model": str(folders[0]), "dtype": "float32",
                    "out_dtype": "float32", "parameters": {"normalize": False},
                    "models": [{"model": str(f), "parameters": {"weight": lam}}
                               for f in folders[1:]]}
        return {"merge_method": name, "base_model": str(folders[0]), "dtype": "float32",
                "out_dtype": "float32", "parameters": {"lambda": lam, **params},
                "models": [{"model": str(f), "parameters": {"weight": 1.0}}
                           for f in folders[1:]]}

    t0 = time.perf_counter()
    first = merger.merge_into(model, mk(1.0))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = merger.merge_into(model, mk(0.5))
    return {"method": method, "engine": first.engine, "stats_s": first.stats_seconds,
            "first_merge_s": first_s - first.stats_seconds,
            "per_lambda_merge_s": time.perf_counter() - t0 - second.stats_seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench_pool"))
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--mask-steps", type=int, default=4)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    folders = build(args.cache)
    if args.one:
        print(json.dumps(one(args.one, folders, args.examples, args.mask_steps)))
        return
    results = []
    for method in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", method, "--cache",
                              str(args.cache), "--examples", str(args.examples),
                              "--mask-steps", str(args.mask_steps)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{method}: failed\n{out.stderr[-2000:]}")
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    ta = next((r for r in results if r["method"] == "task_arithmetic"), None)
    print(f"\n{args.examples} documents per expert, {args.mask_steps} mask steps\n")
    print("| method | statistics (s) | first merge, τ* (s) | per-λ merge (s) | vs task arithmetic "
          "per λ | peak RSS (GB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = r["per_lambda_merge_s"] / ta["per_lambda_merge_s"] if ta else float("nan")
        print(f"| {r['method']} | {r['stats_s']:.1f} | {r['first_merge_s']:.1f} | "
              f"{r['per_lambda_merge_s']:.2f} | {ratio:.2f}× | {r['peak_rss_gb']:.1f} |")


if __name__ == "__main__":
    main()
