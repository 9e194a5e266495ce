"""The ``webdataset`` pool source: a folder of WebDataset tar shards read in place by Ray Data,
through raydal.select and through a loop built from a config (the code of `raydal run`)."""
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import raydal
from raydal.build import check_config
from raydal.config import parse_config
from raydal.errors import ConfigError, PoolError
from raydal.loop import ActiveLoop
from raydal.models import ModelSpec, create_model
from raydal.pool import Pool
from raydal.webdataset import WebDatasetPool

pytestmark = pytest.mark.integration
N = 60


def _member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 shards of 20 samples (jpg or png, with .cls), plus one corrupt image and one sample
    without an image; and a Parquet pool of the same good images under the same ids."""
    d = tmp_path_factory.mktemp("wds")
    images = np.random.default_rng(9).integers(0, 256, (N, 16, 16), dtype=np.uint8)
    keys = [f"s{k // 20}/img-{k:03d}" for k in range(N)]  # a folder inside the tar is kept
    encoded = []
    for k, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")  # lossless: the Parquet pool has the same
        encoded.append(buf.getvalue())
    (d / "shards").mkdir()
    for s in range(3):
        with tarfile.open(d / "shards" / f"{s:04d}.tar", "w") as tar:
            for k in range(s * 20, s * 20 + 20):
                _member(tar, f"{keys[k]}.png", encoded[k])
                _member(tar, f"{keys[k]}.cls", str(k % 4).encode())
            if s == 1:
                _member(tar, "broken.jpg", b"not a jpeg")
                _member(tar, "no-image.cls", b"2")
    Pool.from_numpy(images, ids=keys, path=d / "pool.parquet")
    return d, keys, images


def test_select_reads_shards_like_the_parquet_pool_and_counts_bad_members(ray_cluster, shards):
    d, keys, _ = shards
    pool = WebDatasetPool(d / "shards")
    assert pool.num_rows == N + 2 and pool.check_ids() == N + 2
    assert set(pool.missing_ids(keys + ["broken", "no-image", "zz"])) == {"zz"}
    truth = pool.class_table()
    assert truth.num_rows == N + 1 and dict(zip(*truth.to_pydict().values()))["no-image"] == 2
    spec = ModelSpec(name="test_resnet", num_classes=4, in_chans=1, img_size=16)
    model = create_model(spec, seed=0).eval()
    labeled = {k: k_ % 4 for k_, k in enumerate(keys[:8])}
    picks = [raydal.select(p, model, "entropy", budget=10, labeled=labeled, num_actors=2,
                           batch_size=16, input_spec=spec.input_spec, progress=False)
             for p in (str(d / "shards"), Pool(d / "pool.parquet"))]  # a path: found as shards
    assert picks[0].ids == picks[1].ids
    np.testing.assert_allclose(picks[0].scores, picks[1].scores, rtol=1e-5)
    assert picks[0].num_scored == N - 8 and picks[1].num_scored == N - 8
    assert sorted(i for i, _ in picks[0].skipped) == ["broken", "no-image"]
    with pytest.raises(PoolError, match="has no WebDataset shards"):
        WebDatasetPool(d / "pool.parquet")


def test_a_loop_runs_on_shards_from_its_config(ray_cluster, shards, tmp_path):
    d, keys, images = shards
    truth = WebDatasetPool(d / "shards").class_table()  # every sample but "broken" has a .cls
    pq.write_table(pa.concat_tables([truth, pa.table({"id": ["broken"], "label": [0]},
                                                     schema=truth.schema)]),
                   tmp_path / "truth.parquet")
    test = pq.read_table(d / "pool.parquet").slice(0, 12)
    pq.write_table(test.append_column("label", pa.array(np.arange(12) % 4)),
                   tmp_path / "test.parquet")
    data = {"dataset": None, "pool": str(d / "shards"), "pool_format": "webdataset",
            "truth": str(tmp_path / "truth.parquet"), "test": str(tmp_path / "test.parquet"),
            "num_classes": 4}
    raw = {"run_dir": str(tmp_path / "run"), "progress": False, "data": data,
           "model": {"name": "test_resnet", "in_chans": 1, "img_size": 16},
           "loop": {"initial": 10, "per_round": 5, "rounds": 0},
           "selection": {"num_actors": 1, "batch_size": 32},
           "training": {"epochs": 1, "batch_size": 5}}
    with pytest.raises(ConfigError, match=r"'data.pool_options.image_key': unknown key; "
                                          r"expected one of \['image_keys', 'class_key'\]"):
        check_config(parse_config({**raw, "data": {**data, "pool_options": {"image_key": []}}}))
    loop = ActiveLoop.from_config(parse_config(raw))
    assert isinstance(loop.parts.data.pool, WebDatasetPool)
    rows = loop.run()
    assert [r["num_labeled"] for r in rows] == [10]
    labels = pq.read_table(tmp_path / "run" / "labels").to_pydict()
    assert set(labels["id"]) <= set(keys)  # the tar keys are the ids; bad samples never picked
    cls = dict(zip(*truth.to_pydict().values()))
    assert all(cls[i] == y for i, y in zip(labels["id"], labels["label"]))
    check = json.loads((tmp_path / "run" / "data" / "pool_check.json").read_text())
    assert [s[0].rsplit("/", 1)[1] for s in check["files"]["shards"]] == [
        "0000.tar", "0001.tar", "0002.tar"]
