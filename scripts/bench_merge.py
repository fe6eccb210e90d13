"""Merge benchmark: in-memory λ steps vs `mergekit-yaml` to disk + `from_pretrained`, side by side.

    python scripts/bench_merge.py                    # Qwen2-0.5B shapes, bf16 (≈1 GB per model)
    python scripts/bench_merge.py --shape toy        # the embedded toy pair, seconds
    python scripts/bench_merge.py --methods linear slerp nuslerp task_arithmetic ties dare_ties \
        dare_linear della breadcrumbs --lambdas 0.3 0.5 0.7 --naive-lambdas 1   # every method
    python scripts/bench_merge.py --device cuda --parents-on host device --naive-lambdas 0

Builds (once, under --work) a random-initialised PT of the chosen architecture and an "IT" copy
perturbed by small noise, then, for each method and λ, measures in one run:
  * in-memory: the project's merge into one working model loaded once (per-λ seconds), on
    --device, with the parents where each --parents-on value puts them (merge.parents_on:
    several values give a side-by-side table; the main table shows the first),
  * naive: `mergekit-yaml` writing the merge to disk, then `from_pretrained` (per-λ seconds),
  * peak RSS of each path (each in its own process; in-memory: one process per method),
  * the memory-bandwidth floor: bytes read (both parents) + written (the merge), divided by
    the copy bandwidth measured here.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

QWEN2_05B = dict(
    model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
    max_position_embeddings=32768, tie_word_embeddings=True, rms_norm_eps=1e-6,
)


def build_pair(work: Path, dtype: str) -> tuple[Path, Path]:
    """A random-init PT of Qwen2-0.5B shapes and an IT = PT + N(0, 0.02·std) copy."""
    from transformers import AutoConfig, AutoModelForCausalLM

    pt, it = work / "pt", work / "it"
    if (pt / "config.json").exists() and (it / "config.json").exists():
        return pt, it
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**QWEN2_05B)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.save_pretrained(pt)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p, dtype=torch.float32).mul_(0.02 * p.float().std()).to(p.dtype))
    model.save_pretrained(it)
    return pt, it


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9  # read + write


def mk_config(method: str, lam: float, pt: Path, it: Path, dtype: str) -> dict:
    """The project's own mergekit config for this method and λ (conf/method/<method>.yaml)."""
    from app.config import compose, mergekit_config

    return mergekit_config(compose(f"method={method}", f"lambda={lam}", f"model.pt={pt}",
                                   f"model.it={it}", f"model.dtype={dtype}"))


def peak_rss_gb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1e6  # KiB → GB


def in_memory(args) -> dict:
    """Child process: load the working model once, merge every (method, λ) into it."""
    from transformers import AutoModelForCausalLM

    from app.merge.merger import Merger

    pt, it = Path(args.work) / "pt", Path(args.work) / "it"
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(pt, dtype=getattr(torch, args.dtype))
    model.to(args.device)
    load_s = time.perf_counter() - t
    times, engines = {}, set()
    # one per working model: keeps the parents (where parents_on puts them), λ-free values
    merger = Merger(args.device, seed=0, parents_on=args.parents_on[0])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for method in args.methods:
        times[method] = []
        for lam in args.lambdas:
            mk = mk_config(method, lam, pt, it, args.dtype)
            t = time.perf_counter()
            report = merger.merge_into(model, mk)
            sync()  # a CUDA merge returns before its last kernels finish
            times[method].append(time.perf_counter() - t)
            engines.add(report.engine)
    return {"load_s": load_s, "per_lambda_s": times, "peak_rss_gb": peak_rss_gb(),
            "engine": "+".join(sorted(engines))}


def naive(args) -> dict:
    """Child process: per (method, λ), mergekit-yaml to a temp folder, then from_pretrained."""
    import yaml
    from transformers import AutoModelForCausalLM

    pt, it = Path(args.work) / "pt", Path(args.work) / "it"
    cli = Path(sys.executable).parent / "mergekit-yaml"
    times = {}
    for method in args.methods:
        times[method] = []
        for lam in args.lambdas:
            with tempfile.TemporaryDirectory(dir=args.work) as tmp:
                (Path(tmp) / "m.yaml").write_text(yaml.safe_dump(mk_config(method, lam, pt, it, args.dtype)))
                t = time.perf_counter()
                subprocess.run([str(cli), f"{tmp}/m.yaml", f"{tmp}/out", "--no-copy-tokenizer"],
                               check=True, capture_output=True)
                model = AutoModelForCausalLM.from_pretrained(f"{tmp}/out", dtype=getattr(torch, args.dtype))
                times[method].append(time.perf_counter() - t)
                del model
    return {"per_lambda_s": times, "peak_rss_gb": max(peak_rss_gb(), peak_rss_gb(children=True))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["qwen2-0.5b", "toy"], default="qwen2-0.5b")
    ap.add_argument("--work", help="where the pair is built (default /tmp/bench_merge[_toy])")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--methods", nargs="+", default=["linear", "slerp"],
                    help="any of conf/method/, e.g. ties dare_ties")
    ap.add_argument("--lambdas", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--naive-lambdas", type=int, default=None,
                    help="time the naive path on the first N λ only (it is the slow one; "
                         "0: not at all)")
    ap.add_argument("--device", default="cpu", help="the in-memory merge's device (cpu, cuda)")
    ap.add_argument("--parents-on", nargs="+", choices=["auto", "device", "host"],
                    default=["auto"], help="merge.parents_on; several: side by side")
    ap.add_argument("--role", choices=["in_memory", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:  # a measured child process
        print(json.dumps(globals()[args.role](args)))
        return

    args.work = args.work or "/tmp/bench_merge" + ("_toy" if args.shape == "toy" else "")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.shape == "toy":
        from app.config import TOY_DIR

        for name in ("pt", "it"):
            if not (work / name).exists():
                (work / name).symlink_to(TOY_DIR / name)
        args.dtype = "float32"
    else:
        print("building the random-init pair (once) ...", flush=True)
        build_pair(work, args.dtype)
    model_bytes = sum(p.stat().st_size for p in (work / "pt").resolve().glob("*.safetensors"))
    child = [sys.executable, __file__, "--work", args.work, "--dtype", args.dtype,
             "--device", args.device, "--methods", *args.methods,
             "--lambdas", *map(str, args.lambdas)]

    def measure(role: str, methods: list[str], parents_on: str = "auto") -> dict:
        where = f" (parents on {parents_on})" if len(args.parents_on) > 1 else ""
        print(f"measuring {role} {' '.join(methods)}{where} ...", flush=True)
        cmd = [*child, "--role", role, "--parents-on", parents_on]
        cmd[cmd.index("--methods") + 1:cmd.index("--lambdas")] = methods
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # in-memory: one process per method (a sweep's process), so each gets its own peak RSS
    placed = {p: {m: measure("in_memory", [m], p) for m in args.methods}
              for p in args.parents_on}
    in_mem = placed[args.parents_on[0]]
    naive_lambdas = args.lambdas[:args.naive_lambdas]
    child[child.index("--lambdas") + 1:] = map(str, naive_lambdas)
    results = {"naive": measure("naive", args.methods) if naive_lambdas else None}
    bw = copy_bandwidth_gbs()
    floor_s = 3 * model_bytes / (bw * 1e9)  # read PT and IT, write the merge

    print(f"\nshape={args.shape} dtype={args.dtype} model={model_bytes / 1e9:.2f} GB "
          f"copy bandwidth={bw:.1f} GB/s floor per λ={floor_s:.2f}s")
    if args.device != "cpu" or args.parents_on != ["auto"]:
        print(f"in-memory on {args.device}, parents_on={args.parents_on[0]} (the floor is the "
              f"host's)")
    print("in-memory: the first λ of a process also pays the first write to the freshly loaded "
          "model's pages; 'next λ' is the median of the others")
    print(f"{'method':15} {'engine':9} {'first λ s':>9} {'next λ s':>9} {'naive s/λ':>10} "
          f"{'naive/next':>11} {'next/floor':>11} {'peak RSS':>9}")
    def next_s(run: dict, method: str) -> float:
        t = run["per_lambda_s"][method]
        return statistics.median(t[1:] or t)

    for method in args.methods:
        t = in_mem[method]["per_lambda_s"][method]
        nxt = next_s(in_mem[method], method)
        nai = (statistics.mean(results["naive"]["per_lambda_s"][method]) if results["naive"]
               else float("nan"))
        rss = in_mem[method]["peak_rss_gb"] / (model_bytes / 1e9)
        print(f"{method:15} {in_mem[method]['engine']:9} {t[0]:9.2f} {nxt:9.2f} {nai:10.2f} "
              f"{nai / nxt:10.1f}× {nxt / floor_s:10.1f}× {rss:8.2f}×")
    if results["naive"]:
        rss = results["naive"]["peak_rss_gb"]
        print(f"peak RSS naive (mergekit-yaml + from_pretrained): {rss:.2f} GB = "
              f"{rss / (model_bytes / 1e9):.2f}× one model")
    print("in-memory one-off load: " + ", ".join(
        f"{m} {r['load_s']:.2f}s" for m, r in in_mem.items()))
    if len(args.parents_on) > 1:  # the same merges with the parents elsewhere, side by side
        first = args.parents_on[0]
        print(f"\nparents_on side by side on {args.device} (next λ s, median; first λ s "
              f"includes reading the parents; peak RSS × one model)")
        print(f"{'method':15} " + " ".join(f"{p + ' first':>12} {p + ' next':>11} "
                                            f"{p + ' RSS':>10}" for p in args.parents_on)
              + "".join(f" {first + '/' + p:>13}" for p in args.parents_on[1:]))
        for method in args.methods:
            runs = [placed[p][method] for p in args.parents_on]
            cells = " ".join(f"{r['per_lambda_s'][method][0]:12.3f} {next_s(r, method):11.3f} "
                             f"{r['peak_rss_gb'] / (model_bytes / 1e9):9.2f}×" for r in runs)
            ratios = "".join(f" {next_s(runs[0], method) / next_s(r, method):12.2f}×"
                             for r in runs[1:])
            print(f"{method:15} {cells}{ratios}")


if __name__ == "__main__":
    main()
