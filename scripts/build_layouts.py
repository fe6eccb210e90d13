"""Build tiny random PT/IT pairs in the tensor layout of published hub checkpoints (≈6 s, CPU).

    python scripts/build_layouts.py --out DIR                   # every family: DIR/<family>/{pt,it}
    python scripts/build_layouts.py --out DIR --family gemma3 --family llama --check

Each family stands for one published checkpoint (see FAMILIES): its config.json has the keys
and values of that checkpoint's config (architectures, model_type, rope and attention options,
``torch_dtype`` bfloat16) with the sizes shrunk (hidden 64, 2 layers, head_dim 32, 2 query heads
sharing 1 KV head, vocab 640), and its weights carry the published tensor names, in bfloat16,
in ``model-0000k-of-0000N.safetensors`` shards (metadata ``{"format": "pt"}``; the published
shard count, at least 2) with a ``model.safetensors.index.json``. A head tied to the embeddings
is absent from the files, an untied ``lm_head.weight`` is present. Gemma-3 4B is the multimodal
``Gemma3ForConditionalGeneration``: ``language_model.model.*``, ``vision_tower.vision_model.*``
(here a 1-layer SigLIP tower) and ``multi_modal_projector.*`` on disk, which transformers 5
loads as ``model.language_model.*``, ``model.vision_tower.*`` and ``model.multi_modal_projector.*``.
The files are written here, not by ``save_pretrained``: transformers 5.24 writes the published
names back for a model it loaded from them, but saves one built from a config with its tower
as ``vision_tower.*``, without the published ``vision_model.`` level.

The tokenizer is the toy one (src/app/toy/it), bos/eos/pad its ids 0/1/2; Gemma-3's
begin-of-image, end-of-image and image ids are the last three of the 640 (637-639; published
255999, 256000, 262144 of 262208), ordinary tokens of the toy vocabulary. Weights are random:
PT is each tensor's initial constant (1 or 0 for norm scales, 0 for biases and matrices) plus
N(0, 0.02^2) drawn from a generator seeded by (seed, tensor name); IT is PT plus
N(0, (0.05 · RMS of the tensor)^2), summed in float32 and rounded to bfloat16 (the RMS, not the
standard deviation, so that norm scales near 1 move by more than a bfloat16 step). The same seed
gives byte-identical files. ``check`` (``--check``) compares the names with mergekit's
architecture definition and loads each folder with transformers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import zlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "src" / "app" / "toy" / "it"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
BOS, EOS, PAD, VOCAB = 0, 1, 2, 640  # the toy tokenizer's ids and size
IMAGE, BOI, EOI = 639, 637, 638  # Gemma-3's image-token ids, at the top of the vocabulary
PT_STD = 0.02  # spread of PT values about each tensor's initial constant
IT_SCALE = 0.05  # IT - PT ~ N(0, (IT_SCALE * rms(PT))^2)

# The shrunk sizes shared by the language models: 2 query heads sharing 1 KV head of 32.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS,
            pad_token_id=PAD)

FAMILIES = {
    "gemma3": "google/gemma-3-4b-pt: Gemma3ForConditionalGeneration (model_type gemma3), "
              "SigLIP vision tower without head, tied embeddings",
    "gemma3_text": "google/gemma-3-1b-pt: Gemma3ForCausalLM (model_type gemma3_text), tied",
    "gemma2": "google/gemma-2-2b: Gemma2ForCausalLM, tied",
    "qwen2_tied": "Qwen/Qwen2.5-0.5B: Qwen2ForCausalLM, tied, q/k/v biases",
    "qwen2": "Qwen/Qwen2.5-7B: Qwen2ForCausalLM, untied lm_head, q/k/v biases",
    "llama": "meta-llama/Llama-3.1-8B: LlamaForCausalLM, untied lm_head",
    "llama_tied": "meta-llama/Llama-3.2-3B: LlamaForCausalLM, tied",
    "mistral": "HuggingFaceH4/zephyr-7b-beta: MistralForCausalLM, untied lm_head",
}

_GEMMA3_TEXT = dict(
    TEXT, model_type="gemma3_text", head_dim=32, query_pre_attn_scalar=32, sliding_window=16,
    sliding_window_pattern=2,  # layer 0 sliding, layer 1 global (published: 5 sliding, 1 global)
)
_QWEN2 = dict(
    architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, hidden_act="silu",
    initializer_range=0.02, max_window_layers=TEXT["num_hidden_layers"], model_type="qwen2",
    rms_norm_eps=1e-06, rope_theta=1000000.0, torch_dtype="bfloat16", use_cache=True,
    use_sliding_window=False, **TEXT,
)
_LLAMA3 = dict(
    architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0,
    hidden_act="silu", initializer_range=0.02, max_position_embeddings=131072, mlp_bias=False,
    model_type="llama", pretraining_tp=1, rms_norm_eps=1e-05, rope_theta=500000.0,
    torch_dtype="bfloat16", use_cache=True, **TEXT,
)
_ROPE_LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192, rope_type="llama3")

# config.json (the published one's keys, tiny sizes), generation_config.json, shard count
# (the published count, at least 2), and the tensor-name prefixes that differ on disk.
SPECS: dict[str, dict] = {
    "gemma3": dict(
        config=dict(
            architectures=["Gemma3ForConditionalGeneration"], boi_token_index=BOI,
            eoi_token_index=EOI, eos_token_id=EOS, image_token_index=IMAGE,
            initializer_range=0.02, mm_tokens_per_image=4, model_type="gemma3",
            text_config=dict(_GEMMA3_TEXT, rope_scaling=dict(factor=8.0, rope_type="linear")),
            torch_dtype="bfloat16", transformers_version="4.50.0.dev0",
            vision_config=dict(hidden_size=32, image_size=28, intermediate_size=64,
                               model_type="siglip_vision_model", num_attention_heads=1,
                               num_hidden_layers=1, patch_size=14, vision_use_head=False),
        ),
        generation=dict(bos_token_id=BOS, cache_implementation="hybrid", eos_token_id=EOS,
                        pad_token_id=PAD, transformers_version="4.50.0.dev0"),
        shards=2,
        renames=(("language_model.model.", "model.language_model."),
                 ("language_model.lm_head.", "lm_head."),
                 ("vision_tower.vision_model.", "model.vision_tower."),
                 ("multi_modal_projector.", "model.multi_modal_projector.")),
    ),
    "gemma3_text": dict(
        config=dict(
            _GEMMA3_TEXT, architectures=["Gemma3ForCausalLM"], attention_bias=False,
            attention_dropout=0.0, attn_logit_softcapping=None, cache_implementation="hybrid",
            final_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh",
            initializer_range=0.02, max_position_embeddings=32768, rms_norm_eps=1e-06,
            rope_local_base_freq=10000, rope_scaling=None, rope_theta=1000000,
            torch_dtype="bfloat16", transformers_version="4.50.0.dev0", use_cache=True,
        ),
        generation=dict(bos_token_id=BOS, cache_implementation="hybrid", eos_token_id=EOS,
                        pad_token_id=PAD, transformers_version="4.50.0.dev0"),
        shards=2,  # published as one model.safetensors
    ),
    "gemma2": dict(
        config=dict(
            TEXT, architectures=["Gemma2ForCausalLM"], attention_bias=False,
            attention_dropout=0.0, attn_logit_softcapping=50.0, cache_implementation="hybrid",
            final_logit_softcapping=30.0, head_dim=32, hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh", initializer_range=0.02,
            max_position_embeddings=8192, model_type="gemma2", query_pre_attn_scalar=32,
            rms_norm_eps=1e-06, rope_theta=10000.0, sliding_window=16, torch_dtype="bfloat16",
            transformers_version="4.42.4", use_cache=True,
        ),
        generation=dict(_from_model_config=True, bos_token_id=BOS,
                        cache_implementation="hybrid", eos_token_id=EOS, pad_token_id=PAD,
                        transformers_version="4.42.4"),
        shards=3,
    ),
    "qwen2_tied": dict(
        config=dict(_QWEN2, max_position_embeddings=32768, sliding_window=32768,
                    tie_word_embeddings=True, transformers_version="4.40.1", use_mrope=False),
        generation=dict(bos_token_id=BOS, do_sample=False, eos_token_id=EOS, max_new_tokens=2048,
                        pad_token_id=PAD, transformers_version="4.37.0"),
        shards=2,  # published as one model.safetensors
    ),
    "qwen2": dict(
        config=dict(_QWEN2, max_position_embeddings=131072, sliding_window=131072,
                    tie_word_embeddings=False, transformers_version="4.43.1"),
        generation=dict(bos_token_id=BOS, do_sample=False, eos_token_id=EOS, max_new_tokens=2048,
                        pad_token_id=PAD, transformers_version="4.37.0"),
        shards=4,
    ),
    "llama": dict(
        config=dict(_LLAMA3, rope_scaling=_ROPE_LLAMA3, tie_word_embeddings=False,
                    transformers_version="4.43.0.dev0"),
        generation=dict(_from_model_config=True, bos_token_id=BOS, do_sample=True,
                        eos_token_id=EOS, pad_token_id=PAD, temperature=0.6, top_p=0.9,
                        transformers_version="4.43.0.dev0"),
        shards=4,
    ),
    "llama_tied": dict(
        config=dict(_LLAMA3, head_dim=32, rope_scaling=dict(_ROPE_LLAMA3, factor=32.0),
                    tie_word_embeddings=True, transformers_version="4.45.0.dev0"),
        generation=dict(_from_model_config=True, bos_token_id=BOS, do_sample=True,
                        eos_token_id=EOS, pad_token_id=PAD, temperature=0.6, top_p=0.9,
                        transformers_version="4.45.0.dev0"),
        shards=2,
    ),
    "mistral": dict(
        config=dict(
            TEXT, architectures=["MistralForCausalLM"], hidden_act="silu",
            initializer_range=0.02, max_position_embeddings=32768, model_type="mistral",
            rms_norm_eps=1e-05, rope_theta=10000.0, sliding_window=4096,
            tie_word_embeddings=False, torch_dtype="bfloat16", transformers_version="4.35.0",
            use_cache=True,
        ),
        generation=dict(_from_model_config=True, bos_token_id=BOS, eos_token_id=EOS,
                        pad_token_id=PAD, transformers_version="4.35.0"),
        shards=8,
    ),
}
assert SPECS.keys() == FAMILIES.keys()


def to_checkpoint(family: str, name: str) -> str:
    """A transformers 5 parameter name → the published checkpoint's tensor name."""
    for disk, loaded in SPECS[family].get("renames", ()):
        if name.startswith(loaded):
            return disk + name[len(loaded):]
    return name


def _dump(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _generator(seed: int, name: str, draw: str) -> torch.Generator:
    """A generator for one tensor's draw (torch's CPU generator keeps 32 bits of a seed)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{draw}/{name}".encode()))


def _tied(config) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False))


def pt_tensors(family: str, folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """The PT weights by checkpoint name, in the model's parameter order (float32)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.random.fork_rng():  # initial values only tell constants (norms, biases) apart
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = {}
    for name, init in model.state_dict().items():
        if name == "lm_head.weight" and _tied(config):
            continue
        noise = torch.randn(init.shape, generator=_generator(seed, name, "pt")) * PT_STD
        base = init.flatten()[0].float() if bool((init == init.flatten()[0]).all()) else 0.0
        out[to_checkpoint(family, name)] = base + noise
    return out


def perturb(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """IT = PT + N(0, (IT_SCALE · rms)^2) per tensor, from the bfloat16 PT values."""
    out = {}
    for name, t in tensors.items():
        t = t.to(torch.bfloat16).float()
        noise = torch.randn(t.shape, generator=_generator(seed, name, "it"))
        out[name] = t + noise * IT_SCALE * t.pow(2).mean().sqrt()
    return out


def write_shards(tensors: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """bfloat16 shards of contiguous runs of tensors, about equal in bytes, none empty, and
    the hub's model.safetensors.index.json."""
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    done, current = 0, 0
    for i, (name, t) in enumerate(tensors.items()):
        remaining = len(tensors) - i
        want = max(done * shards // total, current, shards - remaining)
        current = min(want, current + 1)
        groups[current][name] = t
        done += t.numel() * t.element_size()
    weight_map = {}
    for k, group in enumerate(groups, 1):
        file = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file(group, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    _dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          folder / "model.safetensors.index.json")


def build(family: str, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write out/<family>/pt and out/<family>/it (replacing them); return the two folders."""
    spec = SPECS[family]
    pt, it = out / family / "pt", out / family / "it"
    for folder in (pt, it):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _dump(spec["config"], folder / "config.json")
        _dump(spec["generation"], folder / "generation_config.json")
        for name in TOKENIZER_FILES:
            shutil.copyfile(TOY / name, folder / name)
    weights = pt_tensors(family, pt, seed)
    write_shards(weights, pt, spec["shards"])
    write_shards(perturb(weights, seed), it, spec["shards"])
    return pt, it


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A folder's tensors by name, checking its index, shard names, metadata and dtype."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    expected = [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    if files != expected or n < 2 or sorted(p.name for p in folder.glob("*.safetensors")) != files:
        raise AssertionError(f"{folder}: shards {files}, expected {expected} (and at least 2)")
    tensors = {}
    for file in files:
        with safe_open(folder / file, "pt") as f:
            if f.metadata() != {"format": "pt"}:
                raise AssertionError(f"{folder / file}: metadata {f.metadata()}")
            for key in f.keys():
                if index["weight_map"].get(key) != file:
                    raise AssertionError(f"{folder}: {key} is in {file}, index says "
                                         f"{index['weight_map'].get(key)}")
                tensors[key] = f.get_tensor(key)
    if tensors.keys() != index["weight_map"].keys():
        raise AssertionError(f"{folder}: index names {set(index['weight_map']) ^ set(tensors)}")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if index["metadata"] != {"total_size": size}:
        raise AssertionError(f"{folder}: index metadata {index['metadata']}, size {size}")
    if {t.dtype for t in tensors.values()} != {torch.bfloat16}:
        raise AssertionError(f"{folder}: dtypes {({t.dtype for t in tensors.values()})}")
    return tensors


def mergekit_names(pt: Path, it: Path) -> tuple[set[str], set[str]]:
    """(required, optional) tensor names of mergekit's architecture for a linear PT/IT merge."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    merge = MergeConfiguration.model_validate(dict(
        merge_method="linear", dtype="float32", out_dtype="bfloat16",
        models=[dict(model=str(p), parameters=dict(weight=0.5)) for p in (pt, it)]))
    arch = get_architecture_info(merge, MergeOptions())
    config = merge.referenced_models()[0].config()
    weights = arch.all_weights(config)
    return ({w.name for w in weights if not w.optional}, {w.name for w in weights if w.optional})


def check(family: str, pt: Path, it: Path, load: bool = True) -> None:
    """Raise unless both folders have the published layout that mergekit expects, IT differs
    from PT in every tensor, and (``load``) transformers loads each folder without missing,
    unexpected or mismatched keys, to the checkpoint's values, and gives finite logits."""
    pt_w, it_w = read_folder(pt), read_folder(it)
    if pt_w.keys() != it_w.keys() or any(pt_w[k].shape != it_w[k].shape for k in pt_w):
        raise AssertionError(f"{family}: PT and IT differ in names or shapes")
    same = [k for k in pt_w if torch.equal(pt_w[k], it_w[k])]
    if same:
        raise AssertionError(f"{family}: IT equals PT in {same}")
    required, optional = mergekit_names(pt, it)
    names = set(pt_w)
    missing, unexpected = required - names, names - required - optional
    present_optional = sorted(names & optional)
    from transformers import AutoConfig

    tied = _tied(AutoConfig.from_pretrained(pt))
    head = to_checkpoint(family, "lm_head.weight")
    shards = len(set(json.loads((pt / "model.safetensors.index.json").read_text())["weight_map"]
                     .values()))
    print(f"{family}: {len(names)} tensors in {shards} shards, tied {tied}; mergekit "
          f"{len(required)} required + optional {sorted(optional)}: missing {sorted(missing)}, "
          f"unexpected {sorted(unexpected)}, optional present {present_optional}")
    if missing or unexpected or (head in names) == tied:
        raise AssertionError(f"{family}: names differ from mergekit's architecture "
                             f"(missing {sorted(missing)}, unexpected {sorted(unexpected)}, "
                             f"{head} present {head in names}, tied {tied})")
    if load:
        for folder, weights in ((pt, pt_w), (it, it_w)):
            check_load(family, folder, weights)


@torch.no_grad()
def check_load(family: str, folder: Path, weights: dict[str, torch.Tensor]) -> None:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"} | (
        {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    if problems:
        raise AssertionError(f"{folder}: loading info {problems}")
    state = model.state_dict()
    loaded = {to_checkpoint(family, k): v for k, v in state.items()}
    if _tied(model.config):
        head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        if head.data_ptr() != embed.data_ptr():
            raise AssertionError(f"{folder}: lm_head is not tied to the embeddings")
        loaded.pop(to_checkpoint(family, "lm_head.weight"))
    if loaded.keys() != weights.keys():
        raise AssertionError(f"{folder}: loaded names differ: {set(loaded) ^ set(weights)}")
    differ = [k for k in weights if not torch.equal(loaded[k], weights[k])]
    if differ:
        raise AssertionError(f"{folder}: loaded values differ from the checkpoint: {differ}")
    logits = model(torch.tensor([[BOS, 40, 41, 300, 512, 7, EOS]])).logits
    if logits.shape != (1, 7, VOCAB) or not torch.isfinite(logits).all():
        raise AssertionError(f"{folder}: logits {tuple(logits.shape)}, finite "
                             f"{bool(torch.isfinite(logits).all())}")
    renamed = [f"{disk}* -> {param}*" for disk, param in SPECS[family].get("renames", ())
               if any(k.startswith(disk) for k in weights)]
    print(f"  {folder}: loads as {type(model).__name__}, dtype {model.dtype}, "
          f"no missing/unexpected/mismatched keys, values equal, logits finite"
          + (f"; renamed {', '.join(renamed)}" if renamed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--family", action="append", choices=list(FAMILIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="check each pair after building")
    args = parser.parse_args()
    for family in args.family or FAMILIES:
        start = time.perf_counter()
        pt, it = build(family, args.out, args.seed)
        print(f"wrote {pt} and {it} ({time.perf_counter() - start:.2f} s)")
        if args.check:
            check(family, pt, it)


if __name__ == "__main__":
    main()
