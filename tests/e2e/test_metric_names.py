"""Real jobs return exactly the metric names the registry predicts for their config."""

import pytest

from app.config import job_settings
from app.metrics import predict
from app.pipeline import this_process

FAST = ["task.limit=20", "force=true"]


@pytest.mark.parametrize("overrides", [
    [],
    ["task.bootstrap=0", "lambda=0.3"],
    ["judge=heuristic", "judge.limit=2", "judge.k=2", "method=slerp"],
], ids=["default", "no bootstrap", "heuristic judge"])
def test_returned_metrics_are_the_registrys_prediction(make_cfg, tmp_path, overrides):
    cfg = make_cfg(*FAST, f"tracking.dir={tmp_path}/mlruns", *overrides)
    returned = set(this_process().run_job(cfg))
    expected = predict(job_settings(cfg))
    assert expected.required <= returned, sorted(expected.required - returned)
    assert all(expected.covers(n) for n in returned), sorted(
        n for n in returned if not expected.covers(n))
