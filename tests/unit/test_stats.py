"""Paired statistics of the quality benchmark and the round diagnostics' rank correlation,
against direct computations."""
import math

import numpy as np
import pytest

from raydal.scoring.diagnostics import mean_pairwise_cosine, ranks, spearman
from raydal.stats import auc, labels_to_reach, mean_sd, paired_interval, t_quantile_975


def test_paired_interval_is_the_t_interval_of_the_differences():
    a, b = [80.0, 82.0, 81.0, 83.0], [79.0, 80.5, 80.0, 81.0]
    d = np.subtract(a, b)
    m, lo, hi = paired_interval(a, b)
    half = 3.182 * d.std(ddof=1) / 2.0
    assert m == pytest.approx(d.mean()) and lo == pytest.approx(m - half)
    assert hi == pytest.approx(m + half) and lo > 0
    assert paired_interval([1.0], [0.0])[1:] == (-math.inf, math.inf)


def test_t_quantiles():
    assert t_quantile_975(2) == 4.303 and t_quantile_975(1000) == 1.96
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_auc_and_labels_to_reach():
    labels, acc = [100, 200, 300], [50.0, 60.0, 70.0]
    assert auc(labels, acc) == pytest.approx(60.0)
    assert labels_to_reach(labels, acc, 65.0) == pytest.approx(250.0)
    assert labels_to_reach(labels, acc, 40.0) == 100.0
    assert labels_to_reach(labels, acc, 71.0) is None
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_spearman_with_ties_equals_pearson_of_average_ranks():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    ra = ranks(a)
    for v in np.unique(a):  # tied values share their mean rank
        assert np.ptp(ra[a == v]) == 0
    assert np.sort(ra).sum() == pytest.approx(np.arange(40).sum())
    assert spearman(a, b) == pytest.approx(np.corrcoef(ranks(a), ranks(b))[0, 1])
    assert spearman(b, b) == pytest.approx(1.0) and spearman(b, -b) == pytest.approx(-1.0)


def test_mean_pairwise_cosine_of_factorised_embeddings():
    rng = np.random.default_rng(1)
    q, h = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    g = np.stack([np.outer(q[i], np.append(h[i], 1.0)).ravel() for i in range(6)])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cos = g @ g.T
    assert mean_pairwise_cosine(q, h) == pytest.approx((cos.sum() - 6) / 30)
