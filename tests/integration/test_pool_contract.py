"""One contract run over every registered pool source (as timm's tests run over every model): a
source is tested by being registered. A source not in WRITERS fails here until it gets one.

Each writer stores the same images under the same ids in its source's format; the contract
checks what select, train, the loop and the oracles rely on (raydal/pool.py's docstring)."""
import io
import json
import sys
import tarfile

import numpy as np
import pytest
import ray.cloudpickle
from PIL import Image

from raydal.pool import POOLS, Pool, PoolSource, list_pools, open_pool, pool_format
from raydal.transforms import InputSpec

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDS = [f"k{k:03d}" for k in range(24)]
IMAGES = np.random.default_rng(5).integers(0, 256, (24, 12, 12), dtype=np.uint8)


def _parquet(folder):
    Pool.from_numpy(IMAGES, ids=IDS, path=folder / "pool.parquet")
    return folder / "pool.parquet"


def _webdataset(folder):
    shards = folder / "shards"
    shards.mkdir()
    for s in range(3):
        with tarfile.open(shards / f"{s:04d}.tar", "w") as tar:
            for k in range(s * 8, s * 8 + 8):
                buf = io.BytesIO()
                Image.fromarray(IMAGES[k]).save(buf, format="PNG")
                for suffix, data in (("png", buf.getvalue()), ("cls", b"1")):
                    info = tarfile.TarInfo(f"{IDS[k]}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return shards


#: source name -> writer(folder) -> the path its source opens
WRITERS = {"parquet": _parquet, "webdataset": _webdataset}


@pytest.mark.parametrize("name", list_pools())
def test_every_registered_pool_source_keeps_the_contract(name, ray_cluster, tmp_path):
    assert name in WRITERS, f"pool source {name!r} has no writer here: add one to WRITERS"
    cls = POOLS.get(name)
    assert issubclass(cls, PoolSource) and cls.name == name
    path = WRITERS[name](tmp_path)
    assert pool_format(path) == name  # found without pool_format
    pool = open_pool(path, name)
    assert isinstance(pool, cls) and isinstance(pool.path, str)

    ids = [i for chunk in pool.iter_ids(batch_size=5) for i in chunk]
    assert sorted(ids) == IDS and all(type(i) is str for i in ids)
    assert pool.num_rows == pool.check_ids() == 24
    assert pool.columns == ["id", pool.image_column]
    assert pool.missing_ids(["k001", "nope", "k023"]) == ["nope"]
    spec = InputSpec(in_chans=1, img_size=12)

    def pixels(batch):
        arr, ok, bad = pool.decode(batch, spec)
        assert not bad
        got = [str(i) for i in np.asarray(batch["id"].to_pylist() if hasattr(batch["id"],
                                          "to_pylist") else batch["id"])[ok]]
        return {i: a[0] for i, a in zip(got, arr)}

    taken = pool.take(["k003", "k017", "nope"])
    assert taken.column_names[:2] == pool.columns and sorted(taken.column("id").to_pylist()) == [
        "k003", "k017"]
    for i, a in pixels(taken).items():
        np.testing.assert_array_equal(a, IMAGES[IDS.index(i)])

    clone = ray.cloudpickle.loads(ray.cloudpickle.dumps(pool))  # sent to Ray tasks
    rows = clone.to_dataset().take_all()
    assert sorted(str(r["id"]) for r in rows) == IDS
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in pool.columns}
    decoded = pixels(batch)
    assert sorted(decoded) == IDS
    for i, a in decoded.items():
        np.testing.assert_array_equal(a, IMAGES[IDS.index(i)])

    json.dumps(pool.fingerprint())
    small = pool.subsample(5, seed=1, path=tmp_path / "sub.parquet")
    sub = [i for c in small.iter_ids() for i in c]
    assert len(set(sub)) == 5 and set(sub) <= set(IDS)
    assert small.subsample(5, seed=1, path=tmp_path / "sub.parquet").take(sub).num_rows == 5
