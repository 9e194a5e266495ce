"""The ``webdataset`` pool source: a folder of WebDataset tar shards, read in place.

A shard (``0000.tar``, ``0001.tar``, ...) holds samples as consecutive members that share a key,
the member name up to the first dot of its base name: ``cat-17.jpg`` and ``cat-17.cls`` are sample
``cat-17``'s image and class. A sample's id is its key (stable: the shards are never rewritten);
its image is the first member of ``image_keys`` it has (``jpg``, ``png``, ...). A sample without an
image, or whose bytes do not decode, is skipped and counted by select and train like an unreadable
image of any pool. The optional ``cls`` member (an integer class, as text) is the sample's
ground truth: ``WebDatasetPool.class_table()`` gives it as (id, label) for the simulated oracle.

Ray Data reads the shards (``ray.data.read_webdataset``, one read task a shard, streamed); the
driver lists keys and fetches single samples (``take``: oracles, the labeled set) through an index
of member offsets made once per process by reading the tar headers, not the images.

    data: {dataset: null, pool: shards/, pool_format: webdataset, truth: truth.parquet, ...}
"""
from __future__ import annotations

import posixpath
import re
import tarfile
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from raydal.errors import PoolError, one_line
from raydal.fs import Location, Where, resolve
from raydal.pool import PoolSource, register_pool

#: Ray's split of a member name into (key, suffix): the key ends at the base name's first dot.
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_IMAGE_KEYS = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "gif"]


class WebDatasetOptions(BaseModel):
    """``data.pool_options`` of ``pool_format: webdataset``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_keys: list[str] = Field(default_factory=lambda: list(_IMAGE_KEYS), description=(
        "member suffixes that hold a sample's encoded image, in order of preference"))
    class_key: str = Field("cls", description="member suffix of a sample's integer class")

    @field_validator("image_keys")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v or not all(isinstance(k, str) and k and not k.startswith(".") for k in v):
            raise ValueError(f"got {v!r}; expected a non-empty list of suffixes without the dot, "
                             "such as ['jpg', 'png']")
        return v


@register_pool("webdataset")
class WebDatasetPool(PoolSource):
    """The samples of the ``*.tar`` shards of a folder (or of one ``.tar`` file), local or at a
    URI; ids are the samples' keys."""

    Options = WebDatasetOptions
    image_column = "image"

    def __init__(self, path: Where, options: WebDatasetOptions | None = None):
        super().__init__(path)
        self.options = options or WebDatasetOptions()
        self.location = resolve(path)
        if not self.location.exists():
            raise PoolError(f"pool {self.path} does not exist")
        self.shards = self._list_shards()
        if not self.shards:
            raise PoolError(f"pool {self.path} has no WebDataset shards (*.tar); give a folder of "
                            "tar files whose members are <key>.jpg|png[, <key>.cls]")
        self._index: dict[str, tuple[int, dict[str, tuple[int, int]]]] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_index": None}  # rebuilt where it is needed, not shipped

    @classmethod
    def detect(cls, location: Location) -> bool:
        """A ``.tar`` file, or a folder with tar files and no Parquet ones."""
        if not location.is_dir():
            return location.path.endswith(".tar")
        names = [f.path for f in location.files(recursive=True)]
        return any(n.endswith(".tar") for n in names) and not any(
            n.endswith(".parquet") for n in names)

    def _list_shards(self) -> list[tuple[str, int, int | None]]:
        """(path, size, mtime_ns) of each shard, sorted by path (plain tuples: a Pool pickles)."""
        infos = [self.location.info()] if not self.location.is_dir() else \
            self.location.files(recursive=True)
        infos = [f for f in infos if f.path.endswith(".tar")
                 and not posixpath.basename(f.path).startswith((".", "_"))]
        return [(f.path, f.size, f.mtime_ns) for f in infos]

    # ---- the index: key -> (shard, {suffix: (offset, size)}) ---------------------------------
    @property
    def index(self) -> dict[str, tuple[int, dict[str, tuple[int, int]]]]:
        if self._index is None:
            index: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
            for k, (shard, _, _) in enumerate(self.shards):
                for key, members in self._read_headers(shard):
                    if key in index:
                        raise PoolError(f"pool {self.path} has duplicate id {key!r} (in "
                                        f"{self.shards[index[key][0]][0]} and {shard}); "
                                        "sample keys must be unique across shards")
                    index[key] = (k, members)
            self._index = index
        return self._index

    def _read_headers(self, shard: str) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
        """(key, {suffix: (data offset, size)}) of a shard's samples, from its headers only."""
        try:
            with self.location.fs.open_input_file(shard) as f, \
                    tarfile.open(fileobj=f, mode="r:") as tar:
                key, members = None, {}
                for info in tar:
                    m = _KEY.match(info.name) if info.isreg() else None
                    if m is None:
                        continue
                    if m[1] != key:
                        if key is not None:
                            yield key, members
                        key, members = m[1], {}
                    members[m[2]] = (info.offset_data, info.size)
                if key is not None:
                    yield key, members
        except (tarfile.TarError, OSError) as e:
            raise PoolError(f"pool {self.path}: shard {shard} is not a readable tar file "
                            f"({type(e).__name__}: {one_line(str(e))[:200]})") from None

    def _image_member(self, members: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
        return next((members[k] for k in self.options.image_keys if k in members), None)

    # ---- the source --------------------------------------------------------------------------
    def to_dataset(self, columns: Sequence[str] | None = None, **read_args):
        """(id, image[, label]) rows, one Ray Data read task a shard."""
        import ray.data
        columns = list(columns or self.columns)
        keep = list(self.options.image_keys) + [self.options.class_key]
        ds = ray.data.read_webdataset([s[0] for s in self.shards], filesystem=self.location.fs,
                                      decoder=None, suffixes=keep, **read_args)
        return ds.map_batches(_rows, batch_format="pandas", fn_kwargs={
            "columns": columns, "image_keys": self.options.image_keys,
            "class_key": self.options.class_key})

    def iter_ids(self, batch_size: int = 65536) -> Iterator[list[str]]:
        keys = list(self.index)
        for s in range(0, len(keys), batch_size):
            yield keys[s:s + batch_size]

    def take(self, ids: Iterable[str]) -> pa.Table:
        """The samples of ``ids`` the pool has (id, image bytes or null), in index order."""
        wanted = set(map(str, ids))
        found = [(k, self.index[k]) for k in self.index if k in wanted]
        images = self._read_members([(shard, self._image_member(m)) for _, (shard, m) in found])
        return pa.table({"id": pa.array([k for k, _ in found], pa.string()),
                         "image": pa.array(images, pa.binary())})

    def class_table(self) -> pa.Table:
        """(id, label int64) of every sample with a class member: ground truth for the
        simulated oracle (``pq.write_table(pool.class_table(), "truth.parquet")``)."""
        found = [(k, shard, m[self.options.class_key]) for k, (shard, m) in self.index.items()
                 if self.options.class_key in m]
        raw = self._read_members([(shard, member) for _, shard, member in found])
        try:
            labels = [int(b.decode().strip()) for b in raw]
        except ValueError as e:
            raise PoolError(f"pool {self.path}: a .{self.options.class_key} member is not an "
                            f"integer class ({e})") from None
        return pa.table({"id": pa.array([k for k, _, _ in found], pa.string()),
                         "label": pa.array(labels, pa.int64())})

    def _read_members(self, where_: list[tuple[int, tuple[int, int] | None]]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(where_)
        by_shard: dict[int, list[int]] = {}
        for i, (shard, member) in enumerate(where_):
            if member is not None:
                by_shard.setdefault(shard, []).append(i)
        for shard, rows in by_shard.items():
            with self.location.fs.open_input_file(self.shards[shard][0]) as f:
                for i in rows:
                    offset, size = where_[i][1]
                    f.seek(offset)
                    out[i] = f.read(size)
        return out

    def missing_ids(self, ids: Iterable[str]) -> list[str]:
        return sorted(set(map(str, ids)) - self.index.keys())

    def check_ids(self) -> int:
        return len(self.index)  # the index refuses a key in two shards; a tar key is never null

    @property
    def num_rows(self) -> int:
        return len(self.index)

    @property
    def num_bytes(self) -> int:
        return sum(s[1] for s in self.shards)

    def fingerprint(self) -> Any:
        return {"options": self.options.model_dump(),
                "shards": [list(s) for s in self.shards]}


def _rows(batch, columns: list[str], image_keys: list[str], class_key: str) -> pa.Table:
    """A batch of ``read_webdataset`` (one column a member suffix, null where a sample has no
    such member) as the pool's columns: id (the key), image (the first image member), label."""
    n = len(batch)
    image = np.full(n, None, dtype=object)
    for k in reversed(image_keys):  # the first key wins
        if k in batch:
            col = batch[k].to_numpy(dtype=object)
            have = np.array([isinstance(v, (bytes, bytearray)) for v in col], dtype=bool)
            image[have] = col[have]
    out = {"id": pa.array([str(k) for k in batch["__key__"]], pa.string()),
           "image": pa.array(list(image), pa.binary())}
    if "label" in columns:
        raw = batch[class_key] if class_key in batch else [None] * n
        out["label"] = pa.array([int(bytes(v).decode().strip())
                                 if isinstance(v, (bytes, bytearray)) else None for v in raw],
                                pa.int64())
    return pa.table({c: out[c] for c in columns})
