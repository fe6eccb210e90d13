"""The vLLM engine: one engine per process, each merge written into it in place.

lm-eval's own ``VLLM`` wrapper is built once, on the folder the working model was loaded from
(the parent whose vocabulary the merge takes). After every merge, ``load_weights`` hands the
working model's tensors, by their checkpoint names, to each worker's ``reload_weights``
(vLLM's own loaders: fused projections, tied heads, sharding for tensor parallelism) and then
resets the prefix cache, whose key/value blocks were computed with the previous weights.
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
        self.requests: list = []
        self.costs: dict[str, float] = {}

    def load_weights(self, model) -> float:
        """Write ``model``'s weights into the engine and drop every cached key/value; seconds."""
        from app.merge.layout import checkpoint_names, parameters

        start = time.perf_counter()
        names = checkpoint_names(model)
        tensors = [(n, t.detach()) for n, t in parameters(model).items() if n in names]
        weights = iter(tensors) if self.lm.tensor_parallel_size == 1 else tensors
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

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
