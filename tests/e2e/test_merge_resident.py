"""Parents held once in memory (``merge.parents_on=device``) or streamed (``host``): every direct
method's merge equals mergekit's executor bit for bit either way, in whole-tensor chunks too."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from app.merge import direct, kernels
from app.merge.direct import MappedWeights, ResidentWeights
from app.merge.merger import Merger
from app.merge.mergekit_adapter import merged_tensors
from app.merge.torch_ops import CHUNK, new_buffers, torch_task_vector, torch_task_vectors


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A bfloat16 base, IT and a second fine-tune; the embedding spans two 2**20-element
    chunks; IT's tensors lie at three distances from PT (slerp's arc and linear fallback)."""
    out = tmp_path_factory.mktemp("resident")
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type="qwen2", hidden_size=128, intermediate_size=256,
                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                               vocab_size=8300, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out / "pt")
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]
    with torch.no_grad():
        for i, p in enumerate(params):
            noise = torch.randn_like(p, dtype=torch.float32) * [0.01, 0.5, 3.0, 0][i % 4]
            p.add_((noise * p.float().std() + 1e-3 * noise).to(p.dtype))
        model.save_pretrained(out / "it")
        for p, b in zip(params, base):
            p.copy_(b + (torch.randn_like(b, dtype=torch.float32) * 0.3 * b.float().std())
                    .to(b.dtype))
        model.save_pretrained(out / "ft")
    return out / "pt", out / "it", out / "ft"


def mk_of(pair, method, lam, two_tunes=False):
    """The project's mergekit config of each direct method at λ (mergekit's knobs)."""
    pt, it, ft = map(str, pair)
    head = {"merge_method": method, "dtype": "float32", "out_dtype": "bfloat16"}
    if method in ("linear", "nuslerp"):
        return {**head, "parameters": {"normalize": False} if method == "linear" else {},
                "models": [{"model": pt, "parameters": {"weight": 1 - lam}},
                           {"model": it, "parameters": {"weight": lam}}]}
    if method == "slerp":
        return {**head, "base_model": pt, "parameters": {"t": lam},
                "models": [{"model": pt}, {"model": it}]}
    knobs = {"ties": dict(density=0.5), "dare_ties": dict(density=0.7),
             "dare_linear": dict(density=0.5), "della": dict(density=0.6, epsilon=0.1),
             "della_linear": dict(density=0.5, epsilon=0.2),
             "breadcrumbs": dict(density=0.8, gamma=0.05),
             "breadcrumbs_ties": dict(density=0.8, gamma=0.05)}.get(method, {})
    tunes = [(it, lam)] + ([(ft, 0.4)] if two_tunes else [])
    return {**head, "base_model": pt, "parameters": {"normalize": False},
            "models": [{"model": m, "parameters": {"weight": w, **knobs}} for m, w in tunes]}


METHODS = ["linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
           "della", "della_linear", "breadcrumbs", "breadcrumbs_ties"]
CASES = [(m, False) for m in METHODS] + [("ties", True), ("dare_ties", True)]
LAMBDAS = (0.3, 0.7)


@pytest.fixture(scope="module")
def executor(pair):
    """mergekit's executor's tensors per (method, two fine-tunes, λ), computed once."""
    done = {}

    def expected(method, two, lam):
        if (method, two, lam) not in done:
            done[method, two, lam] = dict(merged_tensors(mk_of(pair, method, lam, two), seed=5))
        return done[method, two, lam]
    return expected


@pytest.mark.parametrize("variant", ["host", "device", "device, torch, whole tensors"])
@pytest.mark.parametrize("method,two", CASES, ids=[m + " ×2" * t for m, t in CASES])
def test_parents_on_device_or_host_merge_as_mergekits_executor(pair, executor, method, two,
                                                               variant, monkeypatch):
    if "torch" in variant:  # CPU's fused kernels off, the work buffers as large as a GPU's
        monkeypatch.setattr(kernels, "usable", lambda: False)
        monkeypatch.setattr(direct, "work_chunk", lambda device, largest: 1 << 26)
    parents_on = variant.split(",")[0]
    model = AutoModelForCausalLM.from_pretrained(pair[0], dtype=torch.bfloat16)
    merger = Merger("cpu", seed=5, parents_on=parents_on)
    for lam in LAMBDAS:  # the second λ reuses the parents and the λ-free values
        torch.manual_seed(lam * 100)  # whatever ran before: the masks do not depend on it
        assert merger.merge_into(model, mk_of(pair, method, lam, two)).engine == "direct"
        state = dict(model.named_parameters())
        for name, tensor in executor(method, two, lam).items():
            assert torch.equal(state[name], tensor), (lam, name)
    held = {type(p) for p in merger.direct.parents.values()}
    assert held == {ResidentWeights if parents_on == "device" else MappedWeights}
    if "torch" in variant:
        assert merger.direct.buffers[0].numel() == 1 << 26


def test_resident_parents_are_read_once_and_anew_when_rewritten(pair, tmp_path):
    import shutil

    pt, it = (shutil.copytree(f, tmp_path / f.name) for f in pair[:2])
    model = AutoModelForCausalLM.from_pretrained(pt, dtype=torch.bfloat16)
    merger = Merger("cpu", parents_on="device")
    mk = mk_of((pt, it, None), "linear", 1.0)
    merger.merge_into(model, mk)
    first = dict(merger.direct.parents)
    merger.merge_into(model, mk)
    assert merger.direct.parents == first  # the same objects: nothing read again
    shutil.copy(pt / "model.safetensors", it / "model.safetensors")  # IT rewritten: now PT
    merger.merge_into(model, mk)
    assert len(merger.direct.parents) == 2  # the old IT dropped, the new one read
    expected = dict(AutoModelForCausalLM.from_pretrained(pt, dtype=torch.bfloat16)
                    .named_parameters())
    assert all(torch.equal(p, expected[n]) for n, p in model.named_parameters())


def test_auto_keeps_the_cpus_parents_mapped_and_the_settings_reach_the_merger(make_cfg, pair):
    from app.config import job_settings
    from app.merge.merger import merger_for

    job = job_settings(make_cfg("merge.parents_on=device", "merge.resident_share=0.25"))
    merger = merger_for(job.models, job.merge, job.seed, "cpu")
    assert (merger.direct.parents_on, merger.direct.resident_share) == ("device", 0.25)
    auto = Merger("cpu")
    model = AutoModelForCausalLM.from_pretrained(pair[0], dtype=torch.bfloat16)
    auto.merge_into(model, mk_of(pair, "linear", 0.5))
    assert {type(p) for p in auto.direct.parents.values()} == {MappedWeights}


def test_a_pools_experts_held_in_memory_merge_as_mapped_ones(make_cfg):
    from app.config import TOY_DIR, mergekit_config
    from app.merge.layout import parameters

    mk = mergekit_config(make_cfg("model=toy_pool", "method=consensus_ta", "lambda=0.5",
                                  "method.params.min_agree=1"))
    merged = {}
    for parents_on in ("host", "device"):
        model = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32)
        merger = Merger("cpu", seed=0, parents_on=parents_on)
        assert merger.merge_into(model, mk).engine == "pool"
        merged[parents_on] = {n: t.detach().clone() for n, t in parameters(model).items()}
    assert all(torch.equal(merged["host"][n], t) for n, t in merged["device"].items())


@pytest.mark.parametrize("n", [CHUNK + 13, 999])
def test_kept_bits_held_as_a_tensor_drop_the_same_elements(n):
    """On CUDA the packed kept-bits stay on the device as a uint8 tensor: unpacked there, they
    mask exactly what the packed numpy bits mask."""
    g = torch.Generator().manual_seed(n)
    pt, it, ft = (torch.randn(n, generator=g).to(torch.bfloat16) for _ in range(3))
    keeps = [np.packbits(torch.rand(n, generator=g).numpy() < p, bitorder="little")
             for p in (0.5, 0.8)]
    factor = torch.tensor(1.25)
    small, large = new_buffers(), new_buffers(size=1 << 21)
    outs = []
    for keep, buffers in ((keeps[0], small), (torch.from_numpy(keeps[0]), large)):
        out = torch.empty_like(pt)
        torch_task_vector(pt, it, keep, 0.7, out, buffers, factor)
        outs.append(out)
    for keep, buffers in ((keeps, small), ([torch.from_numpy(k) for k in keeps], large)):
        out = torch.empty_like(pt)
        torch_task_vectors(pt, [it, ft], keep, [factor, None], [0.7, 0.4], True, out, buffers)
        outs.append(out)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])


def test_a_bad_placement_is_refused_by_the_merger():
    with pytest.raises(ValueError, match="parents_on='gpu'"):
        Merger("cpu", parents_on="gpu")
