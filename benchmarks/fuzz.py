"""Fuzz pass: generated configs, label files and pools against raydal's own entry points.

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

    python benchmarks/fuzz.py [--cases 240] [--seed 0] [--out benchmarks/results/fuzz.json]

tests/integration/test_fuzz_sample.py runs a seeded sample of about 30 cases in CI.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

KINDS = ("config", "label", "pool")
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
    from raydal.datasets import encode_png
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


def prepare(work: Path) -> Path:
    """Fixture data and a run directory waiting for round 0's labels; returns that run dir."""
    from raydal.loop import ActiveLoop
    from raydal.config import parse_config
    work.mkdir(parents=True, exist_ok=True)
    images, _ = png_pool(40)
    ids = [f"img-{i:03d}" for i in range(40)]
    pq.write_table(pa.table({"id": ids, "image": pa.array(images, pa.binary())}),
                   work / "pool.parquet")
    pq.write_table(pa.table({"id": ids[:10], "image": pa.array(images[:10], pa.binary()),
                             "label": [i % CLASSES for i in range(10)]}), work / "test.parquet")
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
        if mistake == "drop row" and rows:
            rows.pop(rng.randrange(len(rows)))
        elif mistake == "extra id":
            rows.append(["not-a-pick", "1"] if header[0] == "id" else ["1", "not-a-pick"])
        elif mistake == "dup row" and rows:
            rows.append(list(rng.choice(rows)))
        elif mistake in ("bad label", "empty label") and rows:
            r = rng.choice(rows)
            r[header.index("label")] = ("" if mistake == "empty label"
                                        else rng.choice(["7", "-1", "1.0", "cat", "²", "0x1"]))
        elif mistake == "dup header":
            header = header + ["label"]
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


def _cli(argv: list[str]) -> tuple[int, str]:
    """``raydal ARGV`` in this process: (exit status, stderr)."""
    from raydal.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


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
    code, err = _cli(["import-labels", str(run_dir), str(label_file)])
    after = files_under(run_dir) - before - {".lock"}
    if code == 2 and expect != "labels":
        if after:
            return Outcome("label", case, what, "partial", str(after))
        if not err.startswith("error: ") or err.count("\n") != 1:
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
        from raydal.datasets import encode_png
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
        pool = Pool(folder / "pool.parquet")
        pool.check_ids()  # as the loop does before any work
        sel = select(pool, None, "random", budget, num_actors=1, batch_size=8,
                     input_spec=InputSpec(1, 32), progress=False)
    except RaydalError as e:
        result = Outcome("pool", case, what, "error", str(e)[:200])
    else:
        ids = [str(i) for i in table.column("id").to_pylist()]
        usable = sel.num_scored
        ok = (len(set(sel.ids)) == len(sel.ids) and set(sel.ids) <= set(ids)
              and len(sel.ids) == min(budget, usable) and usable + len(sel.skipped) == len(ids))
        result = Outcome("pool", case, what, "ok" if ok else "wrong",
                         "" if ok else f"{len(sel.ids)} picks, {usable} scored, "
                         f"{len(sel.skipped)} skipped of {len(ids)}, budget {budget}")
    if files_under(folder) != before:
        return Outcome("pool", case, what, "partial", str(files_under(folder) - before))
    return result


# ---- the pass ----------------------------------------------------------------------------------
def _alarm(signum, frame):
    raise Hang()


def run_cases(kinds: list[str], seed: int, work: Path, limit_s: float = 120.0
              ) -> list[Outcome]:
    """One case per entry of ``kinds`` (seeded); Ray must be initialised for pool/label."""
    import logging
    logging.getLogger("raydal").setLevel(logging.ERROR)  # skipped-image warnings are expected
    from raydal.config import parse_config
    parse_config(base_config(work))  # imports (timm's registry) before any case is timed
    template = prepare(work / "template") if "label" in kinds else None
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
                else:
                    o = run_pool(rng, work, case)
            except Hang:
                o = Outcome(kind, case, "?", "hang", f"over {limit_s:.0f}s")
            except Exception as e:  # anything but a RaydalError escaping is a traceback
                o = Outcome(kind, case, "?", "traceback",
                            "".join(traceback.format_exception(e))[-1500:])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            o.seconds = round(time.perf_counter() - t0, 3)
            out.append(o)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return out


def sample_kinds(n: int, seed: int) -> list[str]:
    """``n`` kinds, each kind about a third, in a seeded order."""
    kinds = [KINDS[i % 3] for i in range(n)]
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
    ap.add_argument("--cases", type=int, default=240)
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
