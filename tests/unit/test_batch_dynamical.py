"""Batch-aware dynamicAL: the gradient sketch equals an explicit projection of per-sample
gradients from a plain autograd loop (float64), its inner products are unbiased, and the greedy
pick is the same for any sharding of the pool."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from raydal.scoring import create_strategy
from raydal.scoring.batch_dynamical import diverse_greedy
from raydal.scoring.diversity import sharded_pick, StreamingCandidates
from raydal.scoring.sketch import directions, gradient_sketch, sketched_modules


def tiny_resnet():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", in_chans=1, num_classes=10).double().eval()


def per_sample_grads(model, x):
    """{param name: (B, *shape)} pseudo-label gradients, one autograd call per sample."""
    params = dict(model.named_parameters())
    out = {n: [] for n in params}
    for i in range(len(x)):
        logits = model(x[i:i + 1])
        grads = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)),
                                    list(params.values()))
        for n, g in zip(params, grads):
            out[n].append(g)
    return {n: torch.stack(g) for n, g in out.items()}


def explicit_sketch(model, grads, dim, seed):
    """sum over layers and directions j of <r_j s_j^T, W_u> (+ <rb_j, b_u>), / sqrt(dim)."""
    total = 0
    for name, m in sketched_modules(model).items():
        r, s, rb = directions(name, m, dim, seed)
        w = grads[f"{name}.weight"].flatten(2) if s.ndim > 2 else grads[f"{name}.weight"]
        total = total + torch.einsum("bok,jo,jk->bj", w.reshape(len(w), r.shape[1], -1), r,
                                     s.reshape(dim, -1))
        if rb is not None:
            total = total + grads[f"{name}.bias"] @ rb.T
    return total / dim ** 0.5


def test_sketch_equals_explicit_projection_of_per_sample_gradients():
    model = tiny_resnet()
    x = torch.randn(5, 1, 32, 32, dtype=torch.float64)
    got = gradient_sketch(model, x, dim=16, seed=3)
    want = explicit_sketch(model, per_sample_grads(model, x), 16, 3)
    assert got.shape == (5, 16) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # a sample's sketch does not depend on its batch
    torch.testing.assert_close(gradient_sketch(model, x[2:3], dim=16, seed=3), got[2:3],
                               rtol=1e-9, atol=1e-12)


def test_sketch_inner_products_are_unbiased():
    model = tiny_resnet()
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    grads = per_sample_grads(model, x)
    covered = [f"{n}.{p}" for n, m in sketched_modules(model).items()
               for p, _ in m.named_parameters(recurse=False)]
    flat = torch.cat([grads[n].flatten(1) for n in covered], 1)
    exact = flat @ flat.T
    est = torch.stack([(lambda s: s @ s.T)(gradient_sketch(model, x, dim=64, seed=k))
                       for k in range(40)]).mean(0)
    # 40 x 64 rank-one directions: relative error of the mean well under 15% of the norms
    scale = exact.diagonal().sqrt()
    assert ((est - exact).abs() / scale[:, None] / scale[None, :]).max() < 0.15


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
