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


@pytest.mark.parametrize("argv, words", [
    (["data", "fashion-mnst"], "NAME: unknown data set 'fashion-mnst'; expected one of "
                               "['fashion-mnist', 'mnist']. Did you mean 'fashion-mnist'?"),
    (["data", "fashion-mnist", "--out", "FILE"], "--out FILE is a file; give a folder"),
    (["data", "mnist", "--out", "OUT"], "--source is not set, and data set 'mnist' has no "
                                        "default folder. No package installs MNIST"),
    (["data", "mnist", "--out", "OUT", "--source", "FILE"], "--source FILE is a file"),
    (["data", "mnist", "--out", "OUT", "--source", "EMPTY"], "and set --source to it"),
])
def test_raydal_data_mistakes_are_one_line_naming_the_argument(tmp_path, capsys, argv, words):
    """`raydal data` names its own arguments (not the config's fields), exit 2, no traceback."""
    from raydal.cli import main
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    paths = {"FILE": str(tmp_path / "file"), "OUT": str(tmp_path / "out"),
             "EMPTY": str(tmp_path / "empty")}
    assert main([paths.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    for key, value in paths.items():
        words = words.replace(key, value)
    assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "meta.json").exists()
