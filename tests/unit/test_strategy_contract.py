"""One contract run over every registered strategy (as timm's tests run over every model): a
strategy registered in raydal is tested by being registered.

Per-sample strategies: (B,) float64 finite scores; a sample's score does not depend on the batch
it is scored in (the contract that makes any sharding pick the same global top-b); the classes of
``score_with_classes`` are the model's argmax. Set-based ones: (B, D) finite float32 features,
batch-independent too; ``pick`` gives k distinct pool ids whatever the rows' order.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raydal.models import ModelSpec, create_model
from raydal.scoring import create_strategy, list_strategies
from raydal.scoring.diversity import SetStrategy

B, K = 12, 4


@pytest.fixture(scope="module")
def inputs():
    model = create_model(ModelSpec(name="test_resnet", num_classes=3, in_chans=1, img_size=16),
                         seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, 1, 16, 16, generator=gen)
    ids = [f"id-{i:02d}" for i in range(B)]
    labeled = [(torch.randn(6, 1, 16, 16, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2]))]
    return model, x, ids, labeled


def _context(strategy, model, labeled):
    return strategy.prepare(model if strategy.needs_model else None, labeled) \
        if strategy.needs_labeled else None


def test_the_contract_covers_the_built_in_strategies():
    assert {"random", "entropy", "margin", "dynamicAL", "badge", "coreset"} <= set(
        list_strategies())


@pytest.mark.parametrize("name", list_strategies())
def test_every_registered_strategy_keeps_the_contract(name, inputs):
    model, x, ids, labeled = inputs
    strategy = create_strategy(name)
    m = model if strategy.needs_model else None
    ctx = _context(strategy, model, labeled)
    if isinstance(strategy, SetStrategy):
        feats = strategy.embed(model, x, ids, ctx)
        assert feats.shape[0] == B and feats.dtype == np.float32 and np.isfinite(feats).all()
        halves = np.concatenate([strategy.embed(model, x[:5], ids[:5], ctx),
                                 strategy.embed(model, x[5:], ids[5:], ctx)])
        np.testing.assert_allclose(halves, feats, rtol=1e-4, atol=1e-5)
        picked = strategy.pick(np.asarray(ids), feats, K, ctx)
        assert len(picked) == K == len(set(picked)) and set(picked) <= set(ids)
        rev = slice(None, None, -1)
        assert strategy.pick(np.asarray(ids)[rev], feats[rev], K, ctx) == picked
        return
    scores = strategy.score(m, x, ids, ctx)
    assert scores.shape == (B,) and scores.dtype == torch.float64
    assert torch.isfinite(scores).all() and scores.unique().numel() > 1  # it ranks something
    halves = torch.cat([strategy.score(m, x[:5], ids[:5], ctx),
                        strategy.score(m, x[5:], ids[5:], ctx)])
    torch.testing.assert_close(halves, scores, rtol=1e-5, atol=1e-8)
    if strategy.needs_model:
        s2, classes = strategy.score_with_classes(model, x, ids, ctx)
        torch.testing.assert_close(s2, scores, rtol=1e-5, atol=1e-8)
        with torch.no_grad():
            assert torch.equal(classes, model(x).argmax(1))
