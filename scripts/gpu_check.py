"""The GPU path, checked in one run (under 8 minutes on one GPU): `bash scripts/gpu_check.sh`.

Prints one verdict line per check (PASS, FAIL or INFO) and exits 1 if any check failed.
Where CUDA is absent the CPU half still runs and every CUDA check fails with a line that
says so (no traceback).

  merge/<pair>/<method>: the direct path with the working model on CUDA equals mergekit's
      executor on CUDA bit for bit (both λ), on a Qwen2-0.5B-shape pair (bf16) and on the
      Gemma-3 multimodal stand-in (scripts/build_layouts.py);
  merge/<pair>/<method>/cuda-vs-cpu: how far the CUDA merge is from the CPU merge (INFO:
      reductions and sorts run in another order on the GPU, and DARE's and DELLA's masks come
      from CUDA's generator, as in mergekit);
  time/<pair>: per-λ merge seconds (next λ) on CPU and on CUDA;
  eval/toy: accuracy and ECE of the toy pair at λ ∈ {0, 0.5, 1} on CUDA equal the CPU ones
      within TOLERANCE (bf16 working model, log-softmax in float32);
  eval/scoring: on the MMLU-Pro-shaped stand-in (random Qwen2, 4 layers, hidden 256, float32)
      prefix-tree scoring's log-likelihoods equal lm-eval's within 1e-4 nats with the same
      accuracy on CUDA, and its time per λ against lm-eval's;
  memory: peak GPU memory of the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "della",
           "breadcrumbs")
LAMBDAS = (0.3, 0.7)
TOLERANCE = {"acc": 0.02, "ece": 0.01}  # |CUDA − CPU| on the toy tasks (≈250 documents)
FAILED: list[str] = []


def verdict(status: str, name: str, detail: str) -> None:
    if status == "FAIL":
        FAILED.append(name)
    print(f"{status:4}  {name}: {detail}", flush=True)


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Working:
    """One working model on a device and its merger (what a sweep keeps across λ)."""

    def __init__(self, pt: Path, it: Path, device: str):
        from transformers import AutoModelForCausalLM

        from app.merge.merger import Merger

        self.pt, self.it, self.device = pt, it, device
        self.model = AutoModelForCausalLM.from_pretrained(it, dtype=torch.bfloat16).to(device)
        self.merger = Merger(device, seed=0)  # DARE's and DELLA's masks drawn on ``device``

    def merge(self, method: str, lam: float) -> tuple[dict[str, torch.Tensor], float, str]:
        """The merge's tensors on the host, its seconds and its engine."""
        from app.merge.layout import parameters

        report = self.merger.merge_into(self.model, mk_config(method, lam, self.pt, self.it))
        # copies: on the CPU ``.cpu()`` is the parameter itself, which the next λ overwrites
        return ({n: p.detach().to("cpu", copy=True) for n, p in parameters(self.model).items()},
                report.seconds, report.engine)


def mk_config(method: str, lam: float, pt: Path, it: Path) -> dict:
    return script("bench_merge").mk_config(method, lam, pt, it, "bfloat16")


def executor(pt: Path, it: Path, method: str, lam: float, device: str) -> dict:
    from app.merge.mergekit_adapter import merged_tensors

    mk = mk_config(method, lam, pt, it)
    return {n: v.cpu() for n, v in merged_tensors(mk, device, seed=0)}


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[int, float]:
    """(tensors that differ, largest absolute difference) over the names both hold."""
    names = sorted(set(a) & set(b))
    unequal = [n for n in names if not torch.equal(a[n], b[n])]
    worst = max((float((a[n].float() - b[n].float()).abs().max()) for n in unequal), default=0.0)
    return len(unequal), worst


def merge_checks(pairs: dict[str, tuple[Path, Path]], cuda: bool) -> None:
    for pair, (pt, it) in pairs.items():
        on_cpu = Working(pt, it, "cpu")
        on_cuda = Working(pt, it, "cuda") if cuda else None
        for method in METHODS:
            name = f"merge/{pair}/{method}"
            cpu = {lam: on_cpu.merge(method, lam)[0] for lam in LAMBDAS}
            if on_cuda is None:
                verdict("FAIL", name, "no CUDA device (torch.cuda.is_available() is False)")
                continue
            worst_exec, worst_cpu, bad = 0.0, 0.0, 0
            for lam in LAMBDAS:
                direct, _, engine = on_cuda.merge(method, lam)
                if engine != "direct":
                    verdict("FAIL", name, f"λ={lam}: took the {engine} path on CUDA, not direct")
                n, worst = compare(direct, executor(pt, it, method, lam, "cuda"))
                bad, worst_exec = bad + n, max(worst_exec, worst)
                worst_cpu = max(worst_cpu, compare(direct, cpu[lam])[1])
            verdict("PASS" if bad == 0 else "FAIL", name,
                    f"direct on CUDA vs mergekit's executor on CUDA: {bad} tensors differ "
                    f"(max |Δ| {worst_exec:.3g}) over λ={LAMBDAS}")
            verdict("INFO", f"{name}/cuda-vs-cpu", f"max |CUDA − CPU| {worst_cpu:.3g}")


def time_checks(pairs: dict[str, tuple[Path, Path]], cuda: bool) -> None:
    for pair, (pt, it) in pairs.items():
        seconds = {}
        for device in ("cpu", "cuda") if cuda else ("cpu",):
            working = Working(pt, it, device)
            runs = [working.merge("linear", lam)[1] for lam in (0.2, 0.4, 0.6)]
            seconds[device] = min(runs[1:])  # next λ: the files are mapped, buffers made
            del working
        line = ", ".join(f"{d} {s:.3f} s" for d, s in seconds.items())
        verdict("INFO" if cuda else "FAIL", f"time/{pair}",
                f"linear, next λ: {line}" + ("" if cuda else "; no CUDA device"))


def eval_checks(cuda: bool, limit: int) -> None:
    from app.config import compose
    from app.pipeline import Pipeline

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in ("cpu", "cuda") if cuda else ("cpu",):
            pipeline = Pipeline()
            for lam in (0.0, 0.5, 1.0):
                cfg = compose("model.dtype=bfloat16", f"device={device}", f"lambda={lam}",
                              f"task.limit={limit}", "task.bootstrap=0",
                              f"tracking.dir={tmp}/{device}")
                results[device, lam] = pipeline.run_job(cfg)
    keys = sorted(k for k in results["cpu", 0.5] if k.endswith(("/acc", "/ece")))
    if not cuda:
        verdict("FAIL", "eval/toy", "no CUDA device; CPU metrics at λ=0.5: " + ", ".join(
            f"{k}={results['cpu', 0.5][k]:.4f}" for k in keys))
        return
    worst = {"acc": 0.0, "ece": 0.0}
    for (device, lam), metrics in results.items():
        if device == "cuda":
            for k in keys:
                kind = k.rsplit("/", 1)[1]
                worst[kind] = max(worst[kind], abs(metrics[k] - results["cpu", lam][k]))
    ok = all(worst[k] <= TOLERANCE[k] for k in worst)
    verdict("PASS" if ok else "FAIL", "eval/toy",
            f"max |CUDA − CPU| acc {worst['acc']:.4f} (≤ {TOLERANCE['acc']}), ECE "
            f"{worst['ece']:.4f} (≤ {TOLERANCE['ece']}) over λ ∈ {{0, 0.5, 1}}, {keys}")


def scoring_check(cuda: bool, work: Path) -> None:
    import time

    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from app.config import TOY_DIR, compose
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator

    if not cuda:
        verdict("FAIL", "eval/scoring", "no CUDA device (the CPU comparison: "
                                        "scripts/bench_eval.py, tests/e2e/test_trie.py)")
        return
    script("build_standins").build_shaped(work / "shaped", mmlu_pro_per_category=8)
    tok = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id)).eval().to("cuda")
    cfg = compose("task=mmlu_pro", f"task.data_dir={work / 'shaped'}").task
    out, seconds = {}, {}
    for scoring in ("lm_eval", "trie", "lm_eval", "trie"):
        evaluator = out.get(scoring) or Evaluator(HFEngine(model, tok, cfg.batch_size, scoring),
                                                  cfg)
        torch.cuda.synchronize()
        start = time.perf_counter()
        evaluator.evaluate()
        torch.cuda.synchronize()
        seconds[scoring] = time.perf_counter() - start  # the second run of each
        out[scoring] = evaluator
    a, b = (out[s] for s in ("lm_eval", "trie"))
    gap = max(abs(x.resps[0][0] - y.resps[0][0]) for x, y in zip(a._ll, b._ll))
    same = all(x.resps[0][1] == y.resps[0][1] for x, y in zip(a._ll, b._ll))
    verdict("PASS" if gap < 1e-4 and same else "FAIL", "eval/scoring",
            f"max |Δ loglik| {gap:.2e} nats, greedy flags {'equal' if same else 'DIFFER'}; "
            f"per λ lm_eval {seconds['lm_eval']:.2f} s, trie {seconds['trie']:.2f} s "
            f"({seconds['lm_eval'] / seconds['trie']:.2f}×)")


def engine_check(cuda: bool) -> None:
    """HF against vLLM on CUDA: the toy's greedy generations and log-likelihoods per λ, the
    generation time per λ on each, and the in-place update against a new engine."""
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.config import TOY_DIR, compose, mergekit_config
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.evaluate.vllm_engine import VLLMEngine
    from app.merge.merger import merge_into

    if not cuda:
        verdict("FAIL", "engine/vllm", "no CUDA device (the CPU comparison: "
                                       "scripts/bench_engine.py, tests/e2e/test_vllm.py)")
        return
    cfg = compose("engine=vllm", "device=cuda", "task.bootstrap=0")
    tok = AutoTokenizer.from_pretrained(TOY_DIR / "it")
    hf_model, vllm_model = (AutoModelForCausalLM.from_pretrained(
        TOY_DIR / "it", dtype=torch.float32).eval().to("cuda") for _ in range(2))
    start = time.perf_counter()
    engine = VLLMEngine(TOY_DIR / "it", vllm_model, cfg.engine, "float32", "cuda")
    start_s = time.perf_counter() - start
    hf, vl = Evaluator(HFEngine(hf_model, tok, 32, "trie"), cfg.task), Evaluator(engine, cfg.task)
    for lam in LAMBDAS:
        cfg["lambda"] = lam
        mk = mergekit_config(cfg)
        merge_into(hf_model, mk, "cuda")
        merge_into(vllm_model, mk, "cuda")
        update_s = engine.load_weights(vllm_model)
        times, texts = {}, {}
        for name, ev in (("hf", hf), ("vllm", vl)):
            start = time.perf_counter()
            results, _ = ev.evaluate()
            times[name] = time.perf_counter() - start
            texts[name] = [r["response"] for r in results["toy_gen"].records]
        gap = max(abs(x.resps[0][0] - y.resps[0][0]) for x, y in zip(hf._ll, vl._ll))
        same = sum(a == b for a, b in zip(texts["hf"], texts["vllm"]))
        ok = gap < 1e-3 and same == len(texts["hf"])
        verdict("PASS" if ok else "FAIL", f"engine/vllm λ={lam:g}",
                f"max |Δ loglik| {gap:.2e}, greedy generations equal {same}/{len(texts['hf'])}; "
                f"toy tasks per λ HF {times['hf']:.2f} s, vLLM {times['vllm']:.2f} s; "
                f"in-place update {update_s:.3f} s vs engine start {start_s:.1f} s")
    # the merge computed inside the worker, on its GPU, from the mapped parents
    from app.merge.merger import Merger

    by_driver = engine.loglikelihood()
    engine.weights = "workers"
    worker_s = engine.load_weights(vllm_model, mk, Merger("cuda"))
    again = engine.loglikelihood()
    gap = max(abs(a[0] - b[0]) for a, b in zip(by_driver, again))
    verdict("PASS" if engine.weights_from == "workers" and gap < 1e-5 else "FAIL",
            "engine/vllm weights=workers", f"merged in the worker in {worker_s:.3f} s "
            f"(weights from {engine.weights_from}); max |Δ loglik| vs the driver's {gap:.2e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="where the stand-ins are built (temp)")
    parser.add_argument("--limit", type=int, default=200, help="documents per toy task")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CUDA: "
          f"{torch.cuda.get_device_name(0) if cuda else 'absent (CPU half only)'}", flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    qwen = script("bench_merge").build_pair(work / "qwen2-0.5b", "bfloat16")
    gemma = script("build_layouts").build("gemma3", work / "layouts")
    pairs = {"qwen2-0.5b-shape": qwen, "gemma3-multimodal": gemma}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    merge_checks(pairs, cuda)
    time_checks(pairs, cuda)
    eval_checks(cuda, args.limit)
    scoring_check(cuda, work)
    engine_check(cuda)
    if cuda:
        verdict("INFO", "memory", f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f}"
                                  f" GiB")
    print(f"{'FAILED: ' + ', '.join(FAILED) if FAILED else 'all checks passed'}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
