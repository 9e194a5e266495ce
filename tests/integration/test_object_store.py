"""Pools and run directories on a real S3 server (moto on loopback) through a real Ray cluster.

Every location is a URI carrying its endpoint and credentials, so the actors, tasks and
training workers reach the store with nothing set in their environment.
"""
import numpy as np
import pyarrow as pa
import pytest

import raydal
from raydal.cli import main
from raydal.config import parse_config
from raydal.fs import resolve
from raydal.labels import LabelLog
from raydal.loop import ActiveLoop
from raydal.merge import top_k
from raydal.models import ModelSpec, checkpoint_exists, create_model, save_checkpoint
from raydal.pool import Pool
from raydal.storage import atomic_write_bytes, atomic_write_parquet, read_json, read_table
from raydal.scoring.uncertainty import hash_uniform
from raydal.transforms import InputSpec, encode_png

pytestmark = pytest.mark.integration
SPEC = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)


def test_select_on_an_s3_pool_gives_the_local_copys_picks(ray_cluster, s3_bucket, tmp_path,
                                                         random_images):
    local = Pool.from_numpy(random_images(150, seed=1), path=tmp_path / "pool.parquet")
    bucket = resolve(s3_bucket)
    atomic_write_bytes(bucket / "pool" / "part-0.parquet", (tmp_path / "pool.parquet").read_bytes())
    remote = Pool(str(bucket / "pool"))
    ckpt = save_checkpoint(create_model(SPEC, seed=0).eval(), SPEC, bucket / "ckpt")
    labels = {f"{i:08d}": i % 10 for i in range(0, 150, 15)}
    picks = [raydal.select(pool, ckpt, "dynamicAL", budget=25, labeled=labels, num_actors=1,
                           batch_size=64, progress=False) for pool in (local, remote)]
    assert picks[1].ids == picks[0].ids and picks[1].num_scored == 140
    np.testing.assert_allclose(picks[1].scores, picks[0].scores, rtol=1e-6)


def test_path_column_of_s3_uris_is_decoded_in_the_actors(ray_cluster, s3_bucket, random_images):
    folder = resolve(s3_bucket) / "images"
    images = random_images(40, seed=2)
    ids = [f"img-{k:03d}" for k in range(40)]
    for i, im in zip(ids, images):
        atomic_write_bytes(folder / f"{i}.png", encode_png(im))
    pool_uri = str(resolve(s3_bucket) / "pool.parquet")
    atomic_write_parquet(pool_uri, pa.table({
        "id": ids + ["img-gone"],
        "path": [str(folder / f"{i}.png") for i in ids + ["img-gone"]]}))
    got = raydal.select(pool_uri, None, "random", budget=10, num_actors=2, batch_size=16,
                        input_spec=InputSpec(1, 28), progress=False)
    expected, _ = top_k(np.asarray(ids), hash_uniform(ids, seed=0).double().numpy(), 10)
    assert got.ids == expected.tolist() and got.num_scored == 40
    assert [i for i, _ in got.skipped] == ["img-gone"]
    assert "cannot read" in got.skipped[0][1]


def loop_config(fashion_mnist, run_dir, rounds):
    return parse_config({
        "name": "s3", "seed": 1, "run_dir": run_dir, "progress": False,
        "data": {"dataset": "fashion-mnist", "prepared_dir": str(fashion_mnist),
                 "pool_subsample": 600, "test_subsample": 200},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "strategy": {"name": "dynamicAL"},
        "loop": {"initial": 40, "per_round": 30, "rounds": rounds},
        "selection": {"num_actors": 2, "batch_size": 128},
        "training": {"epochs": 1, "batch_size": 32},
    })


def test_loop_with_its_run_directory_on_s3_resumes(ray_cluster, s3_bucket, fashion_mnist,
                                                   capsys):
    run_dir = resolve(s3_bucket) / "runs" / "x"
    first = ActiveLoop.from_config(loop_config(fashion_mnist, str(run_dir), rounds=0)).run()
    assert [r["num_labeled"] for r in first] == [40]
    round0 = LabelLog(run_dir / "labels").table()
    assert checkpoint_exists(run_dir / "checkpoints" / "round-0000")
    assert not (run_dir / ".lease.json").exists()  # released
    # resume with one more round: round 0 is reused, round 1 selected from the s3 checkpoint
    rows = ActiveLoop.from_config(loop_config(fashion_mnist, str(run_dir), rounds=1)).run()
    assert [r["num_labeled"] for r in rows] == [40, 70] and rows[0] == first[0]
    labels = LabelLog(run_dir / "labels").table()
    ids = labels.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 70  # none lost, none twice
    assert labels.slice(0, 40).equals(round0)
    picks = read_table(run_dir / "selections" / "round-0001.parquet").column("id").to_pylist()
    assert sorted(i for i, r in zip(ids, labels.column("round").to_pylist()) if r == 1) == \
        sorted(picks)
    assert read_json(run_dir / "state.json")["phase"] == "done"
    assert (run_dir / "report" / "learning_curve.png").info().size > 1000
    assert not (run_dir / "ray_train").files(recursive=True)  # Ray Train's scratch is gone
    assert main(["status", str(run_dir)]) == 0 and main(["report", str(run_dir)]) == 0
    assert "| 1 | 70 |" in capsys.readouterr().out
    assert (run_dir / "report" / "comparison.png").exists()
