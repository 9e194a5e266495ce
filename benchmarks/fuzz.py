"""Fuzz pass: generated configs, label files, pools, `raydal select` argument lists and Python
API calls against raydal's own entry points.

The rule for every case: a clear error (a RaydalError, one line from the CLI) or correct
behaviour; never a traceback (any other exception), never a hang (a case over its time limit),
never a partial write (a file left behind by a case that failed).

  config  a valid config with random fields deleted, given wrong types or extreme values, or
          broken YAML -> ``raydal.config.load_config``; a config it accepts must round-trip
  label   a label file for a run waiting on round 0 (encodings, BOMs, separators, blank lines,
          duplicated headers and rows, bad labels, Label Studio JSON of other shapes)
          -> ``raydal import-labels`` (in process); accepted labels must equal the intended ones
  pool    a Parquet pool (wrong dtypes, empty, null/duplicate/huge/unicode ids, undecodable or
          missing images) -> the loop's id check and ``raydal.select`` (random, 1 actor); picks
          must be unique pool ids, as many as the budget allows
  select  ``raydal select`` arguments (in process) over a fixture pool, a checkpoint of a tiny
          timm model and its labels, with 0-3 mistakes: misspelt or unknown strategies and
          options, odd option values, budgets, actor counts, batch sizes and CPU/GPU shares out
          of range or not numbers, missing/empty/corrupt checkpoints (meta, cut or garbage
          weights), pools that are missing, not Parquet or one of the pool kind's, label files
          that are missing, not Parquet, of unknown ids, other classes or types, an --out that
          is a folder or under a file, flags deleted, without their value or unknown.
          Exit 0: the output must hold distinct unlabeled pool ids, as many as the budget allows,
          ranked; exit 2: stderr one ``error:`` line, or argparse's usage and its one error line
  api     calls of the public API: ``raydal.select`` (arguments of wrong types and values, the
          select kind's broken files, modules with an input_spec they cannot take, unknown
          keywords), ``Pool.from_numpy`` (dtypes, shapes, ids, paths), ``Pool.from_image_folder``
          (layouts, a file, corrupt images, paths), ``Pool``/``Pool.from_parquet`` and
          ``create_strategy`` (names, options). A RaydalError or a correct value; a TypeError
          only where the call's own signature refuses it (an unknown keyword, as Python does)

    python benchmarks/fuzz.py [--cases 400] [--seed 0] [--out benchmarks/results/fuzz.json]

tests/integration/test_fuzz_sample.py runs a seeded sample of 30 cases (6 a kind) in CI.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import logging
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

KINDS = ("config", "label", "pool", "select", "api")
CLASSES = 3
PICKS = 10


class Hang(BaseException):
    """A case ran past its time limit (BaseException: library code cannot swallow it)."""


@dataclass
class Outcome:
    kind: str
    case: int
    what: str      # the mutation, for the report
    result: str    # ok | error | traceback | hang | partial | wrong
    detail: str = ""
    seconds: float = 0.0


# ---- shared fixtures ---------------------------------------------------------------------------
def png_pool(n: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    from raydal.transforms import encode_png
    x = np.random.default_rng(seed).integers(0, 256, (n, 16, 16), dtype=np.uint8)
    return [encode_png(im) for im in x], x


def base_config(work: Path) -> dict:
    """A valid config over the fixture data in ``work`` (file oracle: nothing is trained)."""
    return {"name": "fuzz", "seed": 0, "run_dir": str(work / "run"), "progress": False,
            "data": {"dataset": None, "pool": str(work / "pool.parquet"),
                     "test": str(work / "test.parquet"), "num_classes": CLASSES},
            "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
            "strategy": {"name": "entropy", "options": {}},
            "loop": {"initial": PICKS, "per_round": 5, "rounds": 1, "oracle": "file"},
            "selection": {"num_actors": 1, "batch_size": 16},
            "training": {"epochs": 1, "batch_size": 8}}


def write_data(work: Path) -> list[str]:
    """The fixture pool (40 PNGs, ids img-000..) and test set (its first 10 rows, labeled) in
    ``work``; returns the pool's ids."""
    work.mkdir(parents=True, exist_ok=True)
    images, _ = png_pool(40)
    ids = [f"img-{i:03d}" for i in range(40)]
    pq.write_table(pa.table({"id": ids, "image": pa.array(images, pa.binary())}),
                   work / "pool.parquet")
    pq.write_table(pa.table({"id": ids[:10], "image": pa.array(images[:10], pa.binary()),
                             "label": [i % CLASSES for i in range(10)]}), work / "test.parquet")
    return ids


def prepare(work: Path) -> Path:
    """Fixture data and a run directory waiting for round 0's labels; returns that run dir."""
    from raydal.loop import ActiveLoop
    from raydal.config import parse_config
    write_data(work)
    ActiveLoop(parse_config(base_config(work))).run()  # exports round 0's picks, then waits
    return work / "run"


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# ---- config cases ------------------------------------------------------------------------------
ODD_VALUES = ["x", "", -1, 0, 10 ** 12, -10 ** 12, 2 ** 63, 1e308, -1e-300, float("nan"),
              float("inf"), None, True, [], {}, [1, "a"], {"a": 1}, "ñ😀", "../../etc", "s3://"]
BROKEN_YAML = ["", "- a\n- b\n", "loop: {initial: [1\n", ":::", "\x00\x01binary", "a: b: c\n",
               "42\n", "!!python/object:os.system {}\n", "loop:\n\t initial: 3\n"]


def _leaves(d: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _leaves(v, prefix + (k,))
    return out


def config_case(rng: random.Random, work: Path) -> tuple[str, str]:
    """(description, YAML text) of one mutated config."""
    if rng.random() < 0.12:
        text = rng.choice(BROKEN_YAML)
        return f"broken yaml {text[:20]!r}", text
    cfg = json.loads(json.dumps(base_config(work)))
    what = []
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_leaves(cfg))
        parent = cfg
        for k in path[:-1]:
            parent = parent[k]
        op = rng.choice(["delete", "value", "value", "unknown"])
        if op == "delete":
            parent.pop(path[-1], None)
        elif op == "unknown":
            parent[path[-1] + "_x"] = 1
        else:
            parent[path[-1]] = rng.choice(ODD_VALUES)
        what.append(f"{op} {'.'.join(path)}" + (f"={parent.get(path[-1])!r}" if op == "value"
                                                else ""))
    return "; ".join(what), yaml.safe_dump(cfg, allow_unicode=True)


def run_config(rng: random.Random, work: Path, case: int) -> Outcome:
    from raydal.config import RunConfig, load_config
    from raydal.errors import RaydalError
    from raydal.resources import fits, selection_demand, training_demand
    what, text = config_case(rng, work)
    folder = work / f"config-{case}"
    folder.mkdir()
    path = folder / "config.yaml"
    path.write_text(text, errors="surrogateescape")
    before = files_under(folder)
    try:
        cfg = load_config(path)
    except RaydalError as e:
        cfg, error = None, str(e)
    if files_under(folder) != before:
        return Outcome("config", case, what, "partial", str(files_under(folder) - before))
    if cfg is None:
        return Outcome("config", case, what, "error", error[:200])
    if not isinstance(cfg, RunConfig) or cfg.with_overrides() != cfg:
        return Outcome("config", case, what, "wrong", "config does not round-trip")
    s, t = cfg.selection, cfg.training
    fits([{"CPU": 2.0}], selection_demand(s.num_actors, s.num_cpus_per_actor,
                                          s.num_gpus_per_actor))
    fits([{"CPU": 2.0}], training_demand(t.num_workers, t.cpus_per_worker, t.use_gpu))
    return Outcome("config", case, what, "ok")


# ---- label-file cases --------------------------------------------------------------------------
def label_case(rng: random.Random, picks: list[str]) -> tuple[str, bytes, str, dict]:
    """(description, file bytes, expect, intended labels); expect: "labels" (must import the
    intended labels), "error" (must be refused) or "either"."""
    truth = {i: rng.randrange(CLASSES) for i in picks}
    if rng.random() < 0.25:
        return _json_label_case(rng, truth)
    valid, what = True, []
    header, rows = ["id", "label"], [[i, str(y)] for i, y in truth.items()]
    if rng.random() < 0.3:
        header, rows = ["id", "image", "score", "label"], [[i, "/x.png", "0.5", y] for i, y in rows]
        what.append("extra columns")
    if rng.random() < 0.3:
        header, rows = header[::-1], [r[::-1] for r in rows]
        what.append("label first")
    sep = rng.choice([",", ",", ";", "\t", "|"])
    valid &= sep != "|"
    what.append(f"sep {sep!r}")
    for _ in range(rng.choice([0, 0, 1, 2])):
        mistake = rng.choice(["drop row", "extra id", "dup row", "bad label", "empty label",
                              "dup header", "no label column", "short row", "unicode id"])
        what.append(mistake)
        valid = False
        col = header.index("id")
        present = sorted({r[col] for r in rows if col < len(r) and r[col] in truth})
        if mistake == "drop row" and present:  # every row of one pick (a mistake's rows stay)
            gone = rng.choice(present)
            rows = [r for r in rows if col >= len(r) or r[col] != gone]
        elif mistake == "extra id":
            rows.append(["not-a-pick", "1"] if header[0] == "id" else ["1", "not-a-pick"])
        elif mistake == "dup row" and rows:
            rows.append(list(rng.choice(rows)))
        elif mistake in ("bad label", "empty label") and "label" in header and \
                any(len(r) > header.index("label") for r in rows):
            r = rng.choice([r for r in rows if len(r) > header.index("label")])  # not a short row
            r[header.index("label")] = ("" if mistake == "empty label"
                                        else rng.choice(["7", "-1", "1.0", "cat", "²", "0x1"]))
        elif mistake == "dup header":  # of the label column (of the id column once renamed)
            header = header + ["label" if "label" in header else header[0]]
            rows = [r + ["0"] for r in rows]
        elif mistake == "no label column":
            header = [h if h != "label" else "klass" for h in header]
        elif mistake == "short row" and rows:
            rows[rng.randrange(len(rows))] = rows[0][:1]
        elif mistake == "unicode id":
            rows.append(["ñ😀", "0"] if header[0] == "id" else ["0", "ñ😀"])
    lines = [sep.join(header)] + [sep.join(map(str, r)) for r in rows]
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 3)):
            lines.insert(rng.randint(1, len(lines)), rng.choice(["", " ", sep * len(header)]))
        what.append("blank lines")
    newline = rng.choice(["\n", "\r\n"])
    text = newline.join(lines) + rng.choice(["", newline])
    encoding = rng.choice(["utf-8", "utf-8-sig", "utf-16", "latin-1", "utf-8"])
    what.append(encoding)
    data = text.encode(encoding, errors="replace")
    if encoding == "latin-1" and not text.isascii():
        valid = False
    expect = "labels" if valid else "error"
    if rng.random() < 0.05:  # cut anywhere: an error, or (cut in the last newline) all labels
        data, expect = data[: rng.randrange(max(len(data), 1))], "either"
        what.append("truncated")
    return ", ".join(what), data, expect, truth


def _json_label_case(rng: random.Random, truth: dict) -> tuple[str, bytes, str, dict]:
    tasks = [{"data": {"id": i}, "annotations": [{"result": [{"value": {"choices": [str(y)]}}]}]}
             for i, y in truth.items()]
    shape = rng.choice(["valid", "valid", "dict", "strings", "no id", "annotations str",
                        "result dict", "truncated", "choices int", "data list"])
    valid = shape == "valid"
    if shape == "dict":
        obj = {"tasks": tasks}
    elif shape == "strings":
        obj = [json.dumps(t) for t in tasks]
    elif shape == "no id":
        obj = tasks
        del obj[0]["data"]["id"]
    elif shape == "annotations str":
        obj = tasks
        obj[0]["annotations"] = "done"
    elif shape == "result dict":
        obj = tasks
        obj[0]["annotations"][0]["result"] = {"value": 1}
    elif shape == "choices int":
        obj = tasks
        obj[0]["annotations"][0]["result"][0]["value"]["choices"] = [1]
        valid = True  # an int class index is accepted
        truth = {**truth, tasks[0]["data"]["id"]: 1}
    elif shape == "data list":
        obj = tasks
        obj[0]["data"] = [1, 2]
    else:
        obj = tasks
    data = json.dumps(obj).encode()
    if shape == "truncated":
        data = data[: len(data) // 2]
    return f"json {shape}", data, "labels" if valid else "error", truth


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``raydal ARGV`` in this process: (exit status, stdout, stderr). argparse refuses bad
    arguments by exiting (status 2), as the command does."""
    from raydal.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def run_label(rng: random.Random, work: Path, case: int, template: Path) -> Outcome:
    from raydal.labels import LabelLog
    picks = pq.read_table(template / "selections" / "round-0000.parquet").column("id").to_pylist()
    what, data, expect, intended = label_case(rng, picks)
    run_dir = work / f"label-{case}"
    shutil.copytree(template, run_dir)
    suffix = ".json" if what.startswith("json") else ".csv"
    label_file = work / f"label-{case}{suffix}"
    label_file.write_bytes(data)
    before = files_under(run_dir)
    code, _, err = _cli(["import-labels", str(run_dir), str(label_file)])
    after = files_under(run_dir) - before - {".lock"}
    if code == 2 and expect != "labels":
        if after:
            return Outcome("label", case, what, "partial", str(after))
        if not clear_error(err):
            return Outcome("label", case, what, "wrong", f"not one error line: {err[:300]!r}")
        return Outcome("label", case, what, "error", err.strip()[:200])
    got = LabelLog(run_dir / "labels").labels()
    if code != 0 or expect == "error" or got != intended:
        return Outcome("label", case, what, "wrong",
                       f"exit {code} ({err.strip()[:200]}); imported {len(got)} labels; "
                       f"expected {expect} ({len(intended)} labels)")
    return Outcome("label", case, what, "ok")


# ---- pool cases --------------------------------------------------------------------------------
def pool_case(rng: random.Random, n: int) -> tuple[str, pa.Table]:
    images, _ = png_pool(n, seed=rng.randrange(1000))
    ids: list = [f"p{i}" for i in range(n)]
    col: tuple[str, pa.Array] = ("image", pa.array(images, pa.binary()))
    what = rng.choice(["unicode ids", "huge int ids", "long ids", "float ids", "null id",
                       "duplicate id", "empty", "image int", "image float", "image string",
                       "image list", "no image column", "no id column", "garbage bytes",
                       "half garbage", "zero bytes", "truncated png", "missing paths",
                       "rgba png", "extra columns", "single row"])
    if what == "unicode ids":
        ids = [f"ñ-é-😀-/ {i}" for i in range(n)]
    elif what == "huge int ids":
        ids = [2 ** 63 - 1 - i for i in range(n)]
    elif what == "long ids":
        ids = ["x" * 2000 + str(i) for i in range(n)]
    elif what == "float ids":
        ids = [i + 0.5 for i in range(n)]
    elif what == "null id":
        ids[rng.randrange(n)] = None
    elif what == "duplicate id":
        ids[1] = ids[0]
    elif what == "empty":
        ids, col = [], ("image", pa.array([], pa.binary()))
    elif what == "image int":
        col = ("image", pa.array(range(n)))
    elif what == "image float":
        col = ("image", pa.array([float(i) for i in range(n)]))
    elif what == "image string":
        col = ("image", pa.array(["iVBORw0KGgo="] * n))
    elif what == "image list":
        col = ("image", pa.array([[1, 2, 3]] * n))
    elif what == "garbage bytes":
        col = ("image", pa.array([bytes(rng.randrange(256) for _ in range(20))
                                  for _ in range(n)], pa.binary()))
    elif what == "half garbage":
        col = ("image", pa.array([im if i % 2 else b"junk" for i, im in enumerate(images)],
                                 pa.binary()))
    elif what == "zero bytes":
        col = ("image", pa.array([b""] * n, pa.binary()))
    elif what == "truncated png":
        col = ("image", pa.array([im[: len(im) // 2] for im in images], pa.binary()))
    elif what == "missing paths":
        col = ("path", pa.array([f"/nonexistent/raydal/{i}.png" for i in range(n)]))
    elif what == "rgba png":
        from raydal.transforms import encode_png
        rgba = np.random.default_rng(1).integers(0, 256, (n, 8, 8, 4), dtype=np.uint8)
        col = ("image", pa.array([encode_png(im) for im in rgba], pa.binary()))
    elif what == "single row":
        ids, col = ids[:1], ("image", pa.array(images[:1], pa.binary()))
    columns = {} if what == "no id column" else {"id": ids}
    if what != "no image column":
        columns[col[0]] = col[1]
    if what in ("extra columns", "no image column"):
        columns["meta"] = pa.array([{"k": i} for i in range(len(ids) or n)])
    return what, pa.table(columns)


def run_pool(rng: random.Random, work: Path, case: int) -> Outcome:
    from raydal.errors import RaydalError
    from raydal.pool import Pool
    from raydal.selection import select
    from raydal.transforms import InputSpec
    what, table = pool_case(rng, rng.choice([3, 12, 40]))
    folder = work / f"pool-{case}"
    folder.mkdir()
    pq.write_table(table, folder / "pool.parquet")
    before = files_under(folder)
    budget = rng.choice([1, 5, 50])
    try:
        with described(what):
            pool = Pool(folder / "pool.parquet")
            pool.check_ids()  # as the loop does before any work
            sel = select(pool, None, "random", budget, num_actors=1, batch_size=8,
                         input_spec=InputSpec(1, 32), progress=False)
    except RaydalError as e:
        result = Outcome("pool", case, what, "error", str(e)[:200])
    else:
        problem = picks_problem(sel.ids, budget, sel.num_scored, len(sel.skipped),
                                [str(i) for i in table.column("id").to_pylist()])
        result = Outcome("pool", case, what, "wrong" if problem else "ok", problem)
    if files_under(folder) != before:
        return Outcome("pool", case, what, "partial", str(files_under(folder) - before))
    return result


# ---- select and api fixtures -------------------------------------------------------------------
#: The tiny model whose checkpoint select and api cases score with.
MODEL = {"name": "test_resnet", "num_classes": CLASSES, "in_chans": 1, "img_size": 16}
LABELED = 8  # the fixture pool's first rows are labeled
#: Option values given to strategies (small ints only: an option that sizes memory must not
#: be a real allocation on the machine the fuzz runs on).
ODD_OPTIONS = [-1, 0, 1, 2, 0.5, "x", "", None, [], {}, True, 1e308, float("inf")]


@dataclass
class Inputs:
    """What select and api cases share, made once a pass by ``make_inputs`` in ``folder``: the
    fixture pool, a checkpoint of MODEL and that model, and the first LABELED ids' labels (as
    ``labels.parquet``, and in a run directory's ``run/labels``). Cases only read them."""

    folder: Path
    ids: list[str]
    labels: dict[str, int]
    module: Any = None

    @property
    def pool(self) -> Path:
        return self.folder / "pool.parquet"

    @property
    def ckpt(self) -> Path:
        return self.folder / "ckpt"


def make_inputs(folder: Path) -> Inputs:
    from raydal.labels import LabelLog
    from raydal.models import ModelSpec, create_model, save_checkpoint
    ids = write_data(folder)
    spec = ModelSpec(**MODEL)
    module = create_model(spec, seed=0).eval()
    save_checkpoint(module, spec, folder / "ckpt")
    labels = {i: k % CLASSES for k, i in enumerate(ids[:LABELED])}
    pq.write_table(pa.table({"id": list(labels), "label": list(labels.values())}),
                   folder / "labels.parquet")
    LabelLog(folder / "run" / "labels").append(0, labels, source="fuzz", num_classes=CLASSES)
    return Inputs(folder, ids, labels, module)


def misspell(rng: random.Random, name: str) -> str:
    """``name`` with one typo (a dropped, doubled or swapped letter, the case swapped, an 's')."""
    if not name:
        return "x"
    i = rng.randrange(len(name))
    op = rng.choice(["drop", "double", "swap", "case", "suffix"])
    if op == "drop":
        return name[:i] + name[i + 1:]
    if op == "double":
        return name[:i] + name[i] + name[i:]
    if op == "swap" and len(name) > 1:
        i = min(i, len(name) - 2)
        return name[:i] + name[i + 1] + name[i] + name[i + 2:]
    return name.swapcase() if op == "case" else name + "s"


def strategy_fields(name: str) -> list[str]:
    from raydal.scoring.base import _REGISTRY
    return [f.name for f in fields(_REGISTRY[name])]


def odd_options(rng: random.Random, strategy: str) -> dict:
    """Options for ``strategy``: a misspelt or unknown name, or a real one with an odd value."""
    names = strategy_fields(strategy)
    if not names or rng.random() < 0.3:
        return {misspell(rng, rng.choice(names)) if names else "bogus": 1}
    return {rng.choice(names): rng.choice(ODD_OPTIONS)}


def fresh(folder: Path, name: str) -> Path:
    """``folder / name``, or ``folder / "k-name"`` when that exists (a case's second mistake of
    one kind gets a path of its own)."""
    path, k = folder / name, 1
    while path.exists():
        path, k = folder / f"{k}-{name}", k + 1
    return path


OUTPUTS = ("folder", "under a file", "new folder", "bad uri", "plain", "int")


def odd_output(rng: random.Random, folder: Path, name: str, kinds=OUTPUTS) -> tuple[str, Any]:
    """(description, value) for an output path argument: ``folder`` itself, a path under a
    file, ``name`` in a new folder or in ``folder`` (both valid), a malformed URI, an int."""
    (folder / "file").write_text("x")
    kind = rng.choice(kinds)
    return f"{kind} out", {"folder": folder, "under a file": folder / "file" / name,
                           "new folder": folder / "new" / name, "bad uri": "s3://",
                           "plain": folder / name, "int": 5}[kind]


def written(path: Any, folder: Path) -> set[str]:
    """The file under ``folder`` that a correct call writing to output path ``path`` leaves."""
    return ({str(path.relative_to(folder))} if isinstance(path, Path) and path != folder
            else set())


def bad_pool(rng: random.Random, folder: Path) -> tuple[str, Path, list[str] | None]:
    """(description, path, its ids or None): a pool that is missing or not Parquet, or one of
    ``pool_case``'s."""
    what = rng.choice(["missing", "text file", "empty file", "empty folder", "garbage parquet",
                       "folder with a text file", "generated", "generated"])
    path = fresh(folder, "pool.parquet")
    if what in ("generated", "folder with a text file"):
        if what == "generated":
            what, table = pool_case(rng, rng.choice([3, 12, 40]))
            pq.write_table(table, path)
        else:
            images, _ = png_pool(5)
            table = pa.table({"id": [f"f{i}" for i in range(5)], "image": images})
            path.mkdir()
            pq.write_table(table, path / "part-0.parquet")
            (path / "README.txt").write_text("the pool of ...")
        ids = ([str(i) for i in table.column("id").to_pylist()]
               if "id" in table.column_names else None)
        return f"pool {what}", path, ids
    if what == "text file":
        path.write_text("id,image\na,b\n")
    elif what == "empty file":
        path.write_bytes(b"")
    elif what == "empty folder":
        path.mkdir()
    elif what == "garbage parquet":
        path.write_bytes(b"PAR1" + bytes(range(256)) + b"PAR1")
    return f"pool {what}", path, None


def bad_checkpoint(rng: random.Random, inputs: Inputs, folder: Path) -> tuple[str, Path]:
    """(description, path) of a checkpoint folder that is missing, empty or corrupt."""
    what = rng.choice(["missing", "empty folder", "garbage meta", "meta without spec",
                       "garbage weights", "truncated weights", "no weights", "weights file"])
    path = fresh(folder, "ckpt")
    if what == "empty folder":
        path.mkdir()
    elif what != "missing":
        shutil.copytree(inputs.ckpt, path)
        weights, meta = path / "model.safetensors", path / "meta.json"
        if what == "garbage meta":
            meta.write_text("{not json")
        elif what == "meta without spec":
            meta.write_text("{}")
        elif what == "garbage weights":
            weights.write_bytes(b"\x00" * 64)
        elif what == "truncated weights":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        elif what == "no weights":
            weights.unlink()
        else:
            path = weights
    return f"checkpoint {what}", path


def bad_labels(rng: random.Random, inputs: Inputs, folder: Path) -> tuple[str, Path, set[str]]:
    """(description, path, the ids it labels) of a labels file of the fixture pool that is
    missing, not Parquet, or holds unknown ids, classes the model lacks, labels of other types,
    no id column, ids alone or every id of the pool."""
    what = rng.choice(["missing", "csv", "empty folder", "garbage parquet", "unknown ids",
                       "class 7", "class -1", "string labels", "null label", "float labels",
                       "ids only", "whole pool", "no id column"])
    ids = inputs.ids[:LABELED]
    y: list = [inputs.labels[i] for i in ids]
    path = fresh(folder, "labels.parquet")
    columns: dict | None = None
    if what == "csv":
        path = fresh(folder, "labels.csv")
        path.write_text("id,label\n" + "".join(f"{i},{k}\n" for i, k in zip(ids, y)))
    elif what == "empty folder":
        path.mkdir()
    elif what == "garbage parquet":
        path.write_bytes(b"PAR1 not parquet PAR1")
    elif what == "unknown ids":
        ids = ["nope-1", "nope-2"]
        columns = {"id": ids, "label": [0, 1]}
    elif what in ("class 7", "class -1"):
        columns = {"id": ids, "label": [int(what.split()[1])] + y[1:]}
    elif what == "string labels":
        columns = {"id": ids, "label": [str(v) for v in y]}
    elif what == "null label":
        columns = {"id": ids, "label": [None] + y[1:]}
    elif what == "float labels":
        columns = {"id": ids, "label": [v + 0.5 for v in y]}
    elif what == "ids only":
        columns = {"id": ids}
    elif what == "whole pool":
        ids = inputs.ids
        columns = {"id": ids, "label": [k % CLASSES for k in range(len(ids))]}
    elif what == "no id column":
        columns = {"key": ids, "label": y}
    if columns is not None:
        pq.write_table(pa.table(columns), path)
    return f"labels {what}", path, set(ids)


def picks_problem(picks: list[str], budget: int, num_scored: int, num_skipped: int,
                  pool_ids: list[str], labeled: set[str] = frozenset()) -> str:
    """Why the picks of one selection are not correct, or "": they must be distinct unlabeled
    pool ids, as many as the budget allows, and every unlabeled row scored or skipped."""
    rows = [i for i in pool_ids if i not in labeled]
    if (len(set(picks)) == len(picks) and set(picks) <= set(rows)
            and len(picks) == min(budget, num_scored) and num_scored + num_skipped == len(rows)):
        return ""
    return (f"{len(picks)} picks ({len(set(picks))} distinct, {len(set(picks) - set(rows))} not "
            f"unlabeled pool ids), {num_scored} scored, {num_skipped} skipped of {len(rows)} "
            f"unlabeled rows, budget {budget}")


def clear_error(err: str) -> bool:
    """stderr of a refused command: one ``error: ...`` line, or argparse's usage (its first
    line, then indented ones) and one ``raydal ...: error: ...`` line."""
    lines = err.strip().splitlines()
    if len(lines) == 1:
        return lines[0].startswith("error: ")
    return (len(lines) > 1 and lines[0].startswith("usage: ")
            and all(line.startswith(" ") for line in lines[1:-1])
            and re.match(r"raydal( [\w-]+)?: error: ", lines[-1]) is not None)


# ---- select cases ------------------------------------------------------------------------------
SELECT_MUTATIONS = ("strategy", "options", "options", "budget", "budget", "num-actors",
                    "batch-size", "cpus", "gpus", "checkpoint", "pool", "labels", "labels", "out",
                    "balance", "delete", "no value", "unknown flag")


@dataclass
class SelectCase:
    what: str
    flags: dict    # flag -> value (None: the flag without its value)
    pool_ids: list[str] | None  # the ids of the pool --pool names, where it has readable ones
    labeled: set[str]  # the ids --labels names

    @property
    def argv(self) -> list[str]:
        return ["select"] + [a for k, v in self.flags.items() for a in ([k] if v is None
                                                                       else [k, v])]


def select_case(rng: random.Random, inputs: Inputs, folder: Path) -> SelectCase:
    """Arguments of ``raydal select``: valid ones over the fixture inputs with 0-3 mistakes."""
    from raydal.scoring import list_strategies
    strategy = rng.choice(list_strategies())
    labels = rng.choice([inputs.folder / "labels.parquet", inputs.folder / "run",
                         inputs.folder / "run" / "labels"])
    flags = {"--pool": str(inputs.pool), "--checkpoint": str(inputs.ckpt), "--strategy": strategy,
             "--strategy-options": "{}", "--budget": str(rng.choice([1, 5, 32])),
             "--labels": str(labels), "--out": str(folder / "out.parquet"), "--num-actors": "1",
             "--batch-size": str(rng.choice([4, 16, 64]))}
    c = SelectCase(strategy, flags, list(inputs.ids), set(inputs.labels))
    what = [strategy]
    values = {"--budget": ["0", "-3", "1000000000000", "abc", "1.5", "", "40", "32",
                           "99999999999999999999999", " 7", "0x10"],
              "--num-actors": ["0", "-1", "64", "x", "2", "3"],
              "--batch-size": ["0", "-1", "1", "100000", "x"],
              "--num-cpus-per-actor": ["-1", "0", "2", "1e9", "nan", "inf", "0.25"],
              "--num-gpus-per-actor": ["1", "-0.5", "nan", "0"],
              "--balance": ["proportional", "equal", "yes", ""],
              "--strategy": [misspell(rng, strategy), "nope", "", " random"],
              "--strategy-options": ["{ip", "[1]", "null", "", "1", "{'seed': 1}", '{"a":',
                                     json.dumps(odd_options(rng, strategy)),
                                     json.dumps(odd_options(rng, strategy))]}
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        m = rng.choice(SELECT_MUTATIONS)
        if m in ("checkpoint", "pool", "labels"):
            if m == "checkpoint":
                note, path = bad_checkpoint(rng, inputs, folder)
            elif m == "pool":
                note, path, c.pool_ids = bad_pool(rng, folder)
            else:
                note, path, c.labeled = bad_labels(rng, inputs, folder)
            flags[f"--{m}"] = str(path)
        elif m == "out":  # not an int: a relative path of the working directory
            note, path = odd_output(rng, folder, rng.choice(["o.parquet", "o.txt"]), OUTPUTS[:-1])
            flags["--out"] = str(path)
        elif m == "delete":
            note = f"delete {rng.choice(list(flags))}"
            flags.pop(note.split()[1])
        elif m == "no value":
            flag = rng.choice(list(flags))
            flags[flag] = None
            note = f"no value {flag}"
        elif m == "unknown flag":
            note = rng.choice(["--budgett", "--num-actor", "--strategy_options", "--label"])
            flags[note] = "3"
        else:
            flag = {"options": "--strategy-options", "cpus": "--num-cpus-per-actor",
                    "gpus": "--num-gpus-per-actor"}.get(m, f"--{m}")
            flags[flag] = rng.choice(values[flag])
            note = f"{flag} {flags[flag]!r}"
        what.append(note)
    if flags.get("--labels") is None:  # deleted (or no value: argparse refuses it)
        c.labeled = set()
    c.what = "; ".join(what)
    return c


def run_select(rng: random.Random, work: Path, case: int, inputs: Inputs) -> Outcome:
    folder = work / f"select-{case}"
    folder.mkdir()
    c = select_case(rng, inputs, folder)
    before = files_under(folder)
    with described(c.what):
        code, out, err = _cli(c.argv)
    new = files_under(folder) - before
    if code == 2:
        if new:
            return Outcome("select", case, c.what, "partial", str(new))
        if not clear_error(err):
            return Outcome("select", case, c.what, "wrong", f"not one error line: {err[:300]!r}")
        return Outcome("select", case, c.what, "error", err.strip().splitlines()[-1][:200])
    if code != 0:
        return Outcome("select", case, c.what, "wrong", f"exit {code}: {err[-300:]!r}")
    target = Path(c.flags["--out"])
    if new != written(target, folder):
        return Outcome("select", case, c.what, "partial", f"wrote {new}")
    table = pq.read_table(target)
    summary = json.loads(out.strip().splitlines()[-1])
    picks = [str(i) for i in table.column("id").to_pylist()]
    problem = picks_problem(picks, int(c.flags["--budget"]), summary["num_scored"],
                            summary["skipped"], c.pool_ids or [], c.labeled)
    if table.column_names != ["id", "score", "rank"] or \
            table.column("rank").to_pylist() != list(range(len(picks))):
        problem = f"columns {table.column_names}, rank {table.column('rank').to_pylist()[:5]}"
    return Outcome("select", case, c.what, "wrong" if problem else "ok", problem)


# ---- api cases ---------------------------------------------------------------------------------
@dataclass
class ApiCase:
    what: str
    call: Callable
    args: tuple
    kwargs: dict
    check: Callable[[Any], str]  # the problem with a returned value; "" when it is correct
    outputs: set = field(default_factory=set)  # files under the case folder a correct call writes
    temp: bool = False  # the call may make a temporary folder (made under the case folder)


API_TARGETS = ("select",) * 6 + ("from_numpy",) * 3 + ("from_image_folder",) * 2 + \
    ("Pool", "create_strategy")
#: select()'s keyword arguments and values to give them (valid ones among them).
SELECT_VALUES = {
    "budget": [0, -1, 2.5, "5", None, True, 10 ** 12, np.int64(3), 40, float("nan")],
    "num_actors": [0, -2, "2", 1.5, 64, None, np.int32(1), 2],
    "batch_size": [0, -8, "x", 2.5, None, 10 ** 6, 1],
    "num_gpus_per_actor": [-1, "0", 1, float("nan")],
    "num_cpus_per_actor": [-1, 0, float("nan"), float("inf"), "1", 0.25],
    "decode_tasks": [0, "2", 1.5, 1, 2],
    "pipeline": ["gpu", None, "staged", "fused", "STAGED"],
    "balance": ["yes", None, "equal", "proportional", True],
    "resource_wait_s": [-1, "x", float("nan"), 0.5],
    "strategy_options": [[1], "ip_weight=2", None, {}],
}
UNKNOWN_KEYWORDS = ["budgett", "num_actor", "labels", "strategy_option", "batchsize", "ids"]


def _with_unknown_keyword(rng: random.Random, kwargs: dict) -> str:
    key = rng.choice(UNKNOWN_KEYWORDS)
    kwargs[key] = 1
    return f"unknown keyword {key}"


def api_case(rng: random.Random, inputs: Inputs, folder: Path) -> ApiCase:
    target = rng.choice(API_TARGETS)
    return {"select": _api_select, "from_numpy": _api_from_numpy,
            "from_image_folder": _api_from_image_folder, "Pool": _api_pool,
            "create_strategy": _api_strategy}[target](rng, inputs, folder)


def _api_select(rng: random.Random, inputs: Inputs, folder: Path) -> ApiCase:
    import raydal
    from raydal.scoring import create_strategy, list_strategies
    from raydal.transforms import InputSpec
    source = rng.choice(["checkpoint", "checkpoint", "module", "none"])
    strategy = "random" if source == "none" else rng.choice(list_strategies())
    needs_labels = create_strategy(strategy).needs_labeled
    pool_ids, labeled_ids = list(inputs.ids), set(inputs.labels)
    kw: dict[str, Any] = {
        "model": {"checkpoint": str(inputs.ckpt), "module": inputs.module, "none": None}[source],
        "strategy": strategy, "budget": rng.choice([1, 5, 32]),
        "labeled": (dict(inputs.labels) if needs_labels
                    else rng.choice([dict(inputs.labels), list(inputs.labels), None])),
        "num_actors": 1, "batch_size": rng.choice([4, 16, 64]), "progress": False}
    if kw["labeled"] is None:
        labeled_ids = set()
    if source != "checkpoint":
        kw["input_spec"] = InputSpec(MODEL["in_chans"], MODEL["img_size"])
    pool: Any = rng.choice([str(inputs.pool), inputs.pool, raydal.Pool(inputs.pool)])
    what = [f"{strategy} with {source}"]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        m = rng.choice(list(SELECT_VALUES) + ["pool", "model", "strategy", "strategy_options",
                                              "labeled", "labeled", "input_spec", "keyword"])
        if m == "keyword":
            what.append(_with_unknown_keyword(rng, kw))
            continue
        if m == "pool":
            pool = rng.choice([3, None, ["a"], "broken", "broken"])
            note = f"pool={pool!r}"
            if pool == "broken":
                note, pool, pool_ids = bad_pool(rng, folder)
        elif m == "model":
            kw["model"] = rng.choice([3, {"a": 1}, "broken", "broken", None])
            note = f"model={kw['model']!r}"
            if kw["model"] == "broken":
                note, path = bad_checkpoint(rng, inputs, folder)
                kw["model"] = str(path)
        elif m == "strategy":
            kw["strategy"] = rng.choice([3, None, "", misspell(rng, strategy),
                                         create_strategy("entropy")])
            note = f"strategy={kw['strategy']!r}"
        elif m == "strategy_options" and rng.random() < 0.6:
            kw["strategy_options"] = odd_options(rng, strategy)
            note = f"strategy_options={kw['strategy_options']!r}"
        elif m == "labeled":
            first = inputs.ids[0]
            kw["labeled"] = rng.choice([
                "abc", 3, {"nope": 1}, {first: 7}, {first: "1"}, {first: None}, {first: 1.5},
                [1, 2], {i: 0 for i in inputs.ids}, set(inputs.labels), {0: 0, 1: 1}])
            note = f"labeled={str(kw['labeled'])[:40]}"
            value = kw["labeled"]
            labeled_ids = ({str(i) for i in value} if not isinstance(value, (str, int)) else set())
        elif m == "input_spec":
            kw["input_spec"] = rng.choice([(1, 16), "x", InputSpec(3, 16), InputSpec(1, 0),
                                           InputSpec(2, 16), InputSpec(1, 8), InputSpec(1, 16)])
            note = f"input_spec={kw['input_spec']!r}"
        else:
            kw[m] = rng.choice(SELECT_VALUES[m])
            note = f"{m}={kw[m]!r}"
        what.append(note)

    def check(sel) -> str:
        if not isinstance(sel, raydal.Selection):
            return f"returned {type(sel).__name__}"
        problem = picks_problem(list(sel.ids), kw["budget"], sel.num_scored, len(sel.skipped),
                                pool_ids or [], labeled_ids)
        return problem or ("" if len(sel.scores) == len(sel.ids) else "scores and ids differ")
    return ApiCase("select: " + "; ".join(what), raydal.select, (pool,), kw, check)


def _api_from_numpy(rng: random.Random, inputs: Inputs, folder: Path) -> ApiCase:
    import raydal
    n = rng.choice([1, 3, 12])
    x = np.random.default_rng(rng.randrange(1000)).integers(0, 256, (n, 8, 8), dtype=np.uint8)
    images: Any = x
    kw: dict[str, Any] = {}
    what = []
    want_ids = None  # the ids given, when given
    for _ in range(rng.choice([0, 1, 1, 2])):
        m = rng.choice(["images", "images", "ids", "path", "keyword"])
        if m == "images":
            shape = rng.choice(["float", "int64", "bool", "list", "channel first", "2 channels",
                                "2-d", "5-d", "empty", "zero width", "1x1", "rgb", "rgba",
                                "None", "str", "object", "tall"])
            what.append(f"images {shape}")
            rgb = np.zeros((n, 8, 8, 3), np.uint8)
            images = {"float": x / 255.0, "int64": x.astype(np.int64), "bool": x > 127,
                      "list": x.tolist(), "channel first": rgb.transpose(0, 3, 1, 2),
                      "2 channels": rgb[..., :2], "2-d": x[0], "5-d": rgb[..., None],
                      "empty": x[:0], "zero width": x[:, :, :0], "1x1": x[:, :1, :1], "rgb": rgb,
                      "rgba": np.zeros((n, 8, 8, 4), np.uint8), "None": None, "str": "images",
                      "object": np.array([None] * n, dtype=object),
                      "tall": np.zeros((n, 64, 2), np.uint8)}[shape]
        elif m == "ids":
            kind = rng.choice(["short", "duplicate", "ints", "None", "str", "not iterable",
                               "generator", "empty str", "unicode"])
            what.append(f"ids {kind}")
            given = {"short": [f"i{k}" for k in range(max(n - 1, 0))],
                     "duplicate": ["same"] * n, "ints": list(range(n)),
                     "None": [None] + [f"i{k}" for k in range(1, n)],
                     "str": "abcdefghijkl"[:n], "not iterable": 5,
                     "generator": [f"g{k}" for k in range(n)],
                     "empty str": [""] + [f"i{k}" for k in range(1, n)],
                     "unicode": [f"ñ😀/ {k}" for k in range(n)]}[kind]
            want_ids = None if kind == "not iterable" else list(given)
            kw["ids"] = iter(given) if kind == "generator" else given
        elif m == "path":
            note, kw["path"] = odd_output(rng, folder, "p.parquet")
            what.append(note)
        else:
            what.append(_with_unknown_keyword(rng, kw))
    expected_rows = len(images) if isinstance(images, (np.ndarray, list)) else None

    def check(pool) -> str:
        if not isinstance(pool, raydal.Pool):
            return f"returned {type(pool).__name__}"
        try:
            ids = [i for chunk in pool.iter_ids() for i in chunk]
            want = ([str(i) for i in want_ids] if want_ids is not None
                    else [f"{k:08d}" for k in range(pool.num_rows)])
            if pool.num_rows != expected_rows or ids != want:
                return f"{pool.num_rows} rows (want {expected_rows}), ids {ids[:3]}"
            return ""
        finally:
            pool.close()
    return ApiCase("from_numpy: " + ("; ".join(what) or "valid"), raydal.Pool.from_numpy,
                   (images,), kw, check, written(kw.get("path"), folder), temp=True)


def _api_from_image_folder(rng: random.Random, inputs: Inputs, folder: Path) -> ApiCase:
    import raydal
    from raydal.pool import IMAGE_SUFFIXES
    from raydal.transforms import encode_png
    src = folder / "images"
    layout = rng.choice(["flat", "classes", "nested", "unicode names", "upper-case suffixes",
                         "corrupt images", "non-images only", "empty", "missing", "a file"])
    kw: dict[str, Any] = {}
    what = [layout]
    image = encode_png(np.random.default_rng(rng.randrange(1000)).integers(0, 256, (8, 8),
                                                                         dtype=np.uint8))
    names = {"flat": ["a.png", "b.png", "c.jpg"], "classes": ["cat/a.png", "dog/b.png"],
             "nested": ["x/y/z/a.png", "b.png"], "unicode names": ["ñ😀 é.png", "a b.png"],
             "upper-case suffixes": ["A.PNG", "b.Jpeg"], "corrupt images": ["a.png", "b.png"],
             "non-images only": ["a.txt", "b.parquet"], "empty": []}.get(layout)
    if layout == "a file":
        src.write_bytes(image)
    elif names is not None:
        src.mkdir()
        for k, name in enumerate(names):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(b"junk" if layout == "corrupt images" and k else image)
    arg: Any = src
    for _ in range(rng.choice([0, 0, 1])):
        m = rng.choice(["folder type", "path", "store_bytes", "keyword"])
        if m == "folder type":
            arg = rng.choice([None, 3, str(src), ["a"]])
            what.append(f"folder={arg!r}")
        elif m == "path":
            note, kw["path"] = odd_output(rng, folder, "p.parquet")
            what.append(note)
        elif m == "store_bytes":
            kw["store_bytes"] = rng.choice([True, "yes", 0])
            what.append(f"store_bytes={kw['store_bytes']!r}")
        else:
            what.append(_with_unknown_keyword(rng, kw))
    want = sorted(n for n in names or [] if Path(n).suffix.lower() in IMAGE_SUFFIXES)

    def check(pool) -> str:
        if not isinstance(pool, raydal.Pool):
            return f"returned {type(pool).__name__}"
        try:
            ids = sorted(i for chunk in pool.iter_ids() for i in chunk)
            return "" if ids == want else f"ids {ids[:5]}, want {want[:5]}"
        finally:
            pool.close()
    return ApiCase("from_image_folder: " + "; ".join(what), raydal.Pool.from_image_folder,
                   (arg,), kw, check, written(kw.get("path"), folder), temp=True)


def _api_pool(rng: random.Random, inputs: Inputs, folder: Path) -> ApiCase:
    import raydal
    call = rng.choice([raydal.Pool, raydal.Pool.from_parquet])
    arg: Any = rng.choice(["fixture", "broken", "broken", 3, None, ["x"], "s3://"])
    ids: list[str] | None = list(inputs.ids)
    what = f"{arg!r}"
    if arg == "fixture":
        arg = rng.choice([inputs.pool, str(inputs.pool)])
    elif arg == "broken":
        what, arg, ids = bad_pool(rng, folder)

    def check(pool) -> str:
        if not isinstance(pool, raydal.Pool):
            return f"returned {type(pool).__name__}"
        return "" if ids is not None and pool.num_rows == len(ids) else f"{pool.num_rows} rows"
    return ApiCase(f"{call.__name__}: {what}", call, (arg,), {}, check)


def _api_strategy(rng: random.Random, inputs: Inputs, folder: Path) -> ApiCase:
    """create_strategy with a name that is misspelt or unknown, or odd options. Names that are
    not strings are select()'s cases (create_strategy(3) is refused by select's own check)."""
    import raydal
    from raydal.scoring import Strategy, list_strategies
    name = rng.choice(list_strategies())
    options: dict = {}
    m = rng.choice(["name", "options", "options", "valid"])
    if m == "name":
        name = rng.choice([misspell(rng, name), "", "nope", name.upper()])
    elif m == "options":
        options = odd_options(rng, name)

    def check(strategy) -> str:
        return "" if isinstance(strategy, Strategy) and strategy.name == name else \
            f"returned {strategy!r}"
    return ApiCase(f"create_strategy({name!r}, **{options})", raydal.create_strategy, (name,),
                   options, check)


def run_api(rng: random.Random, work: Path, case: int, inputs: Inputs) -> Outcome:
    """One call of the public API: a RaydalError, or a correct value. A TypeError is a clear
    error only for a call its signature refuses (an unknown keyword), as Python raises it."""
    from raydal.errors import RaydalError, one_line
    folder = work / f"api-{case}"
    (folder / "tmp").mkdir(parents=True)
    c = api_case(rng, inputs, folder)
    before = files_under(folder)
    try:
        inspect.signature(c.call).bind(*c.args, **c.kwargs)
        binds = True
    except TypeError:
        binds = False
    previous = tempfile.tempdir
    if c.temp:  # a temporary pool folder lands in the case folder: left behind, it shows
        tempfile.tempdir = str(folder / "tmp")
    try:
        with described(c.what):
            value = c.call(*c.args, **c.kwargs)
    except RaydalError as e:
        o = Outcome("api", case, c.what, "error", one_line(str(e))[:200])
    except TypeError as e:
        if binds:
            raise
        o = Outcome("api", case, c.what, "error", f"signature: {e}")
    else:
        with described(c.what):
            problem = c.check(value)
        o = Outcome("api", case, c.what, "wrong" if problem else "ok", problem)
    finally:
        tempfile.tempdir = previous
    new = files_under(folder) - before
    if new != (c.outputs if o.result == "ok" else set()):
        return Outcome("api", case, c.what, "partial", f"left {sorted(new)[:5]}")
    return o


# ---- the pass ----------------------------------------------------------------------------------
def _alarm(signum, frame):
    raise Hang()


@contextlib.contextmanager
def described(what: str):
    """An exception escaping the block names the case (``run_cases`` reports it)."""
    try:
        yield
    except BaseException as e:
        e.add_note(f"fuzz case: {what}")
        raise


def _description(e: BaseException) -> str:
    notes = [n for n in getattr(e, "__notes__", []) if n.startswith("fuzz case: ")]
    return notes[-1][len("fuzz case: "):] if notes else "?"


def run_cases(kinds: list[str], seed: int, work: Path, limit_s: float = 120.0
              ) -> list[Outcome]:
    """One case per entry of ``kinds`` (seeded); Ray must be initialised for all but config."""
    logging.getLogger("raydal").setLevel(logging.ERROR)  # skipped-image warnings are expected
    # a handler of the root logger: the CLI's logging.basicConfig (in process) then adds none
    # bound to one case's captured stderr
    quiet = logging.NullHandler()
    logging.getLogger().addHandler(quiet)
    from raydal.config import parse_config
    parse_config(base_config(work))  # imports (timm's registry) before any case is timed
    template = prepare(work / "template") if "label" in kinds else None
    inputs = make_inputs(work / "inputs") if {"select", "api"} & set(kinds) else None
    previous = signal.signal(signal.SIGALRM, _alarm)
    out = []
    try:
        for case, kind in enumerate(kinds):
            rng = random.Random(f"{seed}-{case}")
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, limit_s)
            try:
                if kind == "config":
                    o = run_config(rng, work, case)
                elif kind == "label":
                    o = run_label(rng, work, case, template)
                elif kind == "pool":
                    o = run_pool(rng, work, case)
                elif kind == "select":
                    o = run_select(rng, work, case, inputs)
                else:
                    o = run_api(rng, work, case, inputs)
            except Hang as e:
                o = Outcome(kind, case, _description(e), "hang", f"over {limit_s:.0f}s")
            except Exception as e:  # anything but a RaydalError escaping is a traceback
                o = Outcome(kind, case, _description(e), "traceback",
                            "".join(traceback.format_exception(e))[-1500:])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            o.seconds = round(time.perf_counter() - t0, 3)
            out.append(o)
    finally:
        signal.signal(signal.SIGALRM, previous)
        logging.getLogger().removeHandler(quiet)
    return out


def sample_kinds(n: int, seed: int) -> list[str]:
    """``n`` kinds, each kind about as often, in a seeded order."""
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    random.Random(seed).shuffle(kinds)
    return kinds


def summary(outcomes: list[Outcome]) -> dict:
    count = {r: sum(o.result == r for o in outcomes)
             for r in ("ok", "error", "traceback", "hang", "partial", "wrong")}
    per_kind = {k: sum(o.kind == k for o in outcomes) for k in KINDS}
    return {"cases": len(outcomes), "per_kind": per_kind, **count,
            "failures": [asdict(o) for o in outcomes
                         if o.result in ("traceback", "hang", "partial", "wrong")]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/fuzz.json")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    args = ap.parse_args()
    import tempfile
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # a line per dataset otherwise
    work = Path(args.work or tempfile.mkdtemp(prefix="raydal-fuzz-"))
    t0 = time.perf_counter()
    outcomes = run_cases(sample_kinds(args.cases, args.seed), args.seed, work)
    result = {**summary(outcomes), "seed": args.seed, "seconds": round(time.perf_counter() - t0),
              "outcomes": [asdict(o) for o in outcomes]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"{result['cases']} cases {result['per_kind']}: {result['ok']} ok, {result['error']} "
          f"clear errors, {result['traceback']} tracebacks, {result['hang']} hangs, "
          f"{result['partial']} partial writes, {result['wrong']} wrong results "
          f"({result['seconds']} s) -> {args.out}")
    for f in result["failures"]:
        print(f"  {f['kind']} #{f['case']} {f['what']}: {f['result']}: {f['detail'][:500]}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
