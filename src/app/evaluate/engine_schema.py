"""The engine group's schema and its checks (no vLLM, no torch needed).

``engine=hf`` (the default) scores and generates with lm-eval's ``HFLM`` over the working
model. ``engine=vllm`` keeps one vLLM engine alive for the process (lm-eval's ``VLLM``
wrapper, built once on the working model's folder) and writes each merge's weights into it in
place (``app.evaluate.vllm_engine``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from app.errors import ConfigError, suggest

NAMES = ("hf", "vllm")
WEIGHTS = ("auto", "driver", "workers")
# head sizes vLLM 0.32's CPU attention takes (CPUAttentionBackend.get_supported_head_sizes)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass
class EngineConfig:
    """What runs the working model for lm-eval's requests."""

    name: str = "hf"  # hf | vllm
    # vllm only. The share of accelerator memory (CPU: of NUMA node 0's) the engine may take,
    # weights and key/value cache together; null: sized from the model (weights + room for
    # max_num_seqs sequences of max_model_len tokens)
    gpu_memory_utilization: Optional[float] = None
    max_model_len: Optional[int] = None  # null: the model's max_position_embeddings
    max_num_seqs: int = 64  # sequences scheduled at once
    enforce_eager: bool = False  # no CUDA graphs / compilation (faster start, slower steps)
    tensor_parallel_size: int = 1  # GPUs one model is split over
    seed: int = 0  # vLLM's sampling seed where a request has none
    # where each merge's tensors are computed: driver (the working model's, sent to every
    # worker), workers (each worker merges from the parents' files itself; methods with a
    # direct path, else driver), auto (workers when tensor_parallel_size > 1)
    weights: str = "auto"


def validate(engine, models=None, device: str = "cpu") -> None:
    """The engine settings; with the run's model set (an ``app.modelset.ModelSet``),
    that vLLM can run it: its tokenizer policy and, on CPU, its attention head size."""
    if engine.name not in NAMES:
        raise ConfigError(f"engine.name={engine.name!r} is not an engine"
                          f"{suggest(str(engine.name), list(NAMES))}; valid: {', '.join(NAMES)}")
    if engine.name == "hf":
        return
    share = engine.gpu_memory_utilization
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                              or not 0 < share <= 1):
        raise ConfigError(f"engine.gpu_memory_utilization={share!r} must be a share in (0, 1], "
                          f"e.g. 0.5, or null to size it from the model")
    for key, value in (("max_model_len", engine.max_model_len),
                       ("max_num_seqs", engine.max_num_seqs),
                       ("tensor_parallel_size", engine.tensor_parallel_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ConfigError(f"engine.{key}={value!r} must be a positive integer")
    if engine.weights not in WEIGHTS:
        raise ConfigError(f"engine.weights={engine.weights!r} is not a source of the merge's "
                          f"tensors{suggest(str(engine.weights), list(WEIGHTS))}; valid: "
                          f"{', '.join(WEIGHTS)}")
    if models is None:
        return
    if models.tokenizer == "union":
        raise ConfigError("engine=vllm needs model.tokenizer=pt or it (the engine is built on "
                          "that parent's folder; a union vocabulary changes the model's shape); "
                          "use engine=hf for model.tokenizer=union")
    if str(device) == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cpu"):
        head = head_size(models)
        if head is not None and head not in CPU_HEAD_SIZES:
            raise ConfigError(f"engine=vllm: model.{models.tokenizer}'s attention head size is "
                              f"{head}, which vLLM's CPU backend does not support (it takes "
                              f"{', '.join(map(str, CPU_HEAD_SIZES))}); use engine=hf here, or "
                              f"a GPU")


def fingerprint_part(engine) -> dict | None:
    """What about the engine determines a job's results (None for ``hf``: fingerprints as
    they were before engines existed)."""
    return None if engine.name == "hf" else {"name": engine.name, "seed": engine.seed}


def head_size(models) -> int | None:
    """The working model's attention head size from its config.json, or None."""
    from app.models import text_config

    text = text_config(models, models.tokenizer) or {}
    if text.get("head_dim"):
        return int(text["head_dim"])
    heads = text.get("num_attention_heads")
    return int(text["hidden_size"]) // int(heads) if heads and text.get("hidden_size") else None
