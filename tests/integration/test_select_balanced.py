"""Class-balanced selection on a real local Ray cluster equals the single-process reference
(raydal.merge.balanced_top_k of every unlabeled row's score and predicted class)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import raydal
from raydal.cli import main
from raydal.config import ConfigError
from raydal.merge import balanced_top_k, class_counts, class_quotas
from raydal.models import ModelSpec, create_model, save_checkpoint
from raydal.pool import Pool
from raydal.transforms import to_model_input
from tests.integration.test_select import reference_scores

pytestmark = pytest.mark.integration
SPEC = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)


def patterns(n, seed):
    """(n, 28, 28) uint8 images: a few random waves each, a brightness offset and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    out = []
    for _ in range(n):
        a = rng.normal(size=4)
        fx, fy = rng.uniform(0.05, 0.6, 2)
        ph = rng.uniform(0, 6.3, 2)
        im = (a[0] * np.sin(fx * xx + ph[0]) + a[1] * np.cos(fy * yy + ph[1])
              + a[2] * np.sin(0.3 * (xx + yy)) + 0.3 * rng.normal(size=(28, 28)))
        out.append(np.clip(128 + 40 * im + 60 * a[3], 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random model predicts one or two classes for the whole pool; its head is refitted on
    the pool's standardised features with random weights, so the predicted classes spread
    (quotas differ, and "equal" runs short). Smooth patterns, not pixel noise: their features
    vary enough for the standardisation to stay well conditioned in float32."""
    root = tmp_path_factory.mktemp("select-balanced")
    images = patterns(300, seed=1)
    pool = Pool.from_numpy(images, path=root / "pool.parquet")
    model = create_model(SPEC, seed=0).eval()
    x = to_model_input(images[:, None], SPEC.input_spec)
    head = model.get_classifier()
    with torch.no_grad():
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        mean, std = f.mean(0), f.std(0) + 1e-6
        w = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) / 10
        head.weight.copy_(w / std)
        head.bias.copy_(-(w / std) @ mean)
    ckpt = save_checkpoint(model, SPEC, root / "ckpt")
    labels = {f"{i:08d}": i % 10 for i in range(0, 300, 15)}  # 20 labeled rows
    return pool, model, ckpt, labels


def single_process(pool, model, strategy_name, budget, labels, balance, options=None):
    """Score every unlabeled row in one call in this process, predict its class with the same
    model, and apply the reference."""
    ids, scores, x = reference_scores(pool, model, strategy_name, labels, options)
    with torch.no_grad():
        classes = model.eval()(x).argmax(1).numpy()
    return (*balanced_top_k(ids, scores, classes, budget, balance),
            class_counts(classes, scores))


LAYOUTS = [("fused", 1, 1000, None), ("fused", 2, 7, None), ("staged", 2, 7, None),
           ("staged", 1, 64, 1)]


@pytest.mark.parametrize("strategy, options, balance, budget", [
    ("entropy", {}, "proportional", 25), ("entropy", {}, "equal", 25),
    ("dynamicAL", {"ip_weight": 2.0}, "proportional", 30), ("random", {}, "equal", 120)],
    ids=["entropy-proportional", "entropy-equal", "dynamicAL-proportional",
         "random-equal-short"])
def test_balanced_picks_equal_the_single_process_reference(ray_cluster, setup, strategy,
                                                           options, balance, budget):
    pool, model, ckpt, labels = setup
    want_ids, want_scores, want_classes, counts = single_process(pool, model, strategy, budget,
                                                                 labels, balance, options)
    quotas = class_quotas(counts, budget, balance)
    assert quotas.sum() == budget and np.count_nonzero(counts) >= 5  # the classes spread
    if budget == 120:  # 12 a class: some classes have fewer candidates, the rest refills
        assert np.any(counts < quotas)
    plain = raydal.select(pool, ckpt, strategy, budget=budget, labeled=labels, num_actors=1,
                          batch_size=1000, progress=False, strategy_options=options)
    assert plain.ids != want_ids.tolist()  # the balance changed the picks
    for pipeline, num_actors, batch_size, decode_tasks in LAYOUTS:
        sel = raydal.select(pool, ckpt, strategy, budget=budget, labeled=labels,
                            num_actors=num_actors, batch_size=batch_size, progress=False,
                            strategy_options=options, pipeline=pipeline,
                            decode_tasks=decode_tasks, balance=balance)
        layout = (pipeline, num_actors, batch_size)
        assert sel.ids == want_ids.tolist(), layout
        assert sel.classes == want_classes.tolist(), layout
        assert sel.class_counts == counts.tolist() and sel.balance == balance
        # float32 scoring in other processes and batch shapes: dynamicAL's outlier (a score
        # ~1e3 times the rest) agrees to ~3e-4, every other score to ~1e-6
        np.testing.assert_allclose(sel.scores, want_scores, rtol=1e-3)
        assert sel.num_scored == 300 - len(labels) and len(sel.ids) == budget
    got = np.bincount(sel.classes, minlength=len(quotas))
    short = counts < quotas
    assert np.all(got[short] == counts[short])  # a short class gives all it has
    assert np.all(got[~short] >= quotas[~short])  # the others their quota, some the refill


def test_balance_is_refused_for_a_set_strategy_and_a_bad_name(ray_cluster, setup):
    pool, _, ckpt, labels = setup
    with pytest.raises(ConfigError, match="balance='equal' needs per-sample scores, but "
                                          "strategy 'badge' is set-based"):
        raydal.select(pool, ckpt, "badge", budget=5, labeled=labels, progress=False,
                      balance="equal")
    with pytest.raises(ConfigError, match="balance must be one of 'none', 'proportional', "
                                          "'equal', got 'even'"):
        raydal.select(pool, ckpt, "entropy", budget=5, progress=False, balance="even")
    with pytest.raises(ValueError, match="balance='equal' predicts each candidate's class "
                                         "with the model; pass model="):
        raydal.select(pool, None, "random", budget=5, progress=False, balance="equal",
                      input_spec=SPEC.input_spec)


def test_cli_balance_flag(ray_cluster, setup, tmp_path, capsys):
    pool, model, ckpt, labels = setup
    common = ["select", "--pool", pool.path, "--checkpoint", str(ckpt), "--budget", "20",
              "--num-actors", "1", "--batch-size", "64"]
    assert main([*common, "--strategy", "entropy", "--balance", "equal",
                 "--out", str(tmp_path / "sel.parquet")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_selected"] == 20
    want = single_process(pool, model, "entropy", 20, {}, "equal")[0]
    assert pq.read_table(tmp_path / "sel.parquet").column("id").to_pylist() == want.tolist()
    assert main([*common, "--strategy", "badge", "--balance", "proportional",
                 "--out", str(tmp_path / "badge.parquet")]) != 0
    assert "--balance proportional needs per-sample scores" in capsys.readouterr().err
