"""One local Ray cluster for the whole test session, and small real data."""
from __future__ import annotations

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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
