"""Expert-pool merges mergekit lacks: Fisher merging, RegMean, Localize-and-Stitch, Consensus TA.

A pool is a base and N experts fine-tuned from it (``model.experts``). Each of these methods
combines the experts' task vectors into one merged task vector ``τ*`` (the rules are pure
functions in ``app.merge.pool_math``) and the job's model is ``θ_base + λ·τ*``. ``τ*`` does not
depend on λ: it is computed on a pool's first merge and kept, so a λ step is one pass over the
tensors. The data-dependent statistics are gathered on the working model itself, each expert's
weights written into it in turn, from the first ``examples`` training documents of the
expert's own tasks (``model.experts[].tasks``):

- Fisher: the diagonal Fisher, the mean over examples of the squared gradient of the answer's
  log-likelihood ``log p(answer | prompt)``, with the document's own answer (``labels:
  empirical``) or answer tokens sampled from the model (``labels: sampled``, the true Fisher's
  estimator); one example per backward pass.
- RegMean: the Gram matrix of every linear layer's inputs, averaged over the expert's tokens
  (forward pre-hooks; layers fed the same tensor, such as q/k/v, share one matrix).
- Localize-and-Stitch with trained masks: a real-valued mask per parameter, initialised from the
  dataless top-k mask, trained for ``mask_steps`` Adam steps to lower the expert's answer loss
  of ``θ_base + σ(s)⊙τ_e``, then binarised to the top ``sparsity`` share.

Their cost is reported apart from the merge's (``time/stats_s``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from app.merge import pool_math
from app.merge.direct import DirectMerger, MappedWeights, _local, file_key
from app.merge.layout import checkpoint_names, layout_of, parameters

POOL_METHODS = ("fisher", "regmean", "localize_stitch", "consensus_ta")


class PoolMerger:
    """Merges an expert pool into a working model; keeps ``τ*`` and the statistics."""

    def __init__(self, direct: DirectMerger, seed: int | None = None):
        self.direct, self.seed = direct, seed or 0
        self.examples: dict[str, list[tuple[str, str]]] = {}  # expert folder → (prompt, answer)
        self.tokenizer = None
        self.stats: dict[tuple, Any] = {}
        self.merged: tuple[str, dict[str, torch.Tensor]] | None = None

    def merge(self, model: torch.nn.Module, mk: dict[str, Any], device: str) -> tuple[int, float]:
        """Write ``θ_base + λ·τ*`` into ``model``: (tensors written, seconds of statistics)."""
        mk = _local(mk, self.direct.cache_dir)
        params = dict(mk["parameters"])
        lam = float(params.pop("lambda"))
        base_ref = str(mk["base_model"])
        experts = [(Path(m["model"]).expanduser(), float(m["parameters"]["weight"]))
                   for m in mk["models"] if str(m["model"]) != base_ref]
        base = self.direct.weights(Path(base_ref).expanduser())
        tuned = [self.direct.weights(p) for p, _ in experts]
        names = sorted(base.where)
        targets = parameters(model)
        missing = checkpoint_names(model) - set(names)
        if missing:
            raise RuntimeError(f"the base model lacks tensors of the working model: "
                               f"{sorted(missing)[:3]}")
        key = repr((mk["merge_method"], sorted(params.items()), file_key(Path(base_ref)),
                    [(file_key(p), w) for p, w in experts], self.seed))
        stats_s = 0.0
        if self.merged is None or self.merged[0] != key:
            self.merged = None  # one τ* at a time: it is the size of the model
            t0 = time.perf_counter()
            stats = self.statistics(model, str(mk["merge_method"]), params, base, tuned,
                                    [p for p, _ in experts], device)
            stats_s = time.perf_counter() - t0
            weights = [w for _, w in experts]
            self.merged = (key, combine(str(mk["merge_method"]), params, base, tuned, weights,
                                        stats, names, device))
        tau = self.merged[1]
        with torch.no_grad():
            for name in names:
                target = targets[name]
                merged = base.tensor(name).to(device=device, dtype=torch.float32,
                                                 copy=True)  # the mapping is read-only
                target.copy_(merged.add_(tau[name], alpha=lam).to(target.dtype).view_as(target))
                base.release(name)
        return len(names), stats_s

    # ------------------------------------------------------------------ statistics
    def statistics(self, model, method: str, params: dict, base: MappedWeights,
                   tuned: list[MappedWeights], folders: list[Path], device: str) -> list | None:
        """Per expert, what ``method`` needs from data (None for the dataless ones)."""
        kind = {"fisher": "fisher", "regmean": "regmean"}.get(method)
        if method == "localize_stitch" and params.get("masks") == "trained":
            kind = "mask"
        if kind is None:
            return None
        n = int(params.get("examples", 32))
        out = []
        for folder, weights in zip(folders, tuned):
            key = (kind, id(base), file_key(folder), n,
                   repr(sorted(params.items())) if kind == "mask" else params.get("labels"),
                   self.seed)
            if key not in self.stats:
                for old in [k for k in self.stats if k[0] != kind]:
                    del self.stats[old]  # statistics of another method: not needed again soon
                batches = self.batches(folder, n, device)
                if kind == "mask":
                    self.stats[key] = trained_mask(model, base, weights, batches, params, device)
                else:
                    write_weights(model, weights, device)
                    self.stats[key] = (fisher_diagonal(model, batches, params.get("labels"),
                                                       self.seed) if kind == "fisher"
                                       else input_grams(model, batches))
            out.append(self.stats[key])
        return out

    def batches(self, folder: Path, n: int, device: str) -> list[tuple[torch.Tensor, int]]:
        """The expert's first ``n`` (prompt, answer) examples as token ids and the answer's
        first position."""
        examples = self.examples.get(str(folder.resolve()))
        if not examples:
            raise RuntimeError(f"no training documents for the expert at {folder}: its "
                               f"model.experts[].tasks must have a training split")
        out = []
        for prompt, answer in examples[:n]:
            p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            out.append((torch.tensor(p + a, device=device), len(p)))
        return out


def write_weights(model: torch.nn.Module, weights: MappedWeights, device: str) -> None:
    targets = parameters(model)
    with torch.no_grad():
        for name in checkpoint_names(model):
            targets[name].copy_(weights.tensor(name).to(device).view_as(targets[name]))
            weights.release(name)


def _answer_logp(logits: torch.Tensor, ids: torch.Tensor, start: int,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
    logp = torch.log_softmax(logits[0, start - 1:-1].float(), -1)
    targets = ids[start:] if targets is None else targets
    return logp.gather(-1, targets[:, None]).sum()


def fisher_diagonal(model, batches, labels: str | None, seed: int) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of every parameter, by checkpoint name."""
    layout = layout_of(model)
    params = {layout.to_checkpoint(n): p for n, p in model.named_parameters()}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        with torch.enable_grad():
            for p in params.values():
                p.requires_grad_(True)
            for ids, start in batches:
                model.zero_grad(set_to_none=True)
                logits = model(ids[None]).logits
                targets = None
                if labels == "sampled":
                    with torch.no_grad():
                        probs = torch.softmax(logits[0, start - 1:-1].float(), -1)
                        targets = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                _answer_logp(logits, ids, start, targets).backward()
                for n, p in params.items():
                    if p.grad is not None:
                        fisher[n].add_(p.grad.float().square())
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
    for f in fisher.values():
        f.div_(max(1, len(batches)))
    return fisher


def input_grams(model, batches) -> dict[str, torch.Tensor]:
    """The mean Gram matrix ``XᵀX / tokens`` of each linear layer's inputs, by the checkpoint
    name of the layer's weight; tied weights (an output layer sharing the embeddings) excluded."""
    layout = layout_of(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    acc: dict[str, torch.Tensor] = {}
    shared: set[str] = set()
    this_pass: dict[tuple, tuple[str, torch.Tensor]] = {}

    def hook(name):
        def pre(_module, args):
            x = args[0]
            if name in shared:
                return
            where = (x.data_ptr(), tuple(x.shape))
            if where in this_pass:  # the same input as an earlier layer's (q, k, v)
                acc.setdefault(name, acc[this_pass[where][0]])
                shared.add(name)
                return
            this_pass[where] = (name, x)  # kept alive: no later input reuses its memory
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            gram = flat.T @ flat
            if name in acc:
                acc[name].add_(gram)
            else:
                acc[name] = gram
        return pre

    handles = [m.register_forward_pre_hook(hook(layout.to_checkpoint(f"{n}.weight")))
               for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and id(m.weight) not in embeddings]
    tokens = 0
    try:
        with torch.no_grad():
            for ids, _ in batches:
                this_pass.clear()
                model(ids[None])
                tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
        this_pass.clear()
    for name, gram in acc.items():
        if name not in shared:
            gram.div_(max(1, tokens))
    return acc


def trained_mask(model, base: MappedWeights, tuned: MappedWeights, batches, params: dict,
                 device: str) -> dict[str, torch.Tensor]:
    """Localize-and-Stitch's trained mask of one expert: boolean, by checkpoint name."""
    from torch.func import functional_call

    layout = layout_of(model)
    names = [layout.to_checkpoint(n) for n, _ in model.named_parameters()]
    tau = {n: _task_vector(base, tuned, n, device) for n in names}
    keep = float(params["sparsity"])
    threshold = pool_math.top_fraction_threshold([t.abs() for t in tau.values()], keep)
    logits = {n: torch.where(t.abs() >= threshold, 1.0, -1.0).requires_grad_()
              for n, t in tau.items()}
    theta = {n: base.tensor(n).to(device=device, dtype=torch.float32) for n in names}
    opt = torch.optim.Adam(logits.values(), lr=float(params.get("mask_lr", 0.2)))
    with torch.enable_grad():
        for step in range(int(params.get("mask_steps", 20))):
            ids, start = batches[step % len(batches)]
            merged = {layout.to_model(n): theta[n] + torch.sigmoid(logits[n]) * tau[n]
                      for n in names}
            out = functional_call(model, merged, (ids[None],))
            loss = -_answer_logp(out.logits, ids, start)
            opt.zero_grad()
            loss.backward()
            opt.step()
    scores = {n: s.detach() for n, s in logits.items()}
    threshold = pool_math.top_fraction_threshold(list(scores.values()), keep)
    return {n: s >= threshold for n, s in scores.items()}


def _task_vector(base: MappedWeights, tuned: MappedWeights, name: str,
                 device: str) -> torch.Tensor:
    tau = tuned.tensor(name).to(device=device, dtype=torch.float32) - \
        base.tensor(name).to(device=device, dtype=torch.float32)
    tuned.release(name)
    return tau


def combine(method: str, params: dict, base: MappedWeights, tuned: list[MappedWeights],
            weights: list[float], stats: list | None, names: list[str],
            device: str) -> dict[str, torch.Tensor]:
    """``τ*`` for every tensor."""
    masks = None
    if method == "localize_stitch":
        if stats is not None:
            masks = stats
        else:  # dataless: each expert's top-k of |τ_e| over the whole model
            keep = float(params["sparsity"])
            masks = []
            for m in tuned:
                magnitudes = {n: _task_vector(base, m, n, device).abs_() for n in names}
                threshold = pool_math.top_fraction_threshold(list(magnitudes.values()), keep)
                masks.append({n: v >= threshold for n, v in magnitudes.items()})
                del magnitudes
    out = {}
    for name in names:
        taus = [_task_vector(base, m, name, device) for m in tuned]
        if method == "fisher":
            out[name] = pool_math.fisher_merge(taus, [s[name] for s in stats], weights) \
                if name in stats[0] else pool_math.weighted_mean(taus, weights)
        elif method == "regmean":
            out[name] = pool_math.regmean_merge(taus, [s[name] for s in stats], weights,
                                                float(params["alpha"])) \
                if name in stats[0] else pool_math.weighted_mean(taus, weights)
        elif method == "localize_stitch":
            out[name] = pool_math.stitch(taus, [m[name] for m in masks], weights)
        elif method == "consensus_ta":
            out[name] = pool_math.consensus_merge(taus, weights, float(params["tall_factor"]),
                                                  int(params["min_agree"]))
        else:
            raise ValueError(f"not an expert-pool method: {method}")
        base.release(name)
    return out
