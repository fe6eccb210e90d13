"""Judging open-ended generations of a merge: degeneration and diversity.

``judge_run`` is the one call a job makes after evaluation (``judge=none`` makes it a no-op).
Each judge has its own schema (``app.judge.schema``) and class (``app.judge.adapters``):

1. generate ``judge.k`` samples for each prompt of ``judge.prompts`` with the working model
   (its chat template where it has one; top-k 50, top-p 0.9, temperature 0.7, presence and
   frequency penalty 0.1, seed 42 by default — the degeneration study's settings);
2. optionally score them with a reward model (``judge.reward_model``) and single out the
   ``judge.lowest_k`` lowest-rewarded, as the study does;
3. judge them: ``heuristic`` judges every response, ``hf`` and ``openai`` judge every response
   or, with a reward model, only the lowest-rewarded ones;
4. log ``judge/verdicts.jsonl`` (one row per response) and return the ``judge/*`` metrics
   (declared, with their meanings, in ``app.metrics``).

Adding a judge: its schema (with ``adapter``) in ``schema.SCHEMAS``, its class in ``adapters``
(``__init__(j, context)``, ``verdicts(prompts, responses)``), and its YAML in ``conf/judge/``.

A judge that fails (endpoint unreachable, no reply parsed, ...) does not fail the job: its
degeneration metrics are left out and the run gets the tag ``judge_missing=<reason>``;
diversity and length, which need no judge, are still logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from app.judge.metrics import degeneration_rates, diversity, lowest
from app.judge.schema import SCHEMAS, load_prompts

LOG = logging.getLogger(__name__)
# Settings that do not change a judged job's results (kept out of its fingerprint).
NOT_IN_FINGERPRINT = ("api_key_env", "timeout", "retries", "cache")


def fingerprint(judge: DictConfig) -> dict[str, Any]:
    """What about the judge determines a job's judge metrics: its settings and the prompt
    file's content (never an API key: the config holds only the variable's name)."""
    settings = OmegaConf.to_container(judge, resolve=True)
    for key in NOT_IN_FINGERPRINT:
        settings.pop(key, None)
    settings["prompts_sha256"] = hashlib.sha256(
        Path(settings["prompts"]).expanduser().read_bytes()).hexdigest()
    settings.pop("prompts")
    return settings


def judge_run(model, tokenizer, j: DictConfig, run, context) -> dict[str, float]:
    """Generate with the working model, judge and log to ``run`` (see the module doc); the
    metrics as {'judge/<name>': value}. ``j``: the ``judge`` settings; ``context``: an
    ``adapters.JudgeContext``."""
    if j.name == "none":
        return {}
    from app.judge import adapters

    start = time.perf_counter()
    hide = adapters.hider(j)
    try:
        prompts = load_prompts(j.prompts, j.limit)
        samples = adapters.generate(model, tokenizer, prompts, j, context.device,
                                    context.sampler)
    except Exception as e:  # noqa: BLE001 - a broken judge never costs the evaluation
        _mark_missing(run, f"generation failed: {type(e).__name__}: {e}", hide)
        return {}
    rows = [{"prompt_id": i, "sample": s, "prompt": p, "response": x.text, "n_tokens": x.n_tokens}
            for i, (p, group) in enumerate(zip(prompts, samples)) for s, x in enumerate(group)]
    metrics = diversity([[x.text for x in group] for group in samples], j.similarity_threshold)
    metrics["mean_length"] = sum(r["n_tokens"] for r in rows) / len(rows)
    metrics["n_responses"] = len(rows)
    try:
        metrics.update(_judge(rows, j, context))
    except Exception as e:  # noqa: BLE001
        _mark_missing(run, f"{type(e).__name__}: {e}", hide)
    out = {f"judge/{k}": float(v) for k, v in metrics.items()}
    out["time/judge_s"] = time.perf_counter() - start
    run.log_jsonl([{k: hide(v) if isinstance(v, str) else v for k, v in r.items()}
                   for r in rows], "judge/verdicts.jsonl")
    return out


class JudgeFailed(RuntimeError):
    """The judge gave no usable verdict."""


def _judge(rows: list[dict], j: DictConfig, context) -> dict[str, float]:
    """Judge ``rows`` in place (adds reward, lowest_k, verdict, details); the judge metrics."""
    from app.judge import adapters

    schema = SCHEMAS[j.name]
    metrics: dict[str, float] = {}
    picked = set(range(len(rows)))
    if j.reward_model:
        scores = adapters.rewards(context.models, j.reward_model, context.device,
                                  [r["prompt"] for r in rows], [r["response"] for r in rows])
        picked = set(lowest(scores, j.lowest_k))
        for i, (row, score) in enumerate(zip(rows, scores)):
            row["reward"], row["lowest_k"] = score, i in picked
        metrics["mean_reward"] = sum(scores) / len(scores)
    judge = getattr(adapters, schema.adapter)(j, context)
    # an LLM judge reads only the lowest-rewarded, as in the study; the rules read every one
    judged = sorted(picked) if schema.llm else list(range(len(rows)))
    verdicts = judge.verdicts([rows[i]["prompt"] for i in judged],
                              [rows[i]["response"] for i in judged])
    for i, v in zip(judged, verdicts):
        rows[i].update(v)
    parsed = [rows[i]["verdict"] for i in judged if rows[i]["verdict"] is not None]
    if not parsed:
        first = rows[judged[0]].get("reply", "")
        raise JudgeFailed(f"no judge reply could be parsed (0 of {len(judged)}; the first was "
                          f"{first[:60]!r}; verdict words: {', '.join(j.labels.values())})")
    if schema.llm:
        metrics["unparsed_rate"] = 1 - len(parsed) / len(judged)
    if not (j.reward_model and schema.llm):
        metrics.update(degeneration_rates(rows[i]["verdict"] for i in judged))
    if j.reward_model:
        low = degeneration_rates(rows[i]["verdict"] for i in sorted(picked))
        metrics.update({f"lowest_k/{k}": v for k, v in low.items()})
    return metrics


def _mark_missing(run, reason: str, hide) -> None:
    reason = " ".join(hide(reason).split())[:500]  # scrubbed before it is cut
    LOG.warning("judge metrics missing: %s", reason)
    run.tag("judge_missing", reason)
