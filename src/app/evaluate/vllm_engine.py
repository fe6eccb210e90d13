"""The vLLM engine: one engine per process, each merge written into it in place.

lm-eval's own ``VLLM`` wrapper is built once, on the folder the working model was loaded from
(the parent whose vocabulary the merge takes). After every merge, ``load_weights`` feeds the
merged tensors, by their checkpoint names, to each worker's ``reload_weights`` (vLLM's own
loaders: fused projections, tied heads, each worker's shard for tensor parallelism) and then
resets the prefix cache, whose key/value blocks were computed with the previous weights.
The tensors come from the driver's working model (``engine.weights=driver``) or, for the
methods with a direct path, each worker computes them itself from the memory-mapped parents,
one tensor at a time (``engine.weights=workers``, ``merge_in_worker``): nothing crosses
between processes but the merge's config, which is what a pair split over several GPUs needs.
Scoring and generation are lm-eval's own (``VLLM`` scores token requests and generates) on
the requests the evaluator built once; the judge samples with ``sample``.
"""

from __future__ import annotations

import time
from pathlib import Path

from app import compat

GIB = 1 << 30


def node_memory(device: str) -> int:
    """The memory vLLM's share is taken of: the GPU's, or on CPU NUMA node 0's."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info()[1]
    try:
        for line in Path("/sys/devices/system/node/node0/meminfo").read_text().splitlines():
            if "MemTotal:" in line:
                return int(line.split()[-2]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_share(model, max_model_len: int, max_num_seqs: int, device: str,
                 in_use: int) -> float:
    """``gpu_memory_utilization`` sized from the model: its weights, a key/value cache for
    ``max_num_seqs`` full-length sequences, what the process holds already (``in_use``: on CPU
    vLLM counts it against the share) and 1 GiB of working room; at most 0.9."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    size = model.dtype.itemsize
    kv = 2 * text.num_hidden_layers * kv_heads * head * size * max_model_len * max_num_seqs
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    need = weights + kv + in_use + GIB
    return round(min(0.9, need / node_memory(device)), 4)


def _resident() -> int:
    try:
        import os

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class VLLMEngine:
    """lm-eval's VLLM wrapper over one in-process engine whose weights follow the working
    model's."""

    scoring = "vllm"

    def __init__(self, folder: str, model, engine_cfg, dtype: str, device: str,
                 trust_remote_code: bool = False):
        compat.prepare_vllm()
        from lm_eval.models.vllm_causallms import VLLM

        config = model.config
        limit = engine_cfg.max_model_len or getattr(config.get_text_config(),
                                                    "max_position_embeddings", None)
        share = engine_cfg.gpu_memory_utilization or memory_share(
            model, int(limit or 2048), engine_cfg.max_num_seqs, device, _resident())
        start = time.perf_counter()
        self.lm = VLLM(pretrained=str(folder), dtype=dtype, batch_size="auto",
                       trust_remote_code=trust_remote_code, max_model_len=limit,
                       gpu_memory_utilization=share, max_num_seqs=engine_cfg.max_num_seqs,
                       enforce_eager=engine_cfg.enforce_eager,
                       tensor_parallel_size=engine_cfg.tensor_parallel_size,
                       seed=engine_cfg.seed)
        self.start_s = time.perf_counter() - start
        self.llm = self.lm.model
        self.share = share
        self.weights = engine_cfg.weights
        self.weights_from: str | None = None
        self.requests: list = []
        self.costs: dict[str, float] = {}

    def load_weights(self, model, mk: dict | None = None, merger=None) -> float:
        """Write the merge ``mk`` (just written into ``model`` by ``merger``) into the engine
        and drop every cached key/value; seconds. ``self.weights_from`` says where the
        tensors came from: ``workers`` or ``driver``."""
        from app.merge.layout import checkpoint_names, parameters

        start = time.perf_counter()
        self.weights_from = "driver"
        plan = self.worker_plan(mk, merger)
        if plan is not None:
            written = self.llm.collective_rpc(merge_in_worker, args=(
                mk, plan, merger.cache_dir, merger.seed))
            if all(written):
                self.weights_from = "workers"
        if self.weights_from == "driver":
            names = checkpoint_names(model)
            tensors = [(n, t.detach()) for n, t in parameters(model).items() if n in names]
            weights = iter(tensors) if self.lm.tensor_parallel_size == 1 else tensors
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                              "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def worker_plan(self, mk: dict | None, merger) -> str | None:
        """The direct path each worker merges ``mk`` with, or None (the driver's tensors):
        ``engine.weights`` workers, or auto with the model split over several workers."""
        from app.merge.methods import METHODS

        wanted = self.weights == "workers" or (self.weights == "auto"
                                               and self.lm.tensor_parallel_size > 1)
        method = METHODS.get(str((mk or {}).get("merge_method")))
        if (not wanted or method is None or method.direct is None or merger is None
                or merger.towers_from is not None):
            return None
        return method.direct

    def prepare(self, loglikelihood: list) -> None:
        from app.evaluate.engine import tokenize_loglikelihood
        from app.evaluate.trie import model_input, trie_tokens

        self.requests = tokenize_loglikelihood(self.lm, loglikelihood)
        self.costs = {"eval/trie_tokens": trie_tokens(
            model_input(ctx, cont, self.lm.max_length) for _, ctx, cont in self.requests)}

    def loglikelihood(self) -> list[tuple[float, bool]]:
        return compat.loglikelihood_tokens(self.lm, self.requests)

    def generate_until(self, instances: list) -> list[str]:
        return self.lm.generate_until(instances, disable_tqdm=True)

    def sample(self, prompt_ids: list[list[int]], j) -> list[list[tuple[list[int], str]]]:
        """``j.k`` samples per prompt with the judge's decoding (penalties, temperature,
        top-k, top-p, ``j.max_new_tokens``), seeded with ``j.seed``: (token ids, text)."""
        from vllm import SamplingParams, TokensPrompt

        sample = j.temperature > 0
        params = SamplingParams(n=j.k, temperature=j.temperature if sample else 0.0,
                                top_k=j.top_k if sample and j.top_k else -1,
                                top_p=j.top_p if sample else 1.0,
                                presence_penalty=j.presence_penalty,
                                frequency_penalty=j.frequency_penalty,
                                max_tokens=j.max_new_tokens, seed=j.seed,
                                skip_special_tokens=True)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids],
                                    params, use_tqdm=False)
        return [[(list(c.token_ids), c.text) for c in out.outputs] for out in outputs]


_WORKER_MERGERS: dict = {}  # per worker process: its DirectMerger (mapped parents, λ-free values)


def merge_in_worker(worker, mk: dict, plan: str, cache_dir: str | None,
                    seed: int | None) -> int:
    """Run in each vLLM worker (``collective_rpc``): merge ``mk`` from the memory-mapped
    parents on the worker's device, one tensor at a time, straight into ``reload_weights``
    (which keeps the worker's own shard of each); the tensors merged, 0 where the direct path
    does not take ``mk``. The worker's merger is kept, so what does not depend on λ is computed
    once per pair."""
    from app.merge.direct import DirectMerger

    merger = _WORKER_MERGERS.setdefault((cache_dir, seed), DirectMerger(cache_dir, seed))
    stream = merger.tensors(mk, str(worker.device), plan)
    if stream is None:
        return 0
    count = [0]

    def counted():
        for item in stream:
            count[0] += 1
            yield item

    worker.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
    return count[0]
