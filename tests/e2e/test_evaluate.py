"""Evaluation: the leaderboard presets through their local stand-ins, the reused requests
against stock lm-eval, frozen documents, and the errors a user gets."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from app.calibration import calibration_metrics
from app.config import STANDINS_DIR, TOY_DIR, ConfigError, group_options
from app.evaluate.engine import HFEngine
from app.evaluate.evaluator import Evaluator
from app.evaluate.stock import stock_evaluate
from app.evaluate.tasks import build_tasks, prepare_leaves, task_manager

MC = ["leaderboard_mmlu_pro", "leaderboard_gpqa_main", "leaderboard_gpqa_diamond",
      "leaderboard_bbh", "leaderboard_musr"]
GEN = ["leaderboard_math_hard", "leaderboard_ifeval"]
PRESETS = ["mmlu_pro", "gpqa", "bbh", "musr", "math_hard", "ifeval"]


def test_presets_name_leaderboard_tasks_with_shots_metric_and_calibration(make_cfg):
    assert {*PRESETS, "leaderboard", "standin_leaderboard"} <= set(group_options("task"))
    assert [t.name for t in make_cfg().task.tasks] == ["toy_mc", "toy_gen"]  # the default
    suite = make_cfg("task=leaderboard").task
    shots = {t.name: t.num_fewshot for t in suite.tasks}
    assert shots == {"leaderboard_mmlu_pro": 5, "leaderboard_gpqa_main": 0,
                     "leaderboard_gpqa_diamond": 0, "leaderboard_bbh": 3,
                     "leaderboard_musr": 0, "leaderboard_math_hard": 4, "leaderboard_ifeval": 0}
    assert {t.name for t in suite.tasks if t.calibration} == set(MC)
    assert {t.name: t.metric for t in suite.tasks if not t.calibration} == {
        "leaderboard_math_hard": "exact_match", "leaderboard_ifeval": "prompt_level_strict_acc"}
    assert all(t.metric == "acc" for t in suite.tasks if t.calibration)  # raw accuracy
    # each single preset is the suite's entry for its tasks, and lm-eval knows every name
    singles = [t for p in PRESETS for t in make_cfg(f"task={p}").task.tasks]
    assert [OmegaConf.to_container(t) for t in singles] == \
        [OmegaConf.to_container(t) for t in suite.tasks]
    task_manager(None, [t.name for t in suite.tasks])


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory):
    """`python -m app task=standin_leaderboard` once, offline, on the toy pair."""
    tmp = tmp_path_factory.mktemp("standin")
    cmd = [sys.executable, "-m", "app", "task=standin_leaderboard", "task.limit=3",
           "task.bootstrap=200", "lambda=0.5", f"tracking.dir={tmp}/mlruns",
           f"hydra.run.dir={tmp}/outputs"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    return proc, client, runs[0], tmp


def test_standin_leaderboard_logs_calibration_for_mc_and_accuracy_for_generation(standin_run):
    proc, client, run, _ = standin_run
    m = run.data.metrics
    assert "leaderboard_mmlu_pro/acc=" in proc.stdout and "leaderboard_bbh/ece=" in proc.stdout
    for task in MC:
        for key in ("acc", "ece", "brier", "nll", "mean_conf", "acc_ci_low", "acc_ci_high",
                    "ece_ci_low", "ece_ci_high"):
            assert f"{task}/{key}" in m, (task, key)
        assert m[f"{task}/acc"] == m[f"{task}/acc_lm_eval"]  # our accuracy is lm-eval's acc
        assert m[f"{task}/acc_ci_low"] <= m[f"{task}/acc"] <= m[f"{task}/acc_ci_high"]
    for task in ("leaderboard_gpqa_main", "leaderboard_gpqa_diamond", "leaderboard_bbh",
                 "leaderboard_musr"):
        assert f"{task}/acc_norm" in m  # the leaderboard's own metric, next to raw acc
    assert m["leaderboard_bbh/n"] == 24 * 2  # every subtask (2 stand-in rows each), pooled
    assert m["leaderboard_musr/n"] == 3 * 2  # murder mysteries, object placements, teams
    assert {k for k in m if k.startswith("leaderboard_musr/") and k.count("/") == 2} == {
        f"leaderboard_musr/{s}/acc" for s in ("murder_mysteries", "object_placements",
                                              "team_allocation")}
    assert m["leaderboard_math_hard/n"] == 7 * 2  # Level 5 only: 2 of each subject's 3 rows
    for task in GEN:
        assert 0 <= m[f"{task}/acc"] <= 1 and f"{task}/ece" not in m
        assert m[f"{task}/acc_ci_low"] <= m[f"{task}/acc"] <= m[f"{task}/acc_ci_high"]
    assert 0 <= m["leaderboard_ifeval/inst_level_strict_acc"] <= 1
    names = {a.path for a in client.list_artifacts(run.info.run_id, "reliability")}
    assert {f"reliability/{t}.png" for t in MC} <= names


def test_per_sample_artifacts_reproduce_the_logged_metrics(standin_run):
    _, client, run, tmp = standin_run
    m = run.data.metrics
    rows_of = {}
    for task in MC + GEN:
        path = client.download_artifacts(run.info.run_id, f"samples/{task}.jsonl", str(tmp))
        rows = rows_of[task] = [json.loads(line) for line in open(path)]
        if task in MC:
            again = calibration_metrics([r["logliks"] for r in rows], [r["gold"] for r in rows],
                                        15, n_boot=200, seed=0)
            for key, value in again.items():
                assert m[f"{task}/{key}"] == value, (task, key)
        else:
            assert m[f"{task}/acc"] == pytest.approx(np.mean([r["score"] for r in rows]),
                                                     abs=1e-12)
    assert len({r["task"] for r in rows_of["leaderboard_bbh"]}) == 24
    # each part's accuracy is its documents' mean: BBH's subtasks, MMLU-Pro's categories
    bbh = rows_of["leaderboard_bbh"]
    assert {r["part"] for r in bbh} == {r["task"].removeprefix("leaderboard_bbh_") for r in bbh}
    categories = [json.loads(line)["category"] for line in
                  open(STANDINS_DIR / "TIGER-Lab" / "MMLU-Pro" / "test.jsonl")][:3]
    assert [r["part"] for r in rows_of["leaderboard_mmlu_pro"]] == categories
    for task in ("leaderboard_bbh", "leaderboard_mmlu_pro", "leaderboard_musr"):
        parts = {r["part"] for r in rows_of[task]}
        assert len(parts) > 1
        for part in parts:
            mine = [r["correct"] for r in rows_of[task] if r["part"] == part]
            assert m[f"{task}/{part}/acc"] == pytest.approx(np.mean(mine), abs=1e-12)
    assert not any(k.startswith("leaderboard_gpqa_main/") and k.count("/") == 2 for k in m)


def test_reused_requests_give_stock_simple_evaluate_metrics_for_every_merge(toy, make_cfg):
    pt, it, tok = toy
    model = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32).eval()
    for overrides in (["task.limit=40"],  # toy tasks: multiple choice and generation
                      ["task=mmlu_pro", "task.data_dir=${standins:}", "task.limit=6"]):
        cfg = make_cfg(*overrides).task
        evaluator = Evaluator(HFEngine(model, tok, cfg.batch_size, "lm_eval"), cfg)
        for lam in (0.0, 0.7):  # the weights change in place between evaluations
            with torch.no_grad():
                for (name, p), q in zip(model.named_parameters(), it.parameters()):
                    p.copy_(torch.lerp(pt.get_parameter(name), q, lam))
            results, out = evaluator.evaluate()
            stock = stock_evaluate(model, tok, cfg)
            assert out["results"] == stock, (overrides, lam)
            for spec in cfg.tasks:
                key = "acc,none" if spec.calibration else next(
                    k for k in stock[spec.name] if k.startswith(spec.metric + ","))
                assert results[spec.name].metrics["acc"] == stock[spec.name][key]
        assert out["n-shot"] == {t.name: t.num_fewshot or 0 for t in cfg.tasks}


def test_gpqa_option_order_does_not_depend_on_the_process(make_cfg):
    cfg = make_cfg("task=gpqa", "task.data_dir=${standins:}").task

    def order(task_cfg, noise):
        random.seed(noise)  # whatever ran before in this process
        _, tasks = build_tasks(task_cfg)
        leaves = prepare_leaves(tasks["leaderboard_gpqa_main"], task_cfg, 0, True)
        return [(doc["choice1"], doc["answer"]) for _, _, doc in leaves[0].docs]

    first = order(cfg, 1)
    assert order(cfg, 2) == first and len(first) == 12
    assert len({answer for _, answer in first}) > 1  # the correct option is shuffled ...
    reseeded = OmegaConf.merge(cfg, {"docs_seed": 7})
    assert order(reseeded, 1) != first  # ... by task.docs_seed


def test_limit_with_subsample_seed_takes_a_seeded_sample(make_cfg):
    def doc_ids(*overrides):
        cfg = make_cfg("task.limit=10", *overrides).task
        _, tasks = build_tasks(cfg)
        return [true for _, true, _ in prepare_leaves(tasks["toy_mc"], cfg, 0, True)[0].docs]

    assert doc_ids() == list(range(10))
    sample = doc_ids("task.subsample_seed=3")
    assert sample == doc_ids("task.subsample_seed=3") != doc_ids("task.subsample_seed=4")
    assert len(sample) == 10 and sample == sorted(sample) and sample != list(range(10))


def test_an_unreachable_dataset_says_which_and_how_to_provide_it(make_cfg):
    with pytest.raises(ConfigError, match=r"^task leaderboard_mmlu_pro: dataset "
                                          r"'TIGER-Lab/MMLU-Pro' cannot be reached .* "
                                          r"`hf download --repo-type dataset TIGER-Lab/MMLU-Pro "
                                          r".* task\.data_dir=DIR$"):
        build_tasks(make_cfg("task=mmlu_pro").task)


def test_an_unknown_task_gets_the_closest_names(make_cfg):
    with pytest.raises(ConfigError, match="lm-eval knows no task 'leaderboard_mmlu_pr' "
                                          r"\(did you mean 'leaderboard_mmlu_pro'\?\)"):
        build_tasks(make_cfg("task=mmlu_pro", "task.tasks.0.name=leaderboard_mmlu_pr").task)


def test_shared_context_scoring_gives_lm_evals_loglikelihoods(toy, make_cfg):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    pt, _, tok = toy
    torch.manual_seed(0)  # a random Qwen2 with room for 5-shot MMLU-Pro prompts
    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id)).eval()
    for model, overrides in ((pt, ["task.limit=30"]),
                             (qwen, ["task=mmlu_pro", "task.data_dir=${standins:}",
                                     "task.limit=4"])):
        cfg = make_cfg(*overrides).task
        plain = Evaluator(HFEngine(model, tok, cfg.batch_size, "lm_eval"), cfg)
        shared = Evaluator(HFEngine(model, tok, cfg.batch_size, "shared_context"), cfg)
        (res_a, _), (res_b, _) = plain.evaluate(), shared.evaluate()
        contexts = {tuple(c) for _, c, _ in plain.engine.requests}
        scorer = shared.engine.scorer
        assert len(scorer.groups) == len(contexts) and not scorer.fallback
        pairs = [(a.resps[0], b.resps[0]) for a, b in zip(plain._ll, shared._ll)]
        assert max(abs(a[0] - b[0]) for a, b in pairs) < 1e-4
        assert [a[1] for a, _ in pairs] == [b[1] for _, b in pairs]  # greedy flags
        for name in res_a:
            assert res_a[name].metrics["acc"] == res_b[name].metrics["acc"]
            assert res_a[name].metrics.get("ece") == pytest.approx(res_b[name].metrics.get("ece"),
                                                                   abs=1e-6)


def test_a_task_with_its_own_validation_split_selects_there(toy, make_cfg):
    """toy_mc has 60 validation questions besides its 300 test ones: those select λ*, all test
    questions report. The selection numbers equal a direct scoring of the validation file
    (prompt, each choice's summed log-probability, argmax, softmax confidence)."""
    from app.calibration import expected_calibration_error

    _, it, tok = toy
    cfg = make_cfg("task.bootstrap=0").task
    results, _ = Evaluator(HFEngine(it, tok, cfg.batch_size, "lm_eval"), cfg).evaluate()
    mc = results["toy_mc"]
    assert mc.splits["report"]["acc"] == mc.metrics["acc"] and mc.splits["report"]["n"] == 300
    assert mc.splits["selection"]["n"] == 60 and {r["set"] for r in mc.records} == {"report"}
    docs = [json.loads(line) for line in open(TOY_DIR / "tasks" / "data" / "validation.jsonl")]
    test_questions = {json.loads(line)["question"]
                      for line in open(TOY_DIR / "tasks" / "data" / "test.jsonl")}
    assert not {d["question"] for d in docs} & test_questions  # no document in both sets
    conf, correct = [], []
    with torch.no_grad():
        for d in docs:
            context = tok(f"Question: {d['question']}\nAnswer:").input_ids
            lls = []
            for choice in d["choices"]:
                ids = tok(f"Question: {d['question']}\nAnswer: {choice}").input_ids
                logp = torch.log_softmax(it(torch.tensor([ids])).logits[0].float(), -1)
                lls.append(sum(logp[i - 1, ids[i]].item() for i in range(len(context), len(ids))))
            p = np.exp(np.array(lls) - max(lls))
            p /= p.sum()
            conf.append(p.max())
            correct.append(int(np.argmax(lls)) == d["label"])
    assert mc.splits["selection"]["acc"] == pytest.approx(np.mean(correct), abs=1e-12)
    assert mc.splits["selection"]["ece"] == pytest.approx(
        expected_calibration_error(conf, correct, cfg.ece_bins), abs=1e-5)
    # source=share: a share of the test questions instead
    shared = make_cfg("task.bootstrap=0", "task.selection.source=share").task
    results, _ = Evaluator(HFEngine(it, tok, shared.batch_size, "lm_eval"), shared).evaluate()
    assert results["toy_mc"].splits["selection"]["n"] == 150
    assert {r["set"] for r in results["toy_mc"].records} == {"selection", "report"}
