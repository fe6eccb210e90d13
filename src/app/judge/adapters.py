"""Thin adapters around models and endpoints: prompts, generation, reward and perplexity
models, and the three judges (heuristic, hf, openai). Each judge's ``verdicts`` returns, per
response, ``{"verdict": {type: bool} | None, ...details}`` (None: the reply was not parsed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import LogitsProcessor

from app.judge.metrics import heuristic_verdict, parse_verdict

# The judge prompt, after the degeneration study's: a judge model reads the instruction and a
# response and names the kinds of degeneration it shows. Fields: {instruction}, {response} and
# the verdict words {ok}, {repetition}, {code_switch}, {nonsense} (judge.labels).
JUDGE_TEMPLATE = """\
You are checking a chatbot's response for degeneration. A response is degenerate if it shows
- {repetition}: pathological repetition: words, phrases or sentences repeated over and over;
- {code_switch}: unprompted code-switching: it changes language or script without being asked;
- {nonsense}: nonsense: gibberish, broken words, or text without meaning.
Being wrong, short or unhelpful is not degeneration.

[Instruction]
{instruction}

[Response]
{response}

Answer with one line "VERDICT: <labels>": {ok} if the response shows none of these, otherwise
the labels that apply, separated by commas."""


@dataclass
class Sample:
    text: str
    n_tokens: int  # generated tokens, end-of-sequence excluded


def chat_text(tokenizer, user: str, assistant: str | None = None, template: bool = True) -> str:
    """The prompt as the model sees it: in its chat template where it has one."""
    if not (template and getattr(tokenizer, "chat_template", None)):
        return user if assistant is None else f"{user}\n{assistant}"
    messages = [{"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=assistant is None)


def encode(tokenizer, text: str, templated: bool) -> list[int]:
    # a chat template writes its own special tokens
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI-style penalties on the tokens generated so far: ``presence`` once for a token
    that occurred, ``frequency`` per occurrence, subtracted from its logit."""

    def __init__(self, presence: float, frequency: float, prompt_len: int):
        self.presence, self.frequency, self.prompt_len = presence, frequency, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def _ids(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], j, device: str,
             sampler=None) -> list[list[Sample]]:
    """``j.k`` samples per prompt: penalties, then temperature, top-k and top-p (the order of
    OpenAI-compatible servers), seeded with ``j.seed`` without touching the global RNG. With a
    ``sampler`` (the vLLM engine's ``sample``) the engine draws them, with the same settings."""
    from transformers import (
        GenerationConfig,
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    eos = _ids(model.generation_config.eos_token_id) or _ids(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sample = j.temperature > 0
    # top_k=0, top_p=1 and temperature=1 keep generate() from adding warpers of its own
    config = GenerationConfig(max_new_tokens=j.max_new_tokens, do_sample=sample,
                              num_return_sequences=j.k, eos_token_id=eos, pad_token_id=pad,
                              top_k=0, top_p=1.0, temperature=1.0)
    templated = bool(j.chat_template and getattr(tokenizer, "chat_template", None))
    if sampler is not None:
        drawn = sampler([encode(tokenizer, chat_text(tokenizer, p, None, templated), templated)
                         for p in prompts], j)
        return [[_sample(tokenizer, ids, eos, pad) for ids, _ in group] for group in drawn]
    out: list[list[Sample]] = []
    dev = torch.device(device)
    gpus = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):  # the job's global RNG state is left as it was
        torch.manual_seed(j.seed)
        for prompt in prompts:
            ids = torch.tensor([encode(tokenizer, chat_text(tokenizer, prompt, None, templated),
                                       templated)], device=device)
            procs = [PresenceFrequencyPenalty(j.presence_penalty, j.frequency_penalty,
                                              ids.shape[1])]
            if sample:
                procs += [TemperatureLogitsWarper(j.temperature), TopKLogitsWarper(j.top_k),
                          TopPLogitsWarper(j.top_p)]
            seqs = model.generate(ids, attention_mask=torch.ones_like(ids),
                                  generation_config=config,
                                  logits_processor=LogitsProcessorList(procs))
            out.append([_sample(tokenizer, seq, eos, pad)
                        for seq in seqs[:, ids.shape[1] :].tolist()])
    return out


def _sample(tokenizer, seq: list[int], eos: list[int], pad: int) -> Sample:
    """A generated sequence up to its first end-of-sequence or padding token."""
    n = next((i for i, t in enumerate(seq) if t in eos or t == pad), len(seq))
    return Sample(tokenizer.decode(seq[:n], skip_special_tokens=True).strip(), n)


class JudgeModels:
    """The models and word lists judges load, kept by their owner (a session) across jobs."""

    def __init__(self):
        self.loaded: dict[tuple, object] = {}

    def _get(self, key: tuple, load):
        if key not in self.loaded:
            self.loaded[key] = load()
        return self.loaded[key]

    def causal_lm(self, path: str, device: str):
        """A causal LM and its tokenizer (the PT model, an hf judge)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return self._get(("causal_lm", path, device), lambda: (
            AutoModelForCausalLM.from_pretrained(path).to(device).eval(),
            AutoTokenizer.from_pretrained(path)))

    def reward_model(self, path: str, device: str):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        return self._get(("reward_model", path, device), lambda: (
            AutoModelForSequenceClassification.from_pretrained(path).to(device).eval(),
            AutoTokenizer.from_pretrained(path)))

    def lexicon(self, path: str) -> frozenset[str] | None:
        return self._get(("lexicon", path), lambda: lexicon(path))

    def language_identifier(self, languages: tuple[str, ...]):
        return self._get(("langid", languages), lambda: _language_identifier(languages))


@dataclass
class JudgeContext:
    """What a judge may use besides its settings."""

    device: str
    pt_path: str  # the PT model (the heuristic judge's perplexity and vocabulary)
    cache_path: Path | None  # where LLM judges cache replies
    models: JudgeModels
    sampler: Any = None  # the engine's ``sample`` where it generates (engine=vllm), else None


@torch.inference_mode()
def perplexities(models: JudgeModels, path: str, device: str, prompts: Sequence[str],
                 responses: Sequence[str], template: bool) -> list[float | None]:
    """Per response, exp(mean NLL of its tokens) under the model at ``path``, given the prompt
    (in that model's chat template where it has one); None for an empty response."""
    model, tok = models.causal_lm(path, device)
    templated = bool(template and getattr(tok, "chat_template", None))
    out: list[float | None] = []
    for prompt, response in zip(prompts, responses):
        context = encode(tok, chat_text(tok, prompt, None, templated), templated)
        target = tok(response, add_special_tokens=False)["input_ids"]
        if not target:
            out.append(None)
            continue
        ids = torch.tensor([context + target], device=device)
        logits = model(ids).logits[0, len(context) - 1 : -1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, len(context) :])
        out.append(float(torch.exp(nll)))
    return out


@torch.inference_mode()
def rewards(models: JudgeModels, path: str, device: str, prompts: Sequence[str],
            responses: Sequence[str]) -> list[float]:
    """The reward model's score (its first logit) of each (prompt, response) conversation."""
    model, tok = models.reward_model(path, device)
    out = []
    for prompt, response in zip(prompts, responses):
        text = chat_text(tok, prompt, response)
        ids = torch.tensor([encode(tok, text, bool(getattr(tok, "chat_template", None)))],
                           device=device)
        out.append(float(model(ids).logits[0, 0]))
    return out


def lexicon(path: str) -> frozenset[str] | None:
    """The whole words of a tokenizer's vocabulary, lower-cased: tokens that start a word
    (byte-level 'Ġ' or SentencePiece '▁') or a line (capitalised); None when its tokens mark
    no word starts (the unknown-word rule is then off)."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(path).get_vocab()
    starts = {t[1:] for t in vocab if t[:1] in ("Ġ", "▁") and t[1:].isalpha()}
    if not starts:
        return None
    line_starts = {t for t in vocab if t.isalpha() and t[0].isupper()}
    return frozenset(w.lower() for w in starts | line_starts)


def _language_identifier(languages: tuple[str, ...]):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(languages))
    return identifier.classify


class HeuristicJudge:
    """Rules over the text (``app.judge.metrics``) and the PT model's perplexity."""

    def __init__(self, j, context: JudgeContext):
        self.j, self.context = j, context

    def verdicts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict]:
        j, c = self.j, self.context
        ppl = [None] * len(responses)
        if j.thresholds.max_perplexity is not None:
            ppl = perplexities(c.models, c.pt_path, c.device, prompts, responses, j.chat_template)
        language_of = c.models.language_identifier(tuple(j.languages))
        words = (c.models.lexicon(c.pt_path) if j.thresholds.max_unknown_word_ratio is not None
                 else None)
        rows = []
        for prompt, response, p in zip(prompts, responses, ppl):
            v = heuristic_verdict(prompt, response, j.thresholds, j.language, language_of, p,
                                  words)
            rows.append({"verdict": {k: v[k] for k in ("repetition", "code_switch", "nonsense")},
                         "scores": v["scores"]})
        return rows


def judge_message(j, prompt: str, response: str) -> str:
    return (j.template or JUDGE_TEMPLATE).format(instruction=prompt, response=response, **j.labels)


class HFJudge:
    """A local causal LM reads ``judge_message`` and answers greedily; the verdict is parsed."""

    def __init__(self, j, context: JudgeContext):
        self.j, self.device, self.models = j, context.device, context.models

    @torch.inference_mode()
    def verdicts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict]:
        model, tok = self.models.causal_lm(self.j.model, self.device)
        templated = bool(getattr(tok, "chat_template", None))
        rows = []
        for prompt, response in zip(prompts, responses):
            text = chat_text(tok, judge_message(self.j, prompt, response), None, templated)
            ids = torch.tensor([encode(tok, text, templated)], device=self.device)
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=self.j.verdict_max_tokens,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
            reply = tok.decode(seq[0, ids.shape[1] :], skip_special_tokens=True).strip()
            rows.append({"verdict": parse_verdict(reply, self.j.labels), "reply": reply})
        return rows


def hider(j):
    """A function that writes each secret the judge knows as ``***`` in a text: the API key,
    read from the variable ``judge.api_key_env`` names (the identity when none is set)."""
    from app.errors import scrubber

    return scrubber([v for v in [os.environ.get(j.get("api_key_env") or "")] if v])


class ReplyCache:
    """Judge replies in SQLite, keyed by sha256 of (judge model, judge message) — the message
    holds the prompt and the response. Safe to share between processes. ``hide`` scrubs
    secrets from what it stores and returns (a reply stored unscrubbed is rewritten on read)."""

    def __init__(self, path: Path, hide=str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.hide = hide
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA secure_delete = ON")  # a rewritten reply leaves no old copy
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT)")

    def key(self, model: str, message: str) -> str:
        return hashlib.sha256(json.dumps([self.hide(model), self.hide(message)]).encode()
                              ).hexdigest()

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        if row and self.hide(row[0]) != row[0]:
            self.put(key, row[0])
        return self.hide(row[0]) if row else None

    def put(self, key: str, reply: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, self.hide(reply)))


class OpenAIJudge:
    """A model behind an OpenAI-compatible endpoint, asked with ``judge_message`` at
    temperature 0. The key is read from the environment at each run and sent only in the
    request header; a reply is scrubbed of it (``hider``) as it arrives, before it is cached,
    parsed or logged. Failed requests are retried with exponential backoff."""

    def __init__(self, j, context: JudgeContext):
        self.j, self.hide = j, hider(j)
        self.cache = (ReplyCache(context.cache_path, self.hide) if j.cache and context.cache_path
                      else None)

    def verdicts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict]:
        import openai

        j = self.j
        client = openai.OpenAI(base_url=j.base_url, api_key=os.environ.get(j.api_key_env) or "none",
                               timeout=j.timeout, max_retries=j.retries)
        rows = []
        for prompt, response in zip(prompts, responses):
            message = judge_message(j, prompt, response)
            key = self.cache.key(j.model, message) if self.cache else None
            reply = self.cache.get(key) if self.cache else None
            cached = reply is not None
            if not cached:
                answer = client.chat.completions.create(
                    model=j.model, messages=[{"role": "user", "content": message}],
                    temperature=0, max_tokens=j.verdict_max_tokens)
                reply = self.hide((answer.choices[0].message.content or "").strip())
                if self.cache:
                    self.cache.put(key, reply)
            rows.append({"verdict": parse_verdict(reply, j.labels), "reply": reply,
                         "cached": cached})
        return rows
