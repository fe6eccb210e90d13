"""End-to-end λ sweep: the naive per-λ pipeline vs this project vs evaluation alone.

    python scripts/bench_sweep.py                       # toy pair, 11-point linear grid (≈7 min)
    python scripts/bench_sweep.py --size qwen2-0.5b     # Qwen2-0.5B shapes, MMLU-Pro stand-in

Times, side by side in one run on the same machine:
  naive   per λ: `mergekit-yaml` to a temporary folder, then the `lm_eval` CLI on it;
  project the same grid as one `python -m app -m ...` (one process, fresh MLflow store);
  floor   one process, one model loaded once, stock lm-eval `simple_evaluate` once per λ
          (a TaskManager built once): what evaluation alone costs. Like the project's, its
          wall time is the whole process, imports included.
It checks that naive and project give the same accuracy per λ, and prints wall times, ratios,
peak RSS and the project's merge/evaluation split. Results: docs/benchmarks.md.

``--size qwen2-0.5b`` builds (once, under --work) a random-initialised pair of Qwen2-0.5B
shapes (bf16 files, evaluated in float32; "IT" = PT + small noise, the toy tokenizer) and
evaluates lm-eval's leaderboard MMLU-Pro (5-shot) over the local stand-in, --limit questions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
from app.config import TOY_DIR  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
BIN = Path(sys.executable).parent


@dataclass
class Setup:
    pt: Path
    it: Path
    lambdas: list[float]
    tasks: list[str]          # lm-eval task names (naive and floor)
    include: Path             # their include path
    acc: dict[str, str]       # project metric -> lm-eval results key "task|metric,filter"
    project_args: list[str] = field(default_factory=list)
    limit: int | None = None


def toy_setup(args) -> Setup:
    return Setup(TOY_DIR / "pt", TOY_DIR / "it", [round(i / 10, 1) for i in range(11)],
                 ["toy_mc", "toy_gen"], TOY_DIR / "tasks",
                 {"toy_mc/acc": "toy_mc|acc,none", "toy_gen/acc": "toy_gen|exact_match,strip"})


def qwen_setup(args) -> Setup:
    """Qwen2-0.5B shapes with the toy tokenizer; MMLU-Pro 5-shot over the local stand-in."""
    import lm_eval.tasks
    from bench_merge import build_pair
    from build_standins import build

    work = Path(args.work)
    pt, it = build_pair(work, "bfloat16")
    for folder in (pt, it):
        for f in TOY_DIR.joinpath("it").glob("*"):
            if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy(f, folder / f.name)
    build(work / "data", mmlu_pro_test=max(args.limit or 0, 10))
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    upstream = Path(lm_eval.tasks.__file__).parent / "leaderboard" / "mmlu_pro" / "mmlu_pro.yaml"
    (tasks / "mmlu_pro_local.yaml").write_text(yaml.safe_dump({
        "include": str(upstream), "task": "mmlu_pro_local",
        "dataset_path": str(work / "data" / "TIGER-Lab" / "MMLU-Pro")}))
    lambdas = [float(x) for x in args.lambdas.split(",")] if args.lambdas else [0.0, 0.5, 1.0]
    return Setup(pt, it, lambdas, ["mmlu_pro_local"], tasks,
                 {"leaderboard_mmlu_pro/acc": "mmlu_pro_local|acc,none"},
                 ["model.name=qwen2_05b_standin", f"model.pt={pt}", f"model.it={it}",
                  "model.dtype=float32", "task=mmlu_pro", f"task.data_dir={work / 'data'}",
                  f"task.limit={args.limit}"], args.limit)


def run(cmd: list[str], cwd: Path | None = None) -> tuple[str, float]:
    """Run a child to completion: (its output, its peak RSS in GB, children included)."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} ... failed:\n{text[-3000:]}")
    return text, usage.ru_maxrss / 1e6  # KiB -> GB


def lm_eval_acc(results: dict, s: Setup) -> dict[str, float]:
    out = {}
    for metric, key in s.acc.items():
        task, name = key.split("|")
        out[metric] = results["results"][task][name]
    return out


def naive(work: Path, s: Setup) -> tuple[float, dict[float, dict], float]:
    out, rss = {}, 0.0
    limit = ["--limit", str(s.limit)] if s.limit else []
    start = time.perf_counter()
    for lam in s.lambdas:
        mk = {"merge_method": "linear", "dtype": "float32", "out_dtype": "float32",
              "parameters": {"normalize": False},
              "models": [{"model": str(s.pt), "parameters": {"weight": round(1 - lam, 6)}},
                         {"model": str(s.it), "parameters": {"weight": lam}}]}
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            (Path(tmp) / "m.yaml").write_text(yaml.safe_dump(mk))
            _, merge_rss = run([str(BIN / "mergekit-yaml"), f"{tmp}/m.yaml", f"{tmp}/model",
                                "--copy-tokenizer"])
            _, eval_rss = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args",
                               f"pretrained={tmp}/model,dtype=float32", "--tasks",
                               ",".join(s.tasks), "--include_path", str(s.include),
                               "--batch_size", "32", "--output_path", f"{tmp}/out",
                               "--log_samples", "--seed", "0", *limit], cwd=s.include)
            rss = max(rss, merge_rss, eval_rss)
            result = json.loads(next(Path(tmp, "out").rglob("results_*.json")).read_text())
            out[lam] = lm_eval_acc(result, s)
    return time.perf_counter() - start, out, rss


def project(work: Path, s: Setup) -> tuple[float, dict[float, dict], float, float, float]:
    import mlflow

    grid = ",".join(str(x) for x in s.lambdas)
    start = time.perf_counter()
    _, rss = run([sys.executable, "-m", "app", "-m", "method=linear", f"lambda={grid}",
                  *s.project_args, f"tracking.dir={work}/mlruns",
                  f"hydra.sweep.dir={work}/multirun"], cwd=work)
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
            out[float(r.data.params["lambda"])] = {k: m[k] for k in s.acc}
    return wall, out, merge_s, eval_s, rss


def floor(s: Setup) -> tuple[float, float]:
    """In a child process: stock lm-eval, one model loaded once, one evaluation per λ."""
    code = f"""
import time, contextlib, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
start = time.perf_counter()
tok = AutoTokenizer.from_pretrained({str(s.it)!r})
model = AutoModelForCausalLM.from_pretrained({str(s.it)!r}, dtype=torch.float32)
lm = HFLM(pretrained=model, tokenizer=tok, batch_size=32)
with contextlib.chdir({str(s.include)!r}):
    tm = TaskManager(include_path={str(s.include)!r})
    for _ in range({len(s.lambdas)}):
        simple_evaluate(model=lm, tasks={s.tasks!r}, task_manager=tm, log_samples=True,
                        limit={s.limit!r}, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                        torch_random_seed=0, fewshot_random_seed=0)
print("floor seconds after imports:", time.perf_counter() - start)
"""
    start = time.perf_counter()
    text, rss = run([sys.executable, "-c", code])
    loaded = float(text.rsplit("floor seconds after imports:", 1)[1].split()[0])
    return time.perf_counter() - start, loaded, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["toy", "qwen2-0.5b"], default="toy")
    ap.add_argument("--work", default="/tmp/bench_sweep_qwen", help="qwen2-0.5b: the pair's folder")
    ap.add_argument("--limit", type=int, default=5, help="qwen2-0.5b: MMLU-Pro questions")
    ap.add_argument("--lambdas", help="qwen2-0.5b: comma-separated λ (default 0,0.5,1)")
    args = ap.parse_args()
    s = toy_setup(args) if args.size == "toy" else qwen_setup(args)
    work = Path(tempfile.mkdtemp(prefix="bench_sweep."))
    results = {}
    for name, fn in (("floor", lambda: floor(s)), ("project", lambda: project(work, s)),
                     ("naive", lambda: naive(work, s))):
        print(f"measuring {name} ...", flush=True)
        results[name] = fn()
    t_floor, t_floor_loaded, rss_floor = results["floor"]
    t_proj, acc_proj, merge_s, eval_s, rss_proj = results["project"]
    t_naive, acc_naive, rss_naive = results["naive"]
    same = all(acc_naive[lam] == acc_proj[lam] for lam in s.lambdas)
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"size: {args.size}; grid: linear, λ ∈ {{{', '.join(map(str, s.lambdas))}}}, "
        f"tasks {','.join(s.tasks)}" + (f", limit {s.limit}" if s.limit else ""),
        "",
        "| pipeline | wall (s) |",
        "|---|---|",
        f"| naive: mergekit-yaml + lm_eval CLI per λ | {t_naive:.1f} |",
        f"| project: python -m app -m (one process, incl. 2 reference evaluations) | {t_proj:.1f} |",
        f"| floor: stock lm-eval on one loaded model, {len(s.lambdas)} evaluations | {t_floor:.1f} |",
        "",
        f"floor after its imports (model load + evaluations): {t_floor_loaded:.1f} s; "
        "both project and floor walls include their process start-up",
        f"naive / project = {t_naive / t_proj:.1f}×; project / floor = {t_proj / t_floor:.2f}",
        f"peak RSS: naive {rss_naive:.2f} GB (its largest process), project {rss_proj:.2f} GB, "
        f"floor {rss_floor:.2f} GB",
        f"project time inside jobs: merging {merge_s:.1f} s, evaluating {eval_s:.1f} s "
        f"(merge share {merge_s / (merge_s + eval_s):.1%})",
        f"same accuracy per λ ({', '.join(s.acc)}): {same}",
    ]
    print("\n".join(lines))
    if not same:
        for lam in s.lambdas:
            print(lam, acc_naive[lam], acc_proj[lam])


if __name__ == "__main__":
    main()
