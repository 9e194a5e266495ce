"""Pools, the IDX importer and the shared input transform, on real files."""
import gzip
import io
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raydal.datasets import read_idx
from raydal.pool import Pool, PoolError, labels_from_folder_names
from raydal.transforms import BadImage, InputSpec, decode_rows, encode_png, load_image, to_model_input


def _write_idx(path, array, gz):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_plain_and_gzipped(tmp_path, gz, random_images):
    images = random_images(7, size=5)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    _write_idx(path, images, gz)
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path, random_images):
    path = tmp_path / "x.idx"
    _write_idx(path, random_images(3, size=4), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)
    (tmp_path / "y.idx").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "y.idx")


def test_fashion_mnist_import(fashion_mnist):
    pool = Pool(fashion_mnist / "pool.parquet")
    assert pool.num_rows == 60000 and pool.image_column == "image"
    truth = pq.read_table(fashion_mnist / "truth.parquet")
    assert truth.column_names == ["id", "label"] and truth.num_rows == 60000
    assert "label" not in pq.read_schema(fashion_mnist / "pool.parquet").names  # kept apart
    first = next(pool.iter_batches(["id", "image"], batch_size=1))
    im = load_image(first.column(1)[0].as_py(), None, InputSpec(1, 28))
    assert im.shape == (1, 28, 28) and im.dtype == np.uint8 and im.max() > 0


def test_pool_from_numpy_round_trip(tmp_path, random_images):
    images = random_images(50)
    pool = Pool.from_numpy(images, ids=[f"a{i}" for i in range(50)], path=tmp_path / "p.parquet")
    assert pool.num_rows == 50 and pool.check_ids() == 50
    rows = pool.take(["a3", "a7", "missing"])
    assert sorted(rows.column("id").to_pylist()) == ["a3", "a7"]
    got = load_image(rows.column("image")[0].as_py(), None, InputSpec(1, 28))
    idx = int(rows.column("id")[0].as_py()[1:])
    np.testing.assert_array_equal(got[0], images[idx])
    sub = pool.subsample(10, seed=0, path=tmp_path / "sub.parquet")
    assert sub.num_rows == 10 and set(sub.take(
        [i for c in sub.iter_ids() for i in c]).column("id").to_pylist()) <= {f"a{i}" for i in range(50)}


def test_pool_builders_reject_bad_input(tmp_path, random_images):
    with pytest.raises(PoolError, match="ids must be unique"):
        Pool.from_numpy(random_images(2), ids=["x", "x"], path=tmp_path / "a.parquet")
    with pytest.raises(PoolError, match="uint8"):
        Pool.from_numpy(np.zeros((2, 4, 4), np.float32))
    pq.write_table(pa.table({"id": ["a", "b", "a"], "image": [b"", b"", b""]}), tmp_path / "d.parquet")
    with pytest.raises(PoolError, match="duplicate id 'a'"):
        Pool(tmp_path / "d.parquet").check_ids()
    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "n.parquet")
    with pytest.raises(PoolError, match="no 'id' column"):
        Pool(tmp_path / "n.parquet")


def test_pool_from_image_folder(tmp_path, random_images):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, im in enumerate(random_images(3, size=9, channels=3, seed=len(cls))):
            Image.fromarray(im).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    pool = Pool.from_image_folder(root, path=tmp_path / "pool.parquet")
    assert pool.image_column == "path" and pool.num_rows == 6
    labels, classes = labels_from_folder_names(pool)
    assert classes == ["cat", "dog"]
    assert dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist()))["dog/2.png"] == 1
    stored = Pool.from_image_folder(root, path=tmp_path / "bytes.parquet", store_bytes=True)
    assert stored.image_column == "image"


def test_transform_channels_size_and_normalisation():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    spec1, spec3 = InputSpec(1, 16), InputSpec(3, 16, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    gray = load_image(encode_png(rgb), None, spec1)
    color = load_image(encode_png(rgb[..., 0]), None, spec3)
    assert gray.shape == (1, 16, 16) and color.shape == (3, 16, 16)
    np.testing.assert_array_equal(color[0], color[2])  # grayscale replicated
    x = to_model_input(np.full((2, 3, 4, 4), 255, np.uint8), spec3)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([2.5, 3.0, 3.5]))


def test_bad_images_are_reported_not_raised():
    good = encode_png(np.zeros((8, 8), np.uint8))
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")
    rows = [good, b"", good[: len(good) // 2], b"plain text", buf.getvalue()]
    arr, ok, bad = decode_rows(rows, None, InputSpec(1, 8, max_pixels=1_000_000))
    assert ok == [0] and arr.shape == (1, 1, 8, 8)
    reasons = dict(bad)
    assert "zero-byte" in reasons[1] and "cannot decode" in reasons[2]
    assert "cannot decode" in reasons[3] and "decompression bomb" in reasons[4]
    with pytest.raises(BadImage):
        load_image(b"", None, InputSpec(1, 8))


def test_channel_mismatch_converts_by_default_and_skips_when_asked():
    rgb = encode_png(np.zeros((8, 8, 3), np.uint8))
    gray = encode_png(np.zeros((8, 8), np.uint8))
    assert load_image(rgb, None, InputSpec(1, 8)).shape == (1, 8, 8)
    strict = InputSpec(1, 8, channel_mismatch="skip")
    arr, ok, bad = decode_rows([gray, rgb], None, strict)
    assert ok == [0] and "image has 3 channels (RGB), the model expects 1" in dict(bad)[1]
