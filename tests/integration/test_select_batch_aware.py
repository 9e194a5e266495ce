"""Batch-aware dynamicAL through a real local Ray cluster: any number of actors and any batch
size gives the single-process picks (the driver's greedy sees the exact global top m)."""
import numpy as np
import pyarrow.parquet as pq
import pytest

import raydal
from raydal.models import ModelSpec, create_model, save_checkpoint
from raydal.pool import Pool
from raydal.scoring import create_strategy
from raydal.selection import iter_labeled_batches
from raydal.transforms import decode_rows, to_model_input

pytestmark = pytest.mark.integration
SPEC = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)


def test_sharded_batch_aware_picks_equal_single_process(ray_cluster, random_images, tmp_path):
    pool = Pool.from_numpy(random_images(200, seed=4), path=tmp_path / "pool.parquet")
    model = create_model(SPEC, seed=1).eval()
    ckpt = save_checkpoint(model, SPEC, tmp_path / "ckpt")
    labels = {f"{i:08d}": i % 10 for i in range(0, 200, 10)}
    strategy = create_strategy("dynamicAL_batch", diversity=1.0, oversample=2, sketch_dim=32)
    table = pq.read_table(pool.path)
    ids = np.asarray(table.column("id").to_pylist(), dtype=str)
    keep = ~np.isin(ids, list(labels))
    arr, _, bad = decode_rows([v for v, k in zip(table.column("image").to_pylist(), keep) if k],
                              None, SPEC.input_spec)
    assert not bad
    ctx = strategy.prepare(model, iter_labeled_batches(pool, labels, SPEC.input_spec, 64, "cpu"))
    feats = strategy.embed(model, to_model_input(arr, SPEC.input_spec), list(ids[keep]), ctx)
    expected = strategy.pick(ids[keep], feats, 15, ctx)
    plain = np.argsort(-feats[:, 0], kind="stable")[:15]
    assert set(expected) != set(ids[keep][plain])  # the deduction changed the batch
    for pipeline, num_actors, batch_size in [("fused", 1, 1000), ("fused", 2, 7),
                                             ("staged", 2, 7)]:
        sel = raydal.select(pool, ckpt, "dynamicAL_batch", budget=15, labeled=labels,
                            num_actors=num_actors, batch_size=batch_size, progress=False,
                            pipeline=pipeline,
                            strategy_options={"diversity": 1.0, "oversample": 2,
                                              "sketch_dim": 32})
        assert sel.ids == expected, (pipeline, num_actors, batch_size)
