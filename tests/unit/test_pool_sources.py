"""What a pool source provides, on the existing sources: Parquet rows of PNG bytes (from_numpy,
from_image_folder(store_bytes=True)) and of file paths (from_image_folder). Pool.image_inputs /
Pool.decode are the one place a batch becomes images; the shape of array pools is recorded."""
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raydal.pool import Pool
from raydal.transforms import InputSpec


@pytest.fixture
def sources(tmp_path, random_images):
    images = random_images(6, size=12, channels=3, seed=3)
    ids = [f"img{i}" for i in range(6)]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, im in zip(ids, images):
        Image.fromarray(im).save(folder / f"{i}.png")
    return images, ids, {
        "numpy": Pool.from_numpy(images, ids=ids, path=tmp_path / "numpy.parquet"),
        "folder-paths": Pool.from_image_folder(folder, path=tmp_path / "paths.parquet"),
        "folder-bytes": Pool.from_image_folder(folder, path=tmp_path / "bytes.parquet",
                                               store_bytes=True)}


def _numpy_batch(pool: Pool) -> dict:
    """A batch as Ray Data's map_batches gives it (batch_format="numpy")."""
    table = pq.read_table(pool.path, columns=pool.columns)
    return {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in pool.columns}


@pytest.mark.parametrize("name", ["numpy", "folder-paths", "folder-bytes"])
def test_every_source_decodes_tables_and_numpy_batches_to_the_same_images(sources, name):
    images, ids, pools = sources
    pool = pools[name]
    spec = InputSpec(3, 12)
    want = {i: im.transpose(2, 0, 1) for i, im in zip(ids, images)}
    id_of = {f"{i}.png": i for i in ids} if name.startswith("folder") else {i: i for i in ids}

    table = pool.take(list(id_of)[:4])
    arr, ok, bad = pool.decode(table, spec)
    assert ok == [0, 1, 2, 3] and bad == []
    for row, x in zip(table.column("id").to_pylist(), arr):
        np.testing.assert_array_equal(x, want[id_of[row]])

    batch = _numpy_batch(pool)
    keep = np.arange(len(batch["id"])) % 2 == 0
    images_in, paths_in = pool.image_inputs(batch, keep)
    assert (images_in is None) == (pool.image_column == "path") != (paths_in is None)
    arr, ok, _ = pool.decode(batch, spec, keep)
    assert len(ok) == keep.sum() == 3
    for row, x in zip(batch["id"][keep], arr):
        np.testing.assert_array_equal(x, want[id_of[row]])


def test_array_pools_record_their_image_shape_and_others_do_not(sources, tmp_path,
                                                                random_images):
    _, _, pools = sources
    assert pools["numpy"].image_shape == (12, 12, 3)
    assert pools["numpy"].input_spec() == InputSpec(in_chans=3, img_size=12)
    # the record survives a subsample and a reopen
    sub = pools["numpy"].subsample(3, seed=0, path=tmp_path / "sub.parquet")
    assert Pool(sub.path).input_spec() == InputSpec(in_chans=3, img_size=12)
    gray = Pool.from_numpy(random_images(4, size=9), path=tmp_path / "gray.parquet")
    assert gray.image_shape == (9, 9, 1) and gray.input_spec() == InputSpec(1, 9)
    # unknown, or not one model input: no spec
    assert pools["folder-paths"].image_shape is None and pools["folder-paths"].input_spec() is None
    wide = Pool.from_numpy(np.zeros((2, 8, 10), np.uint8), path=tmp_path / "wide.parquet")
    rgba = Pool.from_numpy(np.zeros((2, 8, 8, 4), np.uint8), path=tmp_path / "rgba.parquet")
    assert wide.image_shape == (8, 10, 1) and wide.input_spec() is None
    assert rgba.image_shape == (8, 8, 4) and rgba.input_spec() is None


@pytest.mark.parametrize("name", ["numpy", "folder-paths"])
def test_the_file_oracle_exports_every_source_through_image_inputs(sources, name, tmp_path):
    import csv

    import pyarrow as pa

    from raydal.fs import resolve
    from raydal.oracle import export_for_labeling
    images, ids, pools = sources
    pool = pools[name]
    picked = sorted(i for chunk in pool.iter_ids() for i in chunk)[:3]
    selection = pa.table({"id": picked, "score": [3.0, 2.0, 1.0], "rank": [0, 1, 2]})
    out = export_for_labeling(resolve(tmp_path / "run"), 1, selection, pool, None)
    with open(out.path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == picked
    for r in rows:  # each image a person opens shows the pick
        idx = ids.index(r["id"].removesuffix(".png"))
        np.testing.assert_array_equal(np.asarray(Image.open(r["image"])), images[idx])
    if name == "folder-paths":  # the pool's own files, not copies
        assert all(r["image"].startswith(str(tmp_path / "folder")) for r in rows)
