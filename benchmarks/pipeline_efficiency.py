"""How well ``raydal.select`` keeps the CPUs decoding: the selection pipeline's efficiency.

Efficiency = select() images/s / (CPUs x images/s one process decodes), both measured in the
same run: 1.0 is every CPU decoding all the time; the rest is Ray Data plumbing, scheduling,
start-up and the scorers. The pool is synthetic 400x300 JPEGs (Parquet: id, image bytes; about
the size of ImageNet's), decoded to 224x224 RGB, and the strategies are ``random`` (model-free:
decode and plumbing only) and ``entropy`` with a tiny model (forward only). Each measurement runs
in a fresh driver process with its own local Ray cluster (modules imported before the clock
starts), so the cluster's start-up is included; ``steady`` is the rate after the first scored
batch reached the driver; ``warm`` is a second selection in the same driver and cluster (as a
loop's later rounds run: pooled workers kept, actors started again).

A second denominator, ``work_rate``: one process doing a selection's whole per-row work without
Ray (Parquet read, decode or check, normalise, score, running top-k). CPUs x that is what a
perfect pipeline would reach: the share of it that select() reaches is the pipeline's own cost,
apart from the work beyond decoding that a strategy needs.

It also times the quickstart-sized case (4 dynamicAL selections of a 10k Fashion-MNIST pool with
test_resnet in one driver, as the loop runs them) for each pipeline.

    python benchmarks/pipeline_efficiency.py [--quick] [--rows 6000] [--repeats 3]
        [--pipelines fused,staged] [--cases random,entropy,quickstart] [--out PATH]

Functions for other scripts (a GPU benchmark): ``make_jpeg_pool``, ``decode_rate``,
``run_select`` (one select() with a given layout, returns images/s; Ray is started by select()
itself when this process has not, honouring RAY_ADDRESS).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's raydal, whatever is installed
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_efficiency.json"
GOAL = 0.80


# ---- for other scripts -----------------------------------------------------------------------
def make_jpeg_pool(path: str | Path, n: int, w: int = 400, h: int = 300, seed: int = 0,
                   quality: int = 90, rows_per_group: int = 500) -> Path:
    """A Parquet pool of ``n`` synthetic RGB JPEGs of w x h (id '000000000'.., image bytes);
    reused when ``path`` already holds ``n`` rows. Smooth colour fields plus mild noise, about
    40-50 KiB each at 400x300 (noise alone would make 3x larger files than photos)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    path = Path(path)
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.string()), ("image", pa.binary())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for s in range(0, n, rows_per_group):
            blobs = []
            for _ in range(s, min(n, s + rows_per_group)):
                small = rng.integers(0, 256, (h // 20, w // 20, 3), dtype=np.uint8)
                im = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.int16)
                im = np.clip(im + rng.integers(-12, 13, im.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="JPEG", quality=quality)
                blobs.append(buf.getvalue())
            ids = [f"{i:09d}" for i in range(s, s + len(blobs))]
            writer.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary())},
                                        schema=schema))
    os.replace(tmp, path)
    return path


def decode_rate(pool_path: str | Path, input_spec=None, rows: int = 400) -> float:
    """Images/s one process decodes (raydal.transforms.load_image: decode, resize, crop) over
    the first ``rows`` images of the pool, bytes already in memory."""
    import pyarrow.parquet as pq
    from raydal.transforms import InputSpec, load_image

    spec = input_spec or InputSpec(3, 224)
    blobs = pq.read_table(pool_path, columns=["image"]).column(0).slice(0, rows).to_pylist()
    load_image(blobs[0], None, spec)  # warm: imports, PIL plugins
    t0 = time.perf_counter()
    for b in blobs:
        load_image(b, None, spec)
    return len(blobs) / (time.perf_counter() - t0)


def work_rate(pool_path: str | Path, strategy: str, input_spec=None, rows: int = 1000,
              batch_size: int = 128) -> dict:
    """Images/s of ONE process doing a selection's whole per-row work without Ray, on one torch
    thread: read the Parquet rows (``read_unit``), decode (or, for ``random``, check), normalise,
    score and keep the running top-k, with raydal's own functions; and ms a row for each step.
    What the pipeline adds beyond the work itself is select's shortfall from CPUs x this."""
    import numpy as np
    import torch
    from raydal.hostmem import keep_freed_blocks
    from raydal.merge import RunningTopK
    from raydal.pool import Pool
    from raydal.scoring import create_strategy
    from raydal.selection import needs_pixels, read_unit
    from raydal.transforms import InputSpec, normalise, verify_rows

    keep_freed_blocks()  # as a Scorer does
    torch.set_num_threads(1)
    spec = input_spec or InputSpec(3, 224)
    pool, strat = Pool(pool_path), create_strategy(strategy)
    model = tiny_model() if strat.needs_model else None
    pixels = needs_pixels(strat)
    unit = {"path": pool.files[0].path, "row_group": -1, "start": 0, "stop": -1}
    steps = dict.fromkeys(("read", "decode", "normalise", "score"), 0.0)
    buf, running, n = None, RunningTopK(100), 0
    t = t0 = time.perf_counter()
    for block in read_unit(pool, unit, batch_size):
        steps["read"] += time.perf_counter() - t
        t = time.perf_counter()
        if pixels:
            arr, ok, _ = pool.decode(block, spec)
        else:
            (ok, _), arr = verify_rows(*pool.image_inputs(block), spec), None
        steps["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        x = None
        if arr is not None:
            x = torch.from_numpy(arr)
            buf = buf if buf is not None and len(buf) >= len(x) else torch.empty(x.shape)
            x = normalise(x, spec, out=buf[:len(x)])
        steps["normalise"] += time.perf_counter() - t
        t = time.perf_counter()
        ids = [str(block["id"][i]) for i in ok]
        scores = strat.score(model, x, ids, None)
        running.admit(np.asarray(ids, dtype=str), scores.detach().double().numpy())
        steps["score"] += time.perf_counter() - t
        n += len(block["id"])
        if n >= rows:
            break
        t = time.perf_counter()
    return {"images_per_s": n / (time.perf_counter() - t0),
            "ms_per_row": {k: 1e3 * v / n for k, v in steps.items()}, "rows": n}


def tiny_model(num_classes: int = 10, in_chans: int = 3):
    """A forward-cheap CNN for a forward-only strategy (entropy): what decode, not the model,
    should bound."""
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_chans, 8, 7, stride=8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, num_classes)).eval()


def run_select(pool_path: str | Path, *, strategy: str = "random", model=None,
               input_spec=None, budget: int = 1000, num_actors: int = 1,
               num_gpus_per_actor: float = 0.0, num_cpus_per_actor: float = 0.5,
               batch_size: int = 128, decode_tasks: int | None = None,
               pipeline: str = "auto", labeled=None, strategy_options=None) -> dict:
    """One ``raydal.select`` with this layout; returns images/s end to end and after the first
    scored batch, and the Selection's figures. ``model``: a module, a checkpoint folder, or
    None (``tiny_model()`` for entropy-like strategies, none for random)."""
    import raydal
    from raydal.transforms import InputSpec

    if model is None and strategy != "random":
        model = tiny_model()
    t0 = time.perf_counter()
    sel = raydal.select(str(pool_path), model, strategy, budget, labeled,
                        num_actors=num_actors, num_gpus_per_actor=num_gpus_per_actor,
                        num_cpus_per_actor=num_cpus_per_actor, batch_size=batch_size,
                        decode_tasks=decode_tasks, pipeline=pipeline,
                        input_spec=input_spec or InputSpec(3, 224), progress=False,
                        strategy_options=strategy_options)
    wall = time.perf_counter() - t0
    seen = sel.num_scored + len(sel.skipped)
    steady_rows = seen - sel.startup_rows
    return {"images_per_s": seen / wall, "seconds": wall, "num_scored": sel.num_scored,
            "skipped": len(sel.skipped), "startup_s": sel.startup_seconds,
            "steady_images_per_s": (steady_rows / (wall - sel.startup_seconds)
                                    if steady_rows and wall > sel.startup_seconds else None),
            "pipeline": sel.pipeline, "picks": sel.ids[:5]}


# ---- one measurement a child process ---------------------------------------------------------
def _loadavg() -> list[float]:
    return [round(float(x), 2) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _measure_efficiency(pool: str, strategy: str, pipeline: str, cpus: int,
                        num_actors: int, num_cpus_per_actor: float, batch_size: int) -> dict:
    import logging
    import ray
    import ray.data  # noqa: F401  the driver's imports are done before the clock starts,
    import raydal.selection  # noqa: F401  as in any program that selects more than once
    load_before = _loadavg()
    rate = decode_rate(pool)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    kw = dict(strategy=strategy, pipeline=pipeline, num_actors=num_actors,
              num_cpus_per_actor=num_cpus_per_actor, batch_size=batch_size)
    r = run_select(pool, **kw)  # cold: a fresh cluster, its workers import everything
    warm = run_select(pool, **kw)  # a later selection, as a loop's rounds 2+ run
    ray.shutdown()
    rate_after = decode_rate(pool)
    one = (rate + rate_after) / 2
    work = work_rate(pool, strategy)
    return {**r, "decode_rate_1proc": one, "decode_rate_before_after": [rate, rate_after],
            "work_rate_1proc": work["images_per_s"], "work_ms_per_row": work["ms_per_row"],
            "efficiency_vs_work_steady": (r["steady_images_per_s"] / (cpus * work["images_per_s"])
                                          if r["steady_images_per_s"] else None),
            "efficiency_vs_work_warm": warm["images_per_s"] / (cpus * work["images_per_s"]),
            "cpus": cpus, "efficiency": r["images_per_s"] / (cpus * one),
            "efficiency_steady": (r["steady_images_per_s"] / (cpus * one)
                                  if r["steady_images_per_s"] else None),
            "warm_images_per_s": warm["images_per_s"], "warm_startup_s": warm["startup_s"],
            "efficiency_warm": warm["images_per_s"] / (cpus * one),
            "loadavg_before": load_before, "loadavg_after": _loadavg()}


def _measure_quickstart(data_dir: str, pipeline: str, rounds: int) -> dict:
    """The quickstart's selections: dynamicAL, budget 100, 2 scorers x 0.5 CPU, batch 256,
    a 10k Fashion-MNIST pool, test_resnet at 32 px, ``rounds`` selections in one driver."""
    import logging
    import pyarrow.parquet as pq
    import ray
    import timm
    import raydal
    from raydal.datasets import prepare_dataset
    from raydal.transforms import InputSpec

    load_before = _loadavg()
    prepare_dataset("fashion-mnist", data_dir)
    full = pq.read_table(Path(data_dir) / "pool.parquet")
    pool = Path(data_dir) / "pool-10k.parquet"
    if not pool.exists():
        pq.write_table(full.slice(0, 10000), pool)
    labels = {i: k % 10 for k, i in enumerate(full.column("id").to_pylist()[:100])}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    rounds_out = []
    for _ in range(rounds):
        sel = raydal.select(str(pool), model, "dynamicAL", 100, labels, num_actors=2,
                            batch_size=256, num_cpus_per_actor=0.5, input_spec=InputSpec(1, 32),
                            progress=False, pipeline=pipeline)
        rounds_out.append({"seconds": sel.seconds, "startup_s": sel.startup_seconds,
                           "pipeline": sel.pipeline})
    ray.shutdown()
    return {"rounds": rounds_out, "total_s": sum(r["seconds"] for r in rounds_out),
            "loadavg_before": load_before, "loadavg_after": _loadavg()}


def _child(kind: str, kw: dict) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)  # a private local cluster, never someone else's
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(kw)], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} {kw} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3,000 images, 1 repeat, under /tmp")
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--pipelines", default="fused,staged")
    p.add_argument("--cases", default="random,entropy,quickstart")
    p.add_argument("--layouts", default="fused=2x0.5,staged=1x0",
                   help="scorers x CPUs each, per pipeline (fused: 2 tasks of 0.5 CPU, the "
                   "quickstart's; staged: 1 actor reserving no CPU, so every CPU can run a "
                   "decode task)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quickstart-rounds", type=int, default=4)
    p.add_argument("--data-dir", default=str(ROOT / "data" / "bench" / "pipeline_efficiency"))
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, kw = args.child[0], json.loads(args.child[1])
        fn = _measure_efficiency if kind == "efficiency" else _measure_quickstart
        print(json.dumps(fn(**kw)))
        return 0
    if args.quick:
        args.rows, args.repeats = 3000, 1
        args.data_dir = "/tmp/raydal-bench/pipeline_efficiency"
    out = Path(args.out or ("/tmp/raydal-bench/pipeline_efficiency.json" if args.quick
                            else RESULTS))
    pool = make_jpeg_pool(Path(args.data_dir) / f"jpeg-{args.rows}.parquet", args.rows)
    pipelines = args.pipelines.split(",")
    layouts = {k: v.split("x") for k, v in (x.split("=") for x in args.layouts.split(","))}
    cases = args.cases.split(",")
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "rows": args.rows, "pool_bytes": pool.stat().st_size, "cpus": args.cpus,
              "layouts": args.layouts, "batch_size": args.batch_size, "runs": [], "summary": {}}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))

    for rep in range(args.repeats):
        for case in cases:
            for pipeline in pipelines:  # interleaved: load drifts hit both designs alike
                if case == "quickstart":
                    kw = dict(data_dir=str(Path(args.data_dir) / "fashion-mnist"),
                              pipeline=pipeline, rounds=args.quickstart_rounds)
                    r = _child("quickstart", kw)
                    print(f"[{rep}] quickstart {pipeline}: {r['total_s']:.1f}s "
                          f"({', '.join(format(x['seconds'], '.1f') for x in r['rounds'])}) load "
                          f"{r['loadavg_before'][0]}", flush=True)
                else:
                    kw = dict(pool=str(pool), strategy=case, pipeline=pipeline, cpus=args.cpus,
                              num_actors=int(layouts[pipeline][0]),
                              num_cpus_per_actor=float(layouts[pipeline][1]),
                              batch_size=args.batch_size)
                    r = _child("efficiency", kw)
                    print(f"[{rep}] {case} {pipeline}: {r['images_per_s']:.0f} img/s "
                          f"(steady {r['steady_images_per_s'] or 0:.0f}), decode 1 proc "
                          f"{r['decode_rate_1proc']:.0f}/s, efficiency {r['efficiency']:.0%} "
                          f"(steady {r['efficiency_steady'] or 0:.0%}, warm "
                          f"{r['efficiency_warm']:.0%}: {r['warm_images_per_s']:.0f} img/s); "
                          f"1 proc's whole work {r['work_rate_1proc']:.0f}/s ("
                          + ", ".join(f"{k} {v:.2f}" for k, v in r["work_ms_per_row"].items())
                          + f" ms a row): steady {r['efficiency_vs_work_steady'] or 0:.0%}, "
                          f"warm {r['efficiency_vs_work_warm']:.0%} of CPUs x it; load "
                          f"{r['loadavg_before'][0]}", flush=True)
                result["runs"].append({"repeat": rep, "case": case, "pipeline": pipeline, **r})
                save()
    for case in cases:
        for pipeline in pipelines:
            runs = [r for r in result["runs"] if r["case"] == case and r["pipeline"] == pipeline]
            if case == "quickstart":
                s = {"total_s": _median([r["total_s"] for r in runs]),
                     "first_round_s": _median([r["rounds"][0]["seconds"] for r in runs]),
                     "later_round_s": _median([x["seconds"] for r in runs
                                               for x in r["rounds"][1:]])}
            else:
                s = {k: _median([r[k] for r in runs]) for k in
                     ("images_per_s", "steady_images_per_s", "decode_rate_1proc", "efficiency",
                      "efficiency_steady", "startup_s", "warm_images_per_s", "efficiency_warm",
                      "warm_startup_s", "work_rate_1proc", "efficiency_vs_work_steady",
                      "efficiency_vs_work_warm")}
            s["loadavg_1min"] = [r["loadavg_before"][0] for r in runs]
            s["n"] = len(runs)
            result["summary"][f"{case}/{pipeline}"] = s
    save()
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
