"""The registries: metrics (names, README table, version), merge methods, judge schemas."""

from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from app import metrics
from app.cli import user_error
from app.compat import SUPPORTED, check_versions
from app.config import compose, conf_dir, group_options, job_settings, register
from app.errors import ConfigError
from app.merge.direct import PLANS
from app.merge.methods import METHODS
from app.sweep import check_search


def job_of(*overrides: str):
    """The job the shipped config composed with ``overrides`` describes."""
    return job_settings(compose(*overrides))

README = Path(__file__).resolve().parents[2] / "README.md"


def search_cfg(*overrides):
    register()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=["search=lambda_star", *overrides],
                             return_hydra_config=True)


def test_the_docs_metric_table_is_the_registrys():
    text = (README.parent / "docs" / "reference" / "configuration.md").read_text()
    assert "\n## Metrics\n" in text and metrics.markdown_table() in text, \
        "run python scripts/config_reference.py"


def test_calibrated_tasks_return_brier_top(make_cfg):  # it was missing from the search's list
    assert "toy_mc/brier_top" in metrics.job_metric_names(job_of())


def test_extra_metrics_and_generative_intervals_are_names_jobs_return(make_cfg):
    names = metrics.job_metric_names(job_of("task=gpqa"))
    assert {"leaderboard_gpqa_main/acc_norm", "leaderboard_gpqa_diamond/acc_ci_low"} <= set(names)
    toy = metrics.job_metric_names(job_of())
    assert {"toy_gen/acc_ci_low", "toy_gen/acc_ci_high"} <= set(toy)
    assert "toy_gen/ece" not in toy and "toy_mc/acc_ci_low" in toy
    assert "toy_mc/acc_ci_low" not in metrics.job_metric_names(job_of("task.bootstrap=0"))


def test_a_search_may_name_judge_metrics():  # check_search used to reject them
    check_search(search_cfg("judge=heuristic", "hydra.sweeper.objective=judge/distinct_1",
                            "hydra.sweeper.constraints=['judge/degeneration_rate <= 0.2']"))
    with pytest.raises(ConfigError, match="the job returns no metric 'judge/degeneration_rate'"):
        check_search(search_cfg("hydra.sweeper.objective=judge/degeneration_rate"))  # no judge


@pytest.mark.parametrize("judge,present,absent", [
    ("heuristic", {"judge/degeneration_rate", "judge/distinct_1"}, {"judge/unparsed_rate"}),
    ("hf", {"judge/unparsed_rate", "judge/degeneration_rate"}, {"judge/mean_reward"}),
])
def test_judge_metrics_follow_the_judge(make_cfg, judge, present, absent):
    names = set(metrics.job_metric_names(job_of(f"judge={judge}", "judge.model=x/y")
                                         if judge == "hf" else job_of(f"judge={judge}")))
    assert present <= names and not absent & names


def test_an_llm_judge_with_a_reward_model_rates_only_the_lowest(make_cfg):
    names = set(metrics.job_metric_names(job_of("judge=hf", "judge.model=x/y",
                                                  "judge.reward_model=r/m")))
    assert "judge/lowest_k/degeneration_rate" in names and "judge/degeneration_rate" not in names


def test_the_summary_line_shows_the_registrys_summary_metrics():
    line = metrics.summary_line("linear", 0.5, {
        "toy_mc/acc": 0.68, "toy_mc/ece": 0.172, "toy_mc/nll": 0.9, "mean/acc": 0.6,
        "judge/degeneration_rate": 0.25, "time/total_s": 3.0})
    assert line == ("linear λ=0.5  judge/degeneration_rate=0.2500  toy_mc/acc=0.6800  "
                    "toy_mc/ece=0.1720  (3.0s)")


def test_the_metrics_version_follows_the_definitions(monkeypatch):
    before = metrics._definitions()
    assert metrics.METRICS_VERSION == metrics.hashlib.sha256(before.encode()).hexdigest()[:12]
    renamed = (metrics.Metric("{task}/ece2", "", "lower", "calibrated task"),
               *metrics.REGISTRY[1:])
    monkeypatch.setattr(metrics, "REGISTRY", renamed)
    assert metrics._definitions() != before


def test_every_shipped_method_is_in_the_registry_and_its_direct_path_exists(make_cfg):
    for option in group_options("method"):
        assert str(make_cfg(f"method={option}").method.mergekit.merge_method) in METHODS
    assert {m.direct for m in METHODS.values() if m.direct} == set(PLANS)


def test_a_key_for_another_judge_is_an_error_naming_it(make_cfg):
    with pytest.raises(Exception) as info:
        make_cfg("judge=heuristic", "judge.base_url=http://127.0.0.1:8000/v1")
    line = user_error(info.value)
    assert line.startswith("judge.base_url is not a config key") and "thresholds" in line
    make_cfg("judge=openai", "judge.base_url=http://127.0.0.1:8000/v1")  # there it is one


def test_other_library_versions_are_named_before_anything_runs():
    check_versions(dict(SUPPORTED))
    with pytest.raises(ConfigError, match=r"installed lm-eval 0\.4\.14; .*lm-eval==0\.4\.13 "
                                          r"mergekit==0\.1\.5"):
        check_versions({**SUPPORTED, "lm-eval": "0.4.14"})
