"""Where files live: local paths and any pyarrow filesystem URI (file://, s3://, gs://, hdfs://).

``resolve(where)`` turns a local path or a URI into a ``Location``: the pyarrow ``FileSystem``
and the path inside it, plus the text that resolves to the same place again (``uri``). A
Location joins like a pathlib path (``run_dir / "labels" / "round-0000.parquet"``), reads,
lists and deletes through its filesystem, and pickles with the filesystem's options, so a Ray
task or actor that receives one reaches the same store without re-resolving anything.

A URI's options travel in its query string (``s3://bucket/prefix?endpoint_override=host:9000&
scheme=http&region=eu-west-1``, see ``pyarrow.fs.FileSystem.from_uri``); credentials come from
the standard environment variables or configuration files of each store (``AWS_ACCESS_KEY_ID``
..., ``GOOGLE_APPLICATION_CREDENTIALS``). Plain paths stay on the ``LocalFileSystem``, as
absolute paths. A process creates one filesystem per scheme, host and options
(``filesystem()``).
"""
from __future__ import annotations

import functools
import os
import posixpath
import re
from pathlib import Path
from typing import Union
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from raydal.errors import FsError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_SECRET = re.compile(r"://([^/@:?#\s]+):[^/@?#\s]*@")
#: URI schemes of ``pyarrow.fs.FileSystem.from_uri`` (object stores need a pyarrow built with
#: them, as the PyPI wheels are).
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
#: Filesystems whose objects appear whole when written (an upload is one PUT): no directories,
#: no rename, no lock.
OBJECT_STORES = ("s3", "gcs")
_LOCAL = pafs.LocalFileSystem()


def is_uri(where: str | os.PathLike) -> bool:
    return isinstance(where, str) and _SCHEME.match(where) is not None


def check(where: str) -> str:
    """``where`` if it is a local path or a well-formed URI of a supported scheme, else FsError.

    Opens nothing (an s3:// URI without a region would ask the network for one): for checking a
    config before any work.
    """
    if not is_uri(where):
        return where
    parts = urlsplit(where)
    if parts.scheme.lower() not in SCHEMES:
        raise FsError(f"{where!r}: {parts.scheme}:// is not a pyarrow filesystem; use a local "
                      f"path or a URI with one of {', '.join(s + '://' for s in SCHEMES)}")
    if parts.fragment:
        raise FsError(f"{where!r}: a location has no '#' fragment; percent-encode '#' as %23")
    return where


@functools.lru_cache(maxsize=64)
def filesystem(scheme: str, netloc: str, query: str) -> tuple[pafs.FileSystem, str]:
    """The (cached) filesystem of ``scheme://netloc/?query`` and the path of its root."""
    root = urlunsplit((scheme, netloc, "/", query, ""))
    try:
        return pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise FsError(
            f"cannot open {redact(f'{scheme}://{netloc}')}: {redact(str(e))}. Use a local path or a URI that "
            "pyarrow.fs.FileSystem.from_uri accepts, with its options in the query string "
            "(e.g. s3://bucket/prefix?region=eu-west-1)") from None


class Location:
    """A file or folder on a pyarrow filesystem. ``str(location)`` is its ``uri``."""

    __slots__ = ("uri", "fs", "path", "root")

    def __init__(self, uri: str, fs: pafs.FileSystem, path: str, root: str = ""):
        # root: what the filesystem puts before a URI's path (s3://bucket/a -> "bucket/a")
        self.uri, self.fs, self.path, self.root = uri, fs, path, root

    def __reduce__(self):  # pickles with the filesystem (and so its options)
        return Location, (self.uri, self.fs, self.path, self.root)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({redact(self.uri)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    # ---- naming --------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def is_object_store(self) -> bool:
        return self.fs.type_name in OBJECT_STORES

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise FsError(f"{redact(self.uri)} is not on the local filesystem")
        return Path(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> "Location":
        return self._with_path(posixpath.dirname(self.path.rstrip("/")))

    def __truediv__(self, name: str) -> "Location":
        return self._with_path(posixpath.join(self.path, str(name)))

    def with_suffix(self, suffix: str) -> "Location":
        return self._with_path(posixpath.splitext(self.path.rstrip("/"))[0] + suffix)

    def _with_path(self, path: str) -> "Location":
        if self.is_local and not is_uri(self.uri):
            return Location(path, self.fs, path)
        scheme, netloc, _, query, _ = urlsplit(self.uri)
        rel = path[len(self.root):] if path.startswith(self.root) else path
        return Location(urlunsplit((scheme, netloc, quote("/" + rel.lstrip("/")), query, "")),
                        self.fs, path, self.root)

    # ---- reading -------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def files(self, recursive: bool = False) -> list[pafs.FileInfo]:
        """The files in this folder (none if it does not exist), sorted by path."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True,
                                                        recursive=recursive))
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)

    # ---- changing ------------------------------------------------------------------------
    def delete(self) -> None:
        """Remove this file or folder (and its contents); nothing if it does not exist."""
        kind = self.info().type
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif kind == pafs.FileType.File:
            self.fs.delete_file(self.path)


#: What names a file or folder: a local path, a URI, or a Location.
Where = Union[str, os.PathLike, Location]


def resolve(where: Where) -> Location:
    """A Location for a local path, a pyarrow filesystem URI, or a Location (returned as is).

    FsError names an unsupported scheme or a malformed URI.
    """
    if isinstance(where, Location):
        return where
    if not is_uri(where):
        path = os.path.abspath(os.fspath(where))
        return Location(path, _LOCAL, path)
    scheme, netloc, path, query, _ = urlsplit(check(where))
    fs, root = filesystem(scheme.lower(), netloc, query)
    rel = unquote(path).strip("/")
    full = (root.rstrip("/") + "/" + rel) if rel else root
    return Location(urlunsplit((scheme.lower(), netloc, path.rstrip("/") or "/", query, "")),
                    fs, full or "/", root.rstrip("/"))


def redact(text: str) -> str:
    """``text`` with the secret of any ``scheme://key:secret@`` in it replaced by ``***``."""
    return _SECRET.sub(r"://\1:***@", text)


def read_bytes(where: Where) -> bytes:
    """The bytes of a local file or of an object at a URI (FileNotFoundError if absent)."""
    if isinstance(where, (str, os.PathLike)) and not is_uri(where):
        with open(where, "rb") as f:
            return f.read()
    return resolve(where).read_bytes()
