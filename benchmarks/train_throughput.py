"""Training throughput of ``raydal.train.train_round`` (Ray Train) against a bare torch loop.

One run trains the same timm model on the same labeled rows twice, one after the other, on the
same device:

  ray_train  ``train_round`` with one worker (Ray Train's local mode in a Ray task, with
             ``num_gpus=1`` when ``device`` is cuda): Ray Data decodes the Parquet pool once, the
             worker iterates the decoded uint8 rows with ``iter_torch_batches`` (local shuffle),
             trains, evaluates on a test slice and writes a checkpoint.
  bare       the same rows decoded by the same function (``transforms.decode_rows``) into a
             uint8 tensor in host memory (pinned on a GPU), a random permutation an epoch,
             each batch moved to the device and normalised there (``train.model_input``), the
             same model, seed, optimiser (Adam), batch size, precision and memory layout.

Reported separately (seconds are wall clock; on a GPU every epoch ends with a device sync):

  startup_s      ray_train: from the ``train_round`` call to its first optimiser step (Ray Data
                 decode, task start, model build); bare: decode + model build to first step
  steady_img_s   images / seconds over the epochs after the first (the first one warms up
                 kernels, allocator and caches); epoch timings come from ``train_round``'s
                 ``epoch_seconds`` / ``epoch_images`` metrics
  total_s        ray_train: the whole ``train_round`` call (evaluation and checkpoint included)
  ratio_steady   ray_train steady_img_s / bare steady_img_s (1.0: Ray Train costs nothing per
                 image once started)

Data: Fashion-MNIST (real images, 28 px grayscale, resized to ``img_size`` and converted to
``in_chans`` by the decode) when its original files are found, else a synthetic labeled pool;
the result says which.

A GPU script imports ``measure`` (Ray 2.60, torch 2.11+, timm 1.0.29+, one GPU):

    from benchmarks.train_throughput import measure   # or importlib on this file's path
    r = measure("resnet50", 224, 128, 3, "cuda", "bf16", True, 5000, "/tmp/tt")

It starts a local Ray cluster when none is connected (all CPUs, one GPU when cuda).

    python benchmarks/train_throughput.py [--quick] [--model resnet18] [--img-size 32]
        [--batch-size 64] [--epochs 3] [--num-images 1000] [--device cpu|cuda]
        [--variants none:0,bf16:1] [--threads N] [--out PATH]

--quick (resnet18 at 32 px, 600 images, 3 epochs, on the CPU) writes under /tmp.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's raydal, whatever is installed

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TEST_ROWS = 512  # evaluated once at the end of the Ray Train round (inside total_s only)


# ---- data --------------------------------------------------------------------------------------
def _synthetic(folder: Path, n: int, num_classes: int, seed: int = 0) -> None:
    """pool/truth/test Parquet files of 28 px grayscale images whose class is a bright bar's
    position (learnable), over noise. Used only when Fashion-MNIST is not on the machine."""
    import numpy as np
    import pyarrow as pa
    from raydal.datasets import images_table
    from raydal.storage import atomic_write_parquet
    rng = np.random.default_rng(seed)

    def make(count: int, prefix: str):
        y = rng.integers(0, num_classes, count)
        x = rng.integers(0, 96, (count, 28, 28), dtype=np.uint8)
        for i, k in enumerate(y):
            r = 2 + int(k) * 24 // num_classes
            x[i, r:r + 3, :] = 255
        return images_table(x, [f"{prefix}{i}" for i in range(count)], y)

    folder.mkdir(parents=True, exist_ok=True)
    pool = make(n, "p")
    atomic_write_parquet(folder / "pool.parquet", pool.select(["id", "image"]))
    atomic_write_parquet(folder / "truth.parquet", pa.table({"id": pool["id"],
                                                             "label": pool["label"]}))
    atomic_write_parquet(folder / "test.parquet", make(TEST_ROWS, "t"))


def prepare_data(work_dir: Path, num_images: int, num_classes: int = 10,
                 source: Path = FASHION_MNIST) -> dict:
    """Pool of ``num_images`` labeled rows and a test slice under ``work_dir`` (reused).

    Returns {"data": name, "pool": path, "test": path, "labels": {id: label}}.
    """
    import pyarrow.parquet as pq
    from raydal.pool import Pool
    if (source / "train-images-idx3-ubyte.gz").exists() and num_classes == 10:
        from raydal.datasets import prepare_dataset
        name, folder = "fashion-mnist", work_dir / "fashion-mnist"
        prepare_dataset("fashion-mnist", folder, source=source)  # once: kept in folder
    else:
        name, folder = "synthetic", work_dir / f"synthetic-{num_images}-{num_classes}"
        if not (folder / "test.parquet").exists():
            _synthetic(folder, num_images, num_classes)
    pool_path = work_dir / f"{name}-pool-{num_images}.parquet"
    pool = (Pool(pool_path) if pool_path.exists()
            else Pool(folder / "pool.parquet").subsample(num_images, seed=0, path=pool_path))
    test_path = work_dir / f"{name}-test-{TEST_ROWS}.parquet"
    if not test_path.exists():
        pq.write_table(pq.read_table(folder / "test.parquet").slice(0, TEST_ROWS), test_path)
    ids = {i for chunk in pool.iter_ids() for i in chunk}
    truth = pq.read_table(folder / "truth.parquet")
    labels = {str(i): int(y) for i, y in zip(truth["id"].to_pylist(),
                                             truth["label"].to_pylist()) if str(i) in ids}
    return {"data": name, "pool": pool_path, "test": test_path, "labels": labels}


# ---- the two runs ------------------------------------------------------------------------------
def _steady(seconds: list[float], images: list[int]) -> float | None:
    """images/s over the epochs after the first (the only one if there is one)."""
    s, n = (seconds[1:], images[1:]) if len(seconds) > 1 else (seconds, images)
    return sum(n) / sum(s) if s and sum(s) > 0 else None


def _sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(spec, pool_path: Path, labels: dict[str, int], batch_size: int, epochs: int,
              device: str, mixed_precision: str, channels_last: bool, lr: float = 1e-3,
              seed: int = 0, threads: int | None = None) -> dict:
    """Plain torch: the pool's labeled rows decoded into a host uint8 tensor, then ``epochs``
    epochs of the training step ``train_round`` runs. Epoch times end with a device sync."""
    import numpy as np
    import torch
    from raydal.models import autocast, check_mixed_precision, create_model, with_memory_format
    from raydal.pool import Pool
    from raydal.train import model_input

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    check_mixed_precision(mixed_precision, device)
    pool = Pool(pool_path)
    table = pool.take(labels)
    arr, ok, _ = pool.decode(table, spec.input_spec)
    ids = np.asarray(table["id"].to_pylist(), dtype=object)[ok]
    x_all = torch.from_numpy(arr)
    y_all = torch.as_tensor([labels[i] for i in ids], dtype=torch.int64)
    if torch.device(device).type == "cuda":
        x_all, y_all = x_all.pin_memory(), y_all.pin_memory()
    decode_s = time.perf_counter() - t0
    model = with_memory_format(create_model(spec, seed=seed, pretrained=False).to(device),
                               channels_last)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    epoch_seconds, epoch_images, first_step = [], [], None
    for _ in range(epochs):
        model.train()
        t_epoch = time.perf_counter()
        loss_total, seen = torch.zeros((), device=device), 0
        for idx in torch.randperm(len(x_all), generator=gen).split(batch_size):
            if len(idx) < 2 and seen:  # the rule train_round applies
                continue
            x = model_input(x_all[idx], spec.input_spec, device, channels_last)
            y = y_all[idx].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with autocast(device, mixed_precision):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            loss.backward()
            opt.step()
            if first_step is None:
                _sync(device)
                first_step = time.perf_counter() - t0
            loss_total += loss.detach() * len(idx)
            seen += len(idx)
        loss_sum = float(loss_total)  # syncs
        epoch_seconds.append(time.perf_counter() - t_epoch)
        epoch_images.append(seen)
    return {"startup_s": first_step, "decode_s": decode_s, "epoch_seconds": epoch_seconds,
            "epoch_images": epoch_images, "steady_img_s": _steady(epoch_seconds, epoch_images),
            "train_loss": loss_sum / max(seen, 1)}


def ray_train_round(spec, data: dict, batch_size: int, epochs: int, device: str,
                    mixed_precision: str, channels_last: bool, work_dir: Path, lr: float = 1e-3,
                    seed: int = 0, threads: int = 1) -> dict:
    """One ``train_round`` (1 worker); its timings."""
    import torch
    from raydal.train import TrainSettings, train_round
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, num_workers=1,
                             cpus_per_worker=threads, seed=seed,
                             use_gpu=torch.device(device).type == "cuda",
                             mixed_precision=mixed_precision, channels_last=channels_last)
    out = work_dir / f"ckpt-{time.time_ns()}"
    m = train_round(spec, _pool(data["pool"]), data["labels"], data["test"], settings, out, None,
                    work_dir / "ray_train", progress=False)
    _rmtree(out)
    return {"startup_s": m["startup_seconds"], "total_s": m["seconds"],
            "epoch_seconds": m["epoch_seconds"], "epoch_images": m["epoch_images"],
            "steady_img_s": _steady(m["epoch_seconds"], m["epoch_images"]),
            "train_loss": m["train_loss"], "test_accuracy": m["test_accuracy"],
            "worker_device": m["device"]}


def _pool(path: Path):
    from raydal.pool import Pool
    return Pool(path)


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def _ensure_ray(device: str) -> None:
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # the workers import this checkout's raydal too, installed or not
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=os.cpu_count(),
             num_gpus=1 if device.startswith("cuda") else 0, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO block per decode


def measure(model_name: str = "resnet18", img_size: int = 32, batch_size: int = 64,
            epochs: int = 3, device: str = "cpu", mixed_precision: str = "none",
            channels_last: bool = False, num_images: int = 1000,
            work_dir: str | Path = "/tmp/raydal-train-throughput", *, in_chans: int = 3,
            num_classes: int = 10, lr: float = 1e-3, threads: int | None = None,
            data_source: str | Path = FASHION_MNIST) -> dict:
    """Ray Train (``train_round``, 1 worker) and the bare loop on the same data and device.

    model_name: a timm model (random init); img_size: px; device: "cpu" or "cuda";
    mixed_precision: "none" | "bf16"; num_images: labeled rows trained on per epoch;
    threads: torch threads (and the Ray worker's CPUs), default 1 on the CPU, 4 with a GPU;
    data_source: the folder of Fashion-MNIST's original files (else synthetic data).
    Returns a JSON-able dict: settings, ray_train {...}, bare {...}, ratio_steady.
    """
    import torch
    from raydal.models import ModelSpec
    device = str(device)
    threads = threads or (min(4, os.cpu_count() or 1) if device.startswith("cuda") else 1)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(work_dir, num_images, num_classes, Path(data_source))
    spec = ModelSpec(name=model_name, num_classes=num_classes, in_chans=in_chans,
                     img_size=img_size)
    _ensure_ray(device)
    torch_threads = torch.get_num_threads()
    ray_r = ray_train_round(spec, data, batch_size, epochs, device, mixed_precision,
                            channels_last, work_dir, lr, threads=threads)
    bare_r = bare_loop(spec, data["pool"], data["labels"], batch_size, epochs, device,
                       mixed_precision, channels_last, lr, threads=threads)
    torch.set_num_threads(torch_threads)
    ratio = (ray_r["steady_img_s"] / bare_r["steady_img_s"]
             if ray_r["steady_img_s"] and bare_r["steady_img_s"] else None)
    return {"settings": {"model": model_name, "img_size": img_size, "in_chans": in_chans,
                         "batch_size": batch_size, "epochs": epochs, "device": device,
                         "mixed_precision": mixed_precision, "channels_last": channels_last,
                         "num_images": len(data["labels"]), "threads": threads, "lr": lr,
                         "data": data["data"], "order": "ray_train, then bare"},
            "ray_train": ray_r, "bare": bare_r, "ratio_steady": ratio,
            "versions": _versions(device)}


def _versions(device: str) -> dict:
    import ray
    import timm
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "timm": timm.__version__, "ray": ray.__version__, "cpus": os.cpu_count(),
           "loadavg": os.getloadavg()}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


# ---- report ------------------------------------------------------------------------------------
def line(r: dict) -> str:
    s, a, b = r["settings"], r["ray_train"], r["bare"]
    ratio = f"{r['ratio_steady']:.2f}" if r["ratio_steady"] else "n/a"
    return (f"{s['model']}@{s['img_size']} b{s['batch_size']} {s['device']} "
            f"{s['mixed_precision']}{' channels_last' if s['channels_last'] else ''}: "
            f"ray_train {a['steady_img_s']:.0f} img/s steady (start-up {a['startup_s']:.1f}s, "
            f"round {a['total_s']:.1f}s, acc {a['test_accuracy']:.3f}), bare "
            f"{b['steady_img_s']:.0f} img/s (start-up {b['startup_s']:.1f}s), ratio {ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small run on the CPU, under /tmp")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--variants", default="none:0,bf16:1",
                   help="comma-separated mixed_precision:channels_last pairs")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work-dir", default=None, help="data and Ray Train storage "
                   "(default /tmp/raydal-train-throughput)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/"
                   "train_throughput.json, or under /tmp/raydal-bench/quick with --quick")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.num_images, args.device = 3, 600, "cpu"
    variants = [(v.split(":")[0], v.split(":")[1] in ("1", "true", "True"))
                for v in args.variants.split(",")]
    work = Path(args.work_dir or "/tmp/raydal-train-throughput")
    results = []
    for mp, cl in variants:
        r = measure(args.model, args.img_size, args.batch_size, args.epochs, args.device, mp, cl,
                    args.num_images, work, in_chans=args.in_chans, threads=args.threads)
        results.append(r)
        print(line(r), flush=True)
    out = Path(args.out or (Path("/tmp/raydal-bench/quick") if args.quick
                            else ROOT / "benchmarks" / "results") / "train_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
