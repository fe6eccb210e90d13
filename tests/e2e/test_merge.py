"""In-memory merges: λ endpoints give the parents for every method; λ=0.3 equals mergekit-yaml."""

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from app.config import TOY_DIR, group_options
from app.config import job_settings, mergekit_config
from app.merge.merger import merge_into
from app.merge.methods import SAVE_MARKER
from helpers import one_line

# λ=0 gives PT and λ=1 gives IT bit for bit (linear, slerp), or up to float32 rounding:
# nuslerp computes sin(θ)·v/sin(θ); task-vector methods give PT exactly at λ=0 and compute
# PT + (IT − PT) at λ=1 (sparsifying methods at full density).
BIT_EXACT = {"linear": [], "slerp": [], "linear_modules": [], "linear_gradient": []}
ROUNDED_AT_ZERO = {"nuslerp": []}
FULL_DENSITY = {
    "task_arithmetic": [], "expo": [],
    "ties": ["method.params.density=1"], "dare_ties": ["method.params.density=1"],
    "dare_linear": ["method.params.density=1"],
    "della": ["method.params.density=1", "method.params.epsilon=0"],
    "breadcrumbs": ["method.params.density=1", "method.params.gamma=0"],
}
ALL = {**BIT_EXACT, **ROUNDED_AT_ZERO, **FULL_DENSITY}


def assert_close_to(state, parent, method, lam, exact):
    """Bit-equal, or within two float32 roundings of the parents' magnitudes."""
    for name, ref in parent.items():
        if exact:
            assert torch.equal(state[name], ref), f"{method} λ={lam}: {name} differs"
        else:
            bound = 2 * torch.finfo(torch.float32).eps * (PT[name].abs() + IT[name].abs())
            assert torch.all((state[name] - ref).abs() <= bound), f"{method} λ={lam}: {name}"


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


PT, IT = weights(TOY_DIR / "pt"), weights(TOY_DIR / "it")


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32)


def merge(make_cfg, model, *overrides, seed=0):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # anything the merge does not overwrite stays visibly wrong
    cfg = make_cfg(*overrides)
    report = merge_into(model, mergekit_config(cfg), seed=seed)
    assert report.tensors == len(PT)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_every_shipped_method_is_covered():  # the expert-pool methods: tests/e2e/test_pool.py
    pool = {"fisher", "regmean", "localize_stitch", "localize_stitch_dataless", "consensus_ta"}
    assert set(group_options("method")) - pool == set(ALL)


@pytest.mark.parametrize("method", sorted(ALL))
def test_lambda_zero_is_pt(make_cfg, model, method):
    state = merge(make_cfg, model, f"method={method}", "lambda=0", *ALL[method])
    assert_close_to(state, PT, method, 0, exact=method not in ROUNDED_AT_ZERO)


@pytest.mark.parametrize("method", sorted(ALL))
def test_lambda_one_is_it(make_cfg, model, method):
    state = merge(make_cfg, model, f"method={method}", "lambda=1", *ALL[method])
    assert_close_to(state, IT, method, 1, exact=method in BIT_EXACT)


def test_expo_extrapolates_past_it(make_cfg, model):
    state = merge(make_cfg, model, "method=expo", "lambda=1.5")
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(state[name], PT[name] + 1.5 * (IT[name] - PT[name]))


def test_dare_at_density_half_keeps_half_the_task_vector_rescaled(make_cfg, model):
    # The documented λ=1 equivalent at density d: PT + a random d-share of the task vector,
    # rescaled (mergekit preserves its L1 norm).
    state = merge(make_cfg, model, "method=dare_linear", "lambda=1", "method.params.density=0.5")
    name = "model.layers.1.mlp.down_proj.weight"
    delta, merged_delta = IT[name] - PT[name], state[name] - PT[name]
    kept = merged_delta != 0
    assert 0.45 < kept.float().mean().item() < 0.55
    scale = merged_delta[kept] / delta[kept]
    torch.testing.assert_close(scale, torch.full_like(scale, scale.mean().item()), rtol=1e-3, atol=0)
    assert merged_delta.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-4)


def test_dare_masks_follow_the_seed(make_cfg, model):
    args = ("method=dare_ties", "lambda=0.5")
    a, b = merge(make_cfg, model, *args, seed=1), merge(make_cfg, model, *args, seed=1)
    c = merge(make_cfg, model, *args, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_per_module_lambdas(make_cfg, model):
    state = merge(make_cfg, model, "method=linear_modules", "lambda=0",
                  "method.params.lambda_attn=1", "method.params.lambda_mlp=0")
    for name in PT:
        expected = IT[name] if "self_attn" in name else PT[name]
        assert torch.equal(state[name], expected), name


def test_per_layer_gradient(make_cfg, model):
    """IT's weight runs from lambda_first at the first layer to lambda_last at the last (the toy
    has two layers); outside the layers it is the gradient's start."""
    state = merge(make_cfg, model, "method=linear_gradient", "lambda=0.5",
                  "method.params.lambda_first=0.25", "method.params.lambda_last=1")
    last = max(int(n.split(".")[2]) for n in PT if n.startswith("model.layers."))
    for name in PT:
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else 0
        if layer == last:
            assert torch.equal(state[name], IT[name]), name
        else:
            torch.testing.assert_close(state[name], 0.75 * PT[name] + 0.25 * IT[name],
                                       rtol=0, atol=2e-7)


def test_linear_midpoint_is_the_weighted_average(make_cfg, model):
    state = merge(make_cfg, model, "method=linear", "lambda=0.3")
    for name in PT:
        torch.testing.assert_close(state[name], 0.7 * PT[name] + 0.3 * IT[name], rtol=0, atol=2e-7)


@pytest.mark.parametrize("method", ["linear", "slerp", "nuslerp", "task_arithmetic", "ties",
                                    "dare_ties", "dare_linear", "della", "breadcrumbs"])
def test_in_memory_equals_mergekit_yaml(make_cfg, model, method, tmp_path):
    mk = mergekit_config(make_cfg(f"method={method}", "lambda=0.3"))
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(mk))
    cli = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(cli), str(tmp_path / "merge.yaml"), str(tmp_path / "out"),
                    "--random-seed", "0"], check=True, capture_output=True)
    state = merge(make_cfg, model, f"method={method}", "lambda=0.3", seed=0)
    on_disk = weights(tmp_path / "out")
    assert set(on_disk) == set(state)
    for name, tensor in on_disk.items():
        assert torch.equal(state[name], tensor), f"{method}: {name} differs from mergekit-yaml"


@pytest.fixture(scope="module")
def it_with_extra_tokens(tmp_path_factory):
    """The toy IT model with two added special tokens (a padded, larger vocabulary)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("it_plus")
    tok = AutoTokenizer.from_pretrained(TOY_DIR / "it")
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>", "<|end_tool|>"]})
    it = AutoModelForCausalLM.from_pretrained(TOY_DIR / "it", dtype=torch.float32)
    it.resize_token_embeddings(len(tok))
    it.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("policy,lam,parent", [("pt", 1, "it"), ("it", 0, "pt")])
def test_tokenizer_policy_aligns_vocabularies(make_cfg, it_with_extra_tokens, policy, lam, parent):
    from app.pipeline import this_process

    cfg = make_cfg(f"model.it={it_with_extra_tokens}", f"model.tokenizer={policy}",
                   f"lambda={lam}", "task.limit=4")
    mk = mergekit_config(cfg)
    assert mk["tokenizer"]["source"] == cfg.model[policy]
    model = this_process().session_for(job_settings(cfg)).model
    merge_into(model, mk)
    state = model.state_dict()
    vocab = 640 if policy == "pt" else 642
    emb = state["model.embed_tokens.weight"]
    assert emb.shape[0] == vocab
    ref = PT if parent == "pt" else IT
    assert torch.equal(emb[:640], ref["model.embed_tokens.weight"][:640])


def test_union_policy_keeps_every_models_tokens(make_cfg, it_with_extra_tokens, tmp_path):
    """PT with a token IT lacks, IT with two PT lacks: the merge has all 643, each row of a
    token only one parent has is that parent's row, and the union tokenizer evaluates."""
    from transformers import AutoTokenizer

    from app.pipeline import this_process

    tok = AutoTokenizer.from_pretrained(TOY_DIR / "pt")
    tok.add_special_tokens({"additional_special_tokens": ["<|pt_only|>"]})
    pt = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32)
    pt.resize_token_embeddings(len(tok))
    pt.save_pretrained(tmp_path / "pt_plus")
    tok.save_pretrained(tmp_path / "pt_plus")
    it_tok = AutoTokenizer.from_pretrained(it_with_extra_tokens)
    pt_row = pt.get_input_embeddings().weight[640].detach().clone()
    it_rows = weights(it_with_extra_tokens)["model.embed_tokens.weight"][640:]

    cfg = make_cfg(f"model.pt={tmp_path / 'pt_plus'}", f"model.it={it_with_extra_tokens}",
                   "model.tokenizer=union", "lambda=0.5", "task.limit=4", "task.bootstrap=0",
                   f"tracking.dir={tmp_path}/mlruns")
    assert mergekit_config(cfg)["tokenizer"] == {"source": "union"}
    session = this_process().session_for(job_settings(cfg))
    union = session.tokenizer
    assert len(union.get_vocab()) == 643
    assert union.chat_template == it_tok.chat_template
    ids = {t: union.convert_tokens_to_ids(t) for t in ("<|pt_only|>", "<|tool|>", "<|end_tool|>")}
    merge_into(session.model, mergekit_config(cfg))
    emb = session.model.get_input_embeddings().weight
    assert emb.shape[0] == 643
    assert torch.equal(emb[ids["<|pt_only|>"]], pt_row)
    assert torch.equal(emb[ids["<|tool|>"]], it_rows[0])
    assert torch.equal(emb[ids["<|end_tool|>"]], it_rows[1])
    name = "model.embed_tokens.weight"
    shared = PT[name][:640] * 0.5 + IT[name][:640] * 0.5
    torch.testing.assert_close(emb[:640], shared, rtol=0, atol=2e-7)
    metrics = this_process().run_job(cfg)  # a whole job: merged, evaluated with the union tokenizer, logged
    assert metrics and all(math.isfinite(v) for v in metrics.values())


def test_extra_models_join_the_task_vector_sum(make_cfg, model, tmp_path):
    extra = shutil.copytree(TOY_DIR / "it", tmp_path / "specialist")  # a copy of IT, weight 0.5
    state = merge(make_cfg, model, "method=task_arithmetic", "lambda=0.5",
                  f"+model.extra=[{{path:{extra},weight:0.5}}]")
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(state[name], PT[name] + 1.0 * (IT[name] - PT[name]))


def test_save_dir_writes_a_complete_model_atomically(make_cfg, model, tmp_path):
    from transformers import AutoTokenizer

    from app.merge.merger import save_merged

    mk = mergekit_config(make_cfg("lambda=1"))
    merge_into(model, mk)
    tok = AutoTokenizer.from_pretrained(TOY_DIR / "it")
    out = save_merged(model, tok, mk, str(tmp_path / "merged"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temp folder left
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["merge_method"] == "linear"
    again = weights(out)
    assert all(torch.equal(again[k], IT[k]) for k in IT)
    save_merged(model, tok, mk, str(out))  # overwriting an earlier save also leaves one folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    """A bfloat16 pair (as real checkpoints are) whose embedding spans two 2**20-element chunks
    and whose IT tensors lie at three distances from PT, so slerp takes both its arc and its
    linear fallback (|cos| > 0.9995); plus a third model for three-model linear merges."""
    from transformers import AutoConfig

    out = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type="qwen2", hidden_size=128, intermediate_size=256,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               vocab_size=8300, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.view(-1)[:64] = -0.0  # signed zeros, where sums from +0 differ
    model.save_pretrained(out / "pt")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):  # every 4th tensor: IT equals PT
            noise = torch.randn_like(p, dtype=torch.float32) * [0.01, 0.5, 3.0, 0][i % 4]
            p.add_((noise * p.float().std() + 1e-3 * noise).to(p.dtype))
            p.view(-1)[:16] = -0.0
    model.save_pretrained(out / "it")
    model.save_pretrained(out / "ft")
    return out / "pt", out / "it", out / "ft"


def linear(folders, weights):
    return {"merge_method": "linear", "dtype": "float32", "out_dtype": "bfloat16",
            "parameters": {"normalize": False},
            "models": [{"model": str(f), "parameters": {"weight": w}}
                       for f, w in zip(folders, weights)]}


def slerp(folders, t, base=0):
    return {"merge_method": "slerp", "dtype": "float32", "out_dtype": "bfloat16",
            "base_model": str(folders[base]), "parameters": {"t": t},
            "models": [{"model": str(f)} for f in folders[:2]]}


def sparse(folders, lam, method, **params):
    """A task-vector merge of one fine-tune (TIES, DARE, DELLA, breadcrumbs: their knobs)."""
    return {"merge_method": method, "dtype": "float32", "out_dtype": "bfloat16",
            "base_model": str(folders[0]), "parameters": {"normalize": False},
            "models": [{"model": str(folders[1]), "parameters": {"weight": lam, **params}}]}


def task_vector(folders, lam, density=None):
    if density is None:
        return sparse(folders, lam, "task_arithmetic")
    return sparse(folders, lam, "ties", density=density)


def nuslerp(folders, lam):
    return {"merge_method": "nuslerp", "dtype": "float32", "out_dtype": "bfloat16",
            "models": [{"model": str(f), "parameters": {"weight": w}}
                       for f, w in zip(folders, (1 - lam, lam))]}


SPARSE = {  # each method at two λ and two densities (DARE and DELLA: random masks)
    "dare_ties 0.3 density 0.5": ("dare_ties", 0.3, dict(density=0.5)),
    "dare_ties 0.7 density 0.9": ("dare_ties", 0.7, dict(density=0.9)),
    "dare_linear 0.3 density 0.5": ("dare_linear", 0.3, dict(density=0.5)),
    "dare_linear 0.7 density 0.9": ("dare_linear", 0.7, dict(density=0.9)),
    "della 0.3 density 0.5": ("della", 0.3, dict(density=0.5, epsilon=0.1)),
    "della 0.7 density 0.8": ("della", 0.7, dict(density=0.8, epsilon=0.15)),
    "della_linear 0.3 density 0.5": ("della_linear", 0.3, dict(density=0.5, epsilon=0.2)),
    "breadcrumbs 0.3 density 0.9": ("breadcrumbs", 0.3, dict(density=0.9, gamma=0.01)),
    "breadcrumbs 0.7 density 0.5": ("breadcrumbs", 0.7, dict(density=0.5, gamma=0.1)),
    "breadcrumbs_ties 0.3 density 0.8": ("breadcrumbs_ties", 0.3, dict(density=0.8, gamma=0.05)),
}
DIRECT = {  # two parents at λ, one parent alone (the references), three models (extra models)
    "linear 0.7/0.3": (linear, (0.7, 0.3)), "linear 0.23/0.77": (linear, (0.23, 0.77)),
    "linear 1": (linear, (1.0,)), "linear 0.5/0.3/0.2": (linear, (0.5, 0.3, 0.2)),
    "slerp 0.3": (slerp, 0.3), "slerp 0.77 from IT": (slerp, 0.77, 1),
    "slerp 0": (slerp, 0.0), "slerp 1": (slerp, 1.0),
    "task_arithmetic 0.3": (task_vector, 0.3), "expo 2.5": (task_vector, 2.5),
    "ties 0.3": (task_vector, 0.3, 0.5), "ties 0.8 density 0.9": (task_vector, 0.8, 0.9),
    "ties 1 density 1": (task_vector, 1.0, 1.0), "ties 0": (task_vector, 0.0, 0.5),
    "nuslerp 0.3": (nuslerp, 0.3), "nuslerp 0.9": (nuslerp, 0.9),  # colinear tensors too
    **{case: (lambda f, m, lam, p: sparse(f, lam, m, **p), *args)
       for case, args in SPARSE.items()}}


@pytest.mark.parametrize("fused", [True, False], ids=["fused kernels", "torch"])
@pytest.mark.parametrize("case", DIRECT)
def test_direct_path_is_bit_identical_to_mergekits_executor(bf16_pair, case, fused, monkeypatch):
    from app.merge import kernels
    from app.merge.mergekit_adapter import merged_tensors

    if fused:
        assert kernels.usable()  # numba is installed and its kernels match torch on this CPU
    else:
        monkeypatch.setattr(kernels, "usable", lambda: False)
    build, *args = DIRECT[case]
    mk = build(bf16_pair, *args)
    model = AutoModelForCausalLM.from_pretrained(bf16_pair[0], dtype=torch.bfloat16)
    for _ in range(2):  # the second merge reuses slerp's cached cosines
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        report = merge_into(model, mk, seed=0)
        assert report.engine == "direct"  # the fast path took it
        params = dict(model.named_parameters())
        expected = dict(merged_tensors(mk, seed=0))  # DARE's and DELLA's draws after seed 0
        assert set(expected) == set(params)
        for name, tensor in expected.items():
            assert torch.equal(params[name], tensor), name


@pytest.mark.parametrize("method", ["dare_ties", "della", "breadcrumbs"])
def test_a_sweep_draws_its_masks_once_and_each_lambda_equals_the_executor(bf16_pair, method):
    """One merger across λ (a sweep's process): masks and factors come from the cache, not
    from new draws, and every λ still equals mergekit's executor seeded afresh."""
    from app.merge.mergekit_adapter import merged_tensors
    from app.merge.merger import Merger

    _, _, params = SPARSE[next(c for c in SPARSE if c.startswith(method + " "))]
    model = AutoModelForCausalLM.from_pretrained(bf16_pair[0], dtype=torch.bfloat16)
    merger = Merger(seed=7)
    for lam in (0.3, 0.7, 0.3):
        torch.manual_seed(123)  # whatever ran before: the masks do not depend on it
        mk = sparse(bf16_pair, lam, method, **params)
        assert merger.merge_into(model, mk).engine == "direct"
        state = dict(model.named_parameters())
        for name, tensor in merged_tensors(mk, seed=7):
            assert torch.equal(state[name], tensor), (lam, name)


@pytest.fixture(scope="module")
def three_tunes(bf16_pair, tmp_path_factory):
    """The bf16 pair plus a second fine-tune whose task vector disagrees in sign with IT's
    on about a third of the elements (sign election has something to elect)."""
    out = tmp_path_factory.mktemp("tune2")
    model = AutoModelForCausalLM.from_pretrained(bf16_pair[0], dtype=torch.bfloat16)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn_like(p, dtype=torch.float32) * 0.3 * p.float().std())
                   .to(p.dtype))
    model.save_pretrained(out)
    return bf16_pair[0], bf16_pair[1], out


@pytest.mark.parametrize("method,params", [
    ("task_arithmetic", {}), ("ties", dict(density=0.5)), ("dare_ties", dict(density=0.7)),
    ("dare_linear", dict(density=0.5)), ("della", dict(density=0.6, epsilon=0.1)),
    ("breadcrumbs_ties", dict(density=0.8, gamma=0.05))])
def test_several_fine_tunes_merge_directly_as_mergekits_executor(three_tunes, method, params):
    """MergeBench's setting (model.extra): one base, two fine-tunes with their own weights."""
    from app.merge.mergekit_adapter import merged_tensors
    from app.merge.merger import Merger

    base, a, b = three_tunes
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merger = Merger(seed=3)
    for lam in (0.3, 0.8):
        mk = {"merge_method": method, "dtype": "float32", "out_dtype": "bfloat16",
              "base_model": str(base), "parameters": {"normalize": False},
              "models": [{"model": str(a), "parameters": {"weight": lam, **params}},
                         {"model": str(b), "parameters": {"weight": 0.4, **params}}]}
        assert merger.merge_into(model, mk).engine == "direct"
        state = dict(model.named_parameters())
        for name, tensor in merged_tensors(mk, seed=3):
            assert torch.equal(state[name], tensor), (method, lam, name)


def test_kernels_that_differ_from_torch_are_not_used(monkeypatch):
    from app.merge import kernels

    real = kernels._linear
    assert kernels.usable.__wrapped__()

    def off_by_one(sources, weights, out):  # a kernel that rounds differently
        real(sources, weights, out)
        out[::7] += 1

    monkeypatch.setattr(kernels, "_linear", off_by_one)
    assert not kernels.usable.__wrapped__()


def test_slerp_pair_takes_both_branches(bf16_pair):
    from app.merge.direct import DirectMerger, cosine
    from app.merge.torch_ops import CHUNK

    merger = DirectMerger()
    pt, it = (merger.weights(f) for f in bf16_pair[:2])
    assert max(pt.where[n][4][0] * pt.where[n][4][-1] for n in pt.where) > CHUNK
    cosines = [cosine(merger, pt, it, n).item() for n in pt.where]
    assert any(c > 0.9995 for c in cosines) and any(c < 0.99 for c in cosines)


@pytest.mark.parametrize("mk", [
    linear(["a", "b"], (0.5, 0.5)) | {"parameters": {"normalize": True}},
    task_vector(["a", "b"], 0.5, 0.5) | {"parameters": {"normalize": False, "int8_mask": True}},
    task_vector(["a", "b"], 0.5) | {"merge_method": "della"},  # no epsilon given
    sparse(["a", "b"], 0.5, "dare_ties", density=0.5),  # random masks, and no seed to draw
    {k: v for k, v in task_vector(["a", "b"], 0.5).items() if k != "base_model"},  # no base
    {k: v for k, v in slerp(["a", "b"], 0.5).items() if k != "base_model"},
    slerp(["a", "b"], [0.2, 0.8]),  # a per-layer gradient
    slerp(["a", "b"], 0.5) | {"tokenizer": {"source": "union"}},
])
def test_anything_else_goes_to_mergekits_executor(bf16_pair, mk):
    from app.merge.direct import DirectMerger
    from app.merge.methods import METHODS

    mk = json.loads(json.dumps(mk).replace('"a"', json.dumps(str(bf16_pair[0])))
                    .replace('"b"', json.dumps(str(bf16_pair[1]))))
    model = AutoModelForCausalLM.from_pretrained(bf16_pair[0], dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = METHODS[mk["merge_method"]].direct
    assert plan is None or DirectMerger().merge(model, mk, "cpu", plan) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def app_in(cwd, tmp_path, *args, umask=0o022):
    """``python -m app`` on four documents, started in ``cwd`` with ``umask``; its store and
    outputs under ``tmp_path``."""
    cmd = [sys.executable, "-m", "app", "task.limit=4", "task.bootstrap=0", *args,
           f"tracking.dir={tmp_path}/mlruns", f"hydra.run.dir={tmp_path}/outputs"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=cwd, umask=umask, env=env, capture_output=True, text=True,
                          timeout=600)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saving_into_the_working_folder_keeps_it_and_replaces_a_save_in_place(tmp_path):
    work = tmp_path / "work"  # empty, and the user's shell is in it
    work.mkdir()
    work.chmod(0o751)
    inode = work.stat().st_ino
    for lam in (0.3, 0.6):  # an empty folder, then a previous save: both written in place
        proc = app_in(work, tmp_path, f"lambda={lam}", "merge.save_dir=.", umask=0o027)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert work.stat().st_ino == inode and mode(work) == 0o751
        mk = yaml.safe_load((work / "mergekit_config.yml").read_text())
        assert mk["models"][1]["parameters"]["weight"] == lam
        assert (work / "model.safetensors").is_file() and (work / SAVE_MARKER).is_file()
        assert {mode(p) for p in work.iterdir()} == {0o640}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "outputs", "work"]


def test_a_saved_merge_honours_the_umask(tmp_path):
    out = tmp_path / "shared" / "merged"
    for umask, folder, file in ((0o022, 0o755, 0o644), (0o002, 0o775, 0o664)):  # new, replaced
        proc = app_in(tmp_path, tmp_path, "lambda=0.3", f"merge.save_dir={out}", umask=umask)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert mode(out) == folder and {mode(p) for p in out.iterdir()} == {file}
    assert mode(out.parent) == 0o755 and [p.name for p in out.parent.iterdir()] == ["merged"]


def test_a_previous_save_around_the_working_folder_is_refused_and_untouched(tmp_path):
    saved = tmp_path / "merged"
    (saved / "notes").mkdir(parents=True)  # the user's shell is in there
    (saved / SAVE_MARKER).write_text("{}")
    inode = saved.stat().st_ino
    line = one_line(app_in(saved / "notes", tmp_path, "merge.save_dir=.."))
    assert line == ("error: merge.save_dir='..': holds the folder 'notes', which no save "
                    "writes (a previous save is replaced whole); give a new or empty folder")
    assert saved.stat().st_ino == inode
    assert sorted(p.name for p in saved.iterdir()) == [SAVE_MARKER, "notes"]


def test_a_full_disk_while_saving_in_place_leaves_the_folder_empty(tmp_path):
    disk = tmp_path / "small"  # a real 1 MiB filesystem: too small for the toy's 1.3 MB
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        inode = disk.stat().st_ino
        proc = app_in(disk, tmp_path, "lambda=0.3", "merge.save_dir=.")
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith("error: no space left writing")
        assert disk.stat().st_ino == inode and list(disk.iterdir()) == []  # no partial save
    finally:
        subprocess.run(["umount", str(disk)], check=True)
