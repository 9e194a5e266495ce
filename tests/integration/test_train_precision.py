"""A training round, in float32 and with bf16 autocast and channels_last (on this machine's CPU),
runs, learns an easy two-class subset of Fashion-MNIST, evaluates, and records its epoch timings:
a stub that does not train fails here."""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from raydal import ModelSpec, load_checkpoint
from raydal.pool import Pool
from raydal.train import TrainSettings, train_round

EASY = (1, 8)  # trouser, bag: far apart even for a tiny network after a few epochs


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mixed_precision, channels_last", [("none", False), ("bf16", True)])
def test_a_training_round_learns(ray_cluster, fashion_mnist, tmp_path, mixed_precision,
                                 channels_last):
    pool = Pool(fashion_mnist / "pool.parquet").subsample(2000, seed=0,
                                                          path=tmp_path / "pool.parquet")
    truth = pq.read_table(fashion_mnist / "truth.parquet")
    in_pool = {i for chunk in pool.iter_ids() for i in chunk}
    labels = {i: y for i, y in zip(truth["id"].to_pylist(), truth["label"].to_pylist())
              if y in EASY and i in in_pool}
    test = pq.read_table(fashion_mnist / "test.parquet")
    test = test.filter(pc.is_in(test["label"], pa.array(EASY, pa.int64()))).slice(0, 400)
    pq.write_table(test, tmp_path / "test.parquet")
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
    settings = TrainSettings(epochs=3, batch_size=32, seed=0, mixed_precision=mixed_precision,
                             channels_last=channels_last)

    out = tmp_path / "ckpt"
    m = train_round(spec, pool, labels, tmp_path / "test.parquet", settings, out, None,
                    tmp_path / "ray_train", progress=False)

    print(f"{mixed_precision} / channels_last={channels_last} round:", {k: m[k] for k in ("test_accuracy", "epoch_seconds",
                                                         "startup_seconds", "seconds")})
    assert m["test_count"] == 400 and math.isfinite(m["train_loss"])
    assert m["test_accuracy"] > 0.85, m  # chance is 0.5 (0.1 if the other 8 classes are guessed)
    assert m["device"] == "cpu"
    assert len(m["epoch_seconds"]) == 3 and all(t > 0 for t in m["epoch_seconds"])
    assert m["epoch_images"] == [len(labels)] * 3, (m["epoch_images"], len(labels))
    model, _ = load_checkpoint(out)  # saved NCHW: loads into a plain model
    assert all(p.is_contiguous() for p in model.parameters())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.zeros(2, 1, 32, 32))).all()

