"""Every published-pair preset under conf/model/ composes and names a PT/IT pair of hub ids."""

import re

import pytest

from app.config import conf_dir

# The pairs the project's papers study; deleting one of these presets is a failure.
REQUIRED = {
    # Gemma-3 pt/it
    "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b",
    # Qwen2.5 base/instruct
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b",
    # SFT -> DPO pairs (pt is the SFT model, it the DPO model)
    "tulu-2-7b", "tulu-2-13b", "tulu-2-70b", "zephyr-7b",
    # MergeBench base/instruct families
    "llama-3.2-3b", "llama-3.1-8b", "gemma-2-2b", "gemma-2-9b",
}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
PRESETS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml") if p.stem != "toy")


def test_every_studied_pair_has_a_preset():
    missing = REQUIRED - set(PRESETS)
    assert not missing, f"missing model presets: {sorted(missing)}"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_to_a_hub_pair(make_cfg, preset):
    model = make_cfg(f"model={preset}").model
    assert model.name == preset
    for key in ("pt", "it"):
        assert HUB_ID.fullmatch(model[key]), f"model.{key}={model[key]!r} is not org/name"
    assert model.pt != model.it
    assert model.dtype == "bfloat16"
    assert model.tokenizer in ("pt", "it", "union")
