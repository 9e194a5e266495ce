"""Baseline strategies against direct numpy computations, and the registry."""
import numpy as np
import pytest
import torch

from raydal.scoring import create_strategy, list_strategies
from raydal.scoring.uncertainty import hash_uniform


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5)).double()
    x = torch.randn(32, 1, 4, 4, dtype=torch.float64) * 3
    with torch.no_grad():
        logits = model(x).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return model, x, p


def _numpy_scores(name, p):
    if name == "entropy":
        return -(p * np.log(p)).sum(1)
    s = np.sort(p, axis=1)
    if name == "margin":
        return -(s[:, -1] - s[:, -2])
    return 1.0 - s[:, -1]


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
def test_uncertainty_scores_equal_numpy(model_and_batch, name):
    model, x, p = model_and_batch
    ids = [str(i) for i in range(len(x))]
    got = create_strategy(name, batch_size=7).score(model, x, ids, None)
    assert got.dtype == torch.float64 and got.shape == (len(x),)
    np.testing.assert_allclose(got.numpy(), _numpy_scores(name, p), rtol=1e-12, atol=1e-12)


def test_random_is_a_seeded_function_of_the_id():
    ids = [f"img{i}" for i in range(5000)]
    a = hash_uniform(ids, seed=3).numpy()
    assert np.array_equal(a[100:200], hash_uniform(ids[100:200], seed=3).numpy())
    assert not np.array_equal(a, hash_uniform(ids, seed=4).numpy())
    assert 0 <= a.min() and a.max() < 1
    assert abs(a.mean() - 0.5) < 0.02  # uniform: mean 0.5, sd of the mean 0.004
    strategy = create_strategy("random", seed=3)
    assert not strategy.needs_model
    np.testing.assert_array_equal(strategy.score(None, None, ids, None).numpy(), a)


def test_registry_lists_strategies_and_explains_errors():
    assert {"random", "entropy", "margin", "least_confidence", "dynamicAL"} <= set(list_strategies())
    with pytest.raises(ValueError, match="unknown strategy 'entropi'.*Did you mean 'entropy'"):
        create_strategy("entropi")
    with pytest.raises(ValueError, match="has no option 'sed'.*Did you mean 'seed'"):
        create_strategy("random", sed=1)


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
def test_probability_strategies_give_classes_from_their_one_forward(model_and_batch, name):
    """A class-balanced query gets scores and classes from one forward pass, the same as the
    base class's score + extra forward."""
    from raydal.scoring.base import Strategy
    model, x, _ = model_and_batch
    strategy = create_strategy(name)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        scores, classes = strategy.score_with_classes(model, x, None, None)
    finally:
        hook.remove()
    assert len(calls) == 1
    ref_scores, ref_classes = Strategy.score_with_classes(strategy, model, x, None, None)
    torch.testing.assert_close(scores, ref_scores)
    assert classes.dtype == torch.int64 and torch.equal(classes, ref_classes)
