"""One GPU check of raydal, for a lent GPU machine: at most about 8 minutes, printed as it goes.

Stages, each in its own process with its own time limit (a stage that hangs or runs out of time
loses only its own figures), in this order:
  env       torch, CUDA device, Ray, CPUs
  exact     float64 exactness ON THE DEVICE: the fast scorer against a per-sample autograd loop
            (ip_weight 2 and 0), the CUDA-graph scorer against the plain one, bf16 against fp32
  scorer    ms per batch of forward, training step (forward + backward of the summed loss, the
            unit of "training steps"), fast (ip_weight 2) and fast_norm (ip_weight 0), in fp32
            and bf16 autocast, with and without CUDA graphs: resnet50@224 at 16/64/128,
            resnet18@32 at 256, vit_small_patch16_224 and convnext_tiny at 64
  select    ``raydal.select`` end to end on a synthetic ImageNet-shaped pool (400x300 JPEGs in
            Parquet), several layouts, against the scorer-only rate of the same model and batch;
            a 1.28M-image round extrapolated from the steady rate plus the start-up
  train     ``train_round`` (Ray Train, use_gpu) images/s against a bare torch loop

    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out DIR] [--stages a,b]

Writes DIR/gpu_check.json (every stage's figures) and DIR/gpu_check.md (the tables). Default DIR:
$OUT when set (the device tool's output folder), else benchmarks/results; --quick writes under
/tmp/raydal-bench/gpu_check unless --out says otherwise (a smoke run never overwrites committed
results). ``--device cpu --quick`` is the dry run of this script on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

#: stage -> seconds it may take (the whole check stays under 8 minutes on the lent H200)
LIMITS = {"env": 20, "exact": 60, "scorer": 120, "select": 180, "train": 100}
QUICK_LIMITS = {"env": 60, "exact": 120, "scorer": 240, "select": 300, "train": 300}
SCORER_CONFIGS = [("resnet50", 224, 16), ("resnet50", 224, 64), ("resnet50", 224, 128),
                  ("resnet18", 32, 256), ("vit_small_patch16_224", 224, 64),
                  ("convnext_tiny", 224, 64)]
QUICK_SCORER_CONFIGS = [("resnet18", 32, 16), ("resnet50", 64, 4)]
SHORT_SCORER_CONFIGS = SCORER_CONFIGS[:3]  # --short: resnet50@224 at 16, 64, 128
#: the issue's goals for the GPU (issue 20, "Done when")
GOALS = {"select_vs_scorer_min": 0.80, "select_fp32_resnet50_min_img_s": 1200,
         "scorer_steps_max_batch_ge_64": 1.25, "scorer_steps_max_batch_16": 1.6,
         "bf16_speedup_min_b128": 1.3, "round_1p28m_minutes_max": 15}


def emit(stage: str, record: dict, out: Path) -> None:
    """Print one result line at once and append it to the stage's file."""
    print(f"[{stage}] " + json.dumps(record, default=str), flush=True)
    with open(out / f"stage-{stage}.jsonl", "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


# ---- stages (each runs in its own process) ----------------------------------------------------

def stage_env(args, out: Path) -> None:
    import torch
    rec = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        rec["gpu"] = torch.cuda.get_device_name(0)
        rec["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for mod in ("ray", "timm", "pyarrow"):
        try:
            rec[mod] = __import__(mod).__version__
        except Exception as e:  # reported, not fatal: the stage that needs it fails
            rec[mod] = f"missing: {e}"
    emit("env", rec, out)


def _median_ms(fn, device: str, warmup: int, repeats: int) -> float:
    import torch
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _scorer_kwargs() -> set[str]:
    import inspect
    from raydal.scoring.grads import dynamical_scores
    return set(inspect.signature(dynamical_scores).parameters)


def _spearman(a, b) -> float:
    import torch
    ra, rb = (t.argsort().argsort().double() for t in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def stage_exact(args, out: Path) -> None:
    """float64 on the device: fast path vs a per-sample autograd loop; graph vs plain; bf16."""
    import timm
    import torch
    import torch.nn.functional as F
    from raydal.scoring.grads import dynamical_scores, labeled_gradient
    dev = args.device
    torch.manual_seed(0)
    for name, img in (("resnet18", 32), ("vit_small_patch16_224", 224)):
        model = timm.create_model(name, pretrained=False, num_classes=10, img_size=img) \
            if name.startswith("vit") else timm.create_model(name, pretrained=False,
                                                              num_classes=10)
        model = model.to(dev, torch.float64).eval()
        x = torch.randn(6, 3, img, img, device=dev, dtype=torch.float64)
        lx, ly = torch.randn(4, 3, img, img, device=dev, dtype=torch.float64), \
            torch.tensor([0, 1, 2, 3], device=dev)
        g_L = labeled_gradient(model, lx, ly)
        params = [p for p in model.parameters() if p.requires_grad]
        ref = []
        for i in range(len(x)):  # the naive reference: one autograd pass per sample
            out_ = model(x[i:i + 1])
            g = torch.autograd.grad(F.cross_entropy(out_, out_.argmax(1), reduction="sum"), params)
            flat = torch.cat([t.reshape(-1) for t in g])
            gl = torch.cat([g_L[n].reshape(-1) for n, p in model.named_parameters()
                            if p.requires_grad])
            ref.append((flat @ flat + 2 * flat @ gl, flat @ flat))
        ref2 = torch.stack([r[0] for r in ref])
        ref0 = torch.stack([r[1] for r in ref])
        fast2 = dynamical_scores(model, x, g_L=g_L, ip_weight=2.0)
        fast0 = dynamical_scores(model, x, ip_weight=0.0)
        rel = lambda a, b: float(((a - b).abs().max() / b.abs().max()))  # noqa: E731
        emit("exact", {"model": name, "dtype": "float64", "device": dev,
                       "max_rel_err_ip2": rel(fast2, ref2), "max_rel_err_ip0": rel(fast0, ref0),
                       "ok": rel(fast2, ref2) < 1e-9 and rel(fast0, ref0) < 1e-9}, out)
    if "cuda_graph" in _scorer_kwargs() and dev == "cuda":
        model = timm.create_model("resnet18", pretrained=False, num_classes=10).to(dev).eval()
        x = torch.randn(37, 3, 32, 32, device=dev)  # not a multiple of the captured batch
        g_L = {k: v.float() * 1e-2 for k, v in labeled_gradient(
            model, torch.randn(8, 3, 32, 32, device=dev), torch.arange(8, device=dev) % 10
        ).items()}
        for ip in (0.0, 2.0):
            plain = torch.cat([dynamical_scores(model, x[s:s + 16], g_L=g_L, ip_weight=ip)
                               for s in range(0, 37, 16)])
            graph = torch.cat([dynamical_scores(model, x[s:s + 16], g_L=g_L, ip_weight=ip,
                                                cuda_graph=True) for s in range(0, 37, 16)])
            emit("exact", {"check": "cuda_graph vs plain", "ip_weight": ip,
                           "max_rel_err": rel(graph, plain)}, out)
    model = timm.create_model("resnet50", pretrained=False, num_classes=10).to(dev).eval()
    x = torch.randn(64 if dev == "cuda" else 8, 3, 224 if dev == "cuda" else 64,
                    224 if dev == "cuda" else 64, device=dev)
    s32 = dynamical_scores(model, x, ip_weight=0.0)
    s16 = dynamical_scores(model, x, ip_weight=0.0, autocast_dtype=torch.bfloat16)
    k = max(1, len(x) // 10)
    top = len(set(s32.topk(k).indices.tolist()) & set(s16.topk(k).indices.tolist())) / k
    emit("exact", {"check": "bf16 vs fp32", "model": "resnet50", "batch": len(x),
                   "max_rel_err": rel(s16.double(), s32.double()),
                   "spearman": _spearman(s32.double().cpu(), s16.double().cpu()),
                   "top10pct_overlap": top}, out)


def stage_scorer(args, out: Path) -> None:
    import timm
    import torch
    import torch.nn.functional as F
    from raydal.scoring.grads import dynamical_scores
    from raydal.scoring.grads.common import select_params
    dev = args.device
    graphs = dev == "cuda" and "cuda_graph" in _scorer_kwargs()
    warmup, repeats = (3, 10) if not args.quick else (1, 3)
    configs = (QUICK_SCORER_CONFIGS if args.quick else SHORT_SCORER_CONFIGS if args.short
               else SCORER_CONFIGS)
    for name, img, batch in configs:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        kw = {"img_size": img} if name.startswith("vit") else {}
        model = timm.create_model(name, pretrained=False, num_classes=1000, **kw).to(dev).eval()
        x = torch.randn(batch, 3, img, img, device=dev)
        g_L = {k: torch.randn_like(p) * 1e-2 for k, p in select_params(model, "all").items()}
        params = [p for p in model.parameters() if p.requires_grad]
        rec = {"model": name, "img": img, "batch": batch}
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            def ac():
                return torch.autocast(dev, dtype=dtype) if dtype is not None \
                    else torch.autocast(dev, enabled=False)

            def forward():
                with torch.no_grad(), ac():
                    model(x)

            def train():
                with ac():
                    o = model(x)
                torch.autograd.grad(F.cross_entropy(o.float(), o.argmax(1), reduction="sum"),
                                    params)

            runs = {"forward": forward, "train": train,
                    "fast": lambda: dynamical_scores(model, x, g_L=g_L, autocast_dtype=dtype),
                    "fast_norm": lambda: dynamical_scores(model, x, ip_weight=0.0,
                                                          autocast_dtype=dtype)}
            if graphs:
                runs["fast_graph"] = lambda: dynamical_scores(
                    model, x, g_L=g_L, autocast_dtype=dtype, cuda_graph=True)
                runs["fast_norm_graph"] = lambda: dynamical_scores(
                    model, x, ip_weight=0.0, autocast_dtype=dtype, cuda_graph=True)
            if dtype is None and dev == "cuda" and "allow_tf32" in _scorer_kwargs():
                runs["fast_tf32"] = lambda: dynamical_scores(model, x, g_L=g_L, allow_tf32=True)
                runs["fast_norm_tf32"] = lambda: dynamical_scores(model, x, ip_weight=0.0,
                                                                  allow_tf32=True)
                if graphs:
                    runs["fast_norm_tf32_graph"] = lambda: dynamical_scores(
                        model, x, ip_weight=0.0, allow_tf32=True, cuda_graph=True)
            for method, fn in runs.items():
                if dev == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                try:
                    ms = _median_ms(fn, dev, warmup, repeats)
                except Exception as e:  # e.g. out of memory: recorded, the rest goes on
                    rec[f"{precision}_{method}_error"] = f"{type(e).__name__}: {e}"[:300]
                    continue
                rec[f"{precision}_{method}_ms"] = round(ms, 3)
                if dev == "cuda":
                    rec[f"{precision}_{method}_peak_gib"] = round(
                        torch.cuda.max_memory_allocated() / 2**30, 2)
            step = rec.get(f"{precision}_train_ms")
            for method in runs:
                if step and f"{precision}_{method}_ms" in rec and method.startswith("fast"):
                    rec[f"{precision}_{method}_steps"] = round(
                        rec[f"{precision}_{method}_ms"] / step, 3)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        emit("scorer", rec, out)
        del model, x, g_L
        if dev == "cuda":
            torch.cuda.empty_cache()


def _pool_part(args: tuple) -> str:
    """Part ``seed`` of a pool folder: its ids prefixed with the part number (unique)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pipeline_efficiency as pe  # benchmarks/pipeline_efficiency.py
    path, n, seed = args
    t = pq.read_table(pe.make_jpeg_pool(path, n, seed=seed))
    ids = pc.binary_join_element_wise(f"{seed:02d}", t.column("id"), "-")
    pq.write_table(t.set_column(0, "id", ids), path, row_group_size=256)
    return str(path)


def stage_select(args, out: Path) -> None:
    """raydal.select end to end over 400x300 JPEGs against the scorer alone on the same model
    and batch; the pool is a folder of Parquet parts made on every CPU."""
    from concurrent.futures import ProcessPoolExecutor
    import timm
    import torch
    import pipeline_efficiency as pe
    from raydal.scoring.grads import dynamical_scores
    from raydal.transforms import InputSpec
    dev, quick = args.device, args.quick
    n, img, batch = (300, 64, 16) if quick else (6000, 224, 128) if args.short \
        else (10000, 224, 128)
    parts = 3 if quick else 16
    folder = Path("/tmp/raydal-gpu-check/pool")
    t0 = time.perf_counter()
    with ProcessPoolExecutor() as ex:
        files = list(ex.map(_pool_part, [(folder / f"part-{i:02d}.parquet", n // parts, i)
                                         for i in range(parts)]))
    spec = InputSpec(3, img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rate = pe.decode_rate(files[0], spec, rows=200)
    emit("select", {"pool_images": n // parts * parts, "made_s": round(time.perf_counter() - t0, 1),
                    "decode_img_s_one_process": round(rate), "cpus": os.cpu_count()}, out)
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=1000).eval().to(dev)
    x = torch.randn(batch, 3, img, img, device=dev)
    alone = {}
    for prec, dt in (("fp32", None), ("bf16", torch.bfloat16)):
        ms = _median_ms(lambda: dynamical_scores(model, x, ip_weight=0.0, autocast_dtype=dt),
                        dev, 2, 5)
        alone[prec] = batch / ms * 1e3

    @torch.no_grad()
    def forward():
        model(x)
    alone["forward"] = batch / _median_ms(forward, dev, 2, 5) * 1e3
    emit("select", {"scorer_alone_img_s": {k: round(v) for k, v in alone.items()},
                    "batch": batch}, out)
    model = model.cpu()
    del x
    if dev == "cuda":
        torch.cuda.empty_cache()
    import ray
    ray.init(num_gpus=1 if dev == "cuda" else 0, include_dashboard=False, log_to_driver=False)
    gpus = 1.0 if dev == "cuda" else 0.0
    layouts = [  # (strategy, options, actors, GPU share each, pipeline)
        ("entropy", None, 1, gpus, "auto"), ("dynamicAL", {}, 1, gpus, "auto"),
        ("dynamicAL", {}, 2, gpus / 2, "auto"), ("dynamicAL", {}, 4, gpus / 4, "auto"),
        ("dynamicAL", {"mixed_precision": True}, 2, gpus / 2, "auto"),
        ("dynamicAL", {}, 4, gpus / 4, "fused")]
    if "cuda_graph" in _scorer_kwargs() and dev == "cuda":
        layouts.insert(5, ("dynamicAL", {"cuda_graph": True}, 2, gpus / 2, "auto"))
    if args.short:  # the best layout of the full check, with the scorer's speed options
        layouts = [("dynamicAL", {}, 2, gpus / 2, "auto"),
                   ("dynamicAL", {"tf32": True}, 2, gpus / 2, "auto"),
                   ("dynamicAL", {"mixed_precision": True}, 2, gpus / 2, "auto")]
    for strategy, options, actors, share, pipeline in layouts:
        opts = None if options is None else {"ip_weight": 0.0, **options}
        rec = {"strategy": strategy, "options": opts, "actors": actors, "gpu_each": share}
        try:
            r = pe.run_select(str(folder), strategy=strategy, model=model, input_spec=spec,
                              num_actors=actors, num_gpus_per_actor=share,
                              num_cpus_per_actor=1, batch_size=batch, pipeline=pipeline,
                              strategy_options=opts, budget=min(1000, n // 4))
        except Exception as e:
            emit("select", {**rec, "error": f"{type(e).__name__}: {e}"[:400]}, out)
            continue
        steady = r["steady_images_per_s"] or float("nan")
        ref = alone["forward" if strategy == "entropy" else
                    "bf16" if (options or {}).get("mixed_precision") else "fp32"]
        emit("select", {**rec, "pipeline": r["pipeline"], "scored": r["num_scored"],
                        "seconds": round(r["seconds"], 2), "startup_s": round(r["startup_s"], 2),
                        "img_s": round(r["images_per_s"]), "steady_img_s": round(steady),
                        "steady_vs_scorer_alone": round(steady / ref, 3),
                        "steady_vs_all_cpus_decoding": round(steady / (rate * os.cpu_count()), 3),
                        "round_1p28m_min": round((r["startup_s"] + 1.28e6 / steady) / 60, 1)},
             out)


def stage_train(args, out: Path) -> None:
    import train_throughput as tt  # benchmarks/train_throughput.py
    work = Path("/tmp/raydal-gpu-check-train")
    for mp, cl in (("none", False), ("bf16", True)):
        rec = tt.measure("resnet50" if not args.quick else "resnet18",
                         224 if not args.quick else 32, 128 if not args.quick else 16,
                         epochs=3, device=args.device, mixed_precision=mp, channels_last=cl,
                         num_images=3072 if not args.quick else 128, work_dir=work)
        emit("train", rec, out)


STAGES = {"env": stage_env, "exact": stage_exact, "scorer": stage_scorer,
          "select": stage_select, "train": stage_train}


# ---- the orchestrator -------------------------------------------------------------------------

def _read(out: Path, stage: str) -> list[dict]:
    f = out / f"stage-{stage}.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def _md(results: dict) -> str:
    lines = [f"# raydal GPU check ({results['when']})", ""]
    env = (results["stages"].get("env") or {}).get("records") or [{}]
    lines += [f"Machine: {env[0].get('gpu', 'no GPU')}, {env[0].get('cpus')} CPUs; torch "
              f"{env[0].get('torch')}, Ray {env[0].get('ray')}, timm {env[0].get('timm')}.", ""]
    for stage, res in results["stages"].items():
        lines.append(f"## {stage}: {res['status']} ({res['seconds']:.0f} s)")
        for rec in res["records"]:
            lines.append("- " + ", ".join(f"{k} {v}" for k, v in rec.items()))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="small sizes (a dry run on a CPU)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--short", action="store_true",
                   help="resnet50 only and the best select layout with the speed options")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # run one stage in this process
    args = p.parse_args(argv)
    if args.out is None:
        args.out = (Path("/tmp/raydal-bench/gpu_check") if args.quick
                    else Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        STAGES[args.stage](args, args.out)
        return 0
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": args.device,
               "quick": args.quick, "goals": GOALS, "stages": {}}
    limits = QUICK_LIMITS if args.quick else LIMITS
    for stage in args.stages.split(","):
        (args.out / f"stage-{stage}.jsonl").unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--device",
               args.device, "--out", str(args.out)] + (["--quick"] if args.quick else []) + \
            (["--short"] if args.short else [])
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: Ray included
        try:
            rc = proc.wait(timeout=limits[stage])
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"stopped at its {limits[stage]} s limit"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the stage's leftovers (Ray's processes)
            except ProcessLookupError:
                pass
            proc.wait()
        results["stages"][stage] = {"status": status, "seconds": time.perf_counter() - t0,
                                    "records": _read(args.out, stage)}
        print(f"== {stage}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
        (args.out / "gpu_check.md").write_text(_md(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
