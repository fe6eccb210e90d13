"""Scoring a multiple-choice document's choices from one pass over their shared context.

lm-eval scores each (context, choice) request with its own forward pass over context + choice,
except choices that differ only in their last token (it reuses one pass for those). A few-shot
prompt is hundreds of tokens and a choice a few, so nearly all of that compute repeats the
context. Here the context (all but its last token) runs once per document with the model's KV
cache kept; then every choice's tail — the context's last token and the choice minus its last
token, i.e. the positions whose next-token logits score the choice — runs as one batch
against that cache. The log-likelihood of a choice is the same sum of float32 log-softmax
terms lm-eval computes, and "greedy" the same all-tokens-argmax test; they agree with lm-eval
to float rounding (tests/test_evaluate.py). Requests lm-eval would truncate, and contexts of
one token, are left to lm-eval's own code.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from app import compat


class SharedContextScorer:
    """Log-likelihoods of prepared HFLM requests, grouped by identical context tokens."""

    def __init__(self, lm, requests: list):
        self.lm = lm
        self.requests = requests  # [((context, continuation), context_enc, continuation_enc)]
        groups: dict[tuple, list[int]] = defaultdict(list)
        self.fallback: list[int] = []
        for i, (_, ctx, cont) in enumerate(requests):
            if len(ctx) < 2 or len(ctx) + len(cont) > lm.max_length + 1:
                self.fallback.append(i)
            else:
                groups[tuple(ctx)].append(i)
        self.groups = list(groups.items())

    @torch.no_grad()
    def loglikelihood(self) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) per request, in the requests' order."""
        out: list = [None] * len(self.requests)
        if self.fallback:
            done = compat.loglikelihood_tokens(self.lm,
                                               [self.requests[i] for i in self.fallback])
            for i, answer in zip(self.fallback, done):
                out[i] = answer
        model, device = self.lm.model, self.lm.device
        for ctx, members in self.groups:
            prefix = torch.tensor([list(ctx[:-1])], dtype=torch.long, device=device)
            cache = model(prefix, use_cache=True).past_key_values
            conts = [self.requests[i][2] for i in members]
            width = max(len(c) for c in conts)
            tails = torch.full((len(conts), width), self.lm.tokenizer.pad_token_id or 0,
                               dtype=torch.long, device=device)
            mask = torch.zeros((len(conts), prefix.shape[1] + width), dtype=torch.long,
                               device=device)
            mask[:, : prefix.shape[1]] = 1
            for row, cont in enumerate(conts):
                tail = [ctx[-1], *cont[:-1]]
                tails[row, : len(tail)] = torch.tensor(tail, device=device)
                mask[row, prefix.shape[1]: prefix.shape[1] + len(tail)] = 1
            if len(conts) > 1:
                cache.batch_repeat_interleave(len(conts))
            logits = model(tails, cache=cache, attention_mask=mask,
                           use_cache=True).logits
            logprobs = F.log_softmax(logits, dim=-1, dtype=self.lm.softmax_dtype)
            for row, (i, cont) in enumerate(zip(members, conts)):
                scored = logprobs[row, : len(cont)]
                target = torch.tensor(cont, dtype=torch.long, device=device)
                greedy = bool((scored.argmax(dim=-1) == target).all())
                out[i] = (float(torch.gather(scored, 1, target[:, None]).sum()), greedy)
        return out
