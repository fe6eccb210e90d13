"""Linear probes on the toy PT and IT models' hidden states: the probes find what the toy
world encodes (above a Hewitt & Liang control on every phenomenon), the numbers repeat and
re-score from the saved artifact, the split is the same for any weights, the model comes back
untouched, and bad settings fail with a one-line ConfigError before any model is read."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import TOY_DIR, conf_dir
from app.errors import ConfigError
from app.probe import ProbeConfig, load_tasks, rescore, run_probes, validate
from app.probe.data import TOY_PROBES, control_labels, split

PHENOMENA = ("discourse", "morphology", "reasoning", "semantics")
N_LAYERS = 2  # the toy models' num_hidden_layers


def probe_cfg(preset="toy", **overrides):
    """``conf/probe/<name>.yaml`` on its schema, as Hydra composes it (an unknown key fails)."""
    shipped = OmegaConf.load(conf_dir() / "probe" / f"{preset}.yaml")
    assert list(shipped.pop("defaults")) == ["base_probe"]
    return OmegaConf.merge(OmegaConf.structured(ProbeConfig), shipped, overrides)


def toy(which):
    return (AutoModelForCausalLM.from_pretrained(TOY_DIR / which),
            AutoTokenizer.from_pretrained(TOY_DIR / which))


@pytest.fixture(scope="module")
def models():
    return {which: toy(which) for which in ("pt", "it")}


@pytest.fixture(scope="module")
def results(models):
    return {which: run_probes(*models[which], probe_cfg()) for which in models}


def without_time(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


# ---------------------------------------------------------------- what a probe run finds

@pytest.mark.parametrize("which", ["pt", "it"])
def test_probes_beat_the_control_task_on_every_toy_phenomenon(results, which):
    result = results[which]
    tasks = {t.name: t.phenomenon for t in load_tasks(probe_cfg())}
    assert sorted(set(tasks.values())) == list(PHENOMENA)
    expected = {f"probe/{t}/{m}" for t in tasks for m in ("acc", "f1", "control_acc",
                                                           "selectivity")}
    expected |= {f"probe/{p}/acc" for p in PHENOMENA} | {"time/probe_s"}
    assert set(result.metrics) == expected
    for phenomenon in PHENOMENA:
        mine = [t for t, p in tasks.items() if p == phenomenon]
        acc = result.metrics[f"probe/{phenomenon}/acc"]
        control = np.mean([result.metrics[f"probe/{t}/control_acc"] for t in mine])
        print(f"{which} {phenomenon}: probe {acc:.3f}, control {control:.3f}, "
              f"+{acc - control:.3f}")
        assert acc > control + 0.1, (phenomenon, acc, control)
        for t in mine:
            m = result.metrics
            assert m[f"probe/{t}/selectivity"] == pytest.approx(
                m[f"probe/{t}/acc"] - m[f"probe/{t}/control_acc"])
            assert 0 <= m[f"probe/{t}/f1"] <= 1
    for task, by_layer in result.per_layer.items():
        assert by_layer == {N_LAYERS: result.metrics[f"probe/{task}/acc"]}
        assert result.features[task].layer == N_LAYERS


def test_a_rerun_with_the_same_seed_gives_identical_metrics(models, results):
    again = run_probes(*models["pt"], probe_cfg())
    assert without_time(again.metrics) == without_time(results["pt"].metrics)
    assert again.per_layer == results["pt"].per_layer
    for task in load_tasks(probe_cfg()):  # the seed is what fixes them: another one moves rows
        assert not np.array_equal(split(task, 1, 0.2, 0.2).test,
                                  results["pt"].features[task.name].test_rows)
        assert set(control_labels(task, 1)) <= set(task.labels)
        assert control_labels(task, 1) != control_labels(task, 0)


def test_the_split_is_the_same_for_models_with_different_weights(models, results):
    pt, it = models["pt"][0].state_dict(), models["it"][0].state_dict()
    assert any(not torch.equal(pt[k], it[k]) for k in pt)
    a, b = results["pt"].features, results["it"].features
    assert sorted(a) == sorted(b)
    for task in a:
        for rows in ("train_rows", "test_rows", "validation", "y_train", "y_test",
                     "control_train", "control_test"):
            assert np.array_equal(getattr(a[task], rows), getattr(b[task], rows)), (task, rows)
        assert not np.array_equal(a[task].x_test, b[task].x_test)
        n = len(a[task].train_rows) + len(a[task].test_rows)
        assert len(a[task].test_rows) == round(n * 0.2)
        assert not set(a[task].train_rows) & set(a[task].test_rows)


def test_rescoring_the_saved_artifact_gives_the_logged_metrics(results, tmp_path):
    result = results["it"]
    folder = result.save(tmp_path / "probe")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["probes.json", *(f"{t}.npz" for t in result.features)])
    saved = json.loads((folder / "probes.json").read_text())
    assert saved["metrics"] == result.metrics
    assert rescore(folder) == without_time(result.metrics)


def test_probing_leaves_the_model_as_it_was_and_reads_every_layer_asked_for():
    model, tokenizer = toy("pt")
    model.train()
    model.model.layers[0].eval()  # a mixed state: each module's own flag must come back
    flags = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_probes(model, tokenizer, probe_cfg(tasks=["morphology"], layers="all"))
    # the metrics are read at the deepest layer asked for; each layer has its accuracy
    assert sorted(result.per_layer) == ["entity_kind"]
    assert sorted(result.per_layer["entity_kind"]) == list(range(N_LAYERS + 1))
    assert result.per_layer["entity_kind"][N_LAYERS] == result.metrics["probe/entity_kind/acc"]
    assert result.features["entity_kind"].layer == N_LAYERS
    some = run_probes(model, tokenizer, probe_cfg(tasks=["entity_kind"], layers=[-1, 0]))
    assert some.per_layer["entity_kind"] == {
        i: result.per_layer["entity_kind"][i] for i in (0, N_LAYERS)}
    assert without_time(some.metrics) == without_time(result.metrics)
    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- bad settings

def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# twenty rows, two classes, a distinct last word (the default control key) each
GOOD_ROWS = [{"text": f"Sentence {i} ends in word{i}.", "label": ("good", "bad")[i % 2]}
             for i in range(20)]


@pytest.fixture
def broken_data(tmp_path):
    (tmp_path / "syntax").mkdir()
    (tmp_path / "syntax" / "agreement.jsonl").write_text(jsonl(GOOD_ROWS))
    (tmp_path / "syntax" / "no_label.jsonl").write_text(
        json.dumps({"text": "The cat sleeps.", "class": "good"}) + "\n")
    (tmp_path / "syntax" / "late_gap.jsonl").write_text(
        json.dumps({"text": "The cat sleeps.", "label": "good"}) + "\n\n"
        + json.dumps({"text": "The cats sleep."}) + "\n")
    return tmp_path


@pytest.mark.parametrize("overrides,n_layers,needles", [
    (dict(tasks=["entity_knd"]), None, ["probe.tasks", "'entity_knd'", "did you mean "
                                        "'entity_kind'", "valid: "]),
    (dict(layers=[5]), N_LAYERS, ["probe.layers", "5 is outside the model", "-3 to 2"]),
    (dict(layers=[-4]), N_LAYERS, ["probe.layers", "-4 is outside the model"]),
    (dict(layers="first"), None, ["probe.layers='first'", "last, all"]),
    (dict(layers=["1"]), None, ["probe.layers", "last, all, or a list of layer indices"]),
    (dict(representation="maen"), None, ["probe.representation='maen'", "did you mean 'mean'",
                                         "mean", "last"]),
    (dict(name="holmez"), None, ["probe.name='holmez'", "did you mean 'holmes'"]),
    (dict(test_share=1.0), None, ["probe.test_share=1.0", "(0, 1)"]),
    (dict(validation_share=0), None, ["probe.validation_share=0", "(0, 1)"]),
    (dict(C_grid=[]), None, ["probe.C_grid"]),
])
def test_bad_settings_fail_with_one_line_naming_the_key(overrides, n_layers, needles):
    with pytest.raises(ConfigError) as e:
        validate(probe_cfg(**overrides), n_layers)
    message = str(e.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_a_probing_file_without_its_label_column_fails_naming_the_file(broken_data):
    cfg = probe_cfg(data_dir=str(broken_data), tasks=["no_label"])
    with pytest.raises(ConfigError, match=r"no_label\.jsonl' line 1 has no 'label' column") as e:
        validate(cfg)
    assert "\n" not in str(e.value)
    validate(probe_cfg(data_dir=str(broken_data), tasks=["agreement"]))
    # validation reads every row, as loading does
    later = probe_cfg(data_dir=str(broken_data), tasks=["late_gap"])
    for check in (validate, load_tasks):
        with pytest.raises(ConfigError, match=r"late_gap\.jsonl' line 3 has no 'label' column"):
            check(later)


def test_run_probes_checks_the_layers_against_the_model_before_reading_it(models):
    model, tokenizer = models["pt"]
    with pytest.raises(ConfigError, match=r"probe\.layers: 3 is outside the model"):
        run_probes(model, tokenizer, probe_cfg(layers=[0, 3]))


@pytest.mark.parametrize("args,needle", [
    (["probe=toy", "probe.layers=[9]"], "probe.layers: 9 is outside the model, which has hidden "
                                        "states 0 (embeddings) to 2"),
    (["probe=toy", "probe.tasks=[morphology,sintax]"], "probe.tasks: 'sintax' is not a probing "
                                                       "task or phenomenon"),
    (["probe=toy", "probe.data_dir=BROKEN", "probe.tasks=[no_label]"],
     "no_label.jsonl' line 1 has no 'label' column"),
])
def test_the_command_refuses_bad_probe_settings_before_any_run(tmp_path, broken_data, args,
                                                               needle):
    from helpers import one_line, run_app

    args = [a.replace("BROKEN", str(broken_data)) for a in args]
    line = one_line(run_app(tmp_path, *args, check=False))
    assert needle in line, line
    assert not (tmp_path / "mlruns").exists()  # no model loaded, no run, no store


@pytest.mark.parametrize("name,source", [("holmes", "data/holmes/README.md"),
                                         ("flash", "data/flash-holmes/README.md")])
def test_missing_holmes_data_says_how_to_provide_it(name, source, tmp_path):
    cfg = probe_cfg(name, data_dir=str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as e:
        load_tasks(cfg)
    message = str(e.value)
    assert "\n" not in message
    for needle in (f"probe={name}", "absent", "is missing", "holmes-evaluation", source,
                   "DIR/<dataset>/samples.csv", "probe.data_dir=DIR"):
        assert needle in message, message
    with pytest.raises(ConfigError, match="is missing"):
        validate(cfg)


@pytest.fixture(scope="module")
def holmes_standin(tmp_path_factory):
    """The toy tasks in Holmes' published layout (scripts/build_probes.py --holmes-layout)."""
    import importlib.util

    path = TOY_DIR.parents[2] / "scripts" / "build_probes.py"
    spec = importlib.util.spec_from_file_location("build_probes", path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.holmes_layout(tmp_path_factory.mktemp("holmes"))


def test_holmes_published_layout_probes_as_the_same_tasks_in_the_projects(holmes_standin,
                                                                        models, results):
    cfg = probe_cfg("holmes", data_dir=str(holmes_standin), batch_size=32)  # toy's batches
    validate(cfg, N_LAYERS)
    tasks = {t.name: t for t in load_tasks(cfg)}
    # the regression dataset is left out; subfields come from the leaderboard table
    assert sorted(tasks) == ["ellipsis", "entity_kind", "entity_kind_tokens",
                             "question_attribute", "rule_inference"]
    assert tasks["entity_kind_tokens"].phenomenon == "morphology"
    # set-0 is the split: the one the project's layout draws for these rows by default
    toy_tasks = {t.name: t for t in load_tasks(probe_cfg())}
    for name, task in tasks.items():
        mine = split(task, 0, 0.2, 0.2)
        theirs = split(toy_tasks[name.removesuffix("_tokens")], 0, 0.2, 0.2)
        assert np.array_equal(mine.test, theirs.test) and np.array_equal(mine.train,
                                                                          theirs.train)
    got = run_probes(*models["pt"], cfg).metrics
    want = results["pt"].metrics
    for name in tasks:  # the same inputs, labels and split: the same probe
        for metric in ("acc", "f1"):
            assert got[f"probe/{name}/{metric}"] == \
                want[f"probe/{name.removesuffix('_tokens')}/{metric}"], (name, metric)
    # a token task's control key is its probed token: here the given name, as in the toy file
    assert tasks["entity_kind_tokens"].control_keys == toy_tasks["entity_kind"].control_keys
    assert tasks["entity_kind_tokens"].texts == toy_tasks["entity_kind"].texts


def test_a_holmes_file_or_table_that_is_wrong_fails_in_one_line(holmes_standin, tmp_path):
    import csv
    import shutil

    data = tmp_path / "holmes"
    shutil.copytree(holmes_standin, data)
    table = holmes_standin.parent / "leaderboards" / "holmes.csv"
    samples = data / "ellipsis" / "samples.csv"
    rows = list(csv.DictReader(open(samples)))
    with open(samples, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["inputs", "context", "set-0", "id"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ConfigError, match=r"ellipsis/samples\.csv' has no 'label' column"):
        validate(probe_cfg("holmes", data_dir=str(data), phenomena=str(table),
                           tasks=["ellipsis"]))
    with pytest.raises(ConfigError) as e:
        validate(probe_cfg("holmes", data_dir=str(data)))  # no leaderboards/ beside this copy
    assert "probe.phenomena: no phenomena table at" in str(e.value) and "\n" not in str(e.value)
    validate(probe_cfg("holmes", data_dir=str(holmes_standin), phenomena=str(table)))


def test_validation_needs_no_model_torch_or_scikit_learn():
    code = ("import sys; from omegaconf import OmegaConf; "
            "from app.probe.schema import ProbeConfig, validate; "
            "validate(OmegaConf.structured(ProbeConfig(name='toy', layers=[0, -1])), 2); "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_shipped_toy_tasks_are_small_and_complete():
    files = sorted(TOY_PROBES.glob("*/*.jsonl"))
    assert sorted({f.parent.name for f in files}) == list(PHENOMENA)
    assert sum(f.stat().st_size for f in TOY_PROBES.rglob("*") if f.is_file()) < 300_000
    for task in load_tasks(probe_cfg()):
        assert 200 <= len(task.labels) <= 1000
        assert len(set(task.labels)) >= 3


def test_a_job_with_a_probe_set_logs_metrics_that_rescore_from_its_artifact(tmp_path):
    from helpers import run_app, runs

    from app.config import compose, job_settings
    from app.provenance import job_fingerprint

    run_app(tmp_path, "probe=toy", "probe.layers=all", "task.limit=10", "task.bootstrap=0")
    client, found = runs(tmp_path)
    [job] = [r for r in found if r.data.tags.get("role") == "job"]
    m = job.data.metrics
    folder = client.download_artifacts(job.info.run_id, "probes", str(tmp_path))
    again = rescore(folder)
    assert {k: v for k, v in m.items() if k.startswith("probe/")} == again
    assert {"probe/morphology/acc", "time/probe_s", "toy_mc/acc"} <= set(m)
    assert "layers.png" in {a.path.rsplit("/", 1)[-1]
                            for a in client.list_artifacts(job.info.run_id, "probes")}
    plain, probed = compose("lambda=0.3"), compose("lambda=0.3", "probe=toy")
    assert job_fingerprint(job_settings(plain)) != job_fingerprint(job_settings(probed))


# ---------------------------------------------------------------- probing files, read whole

def refused(tmp_path, *args) -> str:
    """The one error line of a command refused before any model loaded or run was made."""
    from helpers import one_line, run_app

    proc = run_app(tmp_path, *args, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    line = one_line(proc)  # exit 2, one line
    assert not (tmp_path / "mlruns").exists()  # no store: no run, not even a FAILED one
    return line


LATE = jsonl(GOOD_ROWS)  # a good file's 20 lines; what follows is line 21
BAD_FILES = {
    "not_utf8": (LATE.encode() + '{"text": "Un café.", "label": "bad"}\n'.encode("latin-1"),
                 ["bad.jsonl' line 21 is not UTF-8 (byte 0xe9)", "save it as UTF-8"]),
    "one_class": (jsonl({**r, "label": "good"} for r in GOOD_ROWS),
                  ["bad.jsonl': all its 20 rows have label 'good'",
                   "a probe needs at least two classes"]),
    "single_row": (jsonl(GOOD_ROWS[:1]),
                   ["bad.jsonl': 1 distinct input(s) are too few for the seeded split",
                    "test_share=0.2 and validation_share=0.2", "needs at least 4"]),
    "three_rows": (jsonl(GOOD_ROWS[:3]), ["bad.jsonl': 3 distinct input(s)", "at least 4"]),
    "bad_json_late": (LATE + "{oops\n", ["bad.jsonl' line 21 is not JSON"]),
    "missing_label_late": (LATE + jsonl([{"text": "No label."}]),
                           ["bad.jsonl' line 21 has no 'label' column", '"text": ...']),
    "wrong_type_late": (LATE + jsonl([{"text": 5, "label": "bad"}]),
                        ["bad.jsonl' line 21: text must be a non-empty string"]),
    "empty_text_late": (LATE + jsonl([{"text": " ", "label": "bad"}]),
                        ["bad.jsonl' line 21: text must be a non-empty string"]),
    "label_not_a_class": (LATE + jsonl([{"text": "A list.", "label": ["bad"]}]),
                          ["bad.jsonl' line 21: label and control_key must be strings"]),
    "empty_file": ("", ["bad.jsonl' has no rows", '"text": ...']),
    "one_control_label": (jsonl({**r, "control_key": "same"} for r in GOOD_ROWS),
                          ["bad.jsonl': the split of probe.seed=0 leaves one control label",
                           "training rows a probe is fit on", "distinct control_key values"]),
}


@pytest.mark.parametrize("fault", list(BAD_FILES))
def test_a_bad_probing_file_is_refused_whole_before_any_model_loads(tmp_path, fault):
    content, needles = BAD_FILES[fault]
    data = tmp_path / "data" / "syntax"
    data.mkdir(parents=True)
    (data / "good.jsonl").write_text(jsonl(GOOD_ROWS))
    bad = data / "bad.jsonl"
    bad.write_bytes(content) if isinstance(content, bytes) else bad.write_text(content)
    line = refused(tmp_path, "probe=toy", f"probe.data_dir={tmp_path / 'data'}")
    for needle in needles:
        assert needle in line, line


def test_duplicate_probing_task_names_are_refused_before_any_model_loads(tmp_path):
    for phenomenon in ("syntax", "semantics"):
        (tmp_path / "data" / phenomenon).mkdir(parents=True)
        (tmp_path / "data" / phenomenon / "agreement.jsonl").write_text(jsonl(GOOD_ROWS))
    line = refused(tmp_path, "probe=toy", f"probe.data_dir={tmp_path / 'data'}")
    assert "task 'agreement' is in both semantics/ and syntax/; task names must be unique" \
        in line, line


@pytest.mark.parametrize("fault", ["not_utf8", "no_dev_rows", "empty_inputs"])
def test_a_bad_holmes_file_is_refused_whole_before_any_model_loads(holmes_standin, tmp_path,
                                                                  fault):
    import csv
    import shutil

    data = tmp_path / "holmes"
    shutil.copytree(holmes_standin, data)
    samples = data / "ellipsis" / "samples.csv"
    rows = list(csv.DictReader(open(samples, newline="")))
    if fault == "not_utf8":
        rows[-1]["inputs"] = "('Un café.',)"
    elif fault == "no_dev_rows":
        rows = [{**r, "set-0": "train" if r["set-0"] == "dev" else r["set-0"]} for r in rows]
    else:
        rows[-1]["inputs"] = "()"
    with open(samples, "w", newline="", encoding="latin-1") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    line = refused(tmp_path, "probe=holmes", f"probe.data_dir={data}",
                   f"probe.phenomena={holmes_standin.parent / 'leaderboards' / 'holmes.csv'}")
    needle = {"not_utf8": f"ellipsis/samples.csv' line {len(rows) + 1} is not UTF-8 (byte 0xe9)",
              "no_dev_rows": "ellipsis/samples.csv': its set-0 column has no dev rows; the "
                             "published split needs train, dev and test rows",
              "empty_inputs": f"ellipsis/samples.csv' row {len(rows) + 1}: inputs '()' are "
                              f"neither sentences nor (token"}[fault]
    assert needle in line, line


def test_a_class_only_outside_the_training_rows_is_refused_naming_the_file(tmp_path):
    from app.probe.data import load_task

    (tmp_path / "syntax").mkdir()
    path = tmp_path / "syntax" / "rare.jsonl"
    path.write_text(jsonl({**r, "label": "good"} for r in GOOD_ROWS))
    s = split(load_task("rare", "syntax", path, 0), 0, 0.2, 0.2)
    rows = [{**r, "label": "bad" if i in s.test else "good"} for i, r in enumerate(GOOD_ROWS)]
    path.write_text(jsonl(rows))  # two classes, but "bad" only in test
    with pytest.raises(ConfigError) as e:
        validate(probe_cfg(data_dir=str(tmp_path)))
    assert "rare.jsonl': the split of probe.seed=0 leaves one label ('good') in the" \
        in str(e.value) and "add rows of another class, or change probe.seed" in str(e.value)
