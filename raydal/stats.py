"""Statistics for comparing active-learning strategies on paired seeds (pure numpy).

A run is one learning curve, ``[{"labels": n, "accuracy": %}, ...]``, of one strategy on one seed;
within a seed every strategy starts from the same labeled set and the same initialisation, so
strategies are compared by per-seed (paired) differences.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# two-sided 95% Student t quantiles t_{0.975, df}; df > 30 uses the normal 1.96
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def auc(labels: Sequence[float], accuracy: Sequence[float]) -> float:
    """Area under accuracy vs labels (trapezoid) divided by the label range: a mean accuracy."""
    n, a = np.asarray(labels, dtype=float), np.asarray(accuracy, dtype=float)
    return float(np.trapezoid(a, n) / (n[-1] - n[0])) if len(n) > 1 else float(a[0])


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of the paired differences a_i - b_i and its 95% t interval: (mean, low, high).
    With one pair the interval is (-inf, inf): one seed proves nothing."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) == 0:
        raise ValueError("paired_interval needs at least one pair")
    m = float(d.mean())
    if len(d) == 1:
        return m, -math.inf, math.inf
    half = t_quantile_975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return m, m - half, m + half


def labels_to_reach(labels: Sequence[float], accuracy: Sequence[float], target: float
                    ) -> float | None:
    """The labels at which a curve first reaches ``target`` accuracy, linearly interpolated
    between rounds; None if it never does."""
    n, a = np.asarray(labels, dtype=float), np.asarray(accuracy, dtype=float)
    for i in range(len(a)):
        if a[i] >= target:
            if i == 0:
                return float(n[0])
            return float(n[i - 1] + (target - a[i - 1]) / (a[i] - a[i - 1]) * (n[i] - n[i - 1]))
    return None
