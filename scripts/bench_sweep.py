"""End-to-end λ sweep: the naive per-λ pipeline vs this project vs evaluation alone.

    python scripts/bench_sweep.py            # toy pair, 11-point linear grid (≈5 min)

Times, side by side in one run on the same machine:
  naive   per λ: `mergekit-yaml` to a temporary folder, then the `lm_eval` CLI on it;
  project the same grid as one `python -m app -m ...` (one process, fresh MLflow store);
  floor   one process, one model loaded once, stock lm-eval `simple_evaluate` 11 times
          (a TaskManager built once): what evaluation alone costs. Like the project's, its
          wall time is the whole process, imports included.
It checks that naive and project give the same accuracy per λ, and prints wall times, ratios
and the project's merge/evaluation split. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from app.config import TOY_DIR  # noqa: E402

LAMBDAS = [round(i / 10, 1) for i in range(11)]
TASKS = "toy_mc,toy_gen"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
BIN = Path(sys.executable).parent


def naive(work: Path) -> tuple[float, dict[float, dict]]:
    out = {}
    start = time.perf_counter()
    for lam in LAMBDAS:
        mk = {"merge_method": "linear", "dtype": "float32", "out_dtype": "float32",
              "parameters": {"normalize": False},
              "models": [{"model": str(TOY_DIR / "pt"), "parameters": {"weight": round(1 - lam, 6)}},
                         {"model": str(TOY_DIR / "it"), "parameters": {"weight": lam}}]}
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            (Path(tmp) / "m.yaml").write_text(yaml.safe_dump(mk))
            subprocess.run([str(BIN / "mergekit-yaml"), f"{tmp}/m.yaml", f"{tmp}/model",
                            "--copy-tokenizer"], check=True, capture_output=True, env=ENV)
            subprocess.run([str(BIN / "lm_eval"), "--model", "hf", "--model_args",
                            f"pretrained={tmp}/model,dtype=float32", "--tasks", TASKS,
                            "--include_path", str(TOY_DIR / "tasks"), "--batch_size", "32",
                            "--output_path", f"{tmp}/out", "--log_samples", "--seed", "0"],
                           check=True, capture_output=True, env=ENV, cwd=TOY_DIR / "tasks")
            result = json.loads(next(Path(tmp, "out").rglob("results_*.json")).read_text())
            out[lam] = {"toy_mc/acc": result["results"]["toy_mc"]["acc,none"],
                        "toy_gen/acc": result["results"]["toy_gen"]["exact_match,strip"]}
    return time.perf_counter() - start, out


def project(work: Path) -> tuple[float, dict[float, dict], float, float]:
    import mlflow

    grid = ",".join(str(x) for x in LAMBDAS)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app", "-m", "method=linear", f"lambda={grid}",
                    f"tracking.dir={work}/mlruns", f"hydra.sweep.dir={work}/multirun"],
                   check=True, capture_output=True, env=ENV, cwd=work)
    wall = time.perf_counter() - start
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work}/mlruns/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.role != 'sweep'")
    out, merge_s, eval_s = {}, 0.0, 0.0
    for r in runs:
        m = r.data.metrics
        merge_s += m.get("time/merge_s", 0.0)
        eval_s += m.get("time/eval_s", 0.0)
        if r.data.tags.get("role") == "job":
            out[float(r.data.params["lambda"])] = {k: m[k] for k in ("toy_mc/acc", "toy_gen/acc")}
    return wall, out, merge_s, eval_s


def floor() -> float:
    """In a child process: stock lm-eval, one model loaded once, 11 evaluations."""
    code = f"""
import time, contextlib, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
start = time.perf_counter()
tok = AutoTokenizer.from_pretrained({str(TOY_DIR / 'it')!r})
model = AutoModelForCausalLM.from_pretrained({str(TOY_DIR / 'it')!r}, dtype=torch.float32)
lm = HFLM(pretrained=model, tokenizer=tok, batch_size=32)
with contextlib.chdir({str(TOY_DIR / 'tasks')!r}):
    tm = TaskManager(include_path={str(TOY_DIR / 'tasks')!r})
    for _ in range({len(LAMBDAS)}):
        simple_evaluate(model=lm, tasks={TASKS.split(',')!r}, task_manager=tm, log_samples=True,
                        bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                        torch_random_seed=0, fewshot_random_seed=0)
print(time.perf_counter() - start)
"""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=ENV)
    return time.perf_counter() - start, float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_sweep."))
    results = {}
    for name, fn in (("floor", floor), ("project", lambda: project(work)),
                     ("naive", lambda: naive(work))):
        print(f"measuring {name} ...", flush=True)
        results[name] = fn()
    t_floor, t_floor_loaded = results["floor"]
    t_proj, acc_proj, merge_s, eval_s = results["project"]
    t_naive, acc_naive = results["naive"]
    same = all(acc_naive[lam] == acc_proj[lam] for lam in LAMBDAS)
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"grid: linear, λ ∈ {{{', '.join(map(str, LAMBDAS))}}}, tasks {TASKS} (300 questions each)",
        "",
        "| pipeline | wall (s) |",
        "|---|---|",
        f"| naive: mergekit-yaml + lm_eval CLI per λ | {t_naive:.1f} |",
        f"| project: python -m app -m (one process, incl. 2 reference evaluations) | {t_proj:.1f} |",
        f"| floor: stock lm-eval on one loaded model, {len(LAMBDAS)} evaluations | {t_floor:.1f} |",
        "",
        f"floor after its imports (model load + evaluations): {t_floor_loaded:.1f} s; "
        "both project and floor walls include their process start-up",
        f"naive / project = {t_naive / t_proj:.1f}×; project / floor = {t_proj / t_floor:.2f}",
        f"project time inside jobs: merging {merge_s:.1f} s, evaluating {eval_s:.1f} s "
        f"(merge share {merge_s / (merge_s + eval_s):.1%})",
        f"same accuracy per λ (toy_mc acc and toy_gen exact match): {same}",
    ]
    print("\n".join(lines))
    if not same:
        for lam in LAMBDAS:
            print(lam, acc_naive[lam], acc_proj[lam])


if __name__ == "__main__":
    main()
