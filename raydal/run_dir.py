"""Which run directories, and which files in them, raydal may change or delete.

raydal deletes only what it made and can prove it made. A run directory is raydal's when it holds
the marker ``.raydal-run``, written when raydal creates the folder or takes an empty one. A
folder that holds anything else and no marker (a project folder given as ``--run-dir .``) is
refused before anything is written in it. Run directories from before the marker are
recognised by their ``config.yaml`` and a ``state.json`` of raydal's shape, and marked.

Inside a run directory, deletions name raydal's own files (``MADE_FILES``, ``MADE_IN``): a
user's file beside them, in any folder, is never touched.
"""
from __future__ import annotations

import json
import re
import time

from raydal.errors import RunDirError
from raydal.fs import Location

MARKER = ".raydal-run"
#: What raydal writes in a run directory: top-level files, and for each folder a pattern of the
#: names it writes inside it. ``remove_made`` deletes these names only.
MADE_FILES = (MARKER, ".lock", ".lease.json", "config.yaml", "state.json", "metrics.jsonl",
              "mlflow.db", "tracking.json")
MADE_IN = {
    "data": re.compile(r"^((pool|test)\.parquet|pool_check\.json)$"),
    "labels": re.compile(r"^round-\d{4}\.parquet$"),
    "selections": re.compile(r"^round-\d{4}\.(parquet|json)$"),
    "checkpoints": re.compile(r"^round-\d{4}$"),
    "ray_train": re.compile(r"^round-\d{4}-\d+$"),
    "report": re.compile(r"^(learning_curve|comparison)\.png$"),
    "to_label": re.compile(r"^round-\d{4}(\.csv|\.labelstudio\.json)?$"),
    "labelstudio": re.compile(r"^round-\d{4}\.json$"),
}
#: Files of ``data/`` derived from the config's data section (made again when it changes).
DERIVED_DATA = ("pool.parquet", "test.parquet", "pool_check.json")


def _entries(run_dir: Location) -> list[str]:
    import pyarrow.fs as pafs
    infos = run_dir.fs.get_file_info(pafs.FileSelector(run_dir.path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def _legacy_run(run_dir: Location) -> bool:
    """A run directory made by raydal before the marker: config.yaml and raydal's state.json."""
    if not (run_dir / "config.yaml").exists() or not (run_dir / "state.json").exists():
        return False
    try:
        state = json.loads((run_dir / "state.json").read_bytes())
    except ValueError:
        return False
    return isinstance(state, dict) and {"round", "phase"} <= set(state)


def claim(run_dir: Location) -> bool:
    """Make ``run_dir`` raydal's, or refuse it (RunDirError) when it is a folder of someone
    else's. Returns whether raydal created the folder now (nothing in it is a user's)."""
    if (run_dir / MARKER).exists():
        return False
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir} is a file, not a folder; choose a new folder")
    fresh = not run_dir.exists()
    found = [] if fresh else [e for e in _entries(run_dir) if e != ".lock"]
    if found and not _legacy_run(run_dir):
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise RunDirError(
            f"run_dir {run_dir} is an existing folder that is not a raydal run directory (it "
            f"holds {shown} and no {MARKER} marker); raydal writes and deletes files in its "
            "run directory, so choose a new or empty folder (e.g. runs/NAME)")
    from raydal.storage import atomic_write_json
    atomic_write_json(run_dir / MARKER, {"made_by": "raydal", "time": time.time(),
                                        "fresh": fresh})
    return fresh


def _remove_named(folder: Location, pattern: re.Pattern) -> None:
    """Delete the entries of ``folder`` whose names match ``pattern``, then ``folder`` if that
    leaves it empty."""
    if not folder.is_dir():
        return
    for name in _entries(folder):
        if pattern.match(name):
            (folder / name).delete()
    if not _entries(folder):
        folder.delete()


def remove_made(run_dir: Location) -> None:
    """Delete what raydal writes in ``run_dir`` (``MADE_FILES``, ``MADE_IN``), then the folder
    if nothing else is in it. A user's file anywhere in it stays, with its folders."""
    for folder, pattern in MADE_IN.items():
        _remove_named(run_dir / folder, pattern)
    for name in MADE_FILES:
        if name != MARKER:
            (run_dir / name).delete()
    if _entries(run_dir) == [MARKER]:
        run_dir.delete()


def remove_derived_data(run_dir: Location) -> None:
    """Delete the files of ``run_dir/data`` made from the data section (``DERIVED_DATA``)."""
    for name in DERIVED_DATA:
        (run_dir / "data" / name).delete()


def remove_train_attempts(storage: Location) -> None:
    """Delete the Ray Train folders of earlier attempts in ``storage`` (a killed run's)."""
    _remove_named(storage, MADE_IN["ray_train"])
