"""Retraining between rounds with Ray Train, and test-set evaluation.

The labeled rows are decoded once a round by Ray Data tasks (the same transform as scoring) and
materialised in the object store; a ``TorchTrainer`` then trains the timm model on them (warm
start from the previous round's checkpoint, or a fresh init), evaluates on the test set and
reports a safetensors checkpoint, which is copied into the run directory. Ray Train's own
storage (``storage_path``) is a folder of the run directory, local or on an object store.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import ray
import torch

from raydal.fs import Where, resolve
from raydal.models import (ModelSpec, create_model, load_checkpoint, load_weights,
                           read_checkpoint_meta, save_checkpoint, train_mode)
from raydal.pool import Pool
from raydal.storage import fault_point
from raydal.transforms import InputSpec, decode_rows, to_model_input



@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    seed: int = 0
    checkpoint_every: int = 0  # epochs between mid-round checkpoints (0: only at the end)
    max_failures: int = 1  # worker-group restarts Ray Train may make (FailureConfig)


def decode_labeled(batch: dict[str, np.ndarray], labels_ref: list, spec: InputSpec
                   ) -> dict[str, np.ndarray]:
    """map_batches function: keep rows whose id is in the labels, decode, attach the label.

    labels_ref: [ObjectRef of {id: label}] or [None] to use the batch's own ``label`` column.
    """
    labels = ray.get(labels_ref[0]) if labels_ref[0] is not None else None
    ids = np.asarray([str(i) for i in batch["id"]], dtype=object)
    keep = (np.ones(len(ids), bool) if labels is None
            else np.fromiter((i in labels for i in ids), bool, len(ids)))
    images = batch["image"][keep] if "image" in batch else None
    paths = batch["path"][keep] if "path" in batch else None
    arr, ok, _bad = decode_rows(images, paths, spec)
    kept = ids[keep][ok]
    if labels is not None:
        y = np.asarray([labels[i] for i in kept], dtype=np.int64)
    else:
        y = np.asarray(batch["label"], dtype=np.int64)[keep][ok]
    return {"x": arr, "label": y}


def decoded_dataset(pool: Pool, spec: InputSpec, labels: Mapping[str, int] | None = None):
    """Decoded (x uint8 (C,S,S), label) rows of a Parquet set, materialised.

    With ``labels``, only rows whose id is labeled are kept (a pool); without, the file's own
    ``label`` column is used (a test set).
    """
    ds = pool.to_dataset(columns=pool.columns + ([] if labels else ["label"]))
    ref = [ray.put(dict(labels)) if labels is not None else None]
    return ds.map_batches(decode_labeled, fn_kwargs={"labels_ref": ref, "spec": spec},
                          batch_size=512).materialize()


def _train_func(config: dict) -> None:
    """Runs on each Ray Train worker."""
    import ray.train
    import ray.train.torch

    spec = ModelSpec.from_dict(config["spec"])
    s = TrainSettings(**config["settings"])
    torch.manual_seed(s.seed)
    restored = ray.train.get_checkpoint()
    # pretrained weights only for a fresh start: a checkpoint's weights replace them anyway
    model = create_model(spec, seed=s.seed,
                         pretrained=restored is None and not config["init_checkpoint"])
    start_epoch = 0
    if restored is not None:  # restarted after a worker failure: continue from the last report
        with restored.as_directory() as d:
            model.load_state_dict(load_weights(d))
            start_epoch = read_checkpoint_meta(d)["epoch"]
    elif config["init_checkpoint"]:
        model.load_state_dict(load_weights(config["init_checkpoint"]))
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s.lr,
                           weight_decay=s.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    train_shard = ray.train.get_dataset_shard("train")
    tracker = config["tracker"][0] if rank == 0 else None
    loss_sum, seen = 0.0, 0
    for epoch in range(start_epoch, s.epochs):
        train_mode(model)
        loss_sum, seen = 0.0, 0
        for batch in train_shard.iter_torch_batches(
                batch_size=s.batch_size, local_shuffle_buffer_size=4096,
                local_shuffle_seed=s.seed * 1000 + epoch, device=device):
            x = to_model_input(batch["x"], spec.input_spec).to(device)
            if len(x) < 2 and seen:  # a batch of 1 breaks BatchNorm; it is one sample of an epoch
                continue
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), batch["label"])
            loss.backward()
            opt.step()
            loss_sum += float(loss) * len(x)
            seen += len(x)
        if tracker is not None:
            tracker.update.remote(epoch + 1, loss_sum / max(seen, 1))
        _maybe_die(config.get("fault_marker"), rank, epoch + 1)
        if s.checkpoint_every and (epoch + 1) % s.checkpoint_every == 0 and epoch + 1 < s.epochs:
            _report(model, spec, {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1)},
                    rank)
    # "test" is not split across workers (DataConfig in train_round): rank 0 evaluates every
    # row exactly once (an equal split would drop the remainder rows).
    # The unwrapped module: a DDP forward syncs buffers with every rank and would wait forever.
    correct, total = (_evaluate(getattr(model, "module", model),
                                ray.train.get_dataset_shard("test"), spec, device)
                      if rank == 0 else (0, 0))
    _report(model, spec, {"epoch": s.epochs, "test_accuracy": correct / max(total, 1),
                          "test_count": total, "train_loss": loss_sum / max(seen, 1),
                          "resumed_from_epoch": start_epoch}, rank)


def _maybe_die(marker: str | None, rank: int, epoch: int) -> None:
    """Test-only switch (RAYDAL_FAULT_TRAIN_MARKER in the driver): rank 0 dies once, after
    epoch 2, as a worker on a lost node would; the marker file records that it happened."""
    if marker and rank == 0 and epoch == 2 and not Path(marker).exists():
        Path(marker).touch()
        time.sleep(5)  # the controller collects the epoch-1 report asynchronously
        os._exit(1)


def _report(model, spec: ModelSpec, metrics: dict, rank: int) -> None:
    """Every worker reports; rank 0 attaches the weights as a checkpoint (meta has the epoch)."""
    import ray.train
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(getattr(model, "module", model), spec, Path(d) / "ckpt",
                        {"metrics": metrics, "epoch": metrics["epoch"]})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(
            str(Path(d) / "ckpt")))


@ray.remote(num_cpus=0)
class EpochTracker:
    """Rank 0 reports (epoch, loss) here; the driver polls it to draw the training bar."""

    def __init__(self):
        self.state: tuple[int, float | None] = (0, None)

    def update(self, epoch: int, loss: float) -> None:
        self.state = (epoch, loss)

    def get(self) -> tuple[int, float | None]:
        return self.state


def _fit_with_progress(trainer, tracker, epochs: int, enabled: bool, fault_name: str):
    """trainer.fit() in a thread while a tqdm bar follows the tracker."""
    import threading
    from tqdm.auto import tqdm

    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=_call(trainer.fit)), daemon=True)
    thread.start()
    with tqdm(total=epochs, desc="training", unit="epoch", disable=not enabled,
              leave=False) as bar:
        while thread.is_alive():
            thread.join(0.5)
            epoch, loss = ray.get(tracker.get.remote())
            bar.update(epoch - bar.n)
            if epoch >= 1:
                fault_point(fault_name)  # mid-training
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.3f}")
    value, error = out["result"]
    if error is not None:
        raise error
    return value


def _call(fn):
    try:
        return fn(), None
    except BaseException as e:  # re-raised in the driver thread
        return None, e


@torch.no_grad()
def _evaluate(model, shard, spec: ModelSpec, device) -> tuple[int, int]:
    model.eval()
    correct = total = 0
    for batch in shard.iter_torch_batches(batch_size=512, device=device):
        pred = model(to_model_input(batch["x"], spec.input_spec).to(device)).argmax(dim=1)
        correct += int((pred == batch["label"]).sum())
        total += len(pred)
    return correct, total


def train_round(spec: ModelSpec, pool: Pool, labels: Mapping[str, int], test_path: Where,
                settings: TrainSettings, out_checkpoint: Where,
                init_checkpoint: Where | None, storage_path: Where,
                progress: bool = True, fault_name: str = "train") -> dict:
    """Train on the labeled rows of ``pool``; write the checkpoint folder; return metrics.

    Paths are local or URIs. Metrics: test_accuracy, test_count, train_loss, seconds (wall time
    of the whole call).
    """
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    train_ds = decoded_dataset(pool, spec.input_spec, labels)
    test_ds = decoded_dataset(Pool(test_path), spec.input_spec)
    storage = resolve(storage_path)
    tracker = EpochTracker.remote()
    name = f"{resolve(out_checkpoint).name}-{time.time_ns()}"
    trainer = TorchTrainer(
        _train_func,
        train_loop_config={"spec": spec.to_dict(), "settings": asdict(settings),
                           "init_checkpoint": resolve(init_checkpoint) if init_checkpoint else None,
                           "tracker": [tracker],
                           "fault_marker": os.environ.get("RAYDAL_FAULT_TRAIN_MARKER")},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        run_config=RunConfig(storage_path=storage.path, name=name,
                             storage_filesystem=None if storage.is_local else storage.fs,
                             failure_config=FailureConfig(max_failures=settings.max_failures)),
        datasets={"train": train_ds, "test": test_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = _fit_with_progress(trainer, tracker, settings.epochs, progress, fault_name)
    ray.kill(tracker)
    if result.checkpoint is None:
        raise RuntimeError(f"training reported no checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as d:
        model, _ = load_checkpoint(d)  # written by save_checkpoint on rank 0
        metrics = {**result.metrics, "seconds": time.perf_counter() - t0}
        save_checkpoint(model, spec, out_checkpoint, {
            "metrics": result.metrics, "num_labeled": len(labels),
            "train_seconds": metrics["seconds"]})
    (storage / name).delete()
    return metrics
