"""A pool source that is not Parquet (an image folder read in place) plugs into select and
train's decoding without touching them: a PoolSource that implements to_dataset, take and
iter_ids."""
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray.cloudpickle
from PIL import Image

import raydal
from raydal.models import ModelSpec, create_model
from raydal.pool import Pool, PoolSource
from raydal.train import decoded_dataset

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


class FolderPool(PoolSource):
    """The PNG files under a local folder, read where they are (no Parquet file is written):
    the three members a source must implement, everything else inherited."""

    image_column = "path"

    def __init__(self, folder: Path):
        super().__init__(folder)
        self._rows = sorted((p.relative_to(folder).as_posix(), str(p))
                            for p in Path(folder).rglob("*.png"))

    def to_dataset(self, columns=None, **read_args):
        import ray.data
        return ray.data.from_items([{"id": i, "path": p} for i, p in self._rows])

    def take(self, ids):
        wanted = set(map(str, ids))
        rows = [r for r in self._rows if r[0] in wanted]
        return pa.table({"id": pa.array([i for i, _ in rows], pa.string()),
                         "path": pa.array([p for _, p in rows], pa.string())})

    def iter_ids(self, batch_size: int = 65536):
        yield [i for i, _ in self._rows]


@pytest.mark.timeout(600)
def test_a_folder_source_selects_and_decodes_like_the_parquet_pool_of_the_same_files(
        ray_cluster, tmp_path, random_images):
    folder = tmp_path / "imgs"
    for k, im in enumerate(random_images(120, size=16, seed=7)):
        (folder / f"c{k % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"c{k % 3}" / f"{k:03d}.png")
    custom = FolderPool(folder)
    parquet = Pool.from_image_folder(folder, path=tmp_path / "pool.parquet")
    spec = ModelSpec(name="test_resnet", num_classes=3, in_chans=1, img_size=16)
    model = create_model(spec, seed=0).eval()
    labels = {i: int(i[1]) for i in sorted(i for c in parquet.iter_ids() for i in c)[:12]}

    picks = [raydal.select(p, model, "dynamicAL", budget=15, labeled=labels, num_actors=2,
                           batch_size=32, input_spec=spec.input_spec, progress=False,
                           strategy_options={"ip_weight": 2.0}) for p in (custom, parquet)]
    assert picks[0].ids == picks[1].ids  # scores: float32 sums over other batch splits
    np.testing.assert_allclose(picks[0].scores, picks[1].scores, rtol=1e-5)
    assert picks[0].num_scored == 120 - len(labels)

    rows = [sorted(decoded_dataset(p, spec.input_spec, labels).take_all(),
                   key=lambda r: (r["label"], r["x"].tobytes())) for p in (custom, parquet)]
    assert len(rows[0]) == len(labels)
    for a, b in zip(*rows):
        assert a["label"] == b["label"] and np.array_equal(a["x"], b["x"])
