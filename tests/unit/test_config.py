"""Every shipped YAML composes against its schema; typos and bad values are errors."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ValidationError

from app.config import ConfigError, clean_lambda, group_options, mergekit_config, validate

GROUPS = ["model", "method", "task", "judge", "tracking"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_shipped_option_composes(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}")
    assert {"task": lambda: cfg.task.tasks, "tracking": lambda: cfg.tracking.dir}.get(
        group, lambda: cfg[group].name)()
    if group == "method":
        mk = mergekit_config(cfg)
        assert mk["merge_method"] and mk["out_dtype"] == cfg.model.dtype


def test_defaults_are_the_toy_pair(make_cfg):
    cfg = make_cfg()
    assert cfg.model.name == "toy" and cfg["lambda"] == 0.5
    assert [t.name for t in cfg.task.tasks] == ["toy_mc", "toy_gen"]
    validate(cfg)


def test_misspelled_key_fails(make_cfg):
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg("method.lambda_rnge=[0,2]")
    assert isinstance(e.value.__cause__, ConfigAttributeError)


def test_non_numeric_lambda_fails(make_cfg):
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg("lambda=abc")
    assert isinstance(e.value.__cause__, ValidationError)


def test_lambda_is_rounded_for_names_and_params():
    assert clean_lambda(0.7000000000000001) == 0.7
    assert clean_lambda(-0.0) == 0.0 and str(clean_lambda(-0.0)) == "0.0"
    with pytest.raises(ConfigError):
        clean_lambda(float("nan"))


def test_lambda_outside_method_range(make_cfg):
    with pytest.raises(ConfigError, match=r"lambda=1.5 is outside method=slerp's range \[0, 1\]"):
        validate(make_cfg("method=slerp", "lambda=1.5"))


def test_missing_model_path(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="model.pt=.*no model there"):
        validate(make_cfg(f"model.pt={tmp_path}/nope"))


@pytest.mark.parametrize("lam,pt_w,it_w", [(0.0, 1.0, 0.0), (0.3, 0.7, 0.3), (1.0, 0.0, 1.0)])
def test_linear_weights_follow_lambda(make_cfg, lam, pt_w, it_w):
    mk = mergekit_config(make_cfg("method=linear", f"lambda={lam}"))
    weights = {m["model"]: m["parameters"]["weight"] for m in mk["models"]}
    cfg = make_cfg()
    assert weights == {cfg.model.pt: pytest.approx(pt_w), cfg.model.it: pytest.approx(it_w)}


def test_architecture_mismatch_fails_before_any_work(make_cfg, tmp_path):
    import json

    from app.config import TOY_DIR

    other = tmp_path / "wide"
    other.mkdir()
    config = json.loads((TOY_DIR / "it" / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    with pytest.raises(ConfigError, match=r"model.it does not match model.pt's architecture: "
                                          r"hidden_size is 128 there, 96 in model.pt"):
        validate(make_cfg(f"model.it={other}"))


def test_extra_models_need_a_task_vector_method(make_cfg):
    from app.config import TOY_DIR

    cfg = make_cfg("method=slerp", f"+model.extra=[{{path:{TOY_DIR}/pool/job,weight:0.5}}]")
    with pytest.raises(ConfigError, match="model.extra needs a task-vector method"):
        validate(cfg)


@pytest.mark.parametrize("override,match", [
    ("method.params.density=0", r"density=0 must be in \(0, 1\]"),
    ("method.params.density=1.5", r"density=1.5 must be in \(0, 1\]"),
])
def test_density_range(make_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        validate(make_cfg("method=dare_ties", override))


@pytest.mark.parametrize("overrides,match", [
    (["method=della", "method.params.epsilon=0.5"],  # density 0.5: 0.5 − 0.5 is not > 0
     r"^method.params.epsilon=0.5 must leave density ± epsilon strictly inside \(0, 1\) "
     r"\(density=0.5: epsilon < 0.5\)$"),
    (["method=della", "method.params.density=0.9", "method.params.epsilon=0.1"],
     r"epsilon=0.1 must leave density ± epsilon strictly inside \(0, 1\)"),
    (["method=della", "method.params.epsilon=-0.1"], r"epsilon=-0.1 must be in \[0, 1\)"),
    (["method=breadcrumbs", "method.params.gamma=1"], r"^method.params.gamma=1 must be in \[0, 1\)$"),
    (["method=breadcrumbs", "method.params.density=0"], r"density=0 must be in \(0, 1\]"),
])
def test_sparsification_knobs_fail_in_one_line_before_any_tensor(make_cfg, overrides, match):
    """mergekit itself would raise mid-merge (DELLA) or silently clip (breadcrumbs)."""
    with pytest.raises(ConfigError, match=match):
        validate(make_cfg(*overrides))


def test_della_at_density_one_takes_any_epsilon(make_cfg):
    validate(make_cfg("method=della", "method.params.density=1", "method.params.epsilon=0.3"))


def test_masks_drawn_on_cuda_make_another_fingerprint(make_cfg):
    """DARE's and DELLA's masks from CUDA's generator differ from CPU's for the same seed: a
    sweep merged on a GPU is not taken for one merged on CPU. Other methods, and every CPU
    fingerprint, are unchanged."""
    from app.config import job_settings
    from app.provenance import job_fingerprint

    def fingerprint(*overrides):
        cfg = make_cfg(*overrides)
        return job_fingerprint(job_settings(cfg))

    for method in ("dare_ties", "della"):
        assert fingerprint(f"method={method}", "device=cuda") != fingerprint(f"method={method}")
        assert fingerprint(f"method={method}", "device=cuda:1") == \
            fingerprint(f"method={method}", "device=cuda")
        import torch

        auto_on = "device=cuda" if torch.cuda.is_available() else "device=cpu"
        assert fingerprint(f"method={method}", "device=auto") == \
            fingerprint(f"method={method}", auto_on)
    assert fingerprint("method=ties", "device=cuda") == fingerprint("method=ties")
