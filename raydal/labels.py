"""LabelLog: the append-only record of every label bought, one Parquet file a round.

labels/round-0000.parquet holds id, label, round, source. A round's file is written once,
atomically; the log refuses to write a round twice or to label an id twice, so a resumed or
repeated run can never duplicate or lose a label.
"""
from __future__ import annotations

import codecs
import csv
import io
import posixpath
import re
from typing import Mapping

import pyarrow as pa

from raydal.errors import LabelError
from raydal.fs import Location, Where, resolve
from raydal.storage import atomic_write_parquet, read_table

_ROUND_FILE = re.compile(r"round-(\d{4,})\.parquet$")
_SEPARATORS = (",", ";", "\t")  # Excel writes ';' where ',' is the decimal mark


def numbered_rounds(folder: Location) -> list[int]:
    """The rounds of the ``round-NNNN.parquet`` files in ``folder``, sorted."""
    return sorted(int(m.group(1)) for f in folder.files()
                  if (m := _ROUND_FILE.search(posixpath.basename(f.path))))


def csv_label_rows(path: Location) -> list[tuple[str, str, str]]:
    """(id, raw label, where) of each row of a CSV label file with ``id`` and ``label`` columns.

    Accepts UTF-8 with or without a BOM (Excel's "CSV UTF-8"), UTF-16 with a BOM, separators
    ',', ';' or tab; blank lines are skipped. LabelError names anything else.
    """
    data = path.read_bytes()
    encoding = ("utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
                else "utf-8-sig")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise LabelError(f"{path} is not UTF-8 text ({e}); save it as 'CSV UTF-8'") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    sep = next((d for d in _SEPARATORS
                if {"id", "label"} <= {c.strip() for c in first.split(d)}), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    header = [c.strip() for c in rows[0][1]] if rows else []
    if not {"id", "label"} <= set(header):
        raise LabelError(f"{path}: a CSV needs 'id' and 'label' columns, found {header}")
    for name in ("id", "label"):
        if header.count(name) > 1:
            raise LabelError(f"{path}: the header has {header.count(name)} {name!r} columns; "
                             "keep one")
    i, j = header.index("id"), header.index("label")
    out = []
    for line, row in rows[1:]:
        if len(row) <= max(i, j):
            raise LabelError(f"{path.name} line {line}: {len(row)} fields, the header has "
                             f"{len(header)}")
        out.append((row[i], row[j], f"{path.name} line {line}"))
    return out


class LabelLog:
    """folder: a local path or a URI (``s3://bucket/runs/x/labels``)."""

    def __init__(self, folder: Where):
        self.folder = resolve(folder)

    def round_path(self, round_: int) -> Location:
        return self.folder / f"round-{round_:04d}.parquet"

    def rounds(self) -> list[int]:
        return numbered_rounds(self.folder)

    def has_round(self, round_: int) -> bool:
        return self.round_path(round_).exists()

    def table(self) -> pa.Table:
        """All labels so far: id, label, round, source."""
        tables = [read_table(self.round_path(r)) for r in self.rounds()]
        if not tables:
            return pa.table({"id": pa.array([], pa.string()), "label": pa.array([], pa.int64()),
                             "round": pa.array([], pa.int64()), "source": pa.array([], pa.string())})
        return pa.concat_tables(tables)

    def labels(self) -> dict[str, int]:
        t = self.table()
        return dict(zip(t.column("id").to_pylist(), t.column("label").to_pylist()))

    def append(self, round_: int, labels: Mapping[str, int], source: str,
               num_classes: int | None = None) -> Location:
        """Write round ``round_``'s labels in one atomic file; refuse duplicates."""
        if self.has_round(round_):
            raise LabelError(f"labels for round {round_} already exist at "
                             f"{self.round_path(round_)}; a round is labeled once")
        known = self.labels()
        dup = [i for i in labels if i in known]
        if dup:
            raise LabelError(f"{len(dup)} ids are already labeled (e.g. {dup[0]!r}); "
                             "a label is never written twice")
        for i, y in labels.items():
            if not isinstance(y, int) or isinstance(y, bool) or y < 0 or (
                    num_classes is not None and y >= num_classes):
                raise LabelError(f"label of {i!r} is {y!r}; expected an int in "
                                 f"[0, {num_classes if num_classes is not None else 'C'})")
        ids = sorted(labels)
        return atomic_write_parquet(self.round_path(round_), pa.table({
            "id": pa.array(ids, pa.string()),
            "label": pa.array([labels[i] for i in ids], pa.int64()),
            "round": pa.array([round_] * len(ids), pa.int64()),
            "source": pa.array([source] * len(ids), pa.string())}))
