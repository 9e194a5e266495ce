"""One local Ray cluster for the whole test session, a real S3 server, and small real data."""
from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (2 CPUs) shared by every test that needs Ray; yields its address."""
    import ray
    import ray.data
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def fashion_mnist(tmp_path_factory) -> Path:
    """Fashion-MNIST imported once from the Debian package's original files."""
    from raydal.datasets import prepare_dataset
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist")
    out = tmp_path_factory.mktemp("fashion-mnist")
    prepare_dataset("fashion-mnist", out)
    return out


@pytest.fixture(scope="session")
def random_images():
    def make(n: int, size: int = 28, channels: int | None = None, seed: int = 0) -> np.ndarray:
        shape = (n, size, size) if channels is None else (n, size, size, channels)
        return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return make


@pytest.fixture(scope="session")
def labeled_pool_files():
    """Writes a pool of ``n`` random 28x28 images, its truth (label = index % classes) and a test
    set of the first ``num_test`` rows into a folder; returns the pool's ids."""
    def make(folder: Path, n: int, classes: int, num_test: int) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from raydal.pool import Pool
        x = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        pool = Pool.from_numpy(x, path=folder / "pool.parquet")
        ids = [i for chunk in pool.iter_ids() for i in chunk]
        y = np.arange(n) % classes
        pq.write_table(pa.table({"id": ids, "label": y}), folder / "truth.parquet")
        test = pq.read_table(folder / "pool.parquet").slice(0, num_test)
        pq.write_table(test.append_column("label", pa.array(y[:num_test])),
                       folder / "test.parquet")
        return ids
    return make


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback for the session; yields "host:port".

    Tests reach it with URIs only (``s3_bucket``): credentials, endpoint and region travel in
    the URI, so Ray workers need no environment of their own.
    """
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


_buckets = itertools.count()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new empty bucket; returns its URI (paths inside: ``str(raydal.fs.resolve(uri) / "x")``,
    as a plain suffix would land in the query string)."""
    import pyarrow.fs as pafs
    name = f"raydal-test-{os.getpid()}-{next(_buckets)}"
    pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=s3_server,
                      scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(name)
    return f"s3://testing:testing@{name}?endpoint_override={s3_server}&scheme=http&region=us-east-1"

