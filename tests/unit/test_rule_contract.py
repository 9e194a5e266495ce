"""One contract run over every registered per-layer gradient rule (as opacus checks each grad
sampler against an autograd loop): each registered layer type, in a small float64 model, gives
the dynamicAL scores of a per-sample autograd loop, through its own rule (the vmap fallback is
made to fail). A newly registered type fails here until it has an example below.
"""
from __future__ import annotations

import pytest
import torch
from timm import layers as timm_layers
from torch import nn

from raydal.scoring import grads
from raydal.scoring.grads import dynamical_scores, labeled_gradient, registry
from tests.unit.test_dynamical import assert_close, naive_scores

B = 5


def _norm_stats(layer: nn.Module) -> nn.Module:
    """Non-trivial affine parameters and running statistics (fresh init hides mistakes)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in [*layer.named_parameters(), *layer.named_buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
    return layer


#: registered type -> (a layer of it, a batch of its inputs); the head is added by the test
EXAMPLES = {
    nn.Conv1d: (lambda: nn.Conv1d(2, 3, 3, padding=1), lambda g: torch.randn(B, 2, 7, generator=g)),
    nn.Conv2d: (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1),
                lambda g: torch.randn(B, 2, 6, 6, generator=g)),
    nn.Embedding: (lambda: nn.Embedding(9, 4), lambda g: torch.randint(0, 9, (B, 5), generator=g)),
    nn.Linear: (lambda: nn.Linear(6, 5), lambda g: torch.randn(B, 6, generator=g)),
    nn.modules.batchnorm._BatchNorm: (lambda: _norm_stats(nn.BatchNorm2d(2)),
                                      lambda g: torch.randn(B, 2, 3, 3, generator=g)),
    nn.GroupNorm: (lambda: _norm_stats(nn.GroupNorm(2, 4)),
                   lambda g: torch.randn(B, 4, 3, 3, generator=g)),
    nn.LayerNorm: (lambda: _norm_stats(nn.LayerNorm(6)), lambda g: torch.randn(B, 3, 6, generator=g)),
    timm_layers.Linear: (lambda: timm_layers.Linear(6, 5), lambda g: torch.randn(B, 6, generator=g)),
    timm_layers.LayerNorm: (lambda: _norm_stats(timm_layers.LayerNorm(6)),
                            lambda g: torch.randn(B, 3, 6, generator=g)),
    timm_layers.BatchNormAct2d: (lambda: _norm_stats(timm_layers.BatchNormAct2d(2)),
                                 lambda g: torch.randn(B, 2, 3, 3, generator=g)),
    timm_layers.GroupNormAct: (lambda: _norm_stats(timm_layers.GroupNormAct(4, 2)),
                               lambda g: torch.randn(B, 4, 3, 3, generator=g)),
    timm_layers.GroupNorm1Act: (lambda: _norm_stats(timm_layers.GroupNorm1Act(4)),
                                lambda g: torch.randn(B, 4, 3, 3, generator=g)),
    timm_layers.LayerNormAct: (lambda: _norm_stats(timm_layers.LayerNormAct(6)),
                               lambda g: torch.randn(B, 3, 6, generator=g)),
}


def registered_types() -> list[type]:
    registry.rule_for(nn.Identity())  # loads the declared providers (timm is imported here)
    return list(registry._RULES)


def test_every_registered_rule_type_has_an_example():
    missing = [f"{t.__module__}.{t.__qualname__}" for t in registered_types() if t not in EXAMPLES]
    assert not missing, f"add an example to EXAMPLES for {missing}"


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=lambda t: f"{t.__module__}.{t.__qualname__}")
@pytest.mark.parametrize("ip_weight", [0.0, 2.0])
def test_every_registered_rule_equals_the_autograd_loop(kind, ip_weight, monkeypatch):
    assert kind in registered_types()
    make_layer, make_x = EXAMPLES[kind]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = make_layer()
    assert registry.rule_for(layer) is registry._RULES[kind]  # its own rule, not a parent's
    x = make_x(gen)
    with torch.no_grad():
        width = layer(x).flatten(1).shape[1]
    model = nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.Linear(width, 3)).double().eval()
    if x.is_floating_point():
        x = x.double()
    g_L = labeled_gradient(model, x[:3], torch.tensor([0, 1, 2]))
    expected = naive_scores(model, x, g_L, list(g_L), ip_weight=ip_weight)
    monkeypatch.setattr(grads.fallback, "per_sample_terms",
                        lambda *a: pytest.fail(f"fallback used for {a[3]}"))
    assert_close(dynamical_scores(model, x, g_L=g_L, ip_weight=ip_weight), expected)
