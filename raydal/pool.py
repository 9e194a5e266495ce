"""Pool: an unlabeled image pool stored as Parquet with stable, unique string ids.

Rows hold an ``id`` and either encoded image bytes (``image``) or a file path (``path``, a local
path or a URI such as ``s3://bucket/img/0001.png``). The pool itself is a local path or any
pyarrow filesystem URI (``raydal.fs``). A Pool is only a reference to files: it streams
(``to_dataset`` for Ray Data, ``iter_batches`` locally) and is never loaded whole into one
process; images are decoded where they are used, never here.

What a pool source provides is ``PoolSource`` (select, train, the loop and the oracles use
nothing else; docs/custom-pools.md). A source implements three members and inherits the rest:

    to_dataset(columns)  a streaming ray.data.Dataset of ``columns`` (["id", image column], plus
                         "label" when asked for, in a test set)
    take(ids)            a pyarrow Table (id as string, image column) of the rows of ``ids``
    iter_ids()           the ids in chunks (lists of str)

and may override what it knows better than the defaults built on those three:

    path                 str: where the pool is, for messages and the shared-path check
    image_column         "image" (encoded bytes, the default) or "path" (a local path or URI)
    columns              ["id", image column]
    image_inputs(batch)  (images, paths) of a batch of ``to_dataset`` or of ``take``
    decode(batch, spec)  those rows decoded for a model (select and train call this)
    missing_ids(ids)     the ids of ``ids`` not in the pool, sorted
    check_ids()          PoolError on null or duplicate ids; returns the row count
    num_rows, num_bytes  row count; stored size in bytes (sizes Ray Data's blocks; 0: unknown)
    image_shape          (height, width, channels) shared by every image, or None if unknown
    input_spec()         the InputSpec those images give a model, or None if unknown
    fingerprint()        JSON of what the pool's content depends on (files, sizes, times), or
                         None: the loop checks the ids again only when it changes
    subsample(n, seed, path)  a seeded n-row Parquet copy (a ``Pool``)
    close()              delete what the source made for itself

``Pool`` is the Parquet source (``parquet``); ``raydal.webdataset.WebDatasetPool`` reads a folder
of WebDataset tar shards (``webdataset``). Sources are registered by name (``register_pool``, or
an entry point of group ``raydal.pools``), so a config names them as ``data.pool_format``.

A Pool pickles (it is sent to Ray tasks), so a source keeps only picklable state.
"""
from __future__ import annotations

import abc
import atexit
import json
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydal.datasets import images_table
from raydal.errors import PoolError, one_line
from raydal.fs import Location, Where, resolve
from raydal.registry import Registry
from raydal.storage import atomic_write, atomic_write_parquet

#: Temporary pool folders made by this process (deleted by Pool.close or at exit).
_OWNED: set[Path] = set()
atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in list(_OWNED)])
#: A temporary pool folder's name: its process's pid and start time (ms), then mkdtemp's part.
_TEMP_NAME = re.compile(r"raydal-pool-(\d+)-(\d+)-[A-Za-z0-9_]+")


def _started_ms(pid: int) -> int | None:
    """When process ``pid`` started (ms since the epoch), or None if no such process runs."""
    import psutil
    try:
        return int(psutil.Process(pid).create_time() * 1000)
    except psutil.Error:
        return None


def _temporary_folder() -> Path:
    """A new temporary pool folder named by this process, after deleting those whose process
    is gone (killed before its atexit ran: SIGTERM, SIGKILL). A folder is deleted only if its
    name is ours, it belongs to this user, and no process runs with its pid and start time."""
    root = Path(tempfile.gettempdir())
    for d in root.glob("raydal-pool-*"):
        m = _TEMP_NAME.fullmatch(d.name)
        try:
            mine = m and d.is_dir() and not d.is_symlink() and d.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and _started_ms(int(m[1])) != int(m[2]):
            shutil.rmtree(d, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"raydal-pool-{os.getpid()}-{_started_ms(os.getpid())}-",
                                 dir=root))

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
#: Parquet schema metadata of a pool built from an array: JSON [height, width, channels].
IMAGE_SHAPE_KEY = b"raydal.image_shape"


class PoolSource(abc.ABC):
    """An unlabeled image pool with stable, unique string ids (the module docstring lists what a
    source provides). A subclass implements ``to_dataset``, ``take`` and ``iter_ids``, sets
    ``path`` (``PoolSource.__init__`` does) and ``image_column``, and overrides any default it
    can do better (``num_rows``, ``missing_ids``, ``fingerprint``, ...).

    Registered sources are opened from a config by ``open_pool(path, format, options)``:
    ``Options`` is the source's options model (a pydantic model, ``data.pool_options``) or None,
    and ``detect(location)`` says whether a location with no format given is this source's.
    A source pickles (it is sent to Ray tasks): keep only picklable state.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type | None] = None
    image_column: str = "image"

    def __init__(self, path: Where):
        self.path = str(where(path, "pool"))

    @classmethod
    def open(cls, path: Where, options: Any = None) -> "PoolSource":
        """The source at ``path`` with its validated ``options`` (None when it has none)."""
        return cls(path) if options is None else cls(path, options)

    @classmethod
    def detect(cls, location: Location) -> bool:
        """Whether ``location`` (with no ``pool_format`` given) holds this source's files."""
        return False

    # ---- what a source implements ------------------------------------------------------------
    @abc.abstractmethod
    def to_dataset(self, columns: Sequence[str] | None = None, **read_args):
        """A streaming ``ray.data.Dataset`` of ``columns`` (default ``self.columns``)."""

    @abc.abstractmethod
    def take(self, ids: Iterable[str]) -> pa.Table:
        """The rows of ``ids`` that the pool has: ``id`` (string) and the image column."""

    @abc.abstractmethod
    def iter_ids(self, batch_size: int = 65536) -> Iterator[list[str]]:
        """Every id, as strings, in chunks of at most ``batch_size``."""

    # ---- defaults built on those -------------------------------------------------------------
    def __enter__(self) -> "PoolSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete what the source made for itself (default: nothing)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    @property
    def columns(self) -> list[str]:
        return ["id", self.image_column]

    @property
    def num_rows(self) -> int:
        return sum(len(chunk) for chunk in self.iter_ids())

    @property
    def num_bytes(self) -> int:
        """Stored size in bytes; 0 when unknown (Ray Data then sizes blocks by rows)."""
        return 0

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(height, width, channels) of every image when the pool knows it, else None."""
        return None

    def fingerprint(self) -> Any:
        """JSON-able value that changes when the pool's content does (None: unknown, the ids
        are checked on every run)."""
        return None

    def input_spec(self):
        """``InputSpec(channels, size)`` that feeds the images to a model as they are (no
        resize), when every image has one known square shape with 1 or 3 channels; else None."""
        from raydal.transforms import InputSpec
        shape = self.image_shape
        if shape is None or shape[0] != shape[1] or shape[2] not in (1, 3):
            return None
        return InputSpec(in_chans=shape[2], img_size=shape[0])

    def image_inputs(self, batch: Mapping[str, Any] | pa.Table, keep: np.ndarray | None = None
                     ) -> tuple[Sequence | None, Sequence | None]:
        """(images, paths) of the rows of ``batch`` for ``transforms.decode_rows``: one is the
        image column (encoded bytes, or paths/URIs), the other None.

        batch: a numpy batch of ``to_dataset`` (column -> array) or a Table from ``take``;
        keep: a boolean mask of the rows wanted (default all).
        """
        col = batch[self.image_column]
        if isinstance(col, (pa.Array, pa.ChunkedArray)):
            col = np.asarray(col.to_pylist(), dtype=object)
        if keep is not None:
            col = col[keep]
        return (col, None) if self.image_column == "image" else (None, col)

    def decode(self, batch: Mapping[str, Any] | pa.Table, spec, keep: np.ndarray | None = None
               ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Decode the (kept) rows of ``batch`` for a model of InputSpec ``spec``:
        (N_ok, C, S, S) uint8, indices of the good rows, (index, reason) of the bad ones."""
        from raydal.transforms import decode_rows
        return decode_rows(*self.image_inputs(batch, keep), spec)

    def missing_ids(self, ids: Iterable[str]) -> list[str]:
        """The ids of ``ids`` that no row of the pool has, sorted (one scan of the ids)."""
        wanted = set(map(str, ids))
        for chunk in self.iter_ids():
            wanted.difference_update(chunk)
        return sorted(wanted)

    def check_ids(self) -> int:
        """Raise PoolError on null or duplicate ids; return the row count."""
        seen: set[str] = set()
        for chunk in self.iter_ids():
            for v in chunk:
                if v is None:
                    raise PoolError(f"pool {self.path} has rows without an id; give every row "
                                    "a unique id")
                if v in seen:
                    raise PoolError(f"pool {self.path} has duplicate id {v!r}; ids must be unique")
                seen.add(v)
        return len(seen)

    def subsample(self, n: int, seed: int, path: Where) -> "Pool":
        """Seeded subset of ``n`` rows written as a Parquet pool to ``path`` (kept if it already
        exists): the rows ``take`` gives, so the ids stay the source's."""
        if resolve(path).exists():
            return Pool(path)
        ids = [i for chunk in self.iter_ids() for i in chunk]
        if n > len(ids):
            raise PoolError(f"cannot subsample {n} rows from a pool of {len(ids)}")
        chosen = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
        atomic_write_parquet(path, self._subset([ids[i] for i in chosen]))
        return Pool(path)

    def _subset(self, ids: list[str]) -> pa.Table:
        """The table ``subsample`` writes for these ids: ``take``'s rows, sorted by id."""
        return self.take(ids).sort_by("id")


class Pool(PoolSource):
    """Reference to a Parquet pool (one file or a folder of files): the ``parquet`` source.

    path: Parquet file or folder, a local path or a pyarrow filesystem URI (``s3://bucket/pool/``,
    ``gs://...``, ``file:///...``; options in the query, e.g. ``?endpoint_override=host:9000``).
    The pool needs a string-convertible ``id`` column and one of ``image`` (binary) or ``path``
    (string) columns. A Pool pickles with its filesystem: Ray tasks read the same store.
    """

    def __init__(self, path: Where):
        super().__init__(path)
        self.location = resolve(path)
        if not self.location.exists():
            raise PoolError(f"pool {self.path} does not exist")
        self._owned_dir: Path | None = None  # a temporary folder this process made and deletes
        if self.location.is_dir() and not self.files:
            raise PoolError(f"pool {self.path} is a folder without Parquet files (*.parquet); "
                            "give a Parquet file or a folder of them")
        try:
            schema = self._dataset().schema
        except (pa.ArrowException, OSError) as e:
            raise PoolError(f"pool {self.path} is not Parquet ({one_line(str(e))[:300]}); give a "
                            "Parquet file, or a folder of them, with columns id and image|path "
                            "(Pool.from_numpy and Pool.from_image_folder build one)") from None
        names = schema.names
        if "id" not in names:
            raise PoolError(f"pool {self.path} has no 'id' column (columns: {names}); "
                            "every row needs a stable unique id")
        if "image" in names:
            self.image_column = "image"
        elif "path" in names:
            self.image_column = "path"
        else:
            raise PoolError(f"pool {self.path} needs an 'image' (bytes) or 'path' column; "
                            f"it has {names}")
        kind = schema.field(self.image_column).type
        wanted = ((pa.types.is_binary, pa.types.is_large_binary) if self.image_column == "image"
                  else (pa.types.is_string, pa.types.is_large_string))
        if not any(ok(kind) for ok in wanted):
            raise PoolError(
                f"pool {self.path}: column {self.image_column!r} is {kind}; expected "
                + ("binary (encoded PNG/JPEG bytes; build pools of arrays with Pool.from_numpy)"
                   if self.image_column == "image" else "string (file paths or URIs)"))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_owned_dir": None}  # a copy elsewhere owns nothing

    def close(self) -> None:
        """Delete the temporary folder of a pool built without ``path=`` (else nothing)."""
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            _OWNED.discard(self._owned_dir)
            self._owned_dir = None

    def _own(self, folder: Path | None) -> "Pool":
        if folder is not None:
            self._owned_dir = folder
            _OWNED.add(folder)
        return self

    def __repr__(self) -> str:
        return f"Pool({self.path!r}, rows={self.num_rows})"

    def _dataset(self) -> pads.Dataset:
        if self.location.is_dir():  # its Parquet files only, as Ray Data reads a folder
            return pads.dataset([f.path for f in self.files], filesystem=self.location.fs,
                                format="parquet")
        return pads.dataset(self.location.path, filesystem=self.location.fs, format="parquet")

    @property
    def num_rows(self) -> int:
        return self._dataset().count_rows()

    @property
    def files(self) -> list[pafs.FileInfo]:
        """The Parquet files of the pool (path, size, mtime_ns), sorted by path: in a folder, the
        files named *.parquet but not hidden (.name, _name), as Ray Data and pyarrow read it."""
        if not self.location.is_dir():
            return [self.location.info()]
        return [f for f in self.location.files(recursive=True) if f.path.endswith(".parquet")
                and not posixpath.basename(f.path).startswith((".", "_"))]

    @property
    def num_bytes(self) -> int:
        """Size of the Parquet files in storage."""
        return sum(f.size for f in self.files)

    def fingerprint(self) -> Any:
        """The Parquet files (path, size, mtime_ns): a rewritten file changes it."""
        return [[f.path, f.size, f.mtime_ns] for f in self.files]

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(height, width, channels) of every image when the pool records it (one built by
        ``from_numpy``), else None."""
        raw = (self._dataset().schema.metadata or {}).get(IMAGE_SHAPE_KEY)
        return tuple(json.loads(raw)) if raw else None

    def to_dataset(self, columns: Sequence[str] | None = None, **read_args):
        """A streaming ``ray.data.Dataset`` of (id, image|path) or of ``columns``.

        Read by Ray Data's V1 Parquet datasource: Ray 2.60's default (V2) starts 32 footer-reader
        actors for every read, which took 6-8 s before the first block of a 128-file pool on a
        2-CPU node; V1 gave its first block in 0.2-0.7 s (benchmarks/selection_scale.py).
        """
        import ray.data
        ctx = ray.data.DataContext.get_current()
        v2 = getattr(ctx, "use_datasource_v2", None)  # the switch exists from Ray 2.5x on
        if v2 is not None:
            ctx.use_datasource_v2 = False
        try:
            return ray.data.read_parquet(self.location.path, filesystem=self.location.fs,
                                         columns=list(columns or self.columns), **read_args)
        finally:
            if v2 is not None:
                ctx.use_datasource_v2 = v2

    def iter_batches(self, columns: Sequence[str] | None = None,
                     batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """Stream record batches in this process (ids only by default)."""
        yield from self._dataset().to_batches(columns=list(columns or ["id"]),
                                              batch_size=batch_size)

    def iter_ids(self, batch_size: int = 65536) -> Iterator[list[str]]:
        for batch in self.iter_batches(["id"], batch_size):
            yield [str(v) for v in batch.column(0).to_pylist()]

    def take(self, ids: Iterable[str]) -> pa.Table:
        """Rows whose id is in ``ids`` (a filtered scan: only matching rows are kept)."""
        wanted = pa.array(sorted(set(ids)), pa.string())
        table = self._dataset().to_table(
            columns=self.columns, filter=pc.field("id").cast(pa.string()).isin(wanted))
        return table.set_column(0, "id", pc.cast(table.column("id"), pa.string()))

    def missing_ids(self, ids: Iterable[str]) -> list[str]:
        """The ids of ``ids`` that no row of the pool has, sorted (an id-only filtered scan)."""
        wanted = sorted(set(map(str, ids)))
        found = self._dataset().to_table(
            columns=["id"], filter=pc.field("id").cast(pa.string()).isin(pa.array(wanted,
                                                                                  pa.string())))
        have = set(map(str, found.column("id").to_pylist()))
        return [i for i in wanted if i not in have]

    def check_ids(self) -> int:
        """Raise PoolError on null or duplicate ids; return the row count."""
        seen: set[str] = set()
        n = 0
        for batch in self.iter_batches(["id"]):
            col = batch.column(0)
            if col.null_count:
                raise PoolError(f"pool {self.path} has {col.null_count} rows without an id; "
                                "give every row a unique id")
            for v in col.to_pylist():
                v = str(v)
                if v in seen:
                    raise PoolError(f"pool {self.path} has duplicate id {v!r}; ids must be unique")
                seen.add(v)
            n += len(col)
        return n

    def _subset(self, ids: list[str]) -> pa.Table:
        """Every column of the chosen rows (labels included), in the pool's order."""
        return self._dataset().to_table(filter=pc.field("id").cast(pa.string()).isin(
            pa.array(ids, pa.string())))

    # ---- builders ----------------------------------------------------------------------------
    @classmethod
    def from_parquet(cls, path: Where) -> "Pool":
        return cls(path)

    @classmethod
    def from_numpy(cls, images: np.ndarray, ids: Sequence[str] | None = None,
                   path: Where | None = None) -> "Pool":
        """images: (N, H, W) or (N, H, W, C) uint8 with C in 1, 3, 4; ids default to
        '00000000'.. in order. path: where to write the pool (local or a URI); default a
        temporary folder that is deleted by ``close()``, at the end of a ``with`` block, or
        when this process exits."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or not images.size:
            raise PoolError(f"images must be a non-empty uint8 array of shape (N, H, W) or "
                            f"(N, H, W, C), got {images.dtype} {images.shape}"
                            + ("; convert with images.astype(np.uint8)" if images.dtype != np.uint8
                               else ""))
        if images.ndim == 4 and images.shape[-1] not in (1, 3, 4):
            hint = (f"; it looks channel-first (N, C, H, W): pass images.transpose(0, 2, 3, 1)"
                    if images.shape[1] in (1, 3, 4) else "")
            raise PoolError(f"images of shape {images.shape} have {images.shape[-1]} channels "
                            f"in the last axis; expected 1, 3 or 4 (N, H, W, C){hint}")
        if ids is None:
            ids = [f"{i:08d}" for i in range(len(images))]
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise PoolError(f"ids must be a list of {len(images)} ids (one a row), got "
                            f"{ids!r:.60} (a {type(ids).__name__})")
        ids = [str(i) for i in ids]
        if len(ids) != len(images):
            raise PoolError(f"{len(ids)} ids for {len(images)} images")
        if len(set(ids)) != len(ids):
            raise PoolError("ids must be unique")
        check_output(path)
        owned = None if path else _temporary_folder()
        path = path or owned / "pool.parquet"

        shape = list(images.shape[1:3]) + [images.shape[3] if images.ndim == 4 else 1]
        schema = images_table(images[:1], ids[:1]).schema.with_metadata(
            {IMAGE_SHAPE_KEY: json.dumps(shape).encode()})

        def write(tmp: Path) -> None:
            with pq.ParquetWriter(tmp, schema) as w:
                for s in range(0, len(images), 1024):
                    w.write_table(images_table(images[s:s + 1024], ids[s:s + 1024]))
        return cls(atomic_write(path, write))._own(owned)

    @classmethod
    def from_image_folder(cls, folder: Where, path: Where | None = None,
                          store_bytes: bool = False) -> "Pool":
        """A pool of every image file under ``folder`` (recursively; ImageNet or flat layout).

        folder and path: local paths or URIs. ids are paths relative to ``folder``; rows hold
        absolute paths or URIs (or the bytes if ``store_bytes``: read here, one file at a
        time). Without ``path`` the pool goes to a temporary folder that is deleted by
        ``close()``, at the end of a ``with`` block, or when this process exits. Class names
        of an ImageNet layout are available from ``labels_from_folder_names``.
        """
        folder = resolve(where(folder, "folder"))
        if folder.exists() and not folder.is_dir():
            raise PoolError(f"folder {folder} is a file; give the folder of the image files")
        check_output(path)
        files = [f for f in folder.files(recursive=True)
                 if posixpath.splitext(f.path)[1].lower() in IMAGE_SUFFIXES]
        if not files:
            raise PoolError(f"no image files ({sorted(IMAGE_SUFFIXES)}) under {folder}")
        owned = None if path else _temporary_folder()
        path = path or owned / "pool.parquet"
        rel = [posixpath.relpath(f.path, folder.path) for f in files]
        if store_bytes:
            col = ("image", pa.array([(folder / r).read_bytes() for r in rel], pa.binary()))
        else:
            col = ("path", pa.array([str(folder / r) for r in rel], pa.string()))
        return cls(atomic_write_parquet(path, pa.table({"id": pa.array(rel, pa.string()),
                                                        col[0]: col[1]})))._own(owned)


def where(value: Any, name: str) -> Where:
    """``value`` if it names a location (a local path or a URI), else PoolError naming
    ``name``."""
    if isinstance(value, (str, os.PathLike, Location)):
        return value
    raise PoolError(f"{name} must be a local path or a URI (a str or pathlib.Path), got "
                    f"{value!r:.60} (a {type(value).__name__})")


def output_problem(path: Where) -> str | None:
    """Why a file cannot be written at ``path``, or None: a folder is there, or (a local path) a
    file is where one of its folders must be made."""
    loc = resolve(path)
    if loc.is_dir():
        return "is a folder; give a file name in it, such as .../out.parquet"
    if loc.is_local:
        parent = next(p for p in loc.local_path.parents if p.exists())
        if not parent.is_dir():
            return f"cannot be made: {parent} is a file, not a folder"
    return None


def check_output(path: Where | None) -> None:
    """PoolError for a ``path=`` of a pool builder that cannot be written (see
    ``output_problem``); None (a temporary folder) passes."""
    if path is not None:
        problem = output_problem(where(path, "path"))
        if problem:
            raise PoolError(f"path={str(path)!r} {problem}")


def labels_from_folder_names(pool: Pool) -> tuple[pa.Table, list[str]]:
    """For an ImageNet-layout pool (``class/file``): (id, label) table and sorted class names."""
    ids = [i for chunk in pool.iter_ids() for i in chunk]
    names = [i.split("/", 1)[0] if "/" in i else None for i in ids]
    if any(n is None for n in names):
        raise PoolError("not an ImageNet layout: some images are not inside a class folder")
    classes = sorted(set(names))
    index = {c: k for k, c in enumerate(classes)}
    return pa.table({"id": pa.array(ids, pa.string()),
                     "label": pa.array([index[n] for n in names], pa.int64())}), classes


# ---- the registry of pool sources -------------------------------------------------------------
#: The pool sources: parquet, webdataset, ``@register_pool`` ones and entry points of group
#: ``raydal.pools``.
POOLS: Registry[type[PoolSource]] = Registry("pool source", "raydal.pools",
                                             builtin=("raydal.webdataset",), base=PoolSource)


def register_pool(name: str):
    """Class decorator: make a ``PoolSource`` subclass available as ``data.pool_format: name``
    (and to ``open_pool``); ConfigError for a name another source has."""
    return POOLS.register(name)


def list_pools() -> list[str]:
    return POOLS.names()


register_pool("parquet")(Pool)


def pool_format(path: Where) -> str:
    """The registered source that claims ``path`` (``PoolSource.detect``), else parquet."""
    location = resolve(where(path, "pool"))
    for name in POOLS.names():
        if name != "parquet" and POOLS.get(name).detect(location):
            return name
    return "parquet"


def open_pool(path: Where | PoolSource, format: str | None = None, options: Any = None,
              field: str = "data.pool_format", options_field: str = "data.pool_options"
              ) -> PoolSource:
    """The pool at ``path`` read by registered source ``format`` (None: ``pool_format(path)``)
    with its ``options`` (a mapping checked by the source's options model); a PoolSource is
    returned as it is. ConfigError for an unknown format or bad options, naming ``field`` or
    ``options_field`` (where the user wrote them)."""
    if isinstance(path, PoolSource):
        return path
    from raydal.options import validate_options
    cls = POOLS.get(format or pool_format(path), field)
    opts = validate_options(cls.Options, options, options_field, f"pool source {cls.name!r}")
    return cls.open(path, opts)
