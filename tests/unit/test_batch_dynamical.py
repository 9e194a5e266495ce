"""Batch-aware dynamicAL: the gradient sketch equals an explicit projection of per-sample
gradients from a plain autograd loop (float64) over every parameter, whichever rule (or the
fallback) covers it, its inner products are unbiased, a user's registered rule reaches it, and
the greedy pick is the same for any sharding of the pool."""
import logging

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring import create_strategy, grads, sketch
from raydal.scoring.batch_dynamical import diverse_greedy
from raydal.scoring.diversity import sharded_pick, StreamingCandidates
from raydal.scoring.sketch import dense_directions, directions, gradient_sketch


def tiny_resnet():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", in_chans=1, num_classes=10).double().eval()


def per_sample_grads(model, x):
    """{param name: (B, *shape)} pseudo-label gradients, one autograd call per sample."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = {n: [] for n in params}
    for i in range(len(x)):
        logits = model(x[i:i + 1])
        grads = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)),
                                    list(params.values()))
        for n, g in zip(params, grads):
            out[n].append(g)
    return {n: torch.stack(g) for n, g in out.items()}


def explicit_sketch(grads, dim, seed):
    """sum over parameters and directions d_j of <d_j, grad_u>, / sqrt(dim), the directions
    built densely."""
    total = 0
    for name, g in grads.items():
        d = dense_directions(directions(name, g.shape[1:], dim, seed), g.shape[1:])
        total = total + g.flatten(1) @ d.flatten(1).T
    return total / dim ** 0.5


def test_sketch_equals_explicit_projection_of_per_sample_gradients():
    model = tiny_resnet()
    x = torch.randn(5, 1, 32, 32, dtype=torch.float64)
    got = gradient_sketch(model, x, dim=16, seed=3)
    grads_ = per_sample_grads(model, x)
    assert any(".bn" in n for n in grads_)  # BatchNorm's parameters are sketched too
    want = explicit_sketch(grads_, 16, 3)
    assert got.shape == (5, 16) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # a sample's sketch does not depend on its batch
    torch.testing.assert_close(gradient_sketch(model, x[2:3], dim=16, seed=3), got[2:3],
                               rtol=1e-9, atol=1e-12)
    # params="head": the classifier's parameters alone, as dynamicAL's scores
    head = {n: g for n, g in grads_.items() if n.startswith("fc.")}
    torch.testing.assert_close(gradient_sketch(model, x, dim=16, seed=3, params="head"),
                               explicit_sketch(head, 16, 3), rtol=1e-9, atol=1e-12)


class Odd(nn.Module):
    """Every other parameter route: Embedding (own projection), LayerNorm (blocks through its
    rule), a grouped and a padded-mode conv (materialised projection), a loose batch-broadcast
    parameter, a parameter no rule covers (the fallback's vmap) and a 3-d LayerNorm weight."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 6, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, 4, 6))
        self.ln = nn.LayerNorm(6)
        self.conv = nn.Conv1d(4, 4, 3, groups=2, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv1d(4, 4, 3, padding="same", padding_mode="reflect")
        self.ln2 = nn.LayerNorm((4, 6))
        self.free = nn.Parameter(torch.randn(6))  # used outside any module with a rule
        self.fc = nn.Linear(24, 5)

    def forward(self, idx):
        h = self.ln(self.emb(idx) + self.pos)
        h = self.ln2(torch.tanh(self.conv2(torch.tanh(self.conv(h)))))
        return self.fc((h * self.free).flatten(1))


def test_every_parameter_route_equals_the_explicit_projection(caplog):
    torch.manual_seed(0)
    model = Odd().double().eval()
    x = torch.randint(0, 7, (5, 4))
    with caplog.at_level(logging.WARNING, logger="raydal"):
        got = gradient_sketch(model, x, dim=12, seed=1, chunk_size=2)
    assert any("no per-sample gradient rule" in r.getMessage() and "'free'" in r.getMessage()
               for r in caplog.records)
    torch.testing.assert_close(got, explicit_sketch(per_sample_grads(model, x), 12, 1),
                               rtol=1e-9, atol=1e-12)


def test_sketch_inner_products_are_unbiased():
    model = tiny_resnet()
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    grads_ = per_sample_grads(model, x)
    flat = torch.cat([g.flatten(1) for g in grads_.values()], 1)  # every parameter
    exact = flat @ flat.T
    est = torch.stack([(lambda s: s @ s.T)(gradient_sketch(model, x, dim=64, seed=k))
                       for k in range(40)]).mean(0)
    # 40 x 64 rank-one directions: relative error of the mean well under 15% of the norms
    scale = exact.diagonal().sqrt()
    assert ((est - exact).abs() / scale[:, None] / scale[None, :]).max() < 0.15


class Gate(nn.Module):
    """A user's layer, defined outside the package: y = x sigmoid(w) + shift per channel."""

    def __init__(self, c):
        super().__init__()
        self.w = nn.Parameter(torch.randn(c))
        self.shift = nn.Parameter(torch.randn(c, 1, 1))  # 3-d: rank-one directions

    def forward(self, x):
        return x * torch.sigmoid(self.w).view(1, -1, 1, 1) + self.shift


def gate_grads(m, a, g):
    """{parameter: (B, *shape)} per-sample gradients of a Gate from its input and output grad."""
    sig = torch.sigmoid(m.w)
    return {"w": (g * a).sum((2, 3)) * sig * (1 - sig), "shift": g.sum((2, 3))[..., None, None]}


def gate_terms(m, a, g, wanted):  # terms only: the sketch projects through them (vmap)
    per_sample = gate_grads(m, a, g)
    return [grads.flat_terms(per_sample[p], v) for p, v in wanted.items()]


def gate_terms_no_vmap(m, a, g, wanted):  # an in-place op vmap refuses: one call a direction
    out = []
    for p, v in wanted.items():
        flat = gate_grads(m, a, g)[p].flatten(1)
        inner = None
        if v is not None:
            inner = torch.zeros(len(flat), dtype=flat.dtype)
            inner.add_(flat @ v.reshape(-1))
        out.append(((flat ** 2).sum(1), inner))
    return out


def gate_project(m, a, g, dirs):  # the rule's own sketch contraction
    per_sample = gate_grads(m, a, g)
    return sum(grads.projection(per_sample[p], d) for p, d in dirs.items())


@pytest.mark.parametrize("variant", ["terms", "no_vmap", "project"])
def test_a_registered_user_rule_reaches_every_gradient_strategy(variant, monkeypatch, caplog):
    """A rule registered for a user's layer is what dynamicAL, gradnorm and dynamicAL_batch use
    for its parameters, the fallback never: the sketch equals the explicit projection of the
    exact per-sample gradients (the layer's parameters included) and the scores the exact
    ones, whether the rule brings its own projection or is projected through its terms."""
    monkeypatch.setattr(grads.registry, "_RULES", dict(grads.registry._RULES))
    calls = []
    rule = gate_terms_no_vmap if variant == "no_vmap" else gate_terms
    grads.register_rule(Gate, params=("w", "shift"),
                        project=gate_project if variant == "project" else None)(
        lambda m, a, g, wanted: calls.append(type(m)) or rule(m, a, g, wanted))
    monkeypatch.setattr(grads.fallback, "per_sample_grads",
                        lambda *a: pytest.fail(f"fallback used for {a[3]}"))
    monkeypatch.setattr(sketch, "DENSE_ELEMENTS", 40)  # 4 chunks of 6 dense directions
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), Gate(3), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 4)).double().eval()
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    labeled = [(torch.randn(3, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 3]))]
    exact = per_sample_grads(model, x)
    assert {"1.w", "1.shift"} <= set(exact)

    with caplog.at_level(logging.WARNING, logger="raydal"):
        sk = gradient_sketch(model, x, dim=24, seed=5)
    torch.testing.assert_close(sk, explicit_sketch(exact, 24, 5), rtol=1e-9, atol=1e-12)
    without_gate = explicit_sketch({n: g for n, g in exact.items() if not n.startswith("1.")},
                                   24, 5)
    assert (sk - without_gate).abs().max() > 1e-3 * sk.abs().max()  # the layer is in it
    assert ("vmap cannot run the rule of Gate" in caplog.text) == (variant == "no_vmap")
    assert bool(calls) == (variant != "project")  # the rule's own projection: no rule call

    flat = torch.cat([g.flatten(1) for g in exact.values()], 1)
    batch = create_strategy("dynamicAL_batch", sketch_dim=24, seed=5)
    for strategy in (create_strategy("dynamicAL"), create_strategy("gradnorm"), batch):
        calls.clear()
        ctx = strategy.prepare(model, labeled) if strategy.needs_labeled else None
        g_L = torch.cat([ctx[n].flatten() for n in exact]) if ctx is not None else 0
        want = (flat ** 2).sum(1) + strategy.ip_weight * (flat @ g_L if ctx is not None else 0)
        if strategy is batch:
            rows = strategy.embed(model, x, [str(i) for i in range(5)], ctx)
            np.testing.assert_allclose(rows[:, 0], want.numpy(), rtol=1e-5)
            np.testing.assert_allclose(rows[:, 1:], sk.numpy(), rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(strategy.score(model, x, None, ctx), want,
                                       rtol=1e-9, atol=1e-12)
        assert Gate in calls


def test_greedy_deducts_alignment_and_zero_diversity_is_top_k():
    scores = np.array([10.0, 9.9, 5.0, 1.0])
    sk = np.array([[2.0, 0], [2.0, 0], [0, 1.0], [0, 0.1]])  # rows 0 and 1 are duplicates
    assert diverse_greedy(scores, sk, 2, diversity=0.0) == [0, 1]
    assert diverse_greedy(scores, sk, 2, diversity=1.0) == [0, 2]  # 9.9 - 2 * 4 < 5
    assert diverse_greedy(scores, sk, 4, diversity=1.0, chunk=2) == [0, 1, 2, 3]


def random_rows(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.gamma(2.0, size=(n, 1)), rng.normal(size=(n, dim))],
                          axis=1).astype(np.float32)


@pytest.mark.parametrize("batch", [7, 64, 500])
def test_sharded_pick_equals_single_process(batch):
    strategy = create_strategy("dynamicAL_batch", diversity=0.5, oversample=2)
    ids = np.array([f"{i:05d}" for i in range(500)])
    feats = random_rows(500, 8)
    feats[100:110, 0] = feats[5, 0]  # ties broken by id
    exact = strategy.pick(ids, feats, 30, None)
    perm = np.random.default_rng(1).permutation(500)
    for max_rows in (None, 60):
        assert sharded_pick(strategy, ids[perm], feats[perm], 30, None, batch, max_rows) == exact
    assert len(set(exact)) == 30


def test_rows_delivered_twice_are_picked_once():
    strategy = create_strategy("dynamicAL_batch", diversity=0.0)
    ids, feats = np.array([f"{i:03d}" for i in range(50)]), random_rows(50, 4)
    once, twice = (StreamingCandidates(strategy, 10, None) for _ in range(2))
    once.add(ids, feats)
    twice.add(ids, feats)
    twice.add(ids[:20], feats[:20])
    assert twice.result()[0].tolist() == once.result()[0].tolist()
    assert len(set(once.result()[0].tolist())) == 10


def test_embed_rows_are_exact_scores_and_sketches():
    model = tiny_resnet().float()
    x = torch.randn(6, 1, 32, 32)
    labeled = [(torch.randn(8, 1, 32, 32), torch.arange(8) % 10)]
    strategy = create_strategy("dynamicAL_batch", sketch_dim=8)
    ctx = strategy.prepare(model, labeled)
    rows = strategy.embed(model, x, [str(i) for i in range(6)], ctx)
    plain = create_strategy("dynamicAL")
    np.testing.assert_allclose(rows[:, 0], plain.score(model, x, None, plain.prepare(model, labeled))
                               .numpy(), rtol=1e-5)
    assert rows.shape == (6, 9)


@pytest.mark.parametrize("bad", [{"diversity": -1}, {"chunk": 0}, {"sketch_dim": True}])
def test_invalid_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        create_strategy("dynamicAL_batch", **bad)
