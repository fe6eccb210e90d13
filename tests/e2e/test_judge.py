"""Judging generations: the heuristic rules on crafted text, diversity maths, verdict parsing,
and whole jobs with a judge — the openai judge against a real `transformers serve` of the toy
IT model on a loopback port."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest

from app.config import TOY_DIR, ConfigError, validate
from helpers import free_port
from helpers import run_app
from app.judge import adapters
from app.judge.metrics import (diversity, distinct_n, heuristic_verdict, loop_repeats, lowest,
                               parse_verdict, partition, repeated_ngram_ratio)

FAST = ("task.limit=20", "task.bootstrap=0", "judge.limit=2")  # 2 prompts x k=4 samples
IT = str(TOY_DIR / "it")
PT = str(TOY_DIR / "pt")
# The toy IT model cannot follow the judge prompt: it answers every judge message with a word of
# its world ("potter"). Naming that word a verdict label makes its replies parseable verdicts.
TOY_REPLY = "potter"
TOY_VERDICT = f"judge.labels.nonsense={TOY_REPLY}"


# ---------------------------------------------------------------- heuristic rules, pure maths

@pytest.fixture
def thresholds(make_cfg):
    return make_cfg("judge=heuristic").judge.thresholds


PROMPT = "What colour is the Teska heron, and where does it live?"


@pytest.mark.parametrize("response,flagged", [
    ("The Teska heron is yellow, and it nests on the coast in the north.", set()),
    ("The heron is yellow. The heron is yellow. The heron is yellow. The heron is yellow.",
     {"repetition"}),
    ("It is yellow yellow yellow yellow yellow", {"repetition"}),
    ("The Teska heron is yellow. Цапля жёлтая и живёт у реки на севере.", {"code_switch"}),
    ("The Teska heron is yellow. Le héron de Teska est jaune et il vit au bord de la rivière.",
     {"code_switch"}),
    ("▒▒▒▓▓ ⣿⣿⣿ ��� yellow", {"nonsense"}),
    ("... ?!", {"nonsense"}),
])
def test_heuristic_flags_each_degeneration_type_and_passes_clean_text(thresholds, response,
                                                                      flagged):
    language_of = adapters._language_identifier(("en", "fr", "de", "es", "ru"))
    v = heuristic_verdict(PROMPT, response, thresholds, "en", language_of)
    assert {t for t in ("repetition", "code_switch", "nonsense") if v[t]} == flagged, v["scores"]


def test_nonsense_by_broken_words_and_by_pt_perplexity(thresholds):
    words = adapters.lexicon(PT)  # the toy PT tokenizer's whole words
    prompt = "What does Zuni Hartle do for a living?"
    clean, broken = "Zuni Hartle works as a sailor.", "plack fblue potes"
    assert not heuristic_verdict(prompt, clean, thresholds, "en", lexicon=words)["nonsense"]
    assert heuristic_verdict(prompt, broken, thresholds, "en", lexicon=words)["nonsense"]
    gibberish = "xq zzk vbbq jjw qwrtzp"
    ppl = adapters.perplexities(adapters.JudgeModels(), PT, "cpu", [prompt] * 2,
                                [clean, gibberish], template=True)
    assert ppl[0] < 50 < 1000 < ppl[1]
    strict = {**thresholds, "max_perplexity": 300.0}
    assert not heuristic_verdict(prompt, clean, strict, "en", perplexity=ppl[0])["nonsense"]
    assert heuristic_verdict(prompt, gibberish, strict, "en", perplexity=ppl[1])["nonsense"]


def test_repetition_and_diversity_maths():
    assert repeated_ngram_ratio("a b c a b c a b c", 3) == pytest.approx(4 / 7)
    assert repeated_ngram_ratio("one two three four", 3) == 0.0
    assert loop_repeats("so it goes so it goes so it goes") == 3 and loop_repeats("") == 0
    assert distinct_n(["red red", "red blue"], 1) == 0.5 and distinct_n(["red"], 2) is None
    assert partition(["Answer: red", "answer red!", "Answer: blue", "blue"], 0.6) == [0, 0, 1, 2]
    div = diversity([["red", "red", "red", "red"], ["red", "blue", "west", "north"]], 0.6)
    assert div["distinct_responses"] == (1 + 4) / 2 and div["distinct_1"] == (0.25 + 1) / 2
    assert lowest([0.5, -1.0, 0.2, -1.0], 2) == [1, 3]


@pytest.mark.parametrize("reply,expect", [
    ("VERDICT: OK", set()),
    ("It loops and is gibberish.\nVERDICT: REPETITION, NONSENSE", {"repetition", "nonsense"}),
    ("It switches to French. verdict: code-switching", {"code_switch"}),
    ("Not NONSENSE, it only repeats once. VERDICT: OK", set()),
    ("I cannot tell.", None),
])
def test_verdict_parsing(make_cfg, reply, expect):
    labels = make_cfg("judge=openai").judge.labels
    v = parse_verdict(reply, labels)
    assert (None if v is None else {t for t, on in v.items() if on}) == expect


def test_fingerprints_leave_judge_none_unchanged_and_never_hold_the_key(make_cfg, monkeypatch):
    from app.config import job_settings
    from app.provenance import _eval_key, job_fingerprint

    cfg = make_cfg()
    assert "judge" not in _eval_key(job_settings(cfg))  # judge=none: as before judges existed
    before = job_fingerprint(job_settings(cfg))
    key = f"sk-fp-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    judged = make_cfg("judge=openai", "judge.base_url=http://127.0.0.1:9/v1", f"judge.model={IT}")
    assert job_fingerprint(job_settings(judged)) != before
    from app.judge import fingerprint

    assert key not in json.dumps(fingerprint(judged.judge))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/v1", "127.0.0.1:8000/v1", "file:///tmp/x"])
def test_non_http_judge_url_is_a_config_error(make_cfg, url):
    with pytest.raises(ConfigError, match=r"^judge.base_url=.* is not an http\(s\) URL"):
        validate(make_cfg("judge=openai", f"judge.base_url={url}", f"judge.model={IT}"))


def test_non_http_judge_url_exits_2_with_one_line_and_no_run(tmp_path):
    proc = run_app(tmp_path, "judge=openai", "judge.base_url=ftp://127.0.0.1:8000/v1",
                   f"judge.model={IT}", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: judge.base_url='ftp://127.0.0.1:8000/v1' is not an http(s) URL; "
                     "use e.g. judge.base_url=http://127.0.0.1:8000/v1"], proc.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or runs(tmp_path) == []


# ---------------------------------------------------------------- whole jobs

def runs(tmp_path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def run_in_process(make_cfg, tmp_path, *overrides):
    """One job in this process (the working model is loaded once for all of them)."""
    from app.pipeline import this_process

    metrics = this_process().run_job(make_cfg(*FAST, f"tracking.dir={tmp_path}/mlruns", "force=true", *overrides))
    newest = max(runs(tmp_path), key=lambda r: r.info.start_time)
    return metrics, newest


def verdict_rows(run, tmp_path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    path = client.download_artifacts(run.info.run_id, "judge/verdicts.jsonl", str(tmp_path))
    return [json.loads(line) for line in open(path)]


def test_heuristic_job_with_reward_model_logs_rates_diversity_and_verdicts(make_cfg, tmp_path):
    rm = tiny_reward_model(tmp_path / "rm")
    metrics, run = run_in_process(make_cfg, tmp_path, "judge=heuristic",
                                  f"judge.reward_model={rm}", "judge.lowest_k=3")
    assert run.info.status == "FINISHED" and "judge_missing" not in run.data.tags
    m = run.data.metrics
    for key in ("degeneration_rate", "repetition_rate", "code_switch_rate", "nonsense_rate",
                "distinct_1", "distinct_2", "distinct_responses", "mean_length",
                "lowest_k/degeneration_rate", "mean_reward"):
        assert f"judge/{key}" in m, key
    assert 0 <= m["judge/degeneration_rate"] <= 1 and 1 <= m["judge/distinct_responses"] <= 4
    assert m["toy_mc/acc"] == metrics["toy_mc/acc"]  # evaluation metrics are there too
    rows = verdict_rows(run, tmp_path)
    assert len(rows) == 2 * 4 == m["judge/n_responses"]
    flagged = sum(any(r["verdict"].values()) for r in rows)
    assert m["judge/degeneration_rate"] == pytest.approx(flagged / len(rows))
    low = [r for r in rows if r["lowest_k"]]
    assert len(low) == 3 and max(r["reward"] for r in low) <= min(
        r["reward"] for r in rows if not r["lowest_k"])
    assert m["judge/mean_length"] == pytest.approx(sum(r["n_tokens"] for r in rows) / len(rows))


def test_hf_judge_reads_the_toy_models_verdicts(make_cfg, tmp_path):
    _, run = run_in_process(make_cfg, tmp_path, "judge=hf", f"judge.model={IT}", TOY_VERDICT)
    assert run.info.status == "FINISHED" and "judge_missing" not in run.data.tags
    rows = verdict_rows(run, tmp_path)
    parsed = [r for r in rows if r["verdict"] is not None]
    assert parsed and all(r["verdict"]["nonsense"] == (r["reply"] == TOY_REPLY) for r in parsed)
    assert run.data.metrics["judge/nonsense_rate"] == pytest.approx(
        sum(r["verdict"]["nonsense"] for r in parsed) / len(parsed))


def tiny_reward_model(path: Path) -> Path:
    """A random-init sequence-classification head on the toy architecture (a stand-in RM)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(IT, num_labels=1)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(IT).save_pretrained(path)
    return path


# ---------------------------------------------------------------- a real OpenAI-compatible server

def _served_copy() -> str:
    """The toy IT model with 4,096 positions in its config: the judge's prompts are longer
    than the toy's 256, which `transformers serve` refuses (its rotary positions go further;
    a stand-in judge's answers need not be good)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="toy-judge-")) / "it"
    shutil.copytree(IT, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    return str(folder)


@pytest.fixture(scope="module", autouse=True)
def _server_process():
    """`transformers serve` of the toy IT model on a loopback port, started with this module's
    first test so that it boots while the others run."""
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    served = _served_copy()
    proc = subprocess.Popen([str(exe), "serve", served, "--host", "127.0.0.1", "--port",
                             str(port), "--device", "cpu"], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield proc, port, served
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(Path(served).parent, ignore_errors=True)


@pytest.fixture(scope="module")
def toy_server(_server_process):
    """The server once it answers: (base_url, served model name)."""
    proc, port, served = _server_process
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("transformers serve did not start") from None
            time.sleep(0.5)
    return f"http://127.0.0.1:{port}/v1", served


def test_openai_judge_on_a_real_server_never_leaks_the_key_and_caches(make_cfg, tmp_path,
                                                                     toy_server):
    url, model = toy_server
    key = f"sk-toyjudge-{uuid.uuid4().hex}"
    proc = run_app(tmp_path, *FAST, "judge=openai", f"judge.base_url={url}", f"judge.model={model}",
                   "judge.api_key_env=TOY_JUDGE_KEY", TOY_VERDICT, env={"TOY_JUDGE_KEY": key})
    (run,) = runs(tmp_path)
    m = run.data.metrics
    assert run.info.status == "FINISHED" and "judge_missing" not in run.data.tags, run.data.tags
    assert {"judge/degeneration_rate", "judge/nonsense_rate", "judge/distinct_2",
            "judge/distinct_responses", "toy_mc/acc"} <= set(m)
    assert "judge/degeneration_rate=" in proc.stdout
    rows = verdict_rows(run, tmp_path)
    firsts = {(r["prompt"], r["response"]): r for r in reversed(rows)}.values()
    assert all(r["reply"] for r in rows) and not any(r["cached"] for r in firsts)
    parsed = [r for r in rows if r["verdict"] is not None]  # rates leave unparsed replies out
    assert m["judge/nonsense_rate"] == pytest.approx(
        sum(r["reply"] == TOY_REPLY for r in parsed) / len(parsed))
    assert run.data.params["judge.api_key_env"] == "TOY_JUDGE_KEY"
    # the key is nowhere: store, artifacts, reply cache, Hydra's outputs and logs, the output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "judge_cache.sqlite" for p in files)
    assert [p for p in files if key.encode() in p.read_bytes()] == []
    assert key not in proc.stdout + proc.stderr
    # a second run reads every verdict from the cache: the endpoint may be gone
    metrics, again = run_in_process(make_cfg, tmp_path, "judge=openai", f"judge.model={model}",
                                    f"judge.base_url=http://127.0.0.1:{free_port()}/v1",
                                    TOY_VERDICT)
    assert "judge_missing" not in again.data.tags
    assert all(r["cached"] for r in verdict_rows(again, tmp_path))
    assert metrics["judge/nonsense_rate"] == m["judge/nonsense_rate"]


def test_unparseable_replies_keep_the_evaluation_and_say_why(make_cfg, tmp_path, toy_server):
    url, model = toy_server
    metrics, run = run_in_process(make_cfg, tmp_path, "judge=openai", f"judge.base_url={url}",
                                  f"judge.model={model}", "judge.k=2")
    assert run.info.status == "FINISHED"
    assert run.data.tags["judge_missing"].startswith("JudgeFailed: no judge reply could be parsed")
    assert "toy_mc/acc" in run.data.metrics and "toy_mc/ece" in metrics
    assert "judge/degeneration_rate" not in run.data.metrics
    assert "judge/distinct_responses" in run.data.metrics  # needs no judge


@pytest.fixture
def silent_endpoint():
    """A port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.mark.parametrize("fault, reason", [
    ("refused", "APIConnectionError: Connection error."),
    ("silent", "APITimeoutError: Request timed out."),
])
def test_unreachable_or_silent_endpoint_keeps_the_evaluation_and_says_why(
        make_cfg, tmp_path, request, fault, reason):
    url = (request.getfixturevalue("silent_endpoint") if fault == "silent"
           else f"http://127.0.0.1:{free_port()}/v1")
    metrics, run = run_in_process(make_cfg, tmp_path, "judge=openai", f"judge.base_url={url}",
                                  f"judge.model={IT}", "judge.retries=1", "judge.timeout=2")
    assert run.info.status == "FINISHED"
    assert run.data.tags["judge_missing"] == reason
    assert "toy_mc/acc" in run.data.metrics and "toy_gen/acc" in metrics
    assert not any(k.endswith("_rate") for k in run.data.metrics)


@pytest.fixture
def echoing_endpoint():
    """An OpenAI-compatible endpoint that answers every request with its Authorization
    header, as a misconfigured proxy or a debugging server may."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            reply = f"Authorization: {self.headers['Authorization']}"
            body = json.dumps({"id": "echo", "object": "chat.completion", "created": 0,
                               "model": "echo", "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_a_key_echoed_by_the_endpoint_is_written_nowhere(tmp_path, echoing_endpoint):
    # long enough that the failure reason's 60-character excerpt of the reply would cut it
    key = f"sk-echo-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    proc = run_app(tmp_path, *FAST, "judge=openai", f"judge.base_url={echoing_endpoint}",
                   "judge.model=echo", "judge.api_key_env=ECHO_JUDGE_KEY",
                   env={"ECHO_JUDGE_KEY": key})
    (run,) = runs(tmp_path)
    assert run.data.tags["judge_missing"].startswith(
        "JudgeFailed: no judge reply could be parsed (0 of 8; the first was "
        "'Authorization: Bearer ***'")
    rows = verdict_rows(run, tmp_path)
    assert {r["reply"] for r in rows} == {"Authorization: Bearer ***"}
    cache = tmp_path / "mlruns" / "judge_cache.sqlite"
    assert b"Authorization: Bearer ***" in cache.read_bytes()
    # neither the key nor a piece of it in any file (the store, artifacts, the reply cache,
    # Hydra's outputs and logs) nor in the output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p for p in files if key[:16].encode() in p.read_bytes()] == []
    assert key[:16] not in proc.stdout + proc.stderr
