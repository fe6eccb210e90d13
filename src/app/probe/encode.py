"""Hidden states of a causal LM as fixed-size features, one vector per input and layer.

Inputs are tokenised as the model reads them (the tokenizer's own special tokens), truncated
to the model's context, sorted by length and right-padded by hand (a tokenizer without a pad
token works too). Each batch is one forward pass with ``output_hidden_states=True``, all
requested layers at once, under ``torch.no_grad()``; where the model's forward takes
``logits_to_keep`` it projects one position's logits, not every token's over the
vocabulary. Pooling follows the attention mask, so a row's features do not depend on the
padding its batch needed. The model is put in eval mode
for the passes and every module's training flag restored after; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import torch


@contextlib.contextmanager
def evaluating(model):
    """``model`` in eval mode inside, each module's own training flag back after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def pool(hidden: torch.Tensor, mask: torch.Tensor, representation: str) -> torch.Tensor:
    """(batch, tokens, dim) -> (batch, dim): the masked mean, or the last unmasked token
    (right padding)."""
    hidden = hidden.float()
    if representation == "last":
        return hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _max_length(model, tokenizer) -> int | None:
    limits = [getattr(model.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 10**7]
    return min(limits) if limits else None


def encode(model, tokenizer, inputs: list[str], layers: list[int], representation: str,
           batch_size: int, device="cpu") -> dict[int, np.ndarray]:
    """layer -> (len(inputs), hidden) float32 features; ``layers`` index ``hidden_states``
    (0: the embeddings, num_hidden_layers: the last layer)."""
    limit = _max_length(model, tokenizer)
    ids = tokenizer(list(inputs), add_special_tokens=True, truncation=limit is not None,
                    max_length=limit)["input_ids"]
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
        model.forward).parameters else {}
    out: dict[int, np.ndarray] = {}
    with evaluating(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, :len(ids[i])] = torch.tensor(ids[i])
                mask[j, :len(ids[i])] = 1
            hidden = model(input_ids=batch.to(device), attention_mask=mask.to(device),
                           output_hidden_states=True, use_cache=False, **extra).hidden_states
            mask = mask.to(device)
            for layer in layers:
                pooled = pool(hidden[layer], mask, representation).cpu().numpy()
                out.setdefault(layer, np.zeros((len(ids), pooled.shape[1]), np.float32))
                out[layer][rows] = pooled
    return out
