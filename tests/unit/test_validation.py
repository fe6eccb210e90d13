"""Every setting is checked before any model is loaded or any run made: one line naming the
key and what is valid (the README's fault table has what the user sees)."""

import shutil

import pytest
from helpers import free_port

from app.config import TOY_DIR, validate
from app.errors import ConfigError
from app.merge.methods import SAVE_MARKER
from app.tracking import TrackingConfig, open_tracker


def fails(make_cfg, *overrides) -> str:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(*overrides))
    return str(info.value)


def test_a_save_never_takes_a_folder_with_the_users_files(make_cfg, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.txt").write_text("hi")
    line = fails(make_cfg, f"merge.save_dir={keep}")
    assert line.startswith(f"merge.save_dir='{keep}': holds files this project did not write")
    assert "is a file" in fails(make_cfg, f"merge.save_dir={keep / 'thesis.txt'}")
    assert "cannot be written" in fails(make_cfg, f"merge.save_dir={keep / 'thesis.txt' / 'x'}")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / SAVE_MARKER).write_text("{}")  # a previous save may be replaced
    validate(make_cfg(f"merge.save_dir={tmp_path / 'old'}"))
    validate(make_cfg(f"merge.save_dir={tmp_path / 'new' / 'model'}"))


@pytest.mark.parametrize("override,expect", [
    ("seed=-1", "seed=-1 must be ≥ 0"),
    ("device=tpu", "device='tpu' is not valid; use cpu, cuda, cuda:N or auto"),
    ("device=cuda", "device='cuda': this machine has no CUDA device"),
    ("task.limit=0", "task.limit=0 must be a positive integer"),
    ("task.batch_size=0", "task.batch_size=0 must be a positive integer"),
    ("task.bootstrap=-1", "task.bootstrap=-1 must be ≥ 0"),
    ("task.selection.share=1", "task.selection.share=1 must be a share in [0, 1)"),
    ("task.selection.source=validation", "task.selection.source='validation' is not valid"),
])
def test_values_no_component_can_use(make_cfg, override, expect):
    assert fails(make_cfg, override).startswith(expect)


def test_judge_and_reward_models_the_user_typed_must_exist(make_cfg, tmp_path):
    assert "judge.model='/no/such/judge': no model there" in fails(
        make_cfg, "judge=hf", "judge.model=/no/such/judge")
    assert "judge.reward_model=" in fails(make_cfg, "judge=heuristic",
                                          f"judge.reward_model={tmp_path}")


def test_a_parent_without_tokenizer_or_with_garbage_weights(make_cfg, tmp_path):
    it = shutil.copytree(TOY_DIR / "it", tmp_path / "it")
    (it / "tokenizer.json").unlink()
    assert fails(make_cfg, f"model.it={it}").startswith(f"model.it='{it}': no tokenizer there")
    validate(make_cfg(f"model.it={it}", "model.tokenizer=pt"))  # PT's tokenizer is used
    (it / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    assert "model.safetensors is corrupt (not a safetensors file" in fails(
        make_cfg, f"model.it={it}", "model.tokenizer=pt")


def test_an_unusable_store_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"^tracking.dir=.* cannot be used as the store's "):
        open_tracker(TrackingConfig(dir=str(tmp_path / "file" / "mlruns")), "e")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=r"^tracking.uri=.*: no MLflow server answered within"):
        open_tracker(TrackingConfig(uri=url), "e")


def test_a_launcher_with_no_workers_is_refused_before_the_sweep():
    from hydra import compose, initialize_config_dir

    from app.config import conf_dir, register
    from app.sweep import check_jobs

    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"])
        with pytest.raises(ConfigError, match=r"^hydra.launcher.n_jobs=0 must be"):
            check_jobs(cfg)


@pytest.mark.parametrize("argv,expect", [
    (["force=maybe"], "force='maybe' is not a valid bool; use true or false"),
    (["lambda=null"], "lambda=null is not valid: lambda needs a value"),
    (["model.pt=$(rm -rf x)"], "cannot parse the override 'model.pt=$(rm -rf x)' (model.pt)"),
    (["hydra/launcher=jooblib"], "hydra/launcher=jooblib is not a known option (did you mean "
                                 "'joblib'?); valid: basic, chunked_local"),
])
def test_messages_name_the_key_and_what_is_valid(make_cfg, monkeypatch, argv, expect):
    from app.cli import user_error

    monkeypatch.setattr("sys.argv", ["app", *argv])
    with pytest.raises(Exception) as info:
        make_cfg(*argv)
    assert user_error(info.value).startswith(expect)
