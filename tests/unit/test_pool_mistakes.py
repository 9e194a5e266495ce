"""Pools built from arrays: clear errors for arrays in the wrong layout, no temp folders left."""
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydal.pool import Pool, PoolError


def test_channel_first_arrays_are_named(random_images):
    x = random_images(4, size=16, channels=3).transpose(0, 3, 1, 2)  # (N, C, H, W)
    with pytest.raises(PoolError, match=r"channel-first.*transpose\(0, 2, 3, 1\)"):
        Pool.from_numpy(x)
    with pytest.raises(PoolError, match="convert with images.astype"):
        Pool.from_numpy(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(PoolError, match="non-empty"):
        Pool.from_numpy(np.zeros((0, 8, 8), np.uint8))


def test_an_image_column_that_is_not_bytes_is_refused(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "image": [1, 2]}), tmp_path / "p.parquet")
    with pytest.raises(PoolError, match="column 'image' is int64; expected binary"):
        Pool(tmp_path / "p.parquet")
    pq.write_table(pa.table({"id": ["a"], "path": [3.5]}), tmp_path / "q.parquet")
    with pytest.raises(PoolError, match="column 'path' is double; expected string"):
        Pool(tmp_path / "q.parquet")


def test_temporary_pools_are_removed_and_chosen_paths_kept(random_images, tmp_path):
    x = random_images(3, size=8)
    with Pool.from_numpy(x) as pool:
        folder = pool.location.local_path.parent
        copy = pickle.loads(pickle.dumps(pool))  # what a Ray worker receives
        copy.close()  # owns nothing
        assert folder.exists() and copy.num_rows == 3
    assert not folder.exists()
    kept = Pool.from_numpy(x, path=tmp_path / "mine.parquet")
    kept.close()
    assert (tmp_path / "mine.parquet").exists()
    script = ("import numpy as np; from raydal.pool import Pool; "
              "print(Pool.from_numpy(np.zeros((2, 8, 8), np.uint8)).path)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    from pathlib import Path
    assert out.stdout.strip().endswith("pool.parquet") and not Path(out.stdout.strip()).exists()
