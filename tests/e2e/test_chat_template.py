"""The Open LLM Leaderboard's settings for instruct models: ``task.chat_template`` (every request
formatted with the working model's tokenizer chat template) and ``task.fewshot_as_multiturn``
(few-shot examples as user/assistant turns). Requests built once and re-scored give what
lm-eval's own ``simple_evaluate(..., apply_chat_template=True, fewshot_as_multiturn=...)``
gives; both settings off keep every fingerprint as it was."""

import contextlib
import shutil
import time

import pytest
import torch
from helpers import one_line, run_app, runs
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import TOY_DIR, ConfigError, job_settings, mergekit_config, validate
from app.evaluate.engine import HFEngine
from app.evaluate.evaluator import Evaluator
from app.evaluate.stock import stock_evaluate
from app.metrics import METRICS_VERSION
from app.provenance import digest, job_fingerprint, log_config, reference_fingerprint

USER, ASSISTANT = "<|user|>", "<|assistant|>"  # the toy IT template's role markers
CHAT = ["task.chat_template=true"]
MULTITURN = [*CHAT, "task.fewshot_as_multiturn=true"]


@pytest.fixture(scope="module")
def it():
    """The toy IT model and its tokenizer (which has a chat template)."""
    tok = AutoTokenizer.from_pretrained(TOY_DIR / "it")
    model = AutoModelForCausalLM.from_pretrained(TOY_DIR / "it", dtype=torch.float32).eval()
    assert tok.chat_template
    return model, tok


def evaluator(model, tok, cfg) -> Evaluator:
    return Evaluator(HFEngine(model, tok, cfg.task.batch_size, cfg.task.scoring), cfg.task)


def contexts(ev: Evaluator, leaf: str) -> list[str]:
    """The context of each document's first request, in document order."""
    found = next(lf for ls in ev.leaves.values() for lf in ls if lf.name == leaf)
    return [found.requests[d][0].args[0] for d, _, _ in found.docs]


def lm_eval_oracle(model, tok, folder, names, limit, multiturn):
    """lm-eval on its own: a fresh HFLM over the same model, the tasks by name from their
    folder, its ``apply_chat_template`` and ``fewshot_as_multiturn``; the per-sample log."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with contextlib.chdir(folder):  # the toy YAMLs' data_files are relative to their folder
        return simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tok, batch_size=32, softmax_dtype="float32"),
            tasks=names, task_manager=TaskManager(include_path=str(folder),
                                                  include_defaults=False),
            limit=limit, log_samples=True, bootstrap_iters=0, apply_chat_template=True,
            fewshot_as_multiturn=multiturn, random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0)


def toy_tasks_with_shots(tmp_path, shots: int | None):
    """The toy task folder, its YAML asking for ``shots`` (simple_evaluate's ``num_fewshot``
    never overrides a YAML's explicit 0; toy_gen includes toy_mc's setting)."""
    if not shots:
        return TOY_DIR / "tasks"
    folder = shutil.copytree(TOY_DIR / "tasks", tmp_path / "tasks")
    yaml = folder / "toy_mc.yaml"
    yaml.write_text(yaml.read_text().replace("num_fewshot: 0", f"num_fewshot: {shots}"))
    return folder


@pytest.mark.parametrize("overrides,shots,multiturn", [
    (["task=toy", *CHAT], None, False),
    (["task=toy_fewshot", *CHAT], 2, False),
    (["task=toy_fewshot", *MULTITURN], 2, True),
], ids=["0-shot", "2-shot single turn", "2-shot multiturn"])
def test_chat_formatted_requests_score_as_lm_evals_simple_evaluate(it, make_cfg, tmp_path,
                                                                   overrides, shots, multiturn):
    model, tok = it
    cfg = make_cfg(*overrides, "task.limit=12", "task.bootstrap=0")
    ev = evaluator(model, tok, cfg)
    results, out = ev.evaluate()
    oracle = lm_eval_oracle(model, tok, toy_tasks_with_shots(tmp_path, shots),
                            ["toy_mc", "toy_gen"], 12, multiturn)
    for name in ("toy_mc", "toy_gen"):  # the same prompts ...
        assert contexts(ev, name) == [s["arguments"][0][0] for s in oracle["samples"][name]]
    for name, metric in (("toy_mc", "acc,none"), ("toy_gen", "exact_match,strip")):  # scores
        assert out["results"][name][metric] == oracle["results"][name][metric], name
    records = {r["doc_id"]: r for r in results["toy_mc"].records}
    samples = oracle["samples"]["toy_mc"]
    assert sorted(records) == sorted(s["doc_id"] for s in samples) == list(range(12))
    for sample in samples:  # per document, per choice: the same log-likelihoods
        expected = [float(ll) for ll, _ in sample["filtered_resps"]]
        assert records[sample["doc_id"]]["logliks"] == pytest.approx(expected, abs=1e-5)
    assert results["toy_mc"].metrics["acc"] == oracle["results"]["toy_mc"]["acc,none"]
    gen = {r["doc_id"]: r["response"] for r in results["toy_gen"].records}
    assert gen == {s["doc_id"]: s["filtered_resps"][0] for s in oracle["samples"]["toy_gen"]}


def test_contexts_carry_the_templates_turns_one_per_shot(it, make_cfg):
    model, tok = it
    plain, single, multi = (
        evaluator(model, tok, make_cfg("task=toy_fewshot", "task.limit=4", *extra))
        for extra in ([], CHAT, MULTITURN))
    for leaf in ("toy_mc", "toy_gen"):
        for ctx in contexts(plain, leaf):  # off (the default): plain text, as before
            assert USER not in ctx and ASSISTANT not in ctx and ctx.endswith("Answer:")
        for ctx in contexts(single, leaf):  # the shots and the question in one user turn
            assert ctx.startswith(USER) and ctx.count(USER) == 1
            assert ctx.count(ASSISTANT) == 1 and ctx.endswith(f"{ASSISTANT}\n")
            assert ctx.count("Question:") == 3
        for ctx in contexts(multi, leaf):  # one user/assistant exchange per shot, then ours
            assert ctx.count(USER) == ctx.count(ASSISTANT) == 2 + 1
            assert ctx.count("</s>") == 2 and ctx.endswith(f"Answer:\n{ASSISTANT}\n")
            turns = ctx.split(USER)[1:]
            assert all(t.count("Question:") == 1 for t in turns)
    # a multiple-choice continuation follows the assistant marker without the space delimiter
    (mc,) = multi.leaves["toy_mc"]
    assert all(not r.args[1].startswith(" ") for r in mc.instances)


def test_a_leaderboard_standin_with_the_leaderboards_settings_scores_as_lm_eval(it, make_cfg):
    """MMLU-Pro's 5 shots through lm-eval's leaderboard task over its local stand-in."""
    model, tok = it
    cfg = make_cfg("task=mmlu_pro", "task.data_dir=${standins:}", "task.limit=3", *MULTITURN)
    ev = evaluator(model, tok, cfg)
    results, out = ev.evaluate()
    assert out["results"] == stock_evaluate(model, tok, cfg.task)
    for ctx in contexts(ev, "leaderboard_mmlu_pro"):
        assert ctx.count(USER) == ctx.count(ASSISTANT) == 5 + 1
    assert results["leaderboard_mmlu_pro"].metrics["n"] == 3


def test_the_loaded_tokenizer_without_a_template_fails_before_any_task_is_built(it, make_cfg,
                                                                              monkeypatch):
    model, _ = it
    bare = AutoTokenizer.from_pretrained(TOY_DIR / "it")
    bare.chat_template = None
    import app.evaluate.evaluator as evaluator_module

    monkeypatch.setattr(evaluator_module, "build_tasks",
                        lambda *a, **k: pytest.fail("tasks built before the check"))
    with pytest.raises(ConfigError) as info:
        evaluator(model, bare, make_cfg(*CHAT))
    line = str(info.value)
    assert line.startswith("task.chat_template=true: the working model's tokenizer (")
    assert "has no chat template; set task.chat_template=false" in line and "\n" not in line


# ----------------------------------------------------------------- bad combinations, one line

def test_multiturn_without_the_chat_template_fails_in_one_line_before_loading(tmp_path):
    start = time.perf_counter()
    line = one_line(run_app(tmp_path, "task.fewshot_as_multiturn=true", check=False))
    assert line == ("error: task.fewshot_as_multiturn=true needs task.chat_template=true "
                    "(few-shot turns exist only in a chat); set both, or neither")
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []
    assert time.perf_counter() - start < 60


def test_a_tokenizer_without_a_template_fails_in_one_line_before_loading(tmp_path, make_cfg):
    pt = shutil.copytree(TOY_DIR / "pt", tmp_path / "pt")
    (pt / "chat_template.jinja").unlink()
    line = one_line(run_app(tmp_path, f"model.pt={pt}", "model.tokenizer=pt", *CHAT,
                            check=False))
    assert line == (f"error: task.chat_template=true: the working model's tokenizer "
                    f"(model.pt='{pt}') has no chat template; set task.chat_template=false (and "
                    f"task.fewshot_as_multiturn=false) or use a tokenizer that has one")
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path)[1] == []
    # off, or a tokenizer policy whose parent has one, is fine
    validate(make_cfg(f"model.pt={pt}", "model.tokenizer=pt"))
    validate(make_cfg(f"model.pt={pt}", *CHAT))  # IT's tokenizer
    validate(make_cfg(f"model.pt={pt}", "model.tokenizer=union", *CHAT))  # takes IT's template


# -------------------------------------------------------------------------- the fingerprint

def key_before_these_settings(cfg) -> dict:
    """The evaluation part of a fingerprint as it was computed before the two settings."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    for key in ("batch_size", "chat_template", "fewshot_as_multiturn", "pack_tokens"):
        task.pop(key)  # (pack_tokens came later and never entered a fingerprint)
    task["scoring"] = "lm_eval"  # the default then; every scoring keys as it now
    return {"task": task, "seed": cfg.seed, "tokenizer": cfg.model.tokenizer,
            "metrics": METRICS_VERSION}


@pytest.mark.parametrize("task", ["toy", "toy_fewshot", "standin_leaderboard"])
def test_both_settings_off_keep_the_fingerprints_on_changes_them(make_cfg, task):
    cfg = make_cfg(f"task={task}", "lambda=0.3")
    assert cfg.task.chat_template is False and cfg.task.fewshot_as_multiturn is False
    mk = mergekit_config(cfg)
    before = key_before_these_settings(cfg)
    assert job_fingerprint(job_settings(cfg)) == digest({"merge": mk, **before})
    assert reference_fingerprint(job_settings(cfg), "it") == digest(
        {"reference": cfg.model.it, "dtype": cfg.model.dtype, **before})
    chat = make_cfg(f"task={task}", "lambda=0.3", *CHAT)
    multi = make_cfg(f"task={task}", "lambda=0.3", *MULTITURN)
    prints = {job_fingerprint(job_settings(c)) for c in (cfg, chat, multi)}
    assert len(prints) == 3
    assert reference_fingerprint(job_settings(chat), "it") != reference_fingerprint(
        job_settings(cfg), "it")


def test_both_settings_are_logged_with_the_resolved_config(make_cfg):
    class Run:
        def __init__(self):
            self.params, self.texts = {}, {}

        def log_params(self, params):
            self.params.update(params)

        def log_text(self, text, name):
            self.texts[name] = text

    for overrides, value in (([], "False"), (MULTITURN, "True")):
        cfg, run = make_cfg(*overrides), Run()
        log_config(run, job_settings(cfg), 0.5, mergekit_config(cfg))
        assert run.params["task.chat_template"] == run.params["task.fewshot_as_multiturn"] == value
        assert f"chat_template: {value.lower()}" in run.texts["config.yaml"]
