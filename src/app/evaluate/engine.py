"""Evaluation engines: what runs the working model for lm-eval's requests.

An engine scores log-likelihood requests and generates for ``generate_until`` requests, for
whatever weights the working model holds now. The evaluator builds the requests once and
hands them to its engine for every merge; ``HFEngine`` (lm-eval's ``HFLM`` over the working
model) is the default, ``VLLMEngine`` (``app.evaluate.vllm_engine``) the other. With
``task.chat_template`` the requests are formatted by the engine's lm-eval model (``engine.lm``:
its ``apply_chat_template`` and ``tokenizer_name``).
"""

from __future__ import annotations

from typing import Protocol

from app import compat


class Engine(Protocol):
    requests: list  # the prepared requests, tokenised (an engine serves one evaluator's)

    def prepare(self, loglikelihood: list) -> None:
        """Take the log-likelihood requests scored on every call (tokenised once here)."""

    def loglikelihood(self) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) per prepared request, in their order."""

    def generate_until(self, instances: list) -> list[str]:
        """One generation per ``generate_until`` instance."""

    def load_weights(self, model, mk: dict | None = None, merger=None) -> float | None:
        """Make the engine run ``model``'s weights as they are now (the merge ``mk`` that
        ``merger`` wrote into it); the seconds that took, or None where the engine runs
        ``model`` itself."""


class HFEngine:
    """lm-eval's HFLM over the (in-place updated) working model; float32 log-softmax."""

    def __init__(self, model, tokenizer, batch_size: int, scoring: str = "auto",
                 pack_tokens: int | str = "auto"):
        from lm_eval.models.huggingface import HFLM

        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                       softmax_dtype="float32")
        self.scoring = resolve_scoring(scoring, model)
        self.requests: list = []
        self.scorer = None
        self.pack_tokens = pack_tokens
        self.costs = {"eval/tokens_forwarded": 0, "eval/trie_tokens": 0, "eval/forwards": 0}

    def load_weights(self, model, mk: dict | None = None, merger=None) -> None:
        """Nothing to do: HFLM runs the working model itself."""
        return None

    def prepare(self, loglikelihood: list) -> None:
        from app.evaluate.trie import model_input, trie_tokens

        self.requests = tokenize_loglikelihood(self.lm, loglikelihood)
        self.costs["eval/trie_tokens"] = trie_tokens(
            model_input(ctx, cont, self.lm.max_length) for _, ctx, cont in self.requests)
        if self.scoring == "shared_context":
            from app.evaluate.shared_context import SharedContextScorer

            self.scorer = SharedContextScorer(self.lm, self.requests)
        elif self.scoring == "trie":
            from app.evaluate.trie import TrieScorer, pack_budget

            budget = (pack_budget(self.lm.model, self.lm.device) if self.pack_tokens == "auto"
                      else int(self.pack_tokens))
            self.scorer = TrieScorer(self.lm, self.requests, budget)

    def loglikelihood(self) -> list[tuple[float, bool]]:
        """The answers; ``costs["eval/tokens_forwarded"]``: the model inputs' tokens (padding
        included) it took, ``costs["eval/forwards"]``: in how many forward passes."""
        forwarded = [0, 0]

        def count(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            forwarded[0] += ids.numel() if ids is not None else 0
            forwarded[1] += 1

        hook = self.lm.model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            if self.scorer is not None:
                return self.scorer.loglikelihood()
            return compat.loglikelihood_tokens(self.lm, self.requests)
        finally:
            hook.remove()
            self.costs["eval/tokens_forwarded"], self.costs["eval/forwards"] = forwarded

    def generate_until(self, instances: list) -> list[str]:
        # lm-eval caps a generation with max_length (context + the task's max_gen_toks); a
        # checkpoint's generation_config.max_new_tokens (Qwen2.5 ships 2048) would take
        # precedence in transformers, so it is lifted while lm-eval generates.
        config = self.lm.model.generation_config
        kept, config.max_new_tokens = config.max_new_tokens, None
        try:
            return self.lm.generate_until(instances, disable_tqdm=True)
        finally:
            config.max_new_tokens = kept


def resolve_scoring(scoring: str, model) -> str:
    """``auto``: prefix-tree scoring where the model's forward takes a key/value cache and
    ``logits_to_keep`` (it was never slower than lm-eval's batches on any task shape measured,
    docs/benchmarks.md), else lm-eval's own."""
    if scoring != "auto":
        return scoring
    import inspect

    params = inspect.signature(model.forward).parameters
    return "trie" if {"cache", "logits_to_keep"} <= set(params) else "lm_eval"


def tokenize_loglikelihood(lm, instances: list) -> list:
    """HFLM's ``(request, context tokens, continuation tokens)`` for each request, as its
    ``loglikelihood`` builds them (an empty context is scored after the prefix token). Each
    distinct string is encoded once (a document's context is encoded for every choice)."""
    with compat.memoized_encoding(lm):
        return _tokenize(lm, instances)


def _tokenize(lm, instances: list) -> list:
    out = []
    for inst in instances:
        context, continuation = inst.args
        if context == "":
            cont = lm.tok_encode(continuation, add_special_tokens=False)
            ctx_enc, cont_enc = (([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0]
                                 else (cont[:1], cont[1:]))
        else:
            ctx_enc, cont_enc = compat.encode_pair(lm, context, continuation)
        out.append(((context, continuation), ctx_enc, cont_enc))
    return out
