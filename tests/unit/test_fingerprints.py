"""Fingerprints outlive refactors: every shipped method on the toy pair and the toy pool, and
their references, keep the fingerprint the code gave before the model set existed.

``tests/helpers/fingerprints.json`` holds what was hashed then (the checkout's folder written
``<ROOT>``, the metric definitions' version ``<METRICS_VERSION>``, so a new checkout or a new
metric keeps the oracle valid): the same payload, hashed now, must be today's fingerprint.
"""

import json
from pathlib import Path

import pytest

from app.config import compose, job_settings
from app.metrics import METRICS_VERSION
from app.provenance import digest, job_fingerprint, reference_fingerprint

ROOT = Path(__file__).resolve().parents[2]
CASES = json.loads((ROOT / "tests/helpers/fingerprints.json").read_text())


def then(payload):
    """A recorded payload with this checkout's folder and metrics version put back."""
    if isinstance(payload, dict):
        return {k: then(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [then(v) for v in payload]
    if isinstance(payload, str):
        return METRICS_VERSION if payload == "<METRICS_VERSION>" else payload.replace(
            "<ROOT>", str(ROOT))
    return payload


def test_the_record_covers_every_shipped_method_and_both_sets():
    methods = {p.stem for p in (ROOT / "conf/method").glob("*.yaml")}
    recorded = {o.split("=", 1)[1] for c in CASES if c["kind"] == "job"
                for o in c["overrides"] if o.startswith("method=")}
    assert recorded == methods
    assert {c["parent"] for c in CASES if c["kind"] == "reference"} == {
        "pt", "it", "expert:job", "expert:colour", "expert:region"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(
    [c["kind"], c.get("parent", "")] + c["overrides"]))
def test_fingerprints_are_those_of_the_previous_layout(case):
    job = job_settings(compose(*case["overrides"]))
    now = job_fingerprint(job) if case["kind"] == "job" \
        else reference_fingerprint(job, case["parent"])
    assert now == digest(then(case["payload"]))
