"""Selection and report documents: λ* is chosen on one set of a task's documents and its
scores are reported on the others, so the number quoted is not the one that was maximised.

A task with its own validation split selects there (``app.evaluate.tasks.selection_leaves``);
the leaderboard tasks have none (MMLU-Pro's is its few-shot pool, GPQA, BBH, MuSR and MATH have
test documents only), and for them this module splits the test documents: a seeded share
selects and the rest reports. The split is stratified: within each part of a task (BBH's
subtasks, MMLU-Pro's categories; the whole task where it has none) the documents are ranked by
a seeded hash of their key and the first ``share`` of them select. A document's set depends
only on the seed, its task, its part and its key, never on the merge: every run of
an experiment splits alike. Pure functions.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Hashable, Sequence

import numpy as np

SETS = ("selection", "report")


def _rank(seed: int, task: str, key: Hashable) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{task}\x00{key!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def selected(task: str, keys: Sequence[Hashable], parts: Sequence[str] | None, share: float,
             seed: int) -> list[bool]:
    """Per document, whether it selects (True) or reports (False): in each part, the
    round(share · n) documents of lowest seeded hash select, at least one and at most n − 1
    where a part has two or more; a part of one selects with probability ``share``."""
    strata: dict[str, list[int]] = defaultdict(list)
    for i, part in enumerate(parts if parts is not None else [""] * len(keys)):
        strata[part].append(i)
    out = [False] * len(keys)
    for part, members in strata.items():
        ranked = sorted(members, key=lambda i: _rank(seed, f"{task}/{part}", keys[i]))
        n = len(ranked)
        if n == 1:
            take = int(_rank(seed, f"{task}/{part}", keys[ranked[0]]) / 2 ** 64 < share)
        else:
            take = min(n - 1, max(1, math.floor(share * n + 0.5)))
        for i in ranked[:take]:
            out[i] = True
    return out


def split_metrics(chosen: Sequence[bool], scores: Sequence[float],
                  conf: Sequence[float] | None, bins: int, binning: str, n_boot: int = 0,
                  seed: int = 0) -> dict[str, dict]:
    """``{"selection": {"acc", "n"[, "ece"]}, "report": {…}}`` over each set's documents
    (ECE where there are confidences: a calibrated task); with ``n_boot`` the selection
    accuracy's 95% bootstrap interval (``acc_ci_low``/``_high``: the search's noise)."""
    from app.calibration import bootstrap_mean_ci, expected_calibration_error

    chosen = np.asarray(chosen, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    out = {}
    for name, mask in zip(SETS, (chosen, ~chosen)):
        if not mask.any():
            continue
        metrics = {"acc": float(scores[mask].mean()), "n": float(mask.sum())}
        if conf is not None:
            metrics["ece"] = expected_calibration_error(np.asarray(conf)[mask], scores[mask],
                                                        bins, binning)
        if n_boot and name == "selection":
            metrics["acc_ci_low"], metrics["acc_ci_high"] = bootstrap_mean_ci(
                scores[mask], n_boot, seed=seed)
        out[name] = metrics
    return out
