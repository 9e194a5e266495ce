"""Retraining between rounds with Ray Train, and test-set evaluation.

The labeled rows are decoded once a round by Ray Data tasks (the same transform as scoring) and
materialised in the object store; a ``TorchTrainer`` then trains the timm model on them (warm
start from the previous round's checkpoint, or a fresh init), evaluates on the test set and
reports a safetensors checkpoint, which is copied into the run directory. Ray Train's own
storage (``storage_path``) is a folder of the run directory, local or on an object store.
"""
from __future__ import annotations

import logging
import posixpath
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raydal.config import TrainingConfig
from raydal.errors import PoolError
from raydal.fs import Location, Where, redact, resolve
from raydal.hostmem import keep_freed_blocks
from raydal.models import (ModelSpec, autocast, check_mixed_precision, create_model,
                           load_checkpoint, load_weights, memory_format, read_checkpoint_meta,
                           save_checkpoint, train_mode, with_memory_format)
from raydal.pool import Pool, PoolSource
from raydal.specs import runtime_spec
from raydal import hooks
from raydal.tracking import worker_curves
from raydal.transforms import InputSpec, to_model_input

log = logging.getLogger("raydal")

#: The fewest decoded labeled images a training worker may get. Ray Train splits the rows
#: equally among the workers (the remainder dropped); a batch of one image cannot train a
#: BatchNorm layer whose output is 1x1 (PyTorch refuses it), and a worker left with none
#: trains nothing and reports a loss of 0: a round "trained" on no data.
MIN_IMAGES_PER_WORKER = 2
#: Unreadable rows a message names (the count says how many there are).
_SHOWN = 3
#: (test set, rows, readable) already warned about by this process: a partly unreadable test
#: set is reported once, not every round.
_WARNED_TESTS: set[tuple[str, int, int]] = set()


class _TrainSettingsMethods:
    """How a round trains: the ``training`` config section's fields (declared there,
    ``raydal.config.TrainingConfig``) plus the round's ``seed``."""

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)

    @classmethod
    def of(cls, section: TrainingConfig, seed: int) -> "TrainSettings":
        """The settings of a validated ``training`` config section and a seed."""
        return cls(**section.model_dump(), seed=seed)


TrainSettings = runtime_spec("TrainSettings", TrainingConfig, _TrainSettingsMethods,
                             module=__name__, insert=(("use_gpu", "seed", int, 0),))

def model_input(images: torch.Tensor | np.ndarray, spec: InputSpec, device: torch.device | str,
                channels_last: bool = False) -> torch.Tensor:
    """(B, C, S, S) uint8 images -> the model's normalised float32 input on ``device``, NHWC
    when ``channels_last``. The uint8 batch travels (a quarter of the float bytes) and is
    normalised on ``device``."""
    images = torch.as_tensor(images).to(device, non_blocking=True)
    with torch.device(device):  # to_model_input's mean/std: made on the images' device
        x = to_model_input(images, spec)
    return x.contiguous(memory_format=memory_format(channels_last))


def decode_labeled(batch: dict[str, np.ndarray], labels_ref: list, spec: InputSpec,
                   pool: Pool) -> dict[str, np.ndarray]:
    """map_batches function: keep rows whose id is in the labels, decode, attach the label.

    labels_ref: [ObjectRef of {id: label}] or [None] to use the batch's own ``label`` column.
    """
    labels = ray.get(labels_ref[0]) if labels_ref[0] is not None else None
    ids = np.asarray([str(i) for i in batch["id"]], dtype=object)
    keep = (np.ones(len(ids), bool) if labels is None
            else np.fromiter((i in labels for i in ids), bool, len(ids)))
    arr, ok, _bad = pool.decode(batch, spec, keep)
    kept = ids[keep][ok]
    if labels is not None:
        y = np.asarray([labels[i] for i in kept], dtype=np.int64)
    else:
        y = np.asarray(batch["label"], dtype=np.int64)[keep][ok]
    return {"id": kept.astype(str), "x": arr, "label": y}


def decoded_dataset(pool: Pool, spec: InputSpec, labels: Mapping[str, int] | None = None):
    """Decoded (x uint8 (C,S,S), label) rows of a Parquet set: a lazy Dataset.

    With ``labels``, only rows whose id is labeled are kept (a pool); without, the file's own
    ``label`` column is used (a test set).
    """
    ds = pool.to_dataset(columns=pool.columns + ([] if labels else ["label"]))
    ref = [ray.put(dict(labels)) if labels is not None else None]
    return ds.map_batches(decode_labeled, fn_kwargs={"labels_ref": ref, "spec": spec,
                                                       "pool": pool},
                          batch_size=512)


def held_here(ds):
    """``ds`` executed (``held_with_ids`` without the ids)."""
    return held_with_ids(ds)[0]


def held_with_ids(ds) -> tuple[Any, list[str]]:
    """``ds`` executed, its blocks put by this process (the driver), so they live on its node;
    and the ids of its rows.

    Blocks a Dataset materialises stay on the nodes that made them, and Ray 2.60 cannot
    rebuild a lost one (streaming-generator outputs have no lineage): a worker node lost with
    some of them would leave a restarted trainer waiting forever. Decoded in parallel by Ray
    Data, then held by the driver, the rows outlive any worker node. (Decoding inside the
    training task instead deadlocks: its CPU is the one its decode tasks would need.)

    The rows are put in id order, in as many blocks as were decoded: Ray Data hands decoded
    blocks over in the order their tasks finish, and training (a seeded shuffle of this order)
    must see the same order in a resumed run as in an uninterrupted one. The ids (dropped from
    the rows) come in that order: they say which rows decoded.
    """
    import pyarrow as pa
    import ray.data
    blocks = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if len(b)]
    if not blocks:
        return ds.materialize(), []
    table = pa.concat_tables(blocks).sort_by("id")
    ids = [str(i) for i in table.column("id").to_pylist()]
    table = table.drop_columns(["id"])
    step = -(-len(table) // len(blocks))
    return ray.data.from_arrow([table.slice(s, step) for s in range(0, len(table), step)]), ids


def check_test_labels(test: Pool, num_classes: int) -> int:
    """PoolError unless every row of the test set ``test`` has a label that is a class of the
    model, an integer in [0, num_classes); returns its row count. Reads the id and label
    columns only (no image): cheap enough to run before every round."""
    import pyarrow as pa
    rows, bad, shown, where = 0, 0, [], redact(test.path)
    fix = (f"fix those labels (class indices 0..{num_classes - 1}), or set data.num_classes "
           "if the model should have more classes")
    try:
        batches = test.iter_batches(["id", "label"])
        for batch in batches:
            col = batch.column(1)
            if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
                raise PoolError(f"test set {where}: column 'label' is {col.type}; expected "
                                f"integer class indices 0..{num_classes - 1}")
            y = col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # a null is NaN
            out = ~((y >= 0) & (y < num_classes) & (y == np.floor(y)))
            ids = batch.column(0).to_pylist()
            shown += [f"id {ids[k]!s} label {'null' if np.isnan(y[k]) else col[k].as_py()}"
                      for k in np.flatnonzero(out)[:_SHOWN - len(shown)]]
            bad += int(out.sum())
            rows += len(y)
    except PoolError:
        raise
    except (pa.ArrowInvalid, KeyError) as e:  # pyarrow names the missing column
        raise PoolError(f"test set {where} needs an integer 'label' column beside 'id' "
                        f"({type(e).__name__}: {e})") from None
    if bad:
        raise PoolError(f"test set {where}: {bad} of its {rows} labels are not classes of "
                        f"the model, integers in [0, {num_classes}) ({', '.join(shown)}); "
                        + fix)
    return rows


def _why_unreadable(pool: Pool, ids: list[str], spec: InputSpec) -> str:
    """'id (path): reason' of the first few of ``ids``, decoded again in a Ray task (the driver
    decodes nothing), for a message."""
    def reasons(pool: Pool, ids: list[str], spec: InputSpec) -> list[str]:
        table = pool.take(ids)
        _, _, bad = pool.decode(table, spec)
        got = [str(i) for i in table.column("id").to_pylist()]
        where = (table.column("path").to_pylist() if pool.image_column == "path"
                 else [None] * len(got))
        why = {got[k]: (f"{got[k]} ({redact(str(where[k]))}): " if where[k] else f"{got[k]}: ")
                       + reason for k, reason in bad}
        return [why.get(i, f"{i}: not in the pool" if i not in got else f"{i}: decodes now")
                for i in ids]
    first = sorted(ids)[:_SHOWN]
    shown = ray.get(ray.remote(num_cpus=0)(reasons).remote(pool, first, spec))
    return "; ".join(shown) + (f"; and {len(ids) - len(first)} more" if len(ids) > len(first)
                               else "")


def _check_labeled_images(pool: Pool, labels: Mapping[str, int], decoded: list[str],
                          spec: InputSpec, num_workers: int) -> None:
    """PoolError when too few labeled images decode to train (``MIN_IMAGES_PER_WORKER`` a
    worker), naming the ones that do not; a warning when some do not but enough do."""
    unusable = sorted(set(map(str, labels)) - set(decoded))
    need = MIN_IMAGES_PER_WORKER * num_workers
    if len(decoded) >= need:
        if unusable:
            log.warning("%d of the %d labeled images cannot be decoded; this round trains on "
                        "%d (%s)", len(unusable), len(labels), len(decoded),
                        _why_unreadable(pool, unusable, spec))
        return
    some = f"only {len(decoded)}" if decoded else "none"
    raise PoolError(
        f"{some} of the {len(labels)} labeled images of pool {redact(pool.path)} can be decoded "
        f"({len(unusable)} cannot: {_why_unreadable(pool, unusable, spec)}); training needs at "
        f"least {need} ({MIN_IMAGES_PER_WORKER} a training worker: one image cannot train "
        "BatchNorm, none trains nothing); fix or restore those images under the same ids and "
        "run again: the labels are kept, and nothing of this round was written")


def _check_test_images(test: Pool, rows: int, decoded: list[str], spec: InputSpec) -> None:
    """PoolError when no image of the test set decodes (an accuracy over no image); a warning,
    once a process, when some do not (the accuracy is over ``len(decoded)`` of ``rows``)."""
    where = redact(test.path)
    if not rows:
        raise PoolError(f"test set {where} has no rows; set data.test to a Parquet file of id, "
                        "image (or path) and label rows")
    if len(decoded) == rows:
        return
    have = set(decoded)
    unusable = [i for chunk in test.iter_ids() for i in chunk if i not in have]
    if not decoded:
        raise PoolError(
            f"none of the {rows} images of test set {where} can be decoded "
            f"({_why_unreadable(test, unusable, spec)}); an accuracy would be over no image: "
            "fix the test set's images (or set data.test to a readable set) and run again; "
            "nothing of this round was written")
    if (test.path, rows, len(decoded)) not in _WARNED_TESTS:
        _WARNED_TESTS.add((test.path, rows, len(decoded)))
        log.warning("%d of the %d images of test set %s cannot be decoded; test accuracy is "
                    "over the other %d (%s)", len(unusable), rows, where, len(decoded),
                    _why_unreadable(test, unusable, spec))


def _train_func(config: dict) -> None:
    """Runs on each Ray Train worker."""
    import ray.train
    import ray.train.torch

    spec = ModelSpec.from_dict(config["spec"])
    s = TrainSettings(**config["settings"])
    torch.manual_seed(s.seed)
    keep_freed_blocks()  # activations and gradients reuse the last step's pages
    local_dir = config.get("local_checkpoints")  # Ray Train's local mode (one worker in a task)
    if local_dir is not None:
        torch.set_num_threads(max(1, int(s.cpus_per_worker)))
    restored = _restore(local_dir)
    # pretrained weights only for a fresh start: a checkpoint's weights replace them anyway
    model = create_model(spec, seed=s.seed,
                         pretrained=restored is None and not config["init_checkpoint"])
    start_epoch, earlier_nodes = 0, []
    if restored is not None:  # restarted after a worker failure: continue from the last report
        weights, start_epoch, earlier_nodes = restored
        model.load_state_dict(weights)
    elif config["init_checkpoint"]:
        model.load_state_dict(load_weights(config["init_checkpoint"]))
    device = ray.train.torch.get_device()
    check_mixed_precision(s.mixed_precision, device)
    # NHWC before prepare_model: DDP's gradient buckets take the parameters' strides when built
    model = ray.train.torch.prepare_model(with_memory_format(model, s.channels_last))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s.lr,
                           weight_decay=s.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    train_shard = ray.train.get_dataset_shard("train")
    nodes = _with_worker_nodes(earlier_nodes)
    tracker = config["tracker"][0] if rank == 0 else None
    curves = worker_curves(config.get("tracking")) if rank == 0 else None
    loss_sum, seen = 0.0, 0
    first_step: float | None = None  # wall clock of the first optimiser step
    epoch_seconds: list[float] = []  # this worker's, from its first batch request to the loss
    epoch_images: list[int] = []
    for epoch in range(start_epoch, s.epochs):
        train_mode(model)
        t_epoch = time.perf_counter()
        loss_total, seen = torch.zeros((), device=device), 0  # summed on the device: no sync
        for batch in train_shard.iter_torch_batches(
                batch_size=s.batch_size, local_shuffle_buffer_size=4096,
                local_shuffle_seed=s.seed * 1000 + epoch, device=device):
            x = model_input(batch["x"], spec.input_spec, device, s.channels_last)
            if len(x) < 2 and seen:  # a batch of 1 breaks BatchNorm; it is one sample of an epoch
                continue
            opt.zero_grad(set_to_none=True)
            with autocast(device, s.mixed_precision):
                logits = model(x)
            loss = loss_fn(logits.float(), batch["label"])
            loss.backward()
            opt.step()
            first_step = first_step or time.time()
            loss_total += loss.detach() * len(x)
            seen += len(x)
        loss_sum = float(loss_total)  # waits for the epoch's last step on a GPU
        epoch_seconds.append(time.perf_counter() - t_epoch)
        epoch_images.append(seen)
        if tracker is not None:
            tracker.update.remote(epoch + 1, loss_sum / max(seen, 1))
        if curves is not None:
            curves.log_epoch(epoch + 1, loss_sum / max(seen, 1))
        with hooks.registered(*config["hooks"]):  # the driver's hooks (raydal.hooks)
            hooks.point("epoch-end", rank=rank, epoch=epoch + 1)
        if s.checkpoint_every and (epoch + 1) % s.checkpoint_every == 0 and epoch + 1 < s.epochs:
            _report(model, spec, {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                                  "nodes": nodes}, rank, local_dir)
    if curves is not None:
        curves.close()
    # "test" is not split across workers (DataConfig in train_round): rank 0 evaluates every
    # row exactly once (an equal split would drop the remainder rows).
    # The unwrapped module: a DDP forward syncs buffers with every rank and would wait forever.
    correct, total = (_evaluate(getattr(model, "module", model),
                                ray.train.get_dataset_shard("test"), spec, device,
                                s.mixed_precision, s.channels_last)
                      if rank == 0 else (0, 0))
    _report(model, spec, {"epoch": s.epochs, "test_accuracy": correct / max(total, 1),
                          "test_count": total, "train_loss": loss_sum / max(seen, 1),
                          "resumed_from_epoch": start_epoch, "nodes": nodes,
                          "startup_seconds": (first_step or time.time()) - config["started_at"],
                          "epoch_seconds": epoch_seconds, "epoch_images": epoch_images,
                          "device": str(device)},
            rank, local_dir)


def _report(model, spec: ModelSpec, metrics: dict, rank: int,
            local_dir: Location | None = None) -> None:
    """Every worker reports; rank 0 attaches the weights as a checkpoint (meta has the epoch).

    In local mode Ray Train keeps a checkpoint only in memory: rank 0 writes it to
    ``local_dir/epoch-NNNN`` instead, where a retried task finds it.
    """
    import ray.train
    if local_dir is not None:
        save_checkpoint(model, spec, local_dir / f"epoch-{metrics['epoch']:04d}",
                        {"metrics": metrics, "epoch": metrics["epoch"]})
    if rank != 0 or local_dir is not None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(getattr(model, "module", model), spec, Path(d) / "ckpt",
                        {"metrics": metrics, "epoch": metrics["epoch"]})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(
            str(Path(d) / "ckpt")))


def _with_worker_nodes(earlier: list[str]) -> list[str]:
    """``earlier`` (the node ids of the attempts before a restart) followed by the node of
    every worker of this attempt not yet in it. Recorded in each checkpoint's metrics, so the
    record survives any process that could be lost with a node."""
    import torch.distributed as dist
    mine = ray.get_runtime_context().get_node_id()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
    else:
        every = [mine]
    return list(dict.fromkeys([*earlier, *every]))


def _restore(local_dir: Location | None) -> tuple[dict[str, torch.Tensor], int, list[str]] | None:
    """(weights, epoch, nodes so far) of the last checkpoint this round reported, or None on
    a first start: Ray Train's own for a restarted worker group, ``last_epoch_checkpoint`` in
    local mode."""
    import ray.train
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            return _restored(d)
    last = last_epoch_checkpoint(local_dir) if local_dir is not None else None
    return None if last is None else _restored(last)


def _restored(folder: Where) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    meta = read_checkpoint_meta(folder)
    return load_weights(folder), meta["epoch"], meta["metrics"].get("nodes", [])


def last_epoch_checkpoint(folder: Location) -> Location | None:
    """The complete ``epoch-NNNN`` checkpoint in ``folder`` with the highest epoch (complete:
    its meta.json, written last, exists), or None."""
    metas = [f.path for f in folder.files(recursive=True) if f.base_name == "meta.json"
             and posixpath.basename(posixpath.dirname(f.path)).startswith("epoch-")]
    return folder / posixpath.basename(posixpath.dirname(max(metas))) if metas else None


@ray.remote(num_cpus=0)
class EpochTracker:
    """Rank 0 reports (epoch, loss) here; the driver polls it to draw the training bar."""

    def __init__(self):
        self.state: tuple[int, float | None] = (0, None)

    def update(self, epoch: int, loss: float) -> None:
        self.state = (epoch, loss)

    def get(self) -> tuple[int, float | None]:
        return self.state


def _ask(call: Callable[[], Any], default: Any, tries: int = 10) -> Any:
    """``ray.get(call())`` of an EpochTracker method. The tracker only reports progress: a
    transient RPC failure (a node lost nearby resets connections) is retried, and a tracker
    that is gone gives ``default`` instead of failing the training it watches."""
    for _ in range(tries):
        try:
            return ray.get(call())
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.5)
        except ray.exceptions.ActorDiedError:
            return default
    return default


def _fit_with_progress(fit: Callable[[], Any], tracker, epochs: int, enabled: bool,
                       hook_name: str):
    """fit() in a thread while a tqdm bar follows the tracker."""
    import threading
    from tqdm.auto import tqdm

    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=_call(fit)), daemon=True)
    thread.start()
    with tqdm(total=epochs, desc="training", unit="epoch", disable=not enabled,
              leave=False) as bar:
        while thread.is_alive():
            thread.join(0.5)
            epoch, loss = _ask(tracker.get.remote, (bar.n, None))
            bar.update(epoch - bar.n)
            if epoch >= 1:
                hooks.point(hook_name)  # mid-training
            if epoch >= epochs:
                break  # trained: the worker evaluates
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.3f}")
    hooks.point(f"{hook_name}-evaluating")  # trained; its evaluation not saved yet
    thread.join()
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
def _evaluate(model, shard, spec: ModelSpec, device, mixed_precision: str = "none",
              channels_last: bool = False) -> tuple[int, int]:
    """(correct, total) over ``shard``, with the precision and layout training used."""
    model.eval()
    correct, total = torch.zeros((), dtype=torch.int64, device=device), 0
    for batch in shard.iter_torch_batches(batch_size=512, device=device):
        with autocast(device, mixed_precision):
            logits = model(model_input(batch["x"], spec.input_spec, device, channels_last))
        correct += (logits.argmax(dim=1) == batch["label"]).sum()
        total += len(logits)
    return int(correct), total


def _fit_in_task(config: dict, datasets: dict, run: Location) -> dict:
    """Ray task of one worker: Ray Train's local mode (``num_workers=0``: no controller actor,
    no worker group, the same ``ray.train`` calls) runs ``_train_func`` in this process, and
    the task's retries replace Ray Train's FailureConfig (checkpoints go to ``run``)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    trainer = TorchTrainer(_train_func, train_loop_config={**config, "local_checkpoints": run},
                           scaling_config=ScalingConfig(num_workers=0),
                           run_config=RunConfig(name=run.name), datasets=datasets)
    return trainer.fit().metrics


#: What a started fit returns: a function that waits for it and returns its metrics and a
#: function that loads the trained model (called on the driver's main thread: a first
#: ``import timm`` in a second thread can meet a half-imported torch._dynamo).
Fit = Callable[[], tuple[dict, Callable[[], torch.nn.Module]]]


def _one_worker_fit(config: dict, datasets: dict, settings: TrainSettings, run: Location) -> Fit:
    """Start ``_fit_in_task``; return its ``Fit``.

    A Ray task runs in one of Ray's pooled worker processes, which stay alive between rounds
    with torch and timm imported: no controller or worker-group start-up a round. A task whose
    process dies is retried (``max_failures`` times) and resumes from its last checkpoint.
    """
    task = ray.remote(_fit_in_task).options(
        num_cpus=settings.cpus_per_worker, num_gpus=1 if settings.use_gpu else 0,
        max_retries=settings.max_failures, retry_exceptions=False)
    ref = task.remote(config, datasets, run)

    def wait() -> tuple[dict, Callable[[], torch.nn.Module]]:
        return ray.get(ref), lambda: load_checkpoint(run / f"epoch-{settings.epochs:04d}")[0]
    return wait


def _ray_train_fit(config: dict, datasets: dict, settings: TrainSettings, run: Location) -> Fit:
    """A TorchTrainer of ``settings.num_workers`` workers (DDP); its ``Fit`` runs ``fit()``."""
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    trainer = TorchTrainer(
        _train_func, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        run_config=RunConfig(storage_path=run.parent.path, name=run.name,
                             storage_filesystem=None if run.is_local else run.fs,
                             failure_config=FailureConfig(max_failures=settings.max_failures)),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"]))

    def fit() -> tuple[dict, Callable[[], torch.nn.Module]]:
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training reported no checkpoint (error: {result.error})")
        return result.metrics, lambda: _load(result.checkpoint)
    return fit


def _load(checkpoint) -> torch.nn.Module:
    with checkpoint.as_directory() as d:
        return load_checkpoint(d)[0]  # written by save_checkpoint on rank 0


def train_round(spec: ModelSpec, pool: PoolSource, labels: Mapping[str, int],
                test_path: Where | Pool, settings: TrainSettings, out_checkpoint: Where,
                init_checkpoint: Where | None, storage_path: Where,
                progress: bool = True, hook_name: str = "train", tracking=None,
                step0: int = 0) -> dict:
    """Train on the labeled rows of ``pool``; write the checkpoint folder; return metrics.

    Paths are local or URIs. One worker trains in a Ray task (``_one_worker_fit``), more in a
    Ray Train worker group. Metrics: test_accuracy, test_count (test images it is over),
    test_rows (rows of the test set), train_count (labeled images that decoded), train_loss,
    seconds (wall time of the whole call), startup_seconds (from the call to the first
    optimiser step), epoch_seconds and epoch_images (rank 0's wall seconds and images of each
    epoch this attempt trained: steady-state images/s without the start-up), device (rank 0's
    torch device).

    Raises PoolError before training (nothing written) when fewer than
    ``MIN_IMAGES_PER_WORKER`` labeled images a worker decode, when no test image decodes, or
    when a test label is not a class of the model; warns when some test images do not decode.
    """
    t0, started_at = time.perf_counter(), time.time()
    test = test_path if isinstance(test_path, PoolSource) else Pool(test_path)  # built or a path
    test_rows = check_test_labels(test, spec.num_classes)
    # decoded once for every epoch and restart, and held on the driver's node
    train_ds, train_ids = held_with_ids(decoded_dataset(pool, spec.input_spec, labels))
    _check_labeled_images(pool, labels, train_ids, spec.input_spec, settings.num_workers)
    test_ds, test_ids = held_with_ids(decoded_dataset(test, spec.input_spec))
    _check_test_images(test, test_rows, test_ids, spec.input_spec)
    # on the driver's node: losing a worker node must not lose the tracker
    tracker = EpochTracker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=True)).remote()
    run = resolve(storage_path) / f"{resolve(out_checkpoint).name}-{time.time_ns()}"
    config = {"spec": spec.to_dict(), "settings": asdict(settings),
              "init_checkpoint": resolve(init_checkpoint) if init_checkpoint else None,
              "tracker": [tracker], "started_at": started_at,
              "tracking": {**asdict(tracking), "step0": step0} if tracking else None,
              "hooks": hooks.current()}
    start = _one_worker_fit if settings.num_workers == 1 else _ray_train_fit
    fit = start(config, {"train": train_ds, "test": test_ds}, settings, run)
    result_metrics, load = _fit_with_progress(fit, tracker, settings.epochs, progress,
                                              hook_name)
    ray.kill(tracker)
    result_metrics = {**result_metrics, "test_rows": test_rows, "train_count": len(train_ids)}
    metrics = {**result_metrics, "seconds": time.perf_counter() - t0}
    save_checkpoint(load(), spec, out_checkpoint, {
        "metrics": result_metrics, "num_labeled": len(labels),
        "train_seconds": metrics["seconds"], "nodes": result_metrics["nodes"]})
    run.delete()
    return metrics
