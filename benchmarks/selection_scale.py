"""How distributed selection (``raydal.select``) scales with pool size, and with actors.

For each pool size (default 10k, 100k, 1.28M rows of 8x8 grayscale PNGs, written streaming in
row groups, never whole in memory) one fresh driver process starts a local Ray cluster (2 CPUs)
and runs a full ``raydal.select`` (entropy, budget 1000, 2 actors x 0.5 CPU, a cheap model), then,
in the same process and without Ray, the bare work: the same decode + model + running top-k +
merge over the same rows (a sample of them, extrapolated by row count). It reports

  rows_per_s           pool rows / select() wall time (seconds include actor start-up)
  driver_peak_rss_mb   the driver's VmHWM during select() (HWM reset by /proc/self/clear_refs)
  driver_rss_growth_mb peak RSS during select() minus RSS just before it
  driver_peak_anon_mb  peak private heap (RssAnon) during select(), sampled every 0.1 s; VmHWM
                       also counts object-store pages mapped by the driver (RssShmem)
  overhead             select wall / (bare seconds / actors) - 1: time beyond perfectly parallel
                       bare compute (Ray Data read, scheduling, transfer, driver merge)
  startup_s            seconds until the first scored batch reached the driver (actor start,
                       model shipping, Ray Data planning, first read), measured in the same run;
  overhead_steady      the overhead of the rest of the run: (wall - startup_s) against the bare
                       time of the rows scored after the first batch (per-row cost only)
  overhead_steady_vs_together
                       the same against 2 bare processes run at once (what 2 perfect workers
                       get from this machine's 2 cores), i.e. the pipeline's own share
  one_actor            the same run with 1 actor, against bare on 1 thread
  cpu_seconds          CPU seconds every process on the machine used during select(), by group
                       (scoring actors, read tasks, driver, Ray system)

and, on a pool with a CPU-bound model (an MLP, model time >> decode time), the speedup of
2 actors over 1 actor (0.5 CPU each, one torch thread each), end to end and steady state.

Goals: driver memory flat within 100 MB from 10k to 1.28M rows; overhead <= 10%;
2 actors >= 1.8x one actor. Timings are noisy on a shared 2-core machine.

    python benchmarks/selection_scale.py [--sizes 10000,100000,1280000] [--quick] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's raydal, whatever is installed
DEFAULT_SIZES = [10_000, 100_000, 1_280_000]
QUICK_SIZES = [2_000, 20_000]
ROWS_PER_FILE = 10_000      # pool files (shards) of 10k rows ...
ROW_GROUP = 2_500           # ... written as row groups of 2.5k
IMG = 8                     # px, grayscale
BUDGET = 1000
SCALING_BARE_ROWS = 20_000  # bare MLP time is timed on this many rows and extrapolated
GOALS = {"driver_memory_flat_mb": 100.0, "overhead_max": 0.10, "speedup_2_actors_min": 1.8}


# ---- synthetic pools ---------------------------------------------------------------------------
def build_pool(n: int, folder: Path) -> Path:
    """A folder of Parquet files (id string, image PNG bytes) with ``n`` rows; reused if complete.

    Images are 8x8 uint8 noise, encoded one at a time and written a row group at a time, so
    memory stays at one row group whatever ``n`` is.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from raydal.storage import atomic_write, atomic_write_json, read_json
    from raydal.transforms import encode_png

    done = folder / "_SUCCESS.json"
    if (read_json(done) or {}).get("rows") == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    schema = pa.schema([("id", pa.string()), ("image", pa.binary())])
    t0 = time.perf_counter()
    for f, start in enumerate(range(0, n, ROWS_PER_FILE)):
        stop = min(n, start + ROWS_PER_FILE)

        def write(tmp: Path, start=start, stop=stop, f=f) -> None:
            rng = np.random.default_rng(f)
            with pq.ParquetWriter(tmp, schema) as w:
                for s in range(start, stop, ROW_GROUP):
                    e = min(stop, s + ROW_GROUP)
                    images = rng.integers(0, 256, (e - s, IMG, IMG), dtype=np.uint8)
                    w.write_table(pa.table({
                        "id": pa.array([f"{i:09d}" for i in range(s, e)], pa.string()),
                        "image": pa.array([encode_png(x) for x in images], pa.binary())},
                        schema=schema))
        atomic_write(folder / f"part-{f:05d}.parquet", write)
    atomic_write_json(done, {"rows": n, "seconds": time.perf_counter() - t0})
    print(f"  built pool of {n} rows in {time.perf_counter() - t0:.1f}s: {folder}", flush=True)
    return folder


# ---- models --------------------------------------------------------------------------------------
def make_model(kind: str):
    """cheap: linear 64 -> 10 (decode-bound). cpu: MLP 64 -> 2048 -> 2048 -> 2048 -> 10,
    hidden 2048 (~17 MFLOP/image, model-bound). Plain torch.nn, so it pickles to any actor."""
    import torch
    torch.manual_seed(0)
    n = IMG * IMG
    if kind == "cheap":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 10)).eval()
    h = 2048
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, h), torch.nn.ReLU(),
                               torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
                               torch.nn.ReLU(), torch.nn.Linear(h, 10)).eval()


# ---- measurements (run in a fresh driver process each) -------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


#: process groups of the CPU account: (group, substring of the process's command line)
_CPU_GROUPS = (("scoring tasks", "score_block"), ("driver", "--child"),
               ("Ray system", "raylet"), ("Ray system", "gcs_server"), ("Ray system", "ray::_"),
               ("Ray system", "ray::Actor"), ("Ray system", "ray::Dashboard"),
               ("Ray system", "log_monitor"), ("Ray system", "dashboard"),
               ("read tasks and idle workers", "ray::"), ("read tasks and idle workers",
                                                          "default_worker.py"))


def _process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (group, user + system CPU seconds so far) of every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        group = next((g for g, key in _CPU_GROUPS if key in cmd), "other processes")
        out[int(stat.parent.name)] = (group, (int(fields[11]) + int(fields[12])) / tick)
    return out


class _Sampler:
    """Samples, in a thread, the driver's /proc/self/status every ``period_s`` (peak of each
    field) and the CPU time of every process every ``cpu_every`` samples.

    VmHWM counts object-store (shared memory) pages the driver has mapped; RssAnon is the
    driver's own heap, RssShmem the mapped shared pages: the peaks say which one grew. The CPU
    account (``cpu_seconds``: group -> CPU seconds used during the run) keeps each process's
    last sample, so processes that exit before the end (Ray Data's actors) still count, up to
    one sampling period.
    """

    FIELDS = ("RssAnon", "RssShmem", "RssFile")

    def __init__(self, period_s: float = 0.1, cpu_every: int = 5):
        import threading
        self.peak_mb = {f: 0.0 for f in self.FIELDS}
        self._cpu_first = _process_cpu()
        self._cpu_last = dict(self._cpu_first)
        self._cpu_every = cpu_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    def _run(self, period_s: float) -> None:
        n = 0
        while not self._stop.is_set():
            for f in self.FIELDS:
                self.peak_mb[f] = max(self.peak_mb[f], _status_kb(f) / 1024)
            if n % self._cpu_every == 0:
                self._cpu_last.update(_process_cpu())
            n += 1
            self._stop.wait(period_s)

    @property
    def cpu_seconds(self) -> dict[str, float]:
        groups: dict[str, float] = {}
        for pid, (group, cpu) in self._cpu_last.items():
            before = self._cpu_first.get(pid, (group, 0.0))[1]
            groups[group] = groups.get(group, 0.0) + cpu - before
        return {g: round(c, 2) for g, c in sorted(groups.items())}

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._cpu_last.update(_process_cpu())


def bare_seconds(pool_path: str, model_kind: str, rows: int, batch_size: int) -> dict:
    """Decode + model + running top-k + streaming merge over the first ``rows`` rows, one
    process, one torch thread, no Ray: the work select() distributes. Returns seconds, rows."""
    import numpy as np
    import pyarrow.dataset as pads
    import torch
    from raydal.merge import RunningTopK, StreamingTopK
    from raydal.scoring import create_strategy
    from raydal.transforms import InputSpec, decode_rows, to_model_input

    torch.set_num_threads(1)
    spec, strategy, model = InputSpec(1, IMG), create_strategy("entropy"), make_model(model_kind)
    running, merger, seen = RunningTopK(BUDGET), StreamingTopK(BUDGET), 0
    t0 = time.perf_counter()
    for batch in pads.dataset(pool_path, format="parquet").to_batches(
            columns=["id", "image"], batch_size=batch_size):
        ids = np.asarray([str(i) for i in batch.column(0).to_pylist()], dtype=object)
        arr, ok, _ = decode_rows(batch.column(1).to_pylist(), None, spec)
        with torch.no_grad():
            scores = strategy.score(model, to_model_input(arr, spec), list(ids[ok]), None)
        merger.add(*running.admit(ids[ok].astype(str), scores.double().numpy()))
        seen += len(ids)
        if seen >= rows:
            break
    merger.result()
    return {"seconds": time.perf_counter() - t0, "rows": seen}


def bare_concurrent_seconds(pool_path: str, model_kind: str, rows: int, batch_size: int,
                            procs: int) -> float:
    """Seconds a row of ``bare_seconds`` takes when ``procs`` processes run it at once (the
    most ``procs`` perfect workers can do on this machine: shared caches, memory bandwidth and
    clocks included). Each process imports first, then all start at one agreed moment."""
    kw = dict(pool_path=pool_path, model_kind=model_kind, rows=rows, batch_size=batch_size,
              start_at=time.time() + 15.0)
    runs = [_start_child("--bare", kw) for _ in range(procs)]
    results = [_child_result(r, kw) for r in runs]
    if any(r["late"] for r in results):
        raise RuntimeError("a concurrent bare process was not ready at the start time")
    return sum(r["seconds"] / r["rows"] for r in results) / procs


def _bare_child(start_at: float, **kw) -> dict:
    import raydal.selection  # noqa: F401  (imports done before the agreed start)
    late = time.time() > start_at
    time.sleep(max(0.0, start_at - time.time()))
    return {**bare_seconds(**kw), "late": late}


def measure(pool_path: str, model_kind: str, num_actors: int, batch_size: int,
            bare_rows: int) -> dict:
    """One select() in this (fresh) process on a local 2-CPU cluster, then bare on a sample."""
    import logging
    import ray
    import ray.data
    import raydal
    from raydal.transforms import InputSpec

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    pool = raydal.Pool(pool_path)
    n = pool.num_rows
    model = make_model(model_kind)
    rss_before = _status_kb("VmRSS") / 1024
    anon_before = _status_kb("RssAnon") / 1024
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    with _Sampler() as sampler:
        sel = raydal.select(pool, model, "entropy", BUDGET, num_actors=num_actors,
                            batch_size=batch_size, num_cpus_per_actor=0.5,
                            input_spec=InputSpec(1, IMG), progress=False)
    wall = time.perf_counter() - t0
    peak = _status_kb("VmHWM") / 1024
    rss_after = _status_kb("VmRSS") / 1024
    assert len(sel.ids) == min(BUDGET, n) and sel.num_scored == n, (len(sel.ids), sel.num_scored)
    ray.shutdown()
    bare = bare_seconds(pool_path, model_kind, min(bare_rows, n), batch_size)
    bare_full = bare["seconds"] * n / bare["rows"]
    steady_rows = n - sel.startup_rows
    steady_bare = bare_full * steady_rows / n
    row_s_together = (bare_concurrent_seconds(pool_path, model_kind, min(bare_rows, n),
                                              batch_size, num_actors)
                      if num_actors > 1 else bare["seconds"] / bare["rows"])
    return {"rows": n, "model": model_kind, "num_actors": num_actors, "batch_size": batch_size,
            "select_seconds": wall, "rows_per_s": n / wall,
            "startup_s": sel.startup_seconds, "startup_rows": sel.startup_rows,
            # None when the first batch was the whole pool (tiny pools): no steady state
            "steady_rows_per_s": (steady_rows / (wall - sel.startup_seconds)
                                  if steady_rows else None),
            "overhead_steady": ((wall - sel.startup_seconds) / (steady_bare / num_actors) - 1
                                if steady_rows else None),
            # against ``num_actors`` bare processes run at once: the pipeline's own share
            "bare_together_rows_per_s_each": 1.0 / row_s_together,
            "overhead_steady_vs_together": ((wall - sel.startup_seconds)
                                            / (row_s_together * steady_rows / num_actors) - 1
                                            if steady_rows else None),
            "driver_rss_before_mb": rss_before, "driver_peak_rss_mb": peak if reset else None,
            "driver_rss_after_mb": rss_after,
            "driver_anon_before_mb": anon_before,
            "driver_peak_anon_mb": sampler.peak_mb["RssAnon"],
            "driver_peak_shmem_mb": sampler.peak_mb["RssShmem"],
            "cpu_seconds": sampler.cpu_seconds,
            "driver_rss_growth_mb": (peak - rss_before) if reset else rss_after - rss_before,
            "bare_sample_rows": bare["rows"], "bare_sample_seconds": bare["seconds"],
            "bare_seconds_extrapolated": bare_full,
            "bare_rows_per_s_1thread": bare["rows"] / bare["seconds"],
            "overhead": wall / (bare_full / num_actors) - 1}


def _start_child(flag: str, kw: dict) -> subprocess.Popen:
    """This script in a fresh interpreter (``flag`` JSON), on a private local cluster if any."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)  # always a private local cluster, never someone else's
    return subprocess.Popen([sys.executable, __file__, flag, json.dumps(kw)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _child_result(proc: subprocess.Popen, kw: dict) -> dict:
    """The JSON a child printed last; RuntimeError with its stderr if it failed."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"child {kw} failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_child(**kw) -> dict:
    """``measure`` in a fresh interpreter, so each driver's memory is its own."""
    return _child_result(_start_child("--child", kw), kw)


# ---- report ----------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = ["| rows | select s | start-up s | rows/s | driver peak RSS MB | RSS growth MB "
             "| bare rows/s: 1 process / each of 2 at once | overhead vs bare/2: end to end "
             "/ steady | steady overhead vs 2 bare at once | 1 actor vs bare: end to end / steady |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["sizes"]:
        one = r.get("one_actor") or {}
        mark = " (bare extrapolated)" if r["bare_sample_rows"] < r["rows"] else ""
        lines.append(f"| {r['rows']:,}{mark} | {r['select_seconds']:.1f} | {r['startup_s']:.1f} | "
                     f"{r['rows_per_s']:,.0f} | {r['driver_peak_rss_mb'] or float('nan'):.0f} | "
                     f"{r['driver_rss_growth_mb']:.0f} | {r['bare_rows_per_s_1thread']:,.0f} / "
                     f"{r['bare_together_rows_per_s_each']:,.0f} | {r['overhead']:+.0%} / "
                     f"{_pct(r['overhead_steady'])} | {_pct(r['overhead_steady_vs_together'])} | "
                     f"{_pct(one.get('overhead'))} / {_pct(one.get('overhead_steady'))} |")
    lines += ["", "bare extrapolated: bare timed on " + ", ".join(
        f"{r['bare_sample_rows']:,} of the {r['rows']:,} rows" for r in result["sizes"]
        if r["bare_sample_rows"] < r["rows"]) + ", its time scaled linearly; the other "
        "sizes' bare figures are timed on the whole pool"]
    largest = max(result["sizes"], key=lambda r: r["rows"])
    cpu, cores = largest["cpu_seconds"], result["machine"]["cpus"]
    lines += ["", f"CPU seconds used during the {largest['rows']:,}-row select() "
              f"({largest['select_seconds']:.1f}s x {cores} cores = "
              f"{cores * largest['select_seconds']:.0f} CPU-s; bare work "
              f"{largest['bare_seconds_extrapolated']:.0f} CPU-s): "
              + ", ".join(f"{g} {c:.1f}" for g, c in cpu.items())]
    s = result["scaling"]
    lines += ["", f"CPU-bound model ({s['rows']:,} rows, bare 1 thread "
              f"{s['one']['bare_seconds_extrapolated']:.1f}s): 1 actor "
              f"{s['one']['select_seconds']:.1f}s (start-up {s['one']['startup_s']:.1f}s), "
              f"2 actors {s['two']['select_seconds']:.1f}s (start-up {s['two']['startup_s']:.1f}s); "
              f"speedup {s['speedup']:.2f}x end to end, {_times(s['speedup_steady'])} steady state "
              "(rows/s after the first batch)", "", "Goals:"]
    for name, g in result["goals"].items():
        lines.append(f"- {name}: {'MET' if g['met'] else 'NOT MET'} ({g['measured']})")
    return "\n".join(lines)


def goals(result: dict) -> dict:
    """Each goal: met or not, and what was measured (from a result of ``main``)."""
    peaks = [r["driver_peak_rss_mb"] or r["driver_rss_after_mb"] for r in result["sizes"]]
    spread = max(peaks) - min(peaks)
    largest, sc = max(result["sizes"], key=lambda r: r["rows"]), result["scaling"]
    at = f"largest pool ({largest['rows']:,} rows)"
    limit = GOALS["overhead_max"]

    def under(x: float | None) -> bool:
        return x is not None and x <= limit

    speedup = GOALS["speedup_2_actors_min"]
    return {
        "driver memory flat (peak spread <= 100 MB)": {
            "met": spread <= GOALS["driver_memory_flat_mb"],
            "measured": f"peak RSS {min(peaks):.0f}-{max(peaks):.0f} MB, spread {spread:.0f} MB"},
        # the pipeline's own per-row cost: against what 2 bare processes get from the machine
        f"pipeline overhead <= 10%, steady state vs 2 bare processes at once, {at}": {
            "met": under(largest["overhead_steady_vs_together"]),
            "measured": _pct(largest["overhead_steady_vs_together"])},
        # ... plus the machine's own 2-process slowdown (shared caches, memory, clocks)
        f"pipeline overhead <= 10%, steady state vs bare/2, {at}": {
            "met": under(largest["overhead_steady"]), "measured": _pct(largest["overhead_steady"])},
        # ... plus the fixed start-up, whose share shrinks as the pool grows
        f"pipeline overhead <= 10%, end to end vs bare/2, {at}": {
            "met": under(largest["overhead"]),
            "measured": f"{largest['overhead']:+.0%} incl. {largest['startup_s']:.1f}s start-up; "
                        + ", ".join(f"{r['rows']:,}: {r['overhead']:+.0%}"
                                    for r in result["sizes"])},
        "2 actors >= 1.8x one actor (CPU-bound model), steady state": {
            "met": (sc["speedup_steady"] or 0) >= speedup,
            "measured": _times(sc["speedup_steady"])},
        "2 actors >= 1.8x one actor (CPU-bound model), end to end": {
            "met": sc["speedup"] >= speedup, "measured": f"{sc['speedup']:.2f}x"},
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.0%}"


def _times(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", help="comma-separated pool sizes (rows)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--data-dir", default=str(ROOT / "data" / "bench" / "selection_scale"))
    p.add_argument("--out", default=None, help="default: benchmarks/results/selection_scale.json, "
                   "or under /tmp/raydal-bench/quick with --quick (never over committed results)")
    p.add_argument("--bare-rows", type=int, default=100_000,
                   help="rows timed for the bare (no Ray) reference, extrapolated beyond")
    p.add_argument("--scaling-rows", type=int, default=None,
                   help="rows of the 1-vs-2-actor pool (default 400k: 60-80 s of MLP on 1 thread, "
                        "so start-up is a few percent)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--bare", help=argparse.SUPPRESS)
    p.add_argument("--render", metavar="JSON", help="print the tables and goals of a results "
                   "file again (no measuring)")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))), flush=True)
        return 0
    if args.bare:
        print(json.dumps(_bare_child(**json.loads(args.bare))), flush=True)
        return 0
    if args.render:
        result = json.loads(Path(args.render).read_text())
        result["goals"] = goals(result)
        print(markdown(result))
        return 0

    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else QUICK_SIZES if args.quick else DEFAULT_SIZES)
    scaling_rows = args.scaling_rows or (2_000 if args.quick else 400_000)
    bare_rows = min(args.bare_rows, 10_000) if args.quick else args.bare_rows
    data = Path(args.data_dir)
    t_start = time.perf_counter()
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "loadavg_at_start": os.getloadavg()},
              "note": "shared 2-core machine (other engineers run tests): timings are noisy",
              "settings": {"image_px": IMG, "budget": BUDGET, "strategy": "entropy",
                           "num_cpus_per_actor": 0.5, "cluster_cpus": 2, "bare_rows": bare_rows},
              "sizes": [], "scaling": {}}

    def child(pool: Path, kind: str, actors: int, rows: int = bare_rows) -> dict:
        return run_child(pool_path=str(pool), model_kind=kind, num_actors=actors,
                         batch_size=1024 if kind == "cheap" else 256, bare_rows=rows)

    for n in sizes:
        pool = build_pool(n, data / f"pool-{n}")
        r = child(pool, "cheap", 2)
        r["one_actor"] = child(pool, "cheap", 1)
        result["sizes"].append(r)
        print(f"  {n:>9,} rows: {r['select_seconds']:.1f}s (start-up {r['startup_s']:.1f}s), "
              f"{r['rows_per_s']:,.0f} rows/s, "
              f"driver peak {r['driver_peak_rss_mb']:.0f} MB, overhead {r['overhead']:+.0%} "
              f"(steady {_pct(r['overhead_steady'])})", flush=True)
    pool = build_pool(scaling_rows, data / f"pool-{scaling_rows}")
    one, two = child(pool, "cpu", 1, SCALING_BARE_ROWS), child(pool, "cpu", 2, SCALING_BARE_ROWS)
    result["scaling"] = {
        "rows": scaling_rows, "one": one, "two": two,
        "speedup": one["select_seconds"] / two["select_seconds"],
        "speedup_steady": (two["steady_rows_per_s"] / one["steady_rows_per_s"]
                           if two["steady_rows_per_s"] and one["steady_rows_per_s"] else None)}

    result["goals"] = goals(result)
    result["total_seconds"] = time.perf_counter() - t_start
    out = Path(args.out or (Path("/tmp/raydal-bench/quick") if args.quick
                            else ROOT / "benchmarks" / "results") / "selection_scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    print(f"\nwrote {out} ({result['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
