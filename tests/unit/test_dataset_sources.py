"""Where a data set's files come from: mnist has no default folder (no package installs it), so
its errors say where to get the files; fashion-mnist's name the Debian package."""
import pytest

from raydal.config import ConfigError
from raydal.datasets import prepare_dataset


def test_mnist_without_source_says_where_to_get_the_files(tmp_path):
    with pytest.raises(ConfigError, match=r"data.source is not set.*No package installs MNIST"
                                          r".*train-images-idx3-ubyte.gz.*set data.source"):
        prepare_dataset("mnist", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"empty/train-images-idx3-ubyte\(.gz\) not "
                                                r"found. No package installs MNIST"):
        prepare_dataset("mnist", tmp_path / "out", source=tmp_path / "empty")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_fashion_mnist_missing_files_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        prepare_dataset("fashion-mnist", tmp_path / "out", source=tmp_path / "empty")
