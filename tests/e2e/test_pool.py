"""Expert pools end to end: the MergeBench protocol on the toy pool, the methods' endpoints on
the real working model, and the one-line refusals."""

import pytest
import torch
from helpers import one_line, run_app, runs

from app.config import TOY_DIR, mergekit_config
from app.merge.layout import parameters

METHODS = "task_arithmetic,ties,fisher,regmean,localize_stitch,consensus_ta"


def test_a_pool_sweep_logs_the_protocols_metrics_and_the_report_draws_its_figures(tmp_path):
    import sys

    run_app(tmp_path, "-m", "model=toy_pool", f"method={METHODS}", "lambda=0.5,1")
    _, found = runs(tmp_path)
    jobs = [r for r in found if r.data.tags.get("role") == "job"]
    refs = {r.data.tags.get("expert", "base"): r.data.metrics for r in found
            if r.data.tags.get("role") == "reference"}
    assert len(jobs) == 12 and set(refs) == {"base", "job", "colour", "region"}
    for r in jobs:
        m = r.data.metrics
        for key in ("mt/normalized", "forget/normalized", "selection/mt/normalized",
                    "time/merge_s", "time/stats_s", "mt/toy_pool_job/normalized"):
            assert key in m, (r.data.tags["method"], key)
        assert m["mt/toy_pool_job/normalized"] == pytest.approx(
            m["toy_pool_job/acc"] / refs["job"]["toy_pool_job/acc"])
        assert m["forget/normalized"] == pytest.approx(m["toy_mc/acc"] / refs["base"]["toy_mc/acc"])
    # each expert scores 1 on its own domain; the base keeps all of its knowledge
    assert refs["colour"]["mt/toy_pool_colour/normalized"] == 1.0
    assert refs["base"]["forget/normalized"] == 1.0 and refs["base"]["mt/normalized"] < 0.5
    # statistics are gathered once per pool: a second λ of a data-dependent method pays none
    stats = {(r.data.tags["method"], float(r.data.params["lambda"])):
             r.data.metrics["time/stats_s"] for r in jobs}
    for method in ("fisher", "regmean", "localize_stitch"):
        assert min(stats[(method, 0.5)], stats[(method, 1.0)]) == 0.0
        assert max(stats[(method, 0.5)], stats[(method, 1.0)]) > 0
    assert stats[("consensus_ta", 1.0)] == 0.0 == stats[("ties", 1.0)]
    # the sweep's parent: each method's validation time (its jobs' merges and evaluations)
    parent = next(r for r in found if r.data.tags.get("role") == "sweep").data.metrics
    fisher = [r.data.metrics for r in jobs if r.data.tags["method"] == "fisher"]
    assert parent["time/validation_s/fisher"] == pytest.approx(
        sum(m["time/merge_s"] + m["time/eval_s"] for m in fisher))
    assert parent["time/stats_s/fisher"] == max(m["time/stats_s"] for m in fisher) > 0
    import subprocess

    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "app.report", "--tracking-dir",
                    str(tmp_path / "mlruns"), "--out", str(out)], check=True,
                   capture_output=True, text=True)
    for name in ("tradeoff.png", "runtime.png", "wallclock.png", "pool.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 300, name
    table = (out / "pool.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS.split(","))


@pytest.fixture(scope="module")
def working():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.merge.merger import Merger

    model = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32).eval()
    merger = Merger("cpu", seed=0)
    merger.pool.tokenizer = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    import json

    for name in ("job", "colour", "region"):
        rows = [json.loads(x) for x in (TOY_DIR / "pool" / "data" / f"{name}-train.jsonl")
                .open()]
        merger.pool.examples[str((TOY_DIR / "pool" / name).resolve())] = [
            (f"Question: {r['question']}\nAnswer:", f" {r['answer']}") for r in rows]
    return model, merger


def _merged(working, make_cfg, method, *overrides):
    model, merger = working
    cfg = make_cfg("model=toy_pool", f"method={method}", "lambda=1",
                   "model.experts.1.weight=0", "model.experts.2.weight=0", *overrides)
    report = merger.merge_into(model, mergekit_config(cfg))
    assert report.engine == "pool"
    return {n: t.detach().clone() for n, t in parameters(model).items()}


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("method,extra", [("fisher", ["method.params.examples=4"]),
                                          ("regmean", ["method.params.examples=4"]),
                                          ("consensus_ta", ["method.params.min_agree=1"])])
def test_one_expert_at_full_weight_is_that_expert(working, make_cfg, method, extra):
    merged = _merged(working, make_cfg, method, *extra)
    expert = _weights(TOY_DIR / "pool" / "job")
    for name, tensor in expert.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-4, atol=1e-5)


def test_localize_and_stitch_of_one_expert_is_the_base_with_its_localised_part(working,
                                                                                make_cfg):
    merged = _merged(working, make_cfg, "localize_stitch_dataless", "method.params.sparsity=0.2")
    base, expert = _weights(TOY_DIR / "pt"), _weights(TOY_DIR / "pool" / "job")
    kept = total = 0
    for name, b in base.items():
        m, e = merged[name], expert[name]
        from_expert = torch.isclose(m, e, rtol=0, atol=1e-6) & (e != b)
        assert torch.all(from_expert | (m == b)), name  # each entry is the base's or the expert's
        kept += int(from_expert.sum())
        total += b.numel()
    assert kept / total == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("overrides,expected", [
    (["model.pt="], "model.pt: an expert pool needs its base"),
    ([f"model.experts.1.path={TOY_DIR / 'sizes' / 's' / 'it'}"],
     "model.experts[1].path does not match model.pt's architecture: hidden_size is 32"),
    (["method=regmean", "method.params.alpha=0"], "method.params.alpha=0 must be in (0, 1]"),
    (["method=regmean", "method.params.alpha=1.5"], "method.params.alpha=1.5 must be in (0, 1]"),
    (["method=localize_stitch", "method.params.sparsity=1"],
     "method.params.sparsity=1 must be in (0, 1)"),
    (["method=fisher", "method.params.labels=guess"],
     "method.params.labels='guess' is not valid; use empirical or sampled"),
    (["method=slerp"], "an expert pool (model.experts) needs a task-vector method"),
    (["task=toy_fewshot"], "model.experts[0].tasks: 'toy_pool_job' (job's domain) is not in "
                           "task.tasks"),
])
def test_bad_pool_input_is_one_line_before_any_work(tmp_path, overrides, expected):
    line = one_line(run_app(tmp_path, "model=toy_pool", "method=task_arithmetic", *overrides,
                            check=False))
    assert expected in line
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []


def test_data_methods_refuse_a_pair(make_cfg):
    from app.config import ConfigError, validate

    with pytest.raises(ConfigError, match="needs an expert pool"):
        validate(make_cfg("method=fisher"))


def test_a_mergebench_pool_offline_names_every_model_to_download(tmp_path):
    line = one_line(run_app(tmp_path, "model=mergebench-gemma-2-2b", "method=ties",
                            check=False))
    assert "model.pt='google/gemma-2-2b' is not in the local Hugging Face cache" in line
    assert "model.experts[4].path='MergeBench/gemma-2-2b_safety'" in line


def test_a_mergebench_pool_evaluates_its_suite(make_cfg):
    cfg = make_cfg("model=mergebench-llama-3.2-3b")
    names = [t.name for t in cfg.task.tasks]
    assert {"ifeval", "gsm8k_cot", "m_mmlu_fr"} <= set(names)
    assert [t.name for t in cfg.task.tasks if t.forgetting] == ["mmlu"]
