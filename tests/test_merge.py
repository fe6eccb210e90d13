"""In-memory merges: λ endpoints reproduce the parents exactly; λ=0.3 matches mergekit-yaml."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from app.merge import merge_into, mergekit_config

METHODS = ["linear", "slerp"]


def weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def working_model():
    from app.config import TOY_DIR

    model = AutoModelForCausalLM.from_pretrained(TOY_DIR / "pt", dtype=torch.float32)
    return model


def scramble(model):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))  # anything the merge does not overwrite stays visibly wrong


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lam,parent", [(0.0, "pt"), (1.0, "it")])
def test_endpoints_reproduce_parents_exactly(make_cfg, working_model, method, lam, parent):
    cfg = make_cfg(f"method={method}", f"lambda={lam}")
    scramble(working_model)
    report = merge_into(working_model, mergekit_config(cfg))
    ref = weights(cfg.model[parent])
    state = working_model.state_dict()
    assert report.tensors == len(ref)
    for name, tensor in ref.items():
        assert torch.equal(state[name], tensor), f"{method} λ={lam}: {name} differs from {parent}"


def test_linear_midpoint_is_the_weighted_average(make_cfg, working_model):
    cfg = make_cfg("method=linear", "lambda=0.3")
    merge_into(working_model, mergekit_config(cfg))
    pt, it = weights(cfg.model.pt), weights(cfg.model.it)
    state = working_model.state_dict()
    for name in pt:
        torch.testing.assert_close(state[name], 0.7 * pt[name] + 0.3 * it[name],
                                   rtol=0, atol=2e-7)
    assert not torch.equal(state[name], pt[name])


@pytest.mark.parametrize("method", METHODS)
def test_in_memory_equals_mergekit_yaml(make_cfg, working_model, method, tmp_path):
    cfg = make_cfg(f"method={method}", "lambda=0.3")
    mk = mergekit_config(cfg)
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(mk))
    cli = Path(sys.executable).parent / "mergekit-yaml"
    subprocess.run([str(cli), str(tmp_path / "merge.yaml"), str(tmp_path / "out"),
                    "--random-seed", "0"], check=True, capture_output=True)
    merge_into(working_model, mk, seed=0)
    state = working_model.state_dict()
    on_disk = weights(tmp_path / "out")
    assert set(on_disk) == set(state)
    for name, tensor in on_disk.items():
        assert torch.equal(state[name], tensor), f"{method}: {name} differs from mergekit-yaml"
