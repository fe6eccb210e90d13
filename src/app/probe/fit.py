"""The probe itself: a standardised, L2-regularised logistic regression, pure functions on
arrays (so a saved artifact re-scores to the same numbers).

C is chosen on the validation rows of the train split (each candidate fit, standardised, on
the other train rows; the best validation accuracy wins, ties to the smaller C), then the
probe is refit with that C on the whole train split, standardised on it, and scored on test.
The fits run BLAS single-threaded: at probe sizes (hundreds to thousands of rows, a few
classes) its threads cost more in start-up and spinning than they save, most on busy cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

MAX_ITER = 2000


@dataclass(frozen=True)
class Score:
    acc: float
    f1: float  # macro-F1 over the classes present in test or predicted
    C: float


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    if len(np.unique(y)) < 2:
        raise ValueError(f"a probe needs at least two labels among its {len(y)} training rows")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER,
                                                               random_state=seed))
    return model.fit(x, y)


def choose_c(x: np.ndarray, y: np.ndarray, validation: np.ndarray, c_grid, seed: int) -> float:
    """The C of ``c_grid`` with the best accuracy on ``x[validation]`` when fit on the rest."""
    best, best_acc = None, -1.0
    for c in sorted(float(c) for c in c_grid):
        model = _fit(x[~validation], y[~validation], c, seed)
        acc = accuracy_score(y[validation], model.predict(x[validation]))
        if acc > best_acc:
            best, best_acc = c, acc
    return best


def score(x_train: np.ndarray, y_train: np.ndarray, validation: np.ndarray,
          x_test: np.ndarray, y_test: np.ndarray, c_grid, seed: int) -> Score:
    """Choose C, refit on the train split, score accuracy and macro-F1 on test."""
    with threadpool_limits(1, user_api="blas"):
        c = choose_c(x_train, y_train, validation, c_grid, seed)
        predicted = _fit(x_train, y_train, c, seed).predict(x_test)
    return Score(acc=float(accuracy_score(y_test, predicted)),
                 f1=float(f1_score(y_test, predicted, average="macro", zero_division=0)), C=c)
