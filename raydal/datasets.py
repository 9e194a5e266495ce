"""Importers of real data sets into raydal's pool format, each registered by name.

An imported data set is a folder holding
  pool.parquet   id (string), image (PNG bytes)        -- the unlabeled pool
  truth.parquet  id, label (int64)                     -- ground truth for the simulated oracle,
                                                          kept apart from the pool
  test.parquet   id, image, label                      -- held-out evaluation set
  meta.json      name, num_classes, in_chans, classes
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from raydal.errors import ConfigError
from raydal.fs import Location, Where, resolve
from raydal.registry import Registry
from raydal.storage import atomic_write_json, atomic_write_parquet, read_json
from raydal.transforms import encode_png


def _adopt_dataset(name: str, fn) -> None:
    """An entry point of group ``raydal.datasets`` whose import did not register its function."""
    register_dataset(name, getattr(fn, "default_source", None), getattr(fn, "get", ""))(fn)


def _check_dataset(name: str, fn) -> None:
    if not callable(fn):
        raise ConfigError(f"data set {name!r}: an importer is a function (source folder, out "
                          f"Location, fields) -> meta, got {fn!r:.80}")


#: The data-set importers: built-in ones, ``@register_dataset`` ones and entry points of group
#: ``raydal.datasets``.
DATASETS: Registry[Callable[[Path, Location, dict], dict]] = Registry(
    "data set", "raydal.datasets", adopt=_adopt_dataset, check=_check_dataset)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


#: What the settings of ``prepare_dataset`` are called where the user sets them, for errors.
CONFIG_FIELDS = {"name": "data.dataset", "out": "data.prepared_dir", "source": "data.source"}
CLI_FIELDS = {"name": "NAME", "out": "--out", "source": "--source"}  # ``raydal data``


def register_dataset(name: str, default_source: Path | None = None, get: str = ""):
    """Register importer ``fn(source folder, out Location) -> meta``. default_source: where a
    package installs the files (None: the user must set the source); get: how to obtain them,
    quoted in errors ("{source}" stands for the name of the source setting)."""
    def deco(fn):
        DATASETS.register(name, fn)
        fn.default_source, fn.get = default_source, get
        return fn
    return deco


def list_datasets() -> list[str]:
    return DATASETS.names()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or plain, into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    expected = int(np.prod(shape))
    if body.size != expected:
        raise ValueError(f"{path}: header declares shape {shape} ({expected} values) but the "
                         f"file holds {body.size}; it is truncated or corrupt")
    return body.reshape(shape)


def _find(source: Path, stem: str, get: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).exists():
            return source / name
    raise FileNotFoundError(f"{source / stem}(.gz) not found. {get}")


def _how_to_get(name: str, fields: dict[str, str]) -> str:
    return DATASETS.get(name).get.replace("{source}", fields["source"])


def images_table(images: np.ndarray, ids: list[str], labels: np.ndarray | None = None) -> pa.Table:
    """Pool-format table: id, image (PNG bytes)[, label]."""
    cols = {"id": pa.array(ids, pa.string()),
            "image": pa.array([encode_png(im) for im in images], pa.binary())}
    if labels is not None:
        cols["label"] = pa.array(np.asarray(labels, dtype=np.int64))
    return pa.table(cols)


def _import_idx(source: Path, out: Location, name: str, classes: list[str],
                fields: dict[str, str]) -> dict:
    get = _how_to_get(name, fields)
    train_x = read_idx(_find(source, "train-images-idx3-ubyte", get))
    train_y = read_idx(_find(source, "train-labels-idx1-ubyte", get))
    test_x = read_idx(_find(source, "t10k-images-idx3-ubyte", get))
    test_y = read_idx(_find(source, "t10k-labels-idx1-ubyte", get))
    train_ids = [f"train-{i:05d}" for i in range(len(train_x))]
    test_ids = [f"test-{i:05d}" for i in range(len(test_x))]
    pool = images_table(train_x, train_ids)
    atomic_write_parquet(out / "pool.parquet", pool)
    atomic_write_parquet(out / "truth.parquet", pa.table({
        "id": pa.array(train_ids, pa.string()), "label": pa.array(train_y.astype(np.int64))}))
    atomic_write_parquet(out / "test.parquet", images_table(test_x, test_ids, test_y))
    meta = {"name": name, "num_classes": len(classes), "in_chans": 1, "classes": classes,
            "pool_rows": len(train_ids), "test_rows": len(test_ids), "source": str(source)}
    atomic_write_json(out / "meta.json", meta)  # written last: marks the import complete
    return meta


_IDX_FILES = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz")


@register_dataset("fashion-mnist", default_source=FASHION_MNIST_DIR, get=(
    "Install the data with `apt-get install -y dataset-fashion-mnist` or point {source} at "
    f"a folder holding the original IDX files ({_IDX_FILES})."))
def import_fashion_mnist(source: Path, out: Location, fields: dict[str, str]) -> dict:
    return _import_idx(source, out, "fashion-mnist", FASHION_MNIST_CLASSES, fields)


@register_dataset("mnist", get=(
    "No package installs MNIST: download its four original IDX files "
    f"({_IDX_FILES}, e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) into a folder "
    "and set {source} to it."))
def import_mnist(source: Path, out: Location, fields: dict[str, str]) -> dict:
    return _import_idx(source, out, "mnist", [str(d) for d in range(10)], fields)


def prepare_dataset(name: str, out: Where, source: str | Path | None = None,
                    fields: dict[str, str] = CONFIG_FIELDS) -> dict:
    """Import data set ``name`` into folder ``out`` (local or a URI) once; later calls return
    the recorded meta. ``fields``: the names of these settings in errors (``CONFIG_FIELDS``,
    ``CLI_FIELDS``). ConfigError for an unknown name, an ``out`` that is a file or a source
    that is not set; FileNotFoundError (with how to get them) for missing files."""
    importer = DATASETS.get(name, fields["name"])
    out = resolve(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{fields['out']} {out} is a file; give a folder (raydal writes "
                          "pool.parquet, truth.parquet, test.parquet and meta.json into it)")
    meta = read_json(out / "meta.json")
    if meta is not None and meta.get("name") == name:
        return meta
    src = Path(source).expanduser() if source is not None else importer.default_source
    if src is None:
        raise ConfigError(f"{fields['source']} is not set, and data set {name!r} has no default "
                          f"folder. {_how_to_get(name, fields)}")
    if src.is_file():
        raise ConfigError(f"{fields['source']} {src} is a file; give the folder that holds the "
                          f"original files. {_how_to_get(name, fields)}")
    return importer(src, out, fields)
