"""Calibration maths over per-sample arrays: pure NumPy, no torch, mergekit or lm-eval.

Conventions
-----------
* A multiple-choice sample is a vector of raw (unnormalised) choice log-likelihoods and a gold
  index. Choice probabilities are a float64 softmax over those log-likelihoods; the prediction
  is their argmax (first on ties, as lm-eval's ``acc``); confidence is the top probability.
* Equal-width bins (``binning="width"``, the default): bin ``b`` of ``B`` holds
  confidences in ``[b/B, (b+1)/B)``; a confidence of exactly 1.0 goes in the last bin. This
  is torchmetrics' convention.
* Equal-mass bins (``binning="mass"``): samples sorted by confidence (stable, so ties keep their
  order) and cut into ``B`` runs of ⌊n/B⌋ or ⌈n/B⌉; sample of rank ``r`` is in bin ``⌊r·B/n⌋``.
* ECE = Σ_b (n_b/n)·|acc_b − conf_b|; MCE = max_b |acc_b − conf_b| over non-empty bins.
* Brier: ``brier`` is the multiclass score Σ_k (p_k − y_k)² over a sample's own choices (any
  number per sample), ``brier_top`` the top-label one (conf − correct)²; both averaged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def choice_probabilities(logliks: Sequence[float]) -> np.ndarray:
    """Float64 softmax over one sample's choice log-likelihoods."""
    x = np.asarray(logliks, dtype=np.float64)
    z = np.exp(x - x.max())
    return z / z.sum()


def top_label(logliks_per_sample: Sequence[Sequence[float]], gold: Sequence[int]):
    """(confidence, correct) arrays from per-sample choice log-likelihoods and gold indices."""
    conf = np.empty(len(gold), dtype=np.float64)
    correct = np.empty(len(gold), dtype=bool)
    for i, (lls, g) in enumerate(zip(logliks_per_sample, gold)):
        p = choice_probabilities(lls)
        conf[i] = p.max()
        correct[i] = int(np.argmax(lls)) == int(g)
    return conf, correct


def bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: [b/B, (b+1)/B), 1.0 in the last bin."""
    if bins <= 0:
        raise ValueError(f"bins must be positive, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)


def mass_bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    """Equal-mass bin of each confidence: rank r (stable sort) goes in bin ⌊r·bins/n⌋."""
    if bins <= 0:
        raise ValueError(f"bins must be positive, got {bins}")
    conf = np.asarray(conf, dtype=np.float64)
    idx = np.empty(len(conf), dtype=np.int64)
    idx[np.argsort(conf, kind="stable")] = np.arange(len(conf)) * bins // max(len(conf), 1)
    return idx


BINNINGS = {"width": bin_index, "mass": mass_bin_index}


def _check_binning(binning: str) -> None:
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {sorted(BINNINGS)}, got {binning!r}")


def _bins(conf: np.ndarray, bins: int, binning: str) -> np.ndarray:
    _check_binning(binning)
    return BINNINGS[binning](conf, bins)


def reliability(conf, correct, bins: int = 15, binning: str = "width") -> dict[str, np.ndarray]:
    """Per-bin mean confidence, accuracy and count (NaN where a bin is empty), and the bin
    edges (equal-mass: each bin's lowest confidence, with 0 and 1 at the ends)."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = _bins(conf, bins, binning)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=bins) / count
    if binning == "width":
        edges = np.linspace(0.0, 1.0, bins + 1)
    else:
        lows = [conf[idx == b].min() if count[b] else np.nan for b in range(1, bins)]
        edges = np.array([0.0, *lows, 1.0])
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(conf, correct, bins: int = 15, binning: str = "width") -> float:
    """ECE over equal-width (default) or equal-mass bins (see the module docstring)."""
    r = reliability(conf, correct, bins, binning)
    filled = r["count"] > 0
    gaps = np.abs(r["accuracy"][filled] - r["confidence"][filled])
    return float(np.sum(r["count"][filled] / r["count"].sum() * gaps))


def maximum_calibration_error(conf, correct, bins: int = 15, binning: str = "width") -> float:
    """Largest |accuracy − confidence| over non-empty bins."""
    r = reliability(conf, correct, bins, binning)
    filled = r["count"] > 0
    return float(np.max(np.abs(r["accuracy"][filled] - r["confidence"][filled])))


def brier_score(logliks_per_sample, gold) -> float:
    """Multiclass Brier score Σ_k (p_k − y_k)² averaged over samples (any number of choices)."""
    total = 0.0
    for lls, g in zip(logliks_per_sample, gold):
        p = choice_probabilities(lls)
        y = np.zeros_like(p)
        y[int(g)] = 1.0
        total += float(np.sum((p - y) ** 2))
    return total / len(gold)


def top_label_brier_score(conf, correct) -> float:
    """Mean (confidence − correct)² of the predicted choice."""
    conf = np.asarray(conf, dtype=np.float64)
    return float(np.mean((conf - np.asarray(correct, dtype=np.float64)) ** 2))


def gold_nll(logliks_per_sample, gold) -> float:
    """Mean negative log of the gold choice's probability under the choice softmax."""
    total = 0.0
    for lls, g in zip(logliks_per_sample, gold):
        x = np.asarray(lls, dtype=np.float64)
        m = x.max()
        total += float(m + np.log(np.sum(np.exp(x - m))) - x[int(g)])
    return total / len(gold)


def bootstrap_ci(conf, correct, bins: int = 15, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0, binning: str = "width") -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for accuracy and ECE (samples resampled with replacement;
    equal-mass bins are re-cut on every resample)."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(conf)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * bins)[:, None]
    if binning == "width":
        idx = bin_index(conf, bins)[draws]
    else:
        _check_binning(binning)
        ranks = np.empty_like(draws)
        order = np.argsort(conf[draws], axis=1, kind="stable")
        np.put_along_axis(ranks, order, np.arange(n)[None, :].repeat(n_boot, 0), axis=1)
        idx = ranks * bins // n
    flat = (idx + offsets).ravel()
    size = n_boot * bins
    sum_conf = np.bincount(flat, weights=conf[draws].ravel(), minlength=size).reshape(n_boot, bins)
    sum_corr = np.bincount(flat, weights=correct[draws].ravel(), minlength=size).reshape(n_boot, bins)
    eces = np.abs(sum_corr - sum_conf).sum(axis=1) / n  # Σ_b (n_b/n)|acc_b − conf_b|
    accs = correct[draws].mean(axis=1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"acc": tuple(np.percentile(accs, q)), "ece": tuple(np.percentile(eces, q))}


def bootstrap_mean_ci(values, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (e.g. a generative task's per-document scores)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(low), float(high)


def calibration_metrics(logliks_per_sample, gold, bins: int = 15, n_boot: int = 0,
                        seed: int = 0, binning: str = "width") -> dict[str, float]:
    """acc, ece, mce, brier, brier_top, nll, mean_conf and n for one multiple-choice task; with
    n_boot > 0 also 95% bootstrap intervals acc_ci_low/high and ece_ci_low/high."""
    if len(gold) == 0:
        raise ValueError("no samples to compute calibration from")
    conf, correct = top_label(logliks_per_sample, gold)
    out = {
        "acc": float(correct.mean()),
        "ece": expected_calibration_error(conf, correct, bins, binning),
        "mce": maximum_calibration_error(conf, correct, bins, binning),
        "brier": brier_score(logliks_per_sample, gold),
        "brier_top": top_label_brier_score(conf, correct),
        "nll": gold_nll(logliks_per_sample, gold),
        "mean_conf": float(conf.mean()),
        "n": float(len(gold)),
    }
    if n_boot > 0:
        ci = bootstrap_ci(conf, correct, bins, n_boot, seed=seed, binning=binning)
        for name, (low, high) in ci.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(low), float(high)
    return out
