"""Every published-pair preset under conf/model/ composes and names a PT/IT pair of hub ids."""

import re
from pathlib import Path

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
PRESETS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml")
                 if not p.stem.startswith("toy"))


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


def test_the_toy_family_shares_the_embedded_pairs_world_at_other_sizes(make_cfg):
    import json

    from safetensors import safe_open

    from app.config import TOY_DIR

    sizes = {}
    for preset in ("toy_s", "toy"):
        model = make_cfg(f"model={preset}").model
        for key in ("pt", "it"):  # the same tokenizer, byte for byte
            assert (Path(model[key]) / "tokenizer.json").read_bytes() == \
                (TOY_DIR / "pt" / "tokenizer.json").read_bytes()
        with safe_open(Path(model.pt) / "model.safetensors", "pt") as f:
            sizes[preset] = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert sizes["toy_s"] < sizes["toy"] / 4
    build = json.loads((TOY_DIR / "sizes" / "s" / "BUILD.json").read_text())
    assert build["parameters"] == sizes["toy_s"]
    pt, it = build["check_0shot_test"]["pt"], build["check_0shot_test"]["it"]
    assert it["ece"] >= 2 * pt["ece"] and it["mean_conf"] > pt["mean_conf"]  # the phenomenon


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_a_toy_family_size_not_built_says_how_to_build_it(make_cfg):
    from app.errors import ConfigError
    from app.models import validate
    from app.modelset import ModelSet

    with pytest.raises(ConfigError) as e:
        validate(ModelSet.from_config(make_cfg("model=toy_s", "model.pt=${toy:sizes/xl/pt}").model))
    assert str(e.value) == ("model.pt: the toy family's size 'xl' is not built here; build it "
                            "once with `python scripts/build_toy.py --size xl`")
