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


def test_temporary_pools_of_killed_processes_are_swept_and_nothing_else(random_images):
    """A process SIGKILLed (or SIGTERMed) never runs its atexit: its temporary pool is removed
    by the next one made, and only pools whose process is provably gone are."""
    import os
    import shutil
    import tempfile
    from pathlib import Path
    script = ("import os, signal, numpy as np; from raydal.pool import Pool; "
              "print(Pool.from_numpy(np.zeros((2, 8, 8), np.uint8)).path, flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    left = Path(out.stdout.strip()).parent
    assert out.returncode == -9 and left.is_dir()  # the leak
    from raydal.pool import _started_ms
    root = Path(tempfile.gettempdir())
    running = Path(tempfile.mkdtemp(  # this process's own name: it runs, kept
        prefix=f"raydal-pool-{os.getpid()}-{_started_ms(os.getpid())}-", dir=root))
    reused = Path(tempfile.mkdtemp(prefix="raydal-pool-1-0-", dir=root))  # pid 1, not its start
    other = root / f"raydal-pool-{os.getpid()}-x"  # not a name raydal makes: kept
    other.mkdir()
    try:
        with Pool.from_numpy(random_images(2, size=8)) as pool:
            assert pool.location.local_path.exists()
        assert not left.exists() and not reused.exists()
        assert running.exists() and other.exists()
    finally:
        for d in (left, running, reused, other):
            shutil.rmtree(d, ignore_errors=True)


def test_a_pool_that_is_not_parquet_is_named(tmp_path):
    """Found by the fuzz pass (api kind): pyarrow's ArrowInvalid and Python's TypeError escaped."""
    for bad in (3, None, ["a"]):
        with pytest.raises(PoolError, match=r"pool must be a local path or a URI .*got "):
            Pool(bad)
    (tmp_path / "a.csv").write_text("id,image\na,b\n")
    (tmp_path / "empty.parquet").write_bytes(b"")
    for name in ("a.csv", "empty.parquet"):
        with pytest.raises(PoolError, match=rf"pool .*{name} is not Parquet \(.*\); give a "
                                            "Parquet file"):
            Pool(tmp_path / name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match=r"pool .*empty is a folder without Parquet files"):
        Pool(tmp_path / "empty")


def test_a_pool_folder_is_its_parquet_files(tmp_path):
    """As Ray Data reads a folder: *.parquet files that are not hidden. Before, a notes.txt in
    the folder broke the row count and the id scan with an ArrowInvalid, and a hidden
    .x.parquet was counted but never scored."""
    pq.write_table(pa.table({"id": ["a", "b"], "image": [b"x", b"y"]}), tmp_path / "a.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    pq.write_table(pa.table({"id": ["c"], "image": [b"z"]}), tmp_path / ".hidden.parquet")
    pool = Pool.from_parquet(tmp_path)
    assert pool.num_rows == 2 and pool.check_ids() == 2
    assert [f.path.rsplit("/", 1)[1] for f in pool.files] == ["a.parquet"]


def test_pool_builders_name_their_arguments_and_leave_nothing(random_images, tmp_path):
    """Found by the fuzz pass (api kind): zero-size images, ids that are not a list, a path
    that is a folder or under a file, a folder that is a file raised ValueError, TypeError,
    IsADirectoryError, FileExistsError or NotADirectoryError."""
    x = random_images(3, size=8)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(PoolError, match=r"non-empty uint8 array .*got uint8 \(3, 8, 0\)"):
        Pool.from_numpy(x[:, :, :0])
    with pytest.raises(PoolError, match=r"ids must be a list of 3 ids \(one a row\), got 5"):
        Pool.from_numpy(x, ids=5)
    with pytest.raises(PoolError, match=r"path='.*dir' is a folder; give a file name in it"):
        Pool.from_numpy(x, path=tmp_path / "dir")
    with pytest.raises(PoolError, match=r"path='.*file/p.parquet' cannot be made: .*file is a "
                                        "file, not a folder"):
        Pool.from_numpy(x, path=tmp_path / "file" / "p.parquet")
    with pytest.raises(PoolError, match=r"path must be a local path or a URI .*got 5 \(a int\)"):
        Pool.from_numpy(x, path=5)
    with pytest.raises(PoolError, match=r"folder .*file is a file; give the folder of the image"):
        Pool.from_image_folder(tmp_path / "file")
    with pytest.raises(PoolError, match=r"folder must be a local path or a URI .*got None"):
        Pool.from_image_folder(None)
    with pytest.raises(PoolError, match=r"path='.*dir' is a folder"):
        Pool.from_image_folder(tmp_path, path=tmp_path / "dir")
    assert sorted(tmp_path.rglob("*")) == before
