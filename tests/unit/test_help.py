"""`python -m app --help`, `python -m app.report --help` and the generated configuration
reference: each lists what the code and conf/ define, so neither can drift."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app import metrics
from app.config import GROUPS, AppConfig, conf_dir, schema_keys
from app.help import configuration_reference, groups, top_keys
from app.judge.schema import SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reference" / "configuration.md"
COMMANDS = ["python -m app\n", "python -m app -m method=slerp,ties 'lambda=range(0,1.01,0.1)'",
            "python -m app -m search=lambda_star", "python -m app.report",
            "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --port 5000"]


def run_help(*argv: str) -> str:
    """A command's --help output; it must exit 0."""
    done = subprocess.run([sys.executable, "-m", *argv, "--help"], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def app_help() -> str:
    return run_help("app")


def shipped_options() -> dict[str, set[str]]:
    """conf/'s groups and their YAMLs, walked here; conf/suite is chosen for the user, not by."""
    found: dict[str, set[str]] = {}
    for path in conf_dir().rglob("*.yaml"):
        group = path.parent.relative_to(conf_dir()).as_posix()
        if path.parent != conf_dir() and not group.startswith("suite"):
            found.setdefault(group, set()).add(path.stem)
    return found


def test_app_help_lists_every_group_option_with_its_default(app_help):
    listed: dict[str, dict[str, str]] = {}  # group → option → its line
    section = app_help.split("\nCONFIG GROUPS")[1].split("\nKEYS")[0]
    for line in section.splitlines()[1:]:
        if re.match(r"  \S", line):
            group = listed.setdefault(line.split()[0], {})
        elif re.match(r"    \S", line):
            group[line.split()[0]] = line
    for name, options in shipped_options().items():
        assert name in listed, f"group {name} missing from --help"
        assert options <= set(listed[name]), f"{name}: {options - set(listed[name])} missing"
    assert {"model", "method", "task", "judge", "probe", "engine", "tracking", "search",
            "hydra/launcher"} <= set(listed)
    declared = yaml.safe_load((conf_dir() / "config.yaml").read_text())["defaults"]
    for entry in [e for e in declared if isinstance(e, dict)]:
        (key, option), = entry.items()
        if option is not None and key in listed:
            assert "(default)" in listed[key][option], f"{key}={option} not marked default"


def test_app_help_lists_every_top_level_key_and_the_commands(app_help):
    keys = re.findall(r"^  ([\w.]+)=", app_help.split("\nKEYS")[1], re.M)
    groups_ = set(shipped_options()) | set(GROUPS) | {"judge"}
    expected = {k for k in AppConfig.__annotations__ if k not in groups_ and k != "merge"}
    expected |= {f"merge.{k}" for k in schema_keys("MergeSettings")}
    expected |= {k for k in yaml.safe_load((conf_dir() / "config.yaml").read_text())
                 if k not in ("defaults", "hydra")}
    assert {"lambda", "seed", "device", "force", "verbose"} <= expected
    assert expected <= set(keys), f"keys missing from --help: {expected - set(keys)}"
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert command in app_help, command
    for command in COMMANDS[2:]:  # the forms the README uses
        assert command in readme, command


def test_app_help_is_plain_text_within_100_columns(app_help):
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", app_help), "a control code in --help"
    long = [line for line in app_help.splitlines() if len(line) > 100]
    assert not long, long


def test_every_option_and_key_is_documented():
    for group, options in groups().items():
        for name, text in options:
            assert text, f"{group}={name}: no description (give its YAML a leading comment)"
    for key, _, meaning in top_keys():
        assert meaning, f"{key}: no meaning (add it to app.help.MEANINGS)"


def test_report_help_explains_inputs_outputs_and_every_option():
    text = run_help("app.report")
    source = (ROOT / "src" / "app" / "report" / "__init__.py").read_text()
    options = re.findall(r'add_argument\("(--[\w-]+)"', source)
    assert len(options) >= 7
    for option in options:
        assert option in text, option
    for needed in ("latest sweep", "report.html", "summary.md", "table.csv", "frontier_<task>.png",
                   "python -m app.report --experiment"):
        assert needed in text, needed


def test_the_committed_reference_is_generated():
    assert PAGE.is_file() and PAGE.read_text() == configuration_reference(), (
        "docs/reference/configuration.md is out of date: run `python scripts/config_reference.py`")


def test_the_reference_names_every_metric_and_schema_key():
    text = configuration_reference()
    assert text.startswith("# Configuration reference\n")
    assert "do not edit" in text.split("\n## ")[0]
    for metric in metrics.REGISTRY:
        assert f"`{metric.name.replace('{task}', '<task>')}`" in text, metric.name
    schemas = [(g, cls) for g, cls in GROUPS.items()] + [("judge", c) for c in SCHEMAS.values()]
    nested = [("task.tasks[]", "TaskSpec"), ("model.experts[]", "Expert"),
              ("model.extra[]", "ExtraModel"), ("judge.thresholds", "JudgeThresholds")]
    for prefix, name in [(g, cls.__name__) for g, cls in schemas] + nested:
        for key in schema_keys(name):
            assert f"`{prefix}.{key}`" in text, f"{prefix}.{key} ({name})"
    for key, default, _ in top_keys():
        assert f"| `{key}` | `{default}` |" in text, key
