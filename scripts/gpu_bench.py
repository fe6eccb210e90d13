"""The GPU path against its floors, measured side by side in one run (one device call, under
8 minutes on one H200): `python scripts/gpu_bench.py [--shape 1.5b] [--sections ...]`.

Builds on the device a random-initialised Qwen2.5-1.5B-shape pair (bf16, the toy tokenizer,
151,936-token vocabulary) and the MMLU-Pro-shaped stand-in (scripts/build_standins.py, 8
questions a category: 1,010 requests), then prints, one line per figure:

  floors:  the device copy bandwidth (HBM), pinned and pageable host→device bandwidth and the
           bf16 matmul rate measured here, which set the floors below;
  merge:   per method, the next λ's merge with the parents resident on the device and streamed
           from pinned host memory, against the HBM floor (3 model-sized passes) and the PCIe
           floor (both parents over the bus once);
  equal:   bit-equality of the direct merge with mergekit's executor on CUDA for every
           direct-path method, with the parents on the device and on the host (0.5B shapes);
  eval:    seconds per λ, forward passes and tokens per pass of stock lm-eval, lm-eval's
           batching on the same requests, the prefix tree walked by rows and in packs, against
           the compute floor (the trie tokens × 2 × parameters at the measured matmul rate),
           peak device memory; and in float32 the packs' log-likelihoods against lm-eval's;
  e2e:     the 11-point grid through `python -m app` against the naive loop a user writes
           (`mergekit-yaml --cuda` + `lm_eval --device cuda`, one λ timed, ×11), and the
           start-up before the first λ.

Where CUDA is absent it runs on the CPU at --shape small (a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
METHODS = ("linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "della",
           "breadcrumbs")
SHAPES = {  # Qwen2.5 shapes (random weights); small: a dry run on a CPU
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),  # the toy's vocabulary
}
PACKS = (2048, 4096, 8192)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def say(section: str, text: str) -> None:
    print(f"{section:6} {text}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs):
    sync()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------ set-up

def build_pair(work: Path, shape: str, device: str) -> tuple[Path, Path]:
    """PT (random, on the device) and IT = PT + N(0, 0.02·std), saved in bf16 with the toy
    tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from app.config import TOY_DIR

    pt, it = work / f"{shape}-pt", work / f"{shape}-it"
    if (it / "config.json").exists():
        return pt, it
    tok = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    config = Qwen2Config(max_position_embeddings=32768, tie_word_embeddings=True,
                         rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **{"vocab_size": len(tok), **SHAPES[shape]})
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(pt)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p, dtype=torch.float32).mul_(0.02 * p.float().std())
                   .to(p.dtype))
    model.save_pretrained(it)
    for folder in (pt, it):
        tok.save_pretrained(folder)
    del model
    return pt, it


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


# ------------------------------------------------------------------------------ floors

def floors(device: str) -> dict[str, float]:
    out = {"hbm_gbs": 0.0, "pinned_gbs": 0.0, "pageable_gbs": 0.0, "tflops": 0.0}
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    out["hbm_gbs"] = 2 * n / min(timed(dst.copy_, src)[1] for _ in range(5)) / 1e9
    if device.startswith("cuda"):
        for kind, pin in (("pinned_gbs", True), ("pageable_gbs", False)):
            host = torch.empty(n, dtype=torch.uint8, pin_memory=pin).fill_(1)
            dst.copy_(host, non_blocking=pin)
            out[kind] = n / min(timed(lambda: dst.copy_(host, non_blocking=pin))[1]
                                for _ in range(3)) / 1e9
    size = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    a @ b
    seconds = min(timed(lambda: [a @ b for _ in range(10)])[1] for _ in range(3)) / 10
    out["tflops"] = 2 * size ** 3 / seconds / 1e12  # (bf16 matmuls are slow on a CPU)
    del src, dst, a, b
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    return out


# ------------------------------------------------------------------------------ merge

def mk_config(method: str, lam: float, pt: Path, it: Path) -> dict:
    from app.config import compose, mergekit_config

    return mergekit_config(compose(f"method={method}", f"lambda={lam}", f"model.pt={pt}",
                                   f"model.it={it}", "model.dtype=bfloat16"))


def working(pt: Path, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(pt, dtype=torch.bfloat16).eval().to(device)


def merge_section(pt: Path, it: Path, device: str, f: dict, methods) -> None:
    from app.merge.merger import Merger

    size = model_bytes(pt)
    hbm_floor = 3 * size / (f["hbm_gbs"] * 1e9)
    pcie_floor = 2 * size / (f["pinned_gbs"] * 1e9) if f["pinned_gbs"] else float("nan")
    say("merge", f"model {size / 1e9:.2f} GB; floors per λ: HBM {hbm_floor * 1e3:.2f} ms, "
                 f"pinned PCIe {pcie_floor * 1e3:.1f} ms")
    model = working(pt, device)
    for parents_on in ("device", "host"):
        merger = Merger(device, seed=0, parents_on=parents_on)
        for method in methods:
            reports = [merger.merge_into(model, mk_config(method, lam, pt, it))
                       for lam in (0.3, 0.5, 0.7)]
            sync()
            next_s = statistics.median(r.seconds for r in reports[1:])
            floor = hbm_floor if parents_on == "device" else pcie_floor
            say("merge", f"{method:15} parents on {parents_on:6}: first {reports[0].seconds:.3f} s"
                         f", next {next_s * 1e3:8.2f} ms = {next_s / floor:6.1f}× the "
                         f"{'HBM' if parents_on == 'device' else 'PCIe'} floor "
                         f"({reports[1].engine})")
        del merger
        torch.cuda.empty_cache() if device.startswith("cuda") else None
    del model


def equal_section(pt: Path, it: Path, device: str, methods) -> None:
    from app.merge.layout import parameters
    from app.merge.merger import Merger
    from app.merge.mergekit_adapter import merged_tensors

    model = working(pt, device)
    mergers = {where: Merger(device, seed=0, parents_on=where) for where in ("device", "host")}
    for method in methods:
        bad, engines = dict.fromkeys(mergers, 0), set()
        for lam in (0.3, 0.7):
            mk = mk_config(method, lam, pt, it)
            oracle = {n: t.to(device) for n, t in merged_tensors(mk, device, seed=0)}
            for where, merger in mergers.items():
                engines.add(merger.merge_into(model, mk).engine)
                mine = parameters(model)
                bad[where] += sum(not torch.equal(mine[n].data, t) for n, t in oracle.items())
            del oracle
        verdict = "PASS" if not any(bad.values()) and engines == {"direct"} else "FAIL"
        say("equal", f"{verdict} {method:15} tensors differing from mergekit's executor on "
                     f"{device} at λ 0.3, 0.7: parents on the device {bad['device']}, on the "
                     f"host {bad['host']} ({'+'.join(sorted(engines))})")


# ------------------------------------------------------------------------------ fused

def fused_section(device: str, f: dict) -> None:
    """Whether one fused pass can replace the torch ops of a linear merge bit for bit on
    this GPU (Triton: float32 maths, fused multiply-adds as asked, bf16 rounded to nearest
    even), and how close it comes to the HBM floor: what a GPU kernel for the direct merges
    would buy, measured before writing one."""
    import triton
    import triton.language as tl

    from app.merge.torch_ops import torch_linear, torch_slerp

    @triton.jit
    def linear2(a_ptr, b_ptr, out_ptr, n, w0, w1, FMA: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        a = tl.load(a_ptr + offs, mask=m).to(tl.float32)
        b = tl.load(b_ptr + offs, mask=m).to(tl.float32)
        if FMA:
            r = tl.fma(b, w1, tl.fma(a, w0, 0.0))
        else:
            r = (a * w0 + 0.0) + b * w1
        tl.store(out_ptr + offs, r.to(tl.bfloat16), mask=m)

    @triton.jit
    def slerp2(a_ptr, b_ptr, out_ptr, n, s0, s1, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        a = tl.load(a_ptr + offs, mask=m).to(tl.float32)
        b = tl.load(b_ptr + offs, mask=m).to(tl.float32)
        tl.store(out_ptr + offs, (a * s0 + b * s1).to(tl.bfloat16), mask=m)

    n = 1 << 28
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, device=device, generator=g).to(torch.bfloat16)
    y = (x.float() + 0.01 * torch.randn(n, device=device, generator=g)).to(torch.bfloat16)
    x[:64], y[32:96] = -0.0, 0.0
    floor = 3 * n * 2 / (f["hbm_gbs"] * 1e9)
    big = (torch.empty(n, device=device), torch.empty(n, device=device))  # one chunk
    grid = (triton.cdiv(n, 4096),)
    for w0, w1 in ((0.7, 0.3), (0.31, 0.69)):
        ref = torch.empty_like(x)
        _, torch_s = timed(torch_linear, [x, y], [w0, w1], ref, big)
        for fma in (True, False):
            out = torch.empty_like(x)
            run = lambda: linear2[grid](x, y, out, n, w0, w1, FMA=fma, BLOCK=4096,  # noqa
                                        enable_fp_fusion=False)
            run()
            _, seconds = timed(run)
            same = torch.equal(out.view(torch.int16), ref.view(torch.int16))
            say("fused", f"linear w={w0},{w1} {'fma' if fma else 'mul+add'}: "
                         f"{'EQUAL' if same else 'differs'} to the torch path; "
                         f"{seconds * 1e3:.2f} ms = {seconds / floor:.1f}× the HBM floor "
                         f"(torch path {torch_s * 1e3:.2f} ms = {torch_s / floor:.1f}×)")
    for s0, s1 in ((0.7, 0.3), (0.4123, 0.6002)):
        ref = torch.empty_like(x)
        _, torch_s = timed(torch_slerp, x, y, torch.tensor([s0], device=device),
                           torch.tensor([s1], device=device), ref, big)
        out = torch.empty_like(x)
        run = lambda: slerp2[grid](x, y, out, n, s0, s1, BLOCK=4096,  # noqa
                                   enable_fp_fusion=False)
        run()
        _, seconds = timed(run)
        same = torch.equal(out.view(torch.int16), ref.view(torch.int16))
        say("fused", f"slerp step {s0},{s1}: {'EQUAL' if same else 'differs'} to the torch path; "
                     f"{seconds * 1e3:.2f} ms = {seconds / floor:.1f}× the HBM floor (torch "
                     f"path {torch_s * 1e3:.2f} ms = {torch_s / floor:.1f}×)")


# ------------------------------------------------------------------------------ eval

def eval_section(pt: Path, work: Path, device: str, f: dict, stock: bool) -> None:
    from build_standins import build_shaped
    from transformers import AutoTokenizer

    from app.config import compose
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.evaluate.stock import stock_evaluate

    data = work / "shaped"
    if not data.exists():
        build_shaped(data, mmlu_pro_per_category=8)
    task = compose("task=mmlu_pro", f"task.data_dir={data}").task
    tok = AutoTokenizer.from_pretrained(pt)
    model = working(pt, device)
    # the matmuls every forwarded token pays (the embedding is a lookup; the output projection
    # runs only where a token is scored)
    params = sum(p.numel() for p in model.parameters()) \
        - model.get_input_embeddings().weight.numel()
    rows = []
    if stock:
        _, seconds = timed(stock_evaluate, model, tok, task)
        rows.append(("stock simple_evaluate", seconds, None))
    paths = [("lm-eval batching", "lm_eval", 0), ("tree by rows", "trie", 0)]
    paths += [(f"tree, packs of {n}", "trie", n) for n in PACKS] + [("tree, auto", "trie", "auto")]
    for label, scoring, pack in paths:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        evaluator = Evaluator(HFEngine(model, tok, task.batch_size, scoring, pack), task)
        evaluator.evaluate()  # the first λ: kernels chosen, caches warm
        (results, _), seconds = timed(evaluator.evaluate)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0
        rows.append((label, seconds, evaluator.costs() | {"peak_gib": peak,
                     "acc": results["leaderboard_mmlu_pro"].metrics["acc"],
                     "ece": results["leaderboard_mmlu_pro"].metrics["ece"],
                     "budget": getattr(evaluator.engine.scorer, "packs", None) and max(
                         p.ids.shape[1] for p in evaluator.engine.scorer.packs)}))
        del evaluator
    trie = next(c for _, _, c in rows if c)["eval/trie_tokens"]
    floor = trie * 2 * params / (f["tflops"] * 1e12)
    lm_eval_s = next(s for label, s, _ in rows if label == "lm-eval batching")
    say("eval", f"{trie:.0f} trie tokens, {params / 1e9:.2f} B non-embedding parameters: floor "
                f"{floor * 1e3:.1f} ms per λ at {f['tflops']:.0f} TFLOP/s")
    for label, seconds, c in rows:
        if c is None:
            say("eval", f"{label:22} {seconds:7.3f} s per λ")
            continue
        per = c["eval/tokens_forwarded"] / max(c["eval/forwards"], 1)
        say("eval", f"{label:22} {seconds:7.3f} s per λ = {seconds / floor:5.1f}× floor, "
                    f"{lm_eval_s / seconds:5.1f}× lm-eval batching; {c['eval/forwards']:.0f} "
                    f"passes × {per:7.0f} tokens ({c['eval/tokens_forwarded'] / trie:.2f}× trie)"
                    f", peak {c['peak_gib']:.1f} GiB; acc {c['acc']:.4f} ECE {c['ece']:.4f}")
    stock_s = next((s for label, s, _ in rows if label.startswith("stock")), None)
    best = min(s for label, s, c in rows if c and label.startswith("tree"))
    if stock_s:
        say("eval", f"best tree path {stock_s / best:.1f}× faster than stock simple_evaluate")
    del model
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    exactness(work, tok, task, device)


def exactness(work: Path, tok, task, device: str) -> None:
    """float32, a small model: the packs' log-likelihoods against lm-eval's batching."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, max_position_embeddings=32768,
        **SHAPES["small"])).eval().to(device)
    out = {}
    for label, scoring, pack in (("lm_eval", "lm_eval", 0), ("rows", "trie", 0),
                                 ("packs", "trie", 4096)):
        evaluator = Evaluator(HFEngine(model, tok, task.batch_size, scoring, pack), task)
        evaluator.evaluate()
        out[label] = evaluator
    for label in ("rows", "packs"):
        a, b = out["lm_eval"]._ll, out[label]._ll
        gap = max(abs(x.resps[0][0] - y.resps[0][0]) for x, y in zip(a, b))
        same = all(x.resps[0][1] == y.resps[0][1] for x, y in zip(a, b))
        say("eval", f"{'PASS' if gap < 1e-4 and same else 'FAIL'} float32 tree {label} vs "
                    f"lm-eval: max |Δ loglik| {gap:.2e} nats, greedy flags "
                    f"{'equal' if same else 'DIFFER'}")


# ------------------------------------------------------------------------------ e2e

def run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} failed:\n{proc.stdout[-1500:]}"
                           f"\n{proc.stderr[-2500:]}")
    return proc.stdout


def e2e_section(pt: Path, it: Path, work: Path, device: str) -> None:
    import lm_eval.tasks
    import mlflow
    import yaml

    data = work / "shaped"
    lambdas = [round(i / 10, 1) for i in range(11)]
    store = work / "mlruns"
    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    run([sys.executable, "-m", "app", "-m", "method=linear", f"device={device}",
         "lambda=" + ",".join(map(str, lambdas)), "model.name=qwen2.5-1.5b-shape",
         f"model.pt={pt}", f"model.it={it}", "model.dtype=bfloat16", "task=mmlu_pro",
         f"task.data_dir={data}", "task.bootstrap=0", f"tracking.dir={store}",
         f"hydra.sweep.dir={work / 'multirun'}"], cwd=ROOT)
    wall = time.perf_counter() - start
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.role != 'sweep'")
    metrics = [r.data.metrics for r in runs]
    first = next(m for m in metrics if "time/startup_s" in m)
    merge = [m["time/merge_s"] for m in metrics if "time/merge_s" in m]
    evals = [m["time/eval_s"] for m in metrics if "time/eval_s" in m]
    say("e2e", f"project grid, {len(lambdas)} λ: {wall:.1f} s wall; start-up before the first λ "
               f"{first['time/startup_s'] + first['time/load_s']:.1f} s (imports "
               f"{first['time/startup_s']:.1f} s, model and tasks {first['time/load_s']:.1f} s); "
               f"per λ merge {statistics.median(merge):.3f} s, evaluate "
               f"{statistics.median(evals):.3f} s")
    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    upstream = Path(lm_eval.tasks.__file__).parent / "leaderboard" / "mmlu_pro" / "mmlu_pro.yaml"
    (tasks / "mmlu_pro_local.yaml").write_text(yaml.safe_dump({
        "include": str(upstream), "task": "mmlu_pro_local",
        "dataset_path": str(data / "TIGER-Lab" / "MMLU-Pro")}))
    mk = {"merge_method": "linear", "dtype": "float32", "out_dtype": "bfloat16",
          "parameters": {"normalize": False},
          "models": [{"model": str(pt), "parameters": {"weight": 0.5}},
                     {"model": str(it), "parameters": {"weight": 0.5}}]}
    binary = Path(sys.executable).parent
    mergekit = shutil.which("mergekit-yaml") or str(binary / "mergekit-yaml")
    lm_eval_cli = shutil.which("lm_eval") or str(binary / "lm_eval")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        (Path(tmp) / "m.yaml").write_text(yaml.safe_dump(mk))
        t = time.perf_counter()
        run([mergekit, f"{tmp}/m.yaml", f"{tmp}/model", "--copy-tokenizer",
             *(["--cuda"] if device.startswith("cuda") else [])])
        merge_s = time.perf_counter() - t
        run([lm_eval_cli, "--model", "hf", "--model_args",
             f"pretrained={tmp}/model,dtype=bfloat16", "--tasks", "mmlu_pro_local",
             "--include_path", str(tasks), "--device", device, "--batch_size", "32",
             "--output_path", f"{tmp}/out", "--log_samples", "--seed", "0"], cwd=tasks)
        naive_s = time.perf_counter() - t
    say("e2e", f"naive loop per λ {naive_s:.1f} s (mergekit-yaml {merge_s:.1f} s, lm_eval "
               f"{naive_s - merge_s:.1f} s); × {len(lambdas)} = {naive_s * len(lambdas):.0f} s: "
               f"the project is {naive_s * len(lambdas) / wall:.1f}× faster end to end")


# ------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="where the pair and data go (temp)")
    parser.add_argument("--shape", default=None, choices=SHAPES,
                        help="the pair's shapes (1.5b on CUDA, small elsewhere)")
    parser.add_argument("--sections", nargs="*",
                        default=["merge", "equal", "eval", "fused", "e2e"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--no-stock", action="store_true", help="skip stock simple_evaluate")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = args.shape or ("1.5b" if cuda else "small")
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say("setup", f"torch {torch.__version__}, "
                 f"{torch.cuda.get_device_name(0) if cuda else 'no CUDA: a CPU dry run'}; "
                 f"pair {shape}; work {work}")
    (pt, it), seconds = timed(build_pair, work, shape, device)
    say("setup", f"pair built in {seconds:.1f} s ({model_bytes(pt) / 1e9:.2f} GB each)")
    f = floors(device)
    say("floors", f"HBM copy {f['hbm_gbs']:.0f} GB/s, pinned H2D {f['pinned_gbs']:.1f} GB/s, "
                  f"pageable H2D {f['pageable_gbs']:.1f} GB/s, bf16 matmul {f['tflops']:.0f} "
                  f"TFLOP/s")
    failed = []
    sections = {
        "merge": lambda: merge_section(pt, it, device, f, args.methods),
        "equal": lambda: equal_section(*build_pair(work, "0.5b" if cuda else "small", device),
                                       device, args.methods),
        "eval": lambda: eval_section(pt, work, device, f, not args.no_stock),
        "fused": lambda: fused_section(device, f),
        "e2e": lambda: e2e_section(pt, it, work, device),
    }
    for name in args.sections:
        if name not in sections:
            continue
        try:
            _, seconds = timed(sections[name])
            say(name, f"done in {seconds:.0f} s")
        except Exception as e:  # one section's failure must not cost the others' figures
            failed.append(name)
            say(name, f"FAILED: {type(e).__name__}: {str(e)[:2000]}")
            traceback.print_exc(limit=4)
    if cuda:
        say("memory", f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print("FAILED: " + ", ".join(failed) if failed else "all sections ran", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
