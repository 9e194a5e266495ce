"""Ray Train with 2 workers (DDP on CPU, gloo) through ``raydal.train.train_round``.

0.5 CPU a worker: the session cluster has 2 CPUs, and leaving one free keeps Ray Data's split
coordinator and any other test's tasks schedulable next to the two workers.
"""
from __future__ import annotations

import math

import pytest
import torch

from raydal import ModelSpec, hooks, load_checkpoint
from raydal.models import read_checkpoint_meta
from raydal.oracle import SimulatedOracle
from raydal.pool import Pool
from raydal.testing.faults import worker_dies_once
from raydal.train import TrainSettings, train_round


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_train_round_with_two_workers(ray_cluster, fashion_mnist, tmp_path):
    pool = Pool(fashion_mnist / "pool.parquet").subsample(600, seed=0,
                                                          path=tmp_path / "pool.parquet")
    # An odd count: an equal split over 2 workers would drop a row; the test set is not split.
    test = Pool(fashion_mnist / "test.parquet").subsample(301, seed=1,
                                                          path=tmp_path / "test.parquet")
    ids = sorted(i for chunk in pool.iter_ids() for i in chunk)[:200]
    labels = SimulatedOracle(fashion_mnist / "truth.parquet").label(ids)
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
    settings = TrainSettings(epochs=8, batch_size=32, num_workers=2, cpus_per_worker=0.5, seed=0)

    out = tmp_path / "checkpoints" / "round-0000"
    metrics = train_round(spec, pool, labels, test.path, settings, out, None,
                          tmp_path / "ray_train", progress=False)

    # it learns: 10 classes (chance 0.1); measured 0.38 on this seed (200 labels, 8 epochs)
    assert metrics["test_accuracy"] >= 0.25, metrics
    assert metrics["test_count"] == 301  # rank 0 evaluates every test row exactly once
    assert math.isfinite(metrics["train_loss"])
    assert out.is_dir() and (out / "model.safetensors").exists()
    model, loaded_spec = load_checkpoint(out)
    assert loaded_spec == spec
    meta = read_checkpoint_meta(out)
    assert meta["num_labeled"] == 200 and meta["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    # both workers' nodes, gathered over the process group: the session cluster has one node
    assert meta["nodes"] == metrics["nodes"] and len(metrics["nodes"]) == 1, metrics["nodes"]
    # the saved weights are the unwrapped module's (no DDP "module." prefix) and trained
    assert not any(k.startswith("module.") for k in model.state_dict())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.zeros(2, 1, 32, 32))).all()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_dead_training_worker_is_restarted_from_the_last_checkpoint(
        ray_cluster, fashion_mnist, tmp_path):
    pool = Pool(fashion_mnist / "pool.parquet").subsample(300, seed=0,
                                                          path=tmp_path / "pool.parquet")
    ids = sorted(i for chunk in pool.iter_ids() for i in chunk)[:64]
    labels = SimulatedOracle(fashion_mnist / "truth.parquet").label(ids)
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
    settings = TrainSettings(epochs=3, batch_size=32, checkpoint_every=1, max_failures=1)
    marker = tmp_path / "worker-died"
    with hooks.registered(worker_dies_once(marker, epoch=2, rank=0)):
        metrics = train_round(spec, pool, labels, str(fashion_mnist / "test.parquet"), settings,
                              tmp_path / "ckpt", None, tmp_path / "ray_train", progress=False)
    assert marker.exists()  # the worker really died
    assert metrics["resumed_from_epoch"] == 1  # restarted from the epoch-1 checkpoint, not 0
    assert metrics["epoch"] == 3 and math.isfinite(metrics["train_loss"])
    load_checkpoint(tmp_path / "ckpt")
