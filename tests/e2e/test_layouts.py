"""Published checkpoint layouts: each architecture family's stand-in (scripts/build_layouts.py:
the hub's tensor names, shards and index, tied or untied heads, bf16) maps to the loaded model
both ways, merges with every method as mergekit does, runs the whole pipeline, and saves what
``mergekit-yaml`` writes; hub ids resolve from the local cache or stop in one line."""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from app.config import compose, mergekit_config
from app.merge.layout import checkpoint_names, layout_of, parameters
from app.merge.mergekit_adapter import merged_tensors
from app.merge.merger import Merger
from tests.helpers import child_runs, one_line, run_app

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("build_layouts",
                                              ROOT / "scripts" / "build_layouts.py")
BUILD = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(BUILD)
FAMILIES = sorted(BUILD.FAMILIES)
POOL = {"fisher", "regmean", "localize_stitch", "localize_stitch_dataless", "consensus_ta"}
METHOD_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")
                        if p.stem not in POOL)  # mergekit's methods (pools: test_pool.py)
DIRECT = {"linear", "slerp", "nuslerp", "task_arithmetic", "ties", "expo", "dare_ties",
          "dare_linear", "della", "breadcrumbs"}  # the shipped configs with a direct path
FEW = "task.limit=20"


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    return {family: BUILD.build(family, out) for family in FAMILIES}


def checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, by its name on disk (all shards)."""
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def job_config(pt, it, *overrides):
    return compose(f"model.pt={pt}", f"model.it={it}", "model.dtype=bfloat16", *overrides)


def test_every_family_of_the_presets_has_a_stand_in():
    assert {"gemma3", "gemma3_text", "gemma2", "qwen2", "qwen2_tied", "llama",
            "mistral"} <= set(BUILD.FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_names_map_to_parameters_both_ways(standins, family):
    """transformers is the oracle: what it loads under each parameter is the checkpoint tensor
    the layout names, every checkpoint tensor lands on a parameter, every parameter has one."""
    pt, _ = standins[family]
    on_disk = checkpoint(pt)
    assert json.loads((pt / "model.safetensors.index.json").read_text())["weight_map"].keys() \
        == on_disk.keys()
    model = AutoModelForCausalLM.from_pretrained(pt, dtype=torch.bfloat16)
    layout, loaded = layout_of(model), model.state_dict()
    assert checkpoint_names(model) == set(on_disk)
    for name, tensor in on_disk.items():
        assert layout.to_checkpoint(layout.to_model(name)) == name
        assert torch.equal(loaded[layout.to_model(name)], tensor), name
    if family == "gemma3":  # the multimodal wrapper: names differ once loaded
        assert sum(layout.is_tower(n) for n in on_disk) == 23
        assert not any(n.startswith(("language_model.", "vision_tower.")) for n in loaded)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_merges_as_mergekits_executor_does(standins, family):
    """Every shipped method config at λ=0.3, in one working model: each tensor equals what
    mergekit's executor computes from the checkpoint; the direct paths take these layouts."""
    pt, it = standins[family]
    model = AutoModelForCausalLM.from_pretrained(it, dtype=torch.bfloat16)
    merger = Merger(seed=0)
    for method in METHOD_CONFIGS:
        mk = mergekit_config(job_config(pt, it, f"method={method}", "lambda=0.3"))
        report = merger.merge_into(model, mk)
        assert report.engine == ("direct" if method in DIRECT else "mergekit"), method
        ours = parameters(model)
        theirs = dict(merged_tensors(mk, "cpu", seed=0))
        assert set(theirs) == checkpoint_names(model), method
        for name, tensor in theirs.items():
            assert torch.equal(ours[name], tensor), f"{family} {method}: {name}"


CASES = [(f, "linear") for f in FAMILIES] + [("gemma3", "slerp"), ("gemma3", "dare_ties")]


@pytest.mark.parametrize("family,method", CASES)
def test_the_pipeline_runs_and_saves_what_mergekit_yaml_writes(standins, family, method,
                                                               tmp_path):
    pt, it = standins[family]
    saved = tmp_path / "saved"
    run_app(tmp_path, f"model.pt={pt}", f"model.it={it}", "model.dtype=bfloat16",
            f"method={method}", "lambda=0.3", FEW, f"merge.save_dir={saved}")
    [job] = child_runs(tmp_path)
    for key in ("toy_mc/acc", "toy_mc/ece", "toy_gen/acc"):
        assert math.isfinite(job.data.metrics[key]), key
    assert job.data.tags["merge_engine"] == ("direct" if method in DIRECT else "mergekit")
    cli = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(cli), str(saved / "mergekit_config.yml"), str(tmp_path / "mk"),
                    "--random-seed", "0"], check=True, capture_output=True)
    ours, theirs = checkpoint(saved), checkpoint(tmp_path / "mk")
    assert ours.keys() == theirs.keys() == checkpoint(pt).keys()  # the published names
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype == torch.bfloat16, name
        assert torch.equal(ours[name], tensor), f"{family} {method}: {name}"


def test_vision_it_keeps_its_towers_and_merges_the_language_model(standins):
    pt, it = standins["gemma3"]
    model = AutoModelForCausalLM.from_pretrained(it, dtype=torch.bfloat16)
    mk = mergekit_config(job_config(pt, it, "method=linear", "lambda=0.3", "model.vision=it"))
    Merger(towers_from=str(it)).merge_into(model, mk)
    merged, towers = parameters(model), checkpoint(it)
    linear = dict(merged_tensors(mk))
    layout = layout_of(model)
    assert any(layout.is_tower(n) for n in merged)
    for name, tensor in merged.items():
        if name in linear:
            expected = towers[name] if layout.is_tower(name) else linear[name]
            assert torch.equal(tensor, expected), name
            assert layout.is_tower(name) or not torch.equal(tensor, towers[name]), name


def test_vision_it_on_a_text_only_pair_is_refused_in_one_line(standins, tmp_path):
    pt, it = standins["llama"]
    proc = run_app(tmp_path, f"model.pt={pt}", f"model.it={it}", "model.vision=it", check=False)
    assert one_line(proc) == ("error: model.vision=it applies to multimodal checkpoints only; "
                              "model.pt is LlamaForCausalLM")


def hub_cache(tmp_path: Path, repos: dict[str, Path]) -> Path:
    """A Hugging Face cache (its real layout: refs/main → snapshots/<revision>) holding
    ``repos`` (hub id → local folder)."""
    cache = tmp_path / "hub"
    for repo, folder in repos.items():
        base = cache / f"models--{repo.replace('/', '--')}"
        shutil.copytree(folder, base / "snapshots" / "0123abcd")
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text("0123abcd")
    return cache


def test_a_preset_in_the_local_cache_runs_offline_on_the_direct_path(standins, tmp_path):
    pt, it = standins["qwen2_tied"]
    cache = hub_cache(tmp_path, {"Qwen/Qwen2.5-0.5B": pt, "Qwen/Qwen2.5-0.5B-Instruct": it})
    run_app(tmp_path, "model=qwen2.5-0.5b", f"model.cache_dir={cache}", FEW, "lambda=0.3")
    [job] = child_runs(tmp_path)
    assert job.data.tags["merge_engine"] == "direct"
    assert job.data.params["model.pt"] == "Qwen/Qwen2.5-0.5B"  # the id is what is logged
    assert math.isfinite(job.data.metrics["toy_mc/ece"])


def test_an_uncached_preset_offline_stops_in_one_line_with_the_download_command(tmp_path):
    proc = run_app(tmp_path, "model=gemma-3-12b", check=False,
                   env={"HF_HOME": str(tmp_path / "empty-cache")})
    line = one_line(proc)
    assert line.startswith("error: model.pt='google/gemma-3-12b-pt' is not in the local "
                           "Hugging Face cache and HF_HUB_OFFLINE is set")
    assert "`hf download google/gemma-3-12b-pt --local-dir DIR`" in line
    assert "model.pt=DIR" in line
    assert line.endswith("; the same for model.it='google/gemma-3-12b-it'")  # both at once
    assert not (tmp_path / "mlruns").exists()  # no run, no store


def test_a_checkpoints_max_new_tokens_does_not_override_the_tasks_cap(standins):
    """Qwen2.5's generation_config.json sets max_new_tokens=2048; lm-eval caps a generation
    at the task's max_gen_toks, which must still hold."""
    from lm_eval.api.instance import Instance
    from transformers import AutoTokenizer

    from app.evaluate.engine import HFEngine

    pt, _ = standins["qwen2"]
    assert json.loads((pt / "generation_config.json").read_text())["max_new_tokens"] == 2048
    model = AutoModelForCausalLM.from_pretrained(pt, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(pt)
    engine = HFEngine(model, tokenizer, batch_size=2)
    request = Instance("generate_until", doc={}, idx=0, arguments=(
        "The baker", {"until": ["never-said"], "max_gen_toks": 5, "do_sample": False}))
    [text] = engine.generate_until([request])
    assert len(tokenizer(text, add_special_tokens=False).input_ids) < 20
    assert model.generation_config.max_new_tokens == 2048  # the checkpoint's own, kept
