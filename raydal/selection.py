"""Distributed selection: Ray Data streams the pool through decoding and scoring; the driver
merges.

Two pipelines, the same picks (``select(pipeline=)``; "auto" takes "staged" when the scorers
use GPUs, "fused" on CPUs only; measured in benchmarks/pipeline_efficiency.py):

staged (Ray's heterogeneous batch inference):
  pool units --> decode_units tasks (CPU, 1 each, as many as free CPUs allow: read the unit,
  drop labeled ids, decode + resize to uint8 (N, C, S, S), a status for unreadable rows)
  --decoded pieces through the object store--> ScoreActor pool (ActorPoolStrategy, num_gpus
  each; model, strategy context loaded once per actor; pinned host memory, non-blocking copy,
  normalised on the device; RunningTopK per call) --> driver StreamingTopK.
  Decoding never waits for the GPU and the number of decoders is not tied to the scorers.

fused:
  pool units --> score_block tasks (read the unit, drop labeled ids, decode, score,
  RunningTopK per piece) --> driver StreamingTopK.
  The tasks run in Ray's pooled worker processes, at most ``num_actors`` at a time; a process
  keeps the selection's model once loaded (``score_block``), and the processes outlive the
  selection, so later rounds start without new processes or imports (an actor pool starts new
  processes, importing torch, every selection).

Pool units (``pool_units``): a Parquet pool is handed to the tasks as files, row groups or
slices of them, about ``UNITS_PER_WORKER`` a worker, and each task reads its own with pyarrow
(``read_unit``): no read stage beside the scorers, and the images' bytes never pass through
the object store or the driver. Another pool source (``PoolSource``) is read by Ray Data
(``to_dataset``) and its blocks go to the same tasks.

Strategies whose score does not depend on the pixels (``random``: ``needs_pixels``) do not
decode: each image is checked instead (``transforms.check_image``: the same header checks and
the whole compressed stream, a JPEG at 1/8 scale), so exactly the rows a decode would skip are
skipped and counted, and no label is bought for an image that training cannot read. On a CPU the
scorer normalises into a float buffer it reuses (``Scorer._input``).

Either way a call's output does not depend on the process that ran it, so a task or actor
that dies is retried by Ray Data with the same rows; the driver's merge is exact
(raydal.merge). Set-based strategies (BADGE, Coreset; raydal.scoring.diversity): the scorers
embed each batch and keep its ``candidates`` (rows + features), the driver's
StreamingCandidates reduces their union and runs ``pick`` -- an approximation of the
single-process algorithm, measured in that module.

Class-balanced picks (``select(balance=)``, per-sample strategies only): each scorer also
predicts each candidate's class (``Strategy.score_with_classes``), keeps a running top-k per
class (``RunningClassTopK``) and counts its candidates per class; the driver merges per class and
sums the counts (``StreamingBalancedTopK``), then fills the quotas: exactly
``raydal.merge.balanced_top_k`` of the whole pool, for either pipeline and any sharding.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from raydal.config import RayConfig, SelectionConfig
from raydal.errors import ConfigError, SelectionError, one_line
from raydal.merge import (BALANCES, RunningClassTopK, RunningTopK, StreamingBalancedTopK,
                          StreamingTopK, class_counts)
from raydal.fs import Location, resolve
from raydal.hostmem import keep_freed_blocks
from raydal.models import ModelSpec, checkpoint_exists, load_checkpoint, read_checkpoint_meta
from raydal.pool import Pool, PoolSource, open_pool
from raydal.resources import schedulable, selection_demand
from raydal.scoring.base import Strategy, create_strategy
from raydal.scoring.diversity import SetStrategy, StreamingCandidates, features_from_bytes
from raydal.shared_paths import check_shared
from raydal.scoring.uncertainty import Random
from raydal.transforms import InputSpec, normalise, to_model_input, verify_rows

log = logging.getLogger("raydal")


@dataclass
class Selection:
    """The picks of one selection, best first, and what was seen on the way."""

    ids: list[str]
    scores: np.ndarray
    num_scored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0          # wall time of the whole selection
    startup_seconds: float = 0.0  # until the first scored batch reached the driver
    startup_rows: int = 0         # rows scored (or skipped) in that first batch
    nodes: list[str] = field(default_factory=list)  # Ray node ids of the scoring tasks
    pipeline: str = ""            # "staged" or "fused" (see the module docstring)
    balance: str = "none"         # see ``select``
    classes: list[int] = field(default_factory=list)  # balanced: each pick's predicted class
    class_counts: list[int] = field(default_factory=list)  # balanced: candidates per class

    def to_table(self) -> pa.Table:
        return pa.table({"id": pa.array(self.ids, pa.string()),
                         "score": pa.array(self.scores, pa.float64()),
                         "rank": pa.array(np.arange(len(self.ids)), pa.int64())})


# ---- model sources ---------------------------------------------------------------------------
@dataclass
class ModelSource:
    """Where scorers get the model: a checkpoint folder, or an in-memory module in the object
    store."""

    checkpoint: str | None = None
    module_ref: list | None = None  # [ObjectRef] (wrapped so Ray does not resolve it early)
    input_spec: InputSpec | None = None

    def spec(self) -> InputSpec:
        if self.input_spec is not None or self.checkpoint is None:
            return self.input_spec
        return ModelSpec.from_dict(read_checkpoint_meta(self.checkpoint)["spec"]).input_spec

    def load(self, device: str) -> tuple[torch.nn.Module | None, InputSpec]:
        if self.checkpoint is not None:
            model, spec = load_checkpoint(self.checkpoint, device)
            return model.eval(), self.input_spec or spec.input_spec
        model = ray.get(self.module_ref[0]) if self.module_ref else None
        if model is not None:
            model = model.to(device).eval()
        return model, self.input_spec


def model_source(model: torch.nn.Module | str | Path | None, input_spec: InputSpec | None,
                 pool: Pool) -> ModelSource:
    """A checkpoint keeps its own InputSpec; a module (or None) takes ``input_spec``, else the
    pool's (``Pool.input_spec``: known for square 1- or 3-channel arrays of ``from_numpy``)."""
    if model is None or isinstance(model, torch.nn.Module):
        input_spec = input_spec or pool.input_spec()
        if input_spec is None:
            shape = pool.image_shape
            known = (f"its images are {shape[0]}x{shape[1]} with {shape[2]} channels"
                     if shape else "it does not record its images' shape (a pool from "
                     "Pool.from_numpy does)")
            raise ConfigError(f"input_spec is required when model is a module or None and the "
                              f"pool gives none ({known}); pass input_spec=InputSpec(in_chans, "
                              "img_size) or a checkpoint path")
        if model is not None:
            check_fits(model, input_spec)
        return ModelSource(module_ref=[ray.put(model)] if model is not None else None,
                           input_spec=input_spec)
    if not isinstance(model, (str, os.PathLike, Location)):
        raise ConfigError(f"model must be a raydal checkpoint folder (a path or URI), a "
                          f"torch.nn.Module or None, got {type(model).__name__} {model!r:.60}")
    spec = check_checkpoint(model)
    if input_spec is not None and input_spec.in_chans != spec.in_chans:
        raise ConfigError(f"input_spec has in_chans={input_spec.in_chans}, but checkpoint "
                          f"{model} is a model of in_chans={spec.in_chans}; pass input_spec=None "
                          "(a checkpoint keeps its own) or one of its channels")
    return ModelSource(checkpoint=str(model), input_spec=input_spec)


def check_checkpoint(path: str | os.PathLike | Location, name: str = "model") -> ModelSpec:
    """The ModelSpec of checkpoint folder ``path``; ConfigError naming ``name`` and the fix when
    it is not a whole raydal checkpoint (no meta.json, a meta.json without a model spec, a
    model.safetensors missing or cut short). Reads the meta and the weights' header only."""
    fix = ("give a folder written by raydal.save_checkpoint, such as "
           "RUN_DIR/checkpoints/round-0003")
    if not checkpoint_exists(path):
        raise ConfigError(f"{name} {path} is not a raydal checkpoint folder (no meta.json); {fix}")
    try:
        spec = ModelSpec.from_dict(read_checkpoint_meta(path)["spec"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{name} {path}: its meta.json holds no model spec "
                          f"({type(e).__name__}: {e}); {fix}") from None
    problem = _safetensors_problem(resolve(path) / "model.safetensors")
    if problem:
        raise ConfigError(f"{name} {path}: model.safetensors {problem}; {fix}")
    return spec


def _safetensors_problem(loc: Location) -> str | None:
    """Why the safetensors file at ``loc`` is not whole, or None: from its size and header (an
    8-byte length, JSON, each tensor's end offset); no tensor is read."""
    try:
        with loc.fs.open_input_file(loc.path) as f:
            size = f.size()
            n = int.from_bytes(f.read_at(8, 0), "little") if size >= 8 else -1
            if not 0 < n <= size - 8:
                return f"is not a safetensors file ({size} bytes, no header)"
            header = json.loads(f.read_at(n, 8))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        return f"is not a safetensors file ({type(e).__name__}: {e})"
    if 8 + n + end > size:
        return f"is cut short ({size} bytes; its header says {8 + n + end})"
    return None


def check_fits(model: torch.nn.Module, spec: InputSpec) -> None:
    """ConfigError unless ``model`` runs (eval mode, no grad) on one blank image of ``spec``:
    an input_spec of other channels or a size the model cannot take fails here, on the driver,
    not in every scorer."""
    param = next(model.parameters(), None)
    x = torch.zeros(1, spec.in_chans, spec.img_size, spec.img_size,
                    device=param.device if param is not None else "cpu")
    modes = [(m, m.training) for m in model.modules()]  # restored as they were, module by module
    try:
        with torch.no_grad():
            model.eval()(x)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"input_spec={spec} does not fit the model: a blank {spec.in_chans} x "
                          f"{spec.img_size} x {spec.img_size} image fails in its forward pass "
                          f"({one_line(str(e))[:200]}); pass the InputSpec the model was built "
                          "for") from None
    finally:
        for m, training in modes:
            m.training = training


def _device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


# ---- scorers ---------------------------------------------------------------------------------
#: status of an output row that is neither a candidate ("") nor a skipped image (the reason).
COUNT_ONLY = "\x00count-only"
PIPELINES = ("auto", "staged", "fused")


@dataclass
class ScoringJob:
    """What a scorer needs. ``token`` names one selection: a worker process loads the model, the
    strategy's context and the labeled ids once per token (see ``score_block``).
    ``labeled_ref`` is None in the staged pipeline (the decode tasks drop labeled rows)."""

    token: str
    source: ModelSource
    pool: Pool  # decodes its batches (Pool.decode)
    strategy: Strategy
    context_ref: list  # [ObjectRef] of strategy.prepare's result (wrapped: resolved in a task)
    labeled_ref: list | None  # [ObjectRef] of the labeled ids' frozenset
    k: int
    batch_size: int
    num_gpus: float = 0.0
    num_threads: int = 1
    balance: str = "none"  # not "none": rows carry their predicted class (see ``select``)
    unit_rows: int = 0  # >0: rows a pool unit is read and passed on in (``read_unit``); 0: a
    # call gets encoded rows (a pool source read by Ray Data)


class Scorer:
    """One worker process's state for one selection: model, context and labeled ids."""

    def __init__(self, job: ScoringJob):
        keep_freed_blocks()  # a CPU batch's large temporaries reuse the last batch's pages
        self.job, self.strategy = job, job.strategy
        self.device = _device(job.num_gpus)
        needs_model = job.strategy.needs_model or job.balance != "none"  # classes need it
        self.model, self.spec = (job.source.load(self.device) if needs_model
                                 else (None, job.source.spec()))
        self.context = ray.get(job.context_ref[0])
        self.labeled = ray.get(job.labeled_ref[0]) if job.labeled_ref else frozenset()
        self.node = ray.get_runtime_context().get_node_id()
        self.pixels = needs_pixels(job.strategy, job.balance)
        self._buffer: torch.Tensor | None = None  # the CPU float input, reused (``_input``)

    def score_block(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fused pipeline: score a block of encoded rows (id, image|path) in batches of
        ``job.batch_size``; pass on the rows that enter the block's running top-k (or a set
        strategy's candidates), skipped rows with their reason, and the count of rows scored.
        Stateless across blocks: a retried block gives the same rows. An empty block gives the
        same columns with no rows."""
        running = self._running()
        starts = range(0, len(block["id"]), self.job.batch_size) or [0]
        outs = [self._decode_and_score({c: v[s:s + self.job.batch_size]
                                        for c, v in block.items()}, running) for s in starts]
        return _concat(outs)

    def score_decoded(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Staged pipeline: the same for a block of ``decode_block``'s output (id, image uint8
        (N, C, S, S), status)."""
        running = self._running()
        b = self.job.batch_size
        outs = []
        for s in range(0, len(block["id"]), b) or [0]:
            ids = np.asarray(block["id"][s:s + b], dtype=object)
            status = block["status"][s:s + b]
            ok = [i for i, st in enumerate(status) if st == ""]
            bad = [(i, str(st)) for i, st in enumerate(status) if st != ""]
            images = block["image"][s:s + b] if "image" in block else None  # none: verified
            arr = images if images is None or len(ok) == len(images) else images[ok]
            outs.append(self._score_rows(ids, arr, ok, bad, running))
        return _concat(outs)

    def _running(self) -> RunningTopK | RunningClassTopK:
        """A call's running top-k: one per predicted class when balanced."""
        return (RunningTopK(self.job.k) if self.job.balance == "none"
                else RunningClassTopK(self.job.k))

    def _decode_and_score(self, batch: dict[str, np.ndarray],
                          running: RunningTopK | RunningClassTopK) -> dict[str, np.ndarray]:
        ids = np.asarray([str(i) for i in batch["id"]], dtype=object)
        fresh = np.fromiter((i not in self.labeled for i in ids), bool, len(ids))
        ids = ids[fresh]
        if self.pixels:
            arr, ok, bad = self.job.pool.decode(batch, self.spec, fresh)
        else:  # a score of the ids alone: the images are checked, not turned into input
            arr, (ok, bad) = None, verify_rows(*self.job.pool.image_inputs(batch, fresh),
                                               self.spec)
        return self._score_rows(ids, arr, ok, bad, running)

    def _input(self, arr: np.ndarray | None) -> torch.Tensor | None:
        """(N, C, S, S) uint8 -> the model's normalised float input on the scorer's device:
        copied as uint8 (4x fewer bytes than float) from pinned memory without blocking, and
        normalised there. On a CPU into the scorer's buffer, reused from batch to batch (every
        use of the input ends within its batch). None (a strategy that scores ids) -> None."""
        if arr is None:
            return None
        if self.device != "cpu":
            if not arr.flags.writeable:  # a read-only view of the object store
                arr = arr.copy()
            x = torch.from_numpy(np.ascontiguousarray(arr))
            return normalise(x.pin_memory().to(self.device, non_blocking=True), self.spec)
        with warnings.catch_warnings():  # read-only views are only read here (copied to floats)
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(np.ascontiguousarray(arr))
        buf = self._buffer
        if buf is None or buf.shape[1:] != x.shape[1:] or len(buf) < len(x):
            buf = self._buffer = torch.empty(x.shape, dtype=torch.float32)
        return normalise(x, self.spec, out=buf[:len(x)])

    def _score_rows(self, ids: np.ndarray, arr: np.ndarray, ok: list[int],
                    bad: list[tuple[int, str]], running: RunningTopK | RunningClassTopK
                    ) -> dict[str, np.ndarray]:
        """ids (N,) of a batch; arr (len(ok), C, S, S) uint8 images of its rows ``ok``; ``bad``
        (index, reason) of the rest. Balanced: columns ``class`` (each row's predicted class,
        -1 for a bad row) and ``class_counts`` (the batch's candidates per class as int64
        bytes, on the row that carries ``n_scored``; b"" elsewhere)."""
        out_ids: list[str] = []
        out_scores: list[float] = []
        out_feats: list[bytes] = []
        out_classes: list[int] = []
        counts = np.zeros(0, dtype=np.int64)
        if ok and isinstance(self.strategy, SetStrategy):
            out_ids, out_scores, out_feats = self._set_candidates(arr, [ids[i] for i in ok])
        elif ok and self.job.balance != "none":
            ok_ids = [ids[i] for i in ok]
            scores, classes = self.strategy.score_with_classes(
                self.model, self._input(arr), ok_ids, self.context)
            scores = scores.detach().double().cpu().numpy()
            classes = classes.detach().cpu().numpy().astype(np.int64)
            counts = class_counts(classes, scores)
            top_ids, top_scores, top_classes = running.admit(np.asarray(ok_ids, dtype=str),
                                                             scores, classes)
            out_ids, out_scores = top_ids.tolist(), top_scores.tolist()
            out_classes = top_classes.tolist()
        elif ok:
            ok_ids = [ids[i] for i in ok]
            scores = self.strategy.score(self.model, self._input(arr), ok_ids, self.context)
            top_ids, top_scores = running.admit(np.asarray(ok_ids, dtype=str),
                                                scores.detach().double().cpu().numpy())
            out_ids, out_scores = top_ids.tolist(), top_scores.tolist()
        status = [""] * len(out_ids) + [reason for _, reason in bad]
        out_ids += [ids[i] for i, _ in bad]
        out_scores += [float("nan")] * len(bad)
        out_classes += [-1] * len(bad)
        if ok and not out_ids:  # nothing passed on: one row that only carries the count
            out_ids, out_scores, status = [""], [float("nan")], [COUNT_ONLY]
            out_classes = [-1]
        n_scored = np.zeros(len(out_ids), dtype=np.int64)
        if len(out_ids):
            n_scored[0] = len(ok)
        return {"id": np.asarray(out_ids, dtype=object), "score": np.asarray(out_scores),
                "node": np.full(len(out_ids), self.node, dtype=object),
                "status": np.asarray(status, dtype=object), "n_scored": n_scored,
                **self._feature_column(out_feats, len(bad)),
                **self._class_columns(out_classes, counts)}

    def _set_candidates(self, arr: np.ndarray, ok_ids: list[str]
                        ) -> tuple[list[str], list[float], list[bytes]]:
        """Set-based strategy: the batch's candidate ids, placeholder scores 0 and features as
        float32 bytes (bytes, not a tensor column: bad rows need an empty value)."""
        feats = self.strategy.embed(self.model, self._input(arr), ok_ids, self.context)
        keep = self.strategy.candidates(np.asarray(ok_ids, dtype=str), feats,
                                        self.strategy.num_candidates(self.job.k), self.context)
        return ([ok_ids[i] for i in keep], [0.0] * len(keep),
                [np.ascontiguousarray(feats[i], dtype=np.float32).tobytes() for i in keep])

    def _class_columns(self, classes: list[int], counts: np.ndarray) -> dict[str, np.ndarray]:
        if self.job.balance == "none":
            return {}
        carried = np.full(len(classes), b"", dtype=object)
        if len(classes):
            carried[0] = counts.tobytes()
        return {"class": np.asarray(classes, dtype=np.int64), "class_counts": carried}

    def _feature_column(self, feats: list[bytes], num_bad: int) -> dict[str, np.ndarray]:
        if not isinstance(self.strategy, SetStrategy):
            return {}
        return {"features": np.asarray(feats + [b""] * num_bad, dtype=object)}


def _concat(outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([o[c] for o in outs]) for c in outs[0]}


#: This worker process's Scorer of the current selection (one entry; a new token replaces it).
_SCORERS: dict[str, Scorer] = {}


def score_block(units: dict[str, np.ndarray], job: ScoringJob
                ) -> Iterator[dict[str, np.ndarray]]:
    """Fused pipeline's ``map_batches`` function, run as a Ray task in a pooled worker: reads
    its units of the pool (``read_unit``) and yields, for each piece of at most
    ``job.unit_rows`` rows, what ``Scorer.score_block`` passes on (a pool source that Ray Data
    reads: its block, ``job.unit_rows`` 0).

    Pooled workers outlive a selection (and run the training task too), so from the second
    round on, scoring starts in processes that have torch and timm imported; only the model of
    the round is loaded, once per process (measured in README, "Start-up against work")."""
    scorer = _SCORERS.get(job.token)
    if scorer is None:
        _SCORERS.clear()  # the previous selection's model and context
        scorer = _SCORERS[job.token] = Scorer(job)
    torch.set_num_threads(job.num_threads)
    for block in _blocks(job.pool, units, job.unit_rows):
        yield scorer.score_block(block)


class ScoreActor:
    """Staged pipeline's scorer: a ``map_batches`` callable class run in an actor pool; model,
    strategy context and device set up once in ``__init__``, each call scores a block of
    decoded rows (``Scorer.score_decoded``)."""

    def __init__(self, job: ScoringJob):
        torch.set_num_threads(job.num_threads)
        self.scorer = Scorer(job)

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.scorer.score_decoded(block)


# ---- decode tasks (staged pipeline) -----------------------------------------------------------
@dataclass
class DecodeJob:
    """What a decode task needs: the pool (its image column), the model's InputSpec and the
    labeled ids to drop (loaded once per process and ``token``). ``pixels`` False: the
    scorers score ids alone (``needs_pixels``), so images are checked, not decoded."""

    token: str
    pool: Pool
    spec: InputSpec
    labeled_ref: list  # [ObjectRef] of the labeled ids' frozenset
    pixels: bool = True
    unit_rows: int = 0  # as ScoringJob.unit_rows


#: This worker process's labeled ids of the current selection (one entry, as _SCORERS).
_LABELED: dict[str, frozenset] = {}


def decode_block(block: dict[str, np.ndarray], job: DecodeJob) -> dict[str, np.ndarray]:
    """Staged pipeline's CPU stage: a block of encoded rows (id, image|path) -> its unlabeled
    rows decoded: id (N,) str, image (N, C, S, S) uint8 (zeros for an unreadable row), status
    (N,) str ("" or why the row cannot be used). No torch: a decode task needs no GPU and no
    model."""
    labeled = _LABELED.get(job.token)
    if labeled is None:
        _LABELED.clear()
        labeled = _LABELED[job.token] = ray.get(job.labeled_ref[0])
    ids = np.asarray([str(i) for i in block["id"]], dtype=object)
    fresh = np.fromiter((i not in labeled for i in ids), bool, len(ids))
    ids = ids[fresh]
    if not job.pixels:  # no image column: the scorers need none
        ok, bad = verify_rows(*job.pool.image_inputs(block, fresh), job.spec)
        return {"id": ids, "status": _status(len(ids), bad)}
    arr, ok, bad = job.pool.decode(block, job.spec, fresh)
    if len(ok) != len(ids):
        images = np.zeros((len(ids), *arr.shape[1:]), np.uint8)
        images[ok] = arr
        arr = images
    return {"id": ids, "image": arr, "status": _status(len(ids), bad)}


def _status(n: int, bad: list[tuple[int, str]]) -> np.ndarray:
    status = np.full(n, "", dtype=object)
    for i, reason in bad:
        status[i] = reason
    return status


def decode_units(units: dict[str, np.ndarray], job: DecodeJob
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Staged pipeline's ``map_batches`` function: reads its units of the pool and yields
    ``decode_block`` of each piece of at most ``job.unit_rows`` rows."""
    for block in _blocks(job.pool, units, job.unit_rows):
        yield decode_block(block, job)


# ---- pool units: the pieces of the pool that tasks read themselves ---------------------------
#: Read blocks a worker gets from a pool source that is not Parquet (read by Ray Data).
READ_BLOCKS_PER_WORKER = 32
#: Units a worker (a fused scorer, a staged decode task) gets: enough that workers finish the
#: pool together (a unit's decode time at most, idle at the end), few enough that splitting a
#: Parquet row group, whose whole column chunks are read for every slice of it, stays cheap.
UNITS_PER_WORKER = 8
#: Fewest rows of a unit made by splitting a row group.
MIN_UNIT_ROWS = 64
#: Most bytes of decoded images a piece carries (staged: through the object store).
MAX_PIECE_BYTES = 64 << 20


def pool_units(pool: Pool, workers: int) -> list[dict[str, Any]]:
    """The pool as units of work for ``workers`` tasks at a time: dicts of a Parquet file's
    ``path`` (on the pool's filesystem), ``row_group`` (-1: the whole file) and the rows
    ``start``..``stop`` of it. A pool of at least ``UNITS_PER_WORKER`` files a worker is read
    file by file (no footer read here); fewer files are split at row groups, and row groups
    into equal slices of at least ``MIN_UNIT_ROWS`` rows, into about that many units.

    Each task reads its units itself (``read_unit``): the images' bytes never pass through
    the object store or the driver, and no read stage runs beside the scorers."""
    files = pool.files
    target = UNITS_PER_WORKER * max(1, workers)
    if len(files) >= target:
        return [{"path": f.path, "row_group": -1, "start": 0, "stop": -1} for f in files]
    groups = []  # (path, row group, rows)
    for f in files:
        with pool.location.fs.open_input_file(f.path) as fh:
            meta = pq.ParquetFile(fh).metadata
        groups += [(f.path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    rows = sum(n for _, _, n in groups)
    unit_rows = max(MIN_UNIT_ROWS, -(-rows // target))
    units = []
    for path, g, n in groups:
        parts = max(1, min(-(-n // unit_rows), n // MIN_UNIT_ROWS))
        bounds = [n * i // parts for i in range(parts + 1)]
        units += [{"path": path, "row_group": g, "start": a, "stop": b}
                  for a, b in zip(bounds, bounds[1:]) if b > a]
    return units


def unit_rows(pool: Pool, num_units: int, spec: InputSpec | None, pixels: bool) -> int:
    """Rows of the pieces a unit is read, scored and passed on in: about a unit's rows, at most
    ``MAX_PIECE_BYTES`` of decoded images."""
    rows = max(1, -(-pool.num_rows // max(1, num_units)))
    if pixels and spec is not None:
        rows = min(rows, max(1, MAX_PIECE_BYTES // (spec.in_chans * spec.img_size ** 2)))
    return rows


def read_unit(pool: Pool, unit: Mapping[str, Any], rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The rows of one ``pool_units`` unit as numpy blocks (id, and the image column as a
    list of bytes or paths) of at most ``rows`` rows, read with pyarrow in this process: one row
    group at a time, only the pool's two columns."""
    columns = pool.columns
    group = int(unit["row_group"])
    with pool.location.fs.open_input_file(str(unit["path"])) as fh:
        pf = pq.ParquetFile(fh)
        for g in (range(pf.num_row_groups) if group < 0 else [group]):
            table = pf.read_row_group(g, columns=columns)
            if group >= 0:
                table = table.slice(int(unit["start"]), int(unit["stop"]) - int(unit["start"]))
            for s in range(0, table.num_rows, rows):
                piece = table.slice(s, rows)
                yield {c: _objects(piece.column(c).to_pylist()) for c in columns}


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _blocks(pool: PoolSource, units: Mapping[str, np.ndarray], rows: int
            ) -> Iterator[dict[str, np.ndarray]]:
    """The encoded rows of a call: its ``pool_units`` read (``rows`` > 0), or the call's block
    itself (a pool source that Ray Data reads, ``rows`` 0)."""
    if not rows:
        yield units
        return
    for i in range(len(units["path"])):
        yield from read_unit(pool, {k: v[i] for k, v in units.items()}, rows)


def needs_pixels(strategy: Strategy, balance: str = "none") -> bool:
    """Whether a strategy's scores depend on the images: False for ``random`` (a hash of the
    id; its ``score`` is Random's own), unless the picks are class-balanced (the classes come
    from the model). Without pixels, images are still checked (``transforms.check_image``): the
    same rows are skipped and counted as when they are decoded, at about a third of the cost."""
    return not (balance == "none" and type(strategy).score is Random.score
                and not isinstance(strategy, SetStrategy))


# ---- labeled-set context (runs as a Ray task, next to the data, not on the driver) -----------
def iter_labeled_batches(pool: Pool, labels: Mapping[str, int], spec: InputSpec,
                         batch_size: int, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode the labeled rows of ``pool`` in batches of (x, y); unreadable rows are skipped."""
    ids = sorted(labels)
    for s in range(0, len(ids), batch_size):
        table = pool.take(ids[s:s + batch_size])
        arr, ok, _ = pool.decode(table, spec)
        if ok:
            row_ids = table.column("id").to_pylist()
            y = torch.tensor([labels[row_ids[i]] for i in ok], dtype=torch.int64)
            yield to_model_input(arr, spec).to(device), y.to(device)


def _prepare_context(strategy: Strategy, source: ModelSource, pool: Pool,
                     labels: dict[str, int], batch_size: int, num_gpus: float) -> Any:
    device = _device(num_gpus)
    model, spec = source.load(device)
    check_labeled(pool, labels, getattr(model, "num_classes", None))
    return strategy.prepare(model, iter_labeled_batches(pool, labels, spec, batch_size, device))


def check_labeled(pool: Pool, labels: Mapping[str, int], num_classes: int | None) -> None:
    """SelectionError if a label is not a class of the model or a labeled id is not in pool."""
    if num_classes is not None:
        bad = [(i, y) for i, y in labels.items() if not 0 <= y < num_classes]
        if bad:
            raise SelectionError(
                f"{len(bad)} labels are not classes of the model, [0, {num_classes}) (e.g. id "
                f"{bad[0][0]!r}: {bad[0][1]}); pass labels of the classes the model predicts")
    missing = pool.missing_ids(labels)
    if missing:
        raise SelectionError(
            f"{len(missing)} of the {len(labels)} labeled ids are not in pool {pool.path} "
            f"(e.g. {missing[0]!r}); pass the labels of this pool's ids")


def _no_usable_images(pool: Pool, skipped: list[tuple[str, str]], num_labeled: int
                      ) -> SelectionError:
    if not skipped:
        return SelectionError(f"pool {pool.path} has no unlabeled image left ({num_labeled} "
                              "labeled): nothing to select; add images to the pool (in a run: fewer "
                              "loop.rounds)")
    reasons = Counter(reason.split(":", 1)[0] for _, reason in skipped)
    first = skipped[0]
    return SelectionError(
        f"none of the {len(skipped)} unlabeled images of pool {pool.path} could be used ("
        + ", ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        + f"; first: id {first[0]!r}: {first[1]}); nothing was selected or written: fix the "
        f"pool's {pool.image_column!r} column (encoded image bytes, or readable image paths) "
        "and run again")


# ---- public entry point ----------------------------------------------------------------------
def pipeline_for(pipeline: str, num_gpus_per_actor: float) -> str:
    """"staged" or "fused" for ``select(pipeline=)``: "auto" is staged when the scorers use
    GPUs (the decoders then keep the GPU fed) and fused on CPUs only, where the pooled tasks'
    kept processes start faster and the CPUs are shared by decoding and scoring anyway
    (benchmarks/pipeline_efficiency.py)."""
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline must be one of {', '.join(map(repr, PIPELINES))}, got "
                         f"{pipeline!r}")
    if pipeline == "auto":
        return "staged" if num_gpus_per_actor > 0 else "fused"
    return pipeline


#: select()'s keyword defaults are the config's (one declaration per setting)
_DEFAULTS = SelectionConfig()


def select(pool: Pool | str | Path, model: torch.nn.Module | str | Path | None = None,
           strategy: str | Strategy = "dynamicAL", budget: int = 100,
           labeled: Mapping[str, int] | Sequence[str] | None = None, *,
           strategy_options: dict[str, Any] | None = None,
           num_actors: int = _DEFAULTS.num_actors, batch_size: int = _DEFAULTS.batch_size,
           num_gpus_per_actor: float = _DEFAULTS.num_gpus_per_actor,
           num_cpus_per_actor: float = _DEFAULTS.num_cpus_per_actor,
           input_spec: InputSpec | None = None, progress: bool = True,
           resource_wait_s: float = RayConfig().resource_wait_s,
           pipeline: str = _DEFAULTS.pipeline, decode_tasks: int | None = _DEFAULTS.decode_tasks,
           balance: str = _DEFAULTS.balance) -> Selection:
    """Pick the ``budget`` best unlabeled samples of ``pool``.

    model: a raydal checkpoint folder, or a torch module; a module needs ``input_spec`` unless
    the pool knows it (``Pool.input_spec``: square 1- or 3-channel arrays of ``from_numpy``,
    fed at their own size).
    labeled: id -> label of the labeled set (labels are needed by dynamicAL), or just ids.
    The result is identical for any ``pipeline``, ``num_actors``, ``decode_tasks`` and
    ``batch_size``.
    pipeline: "staged" (CPU decode tasks, then an actor pool of scorers), "fused" (tasks that
    decode and score) or "auto" (staged when ``num_gpus_per_actor`` > 0); see the module
    docstring.
    num_actors: scorers at a time (actors when staged, pooled tasks when fused).
    num_cpus_per_actor is Ray's logical reservation of each; each runs max(1, int(it)) torch
    threads. decode_tasks (staged): most decode tasks at a time, 1 CPU each; default as many
    as the CPUs the scorers leave free. The scorers must leave a CPU free for a decode (staged)
    or read (fused) task: a request the cluster cannot place raises ResourceError (after
    waiting up to ``resource_wait_s`` seconds for an autoscaling cluster to grow).
    balance: "none" (the ``budget`` best scores), or a class-balanced query over the classes
    the model predicts for the unlabeled pool: "proportional" (quotas proportional to each
    predicted class's share of the pool) or "equal" (the same quota for every class predicted
    at least once); largest-remainder rounding, ties to the smaller class; quota a class
    cannot fill goes to the best rows left of any class (``raydal.merge.balanced_top_k``, which
    the result equals exactly). Per-sample strategies only (ConfigError for a set-based one);
    needs a model, also for "random". ``Selection.classes`` holds each pick's predicted class.
    SelectionError if no unlabeled image could be used; PoolError for a pool with null or
    duplicate ids; ConfigError for an argument of the wrong type or value (``check_arguments``).
    Ray is started (or joined: RAY_ADDRESS, then the last ``ray start``) if this process has
    not done so (``raydal.connect``).
    """
    t0 = time.perf_counter()
    check_arguments(budget=budget, num_actors=num_actors, batch_size=batch_size,
                    decode_tasks=decode_tasks, num_gpus_per_actor=num_gpus_per_actor,
                    num_cpus_per_actor=num_cpus_per_actor, resource_wait_s=resource_wait_s,
                    strategy=strategy, strategy_options=strategy_options, input_spec=input_spec)
    labels = labeled_dict(labeled)
    pipeline = pipeline_for(pipeline, num_gpus_per_actor)
    check_balance(balance, strategy if isinstance(strategy, Strategy) else None)
    if not ray.is_initialized():  # ray.nodes() and ray.put would refuse; Ray Data would not
        from raydal.connect import connect
        connect()
    demand = selection_demand(num_actors, num_cpus_per_actor, num_gpus_per_actor, pipeline)
    with schedulable([demand], resource_wait_s):  # nodes an autoscaler adds stay until the end
        pool = pool if isinstance(pool, PoolSource) else open_pool(pool)  # any pool source
        pool.check_ids()  # a null or duplicate id would be picked as "None" or be ambiguous
        # no more picks than rows: a budget beyond int64 would overflow the balanced quotas
        k = min(budget, max(pool.num_rows, 1))
        if isinstance(strategy, str):
            strategy = create_strategy(strategy, **(strategy_options or {}))
            check_balance(balance, strategy)
        source = model_source(model, input_spec, pool)
        check_shared({"pool": pool.path, "model": source.checkpoint})  # many nodes, local paths
        if strategy.needs_model and source.checkpoint is None and source.module_ref is None:
            raise ConfigError(f"strategy {strategy.name!r} needs a model; pass model= (a "
                              "checkpoint or a module)")
        if balance != "none" and source.checkpoint is None and source.module_ref is None:
            raise ConfigError(f"balance={balance!r} predicts each candidate's class with the "
                              "model; pass model= (a checkpoint or a module)")

        context_ref = ray.put(None)
        if strategy.needs_labeled:
            if not labels or any(v < 0 for v in labels.values()):
                raise ConfigError(f"strategy {strategy.name!r} needs the labels of the labeled "
                                  "set: pass labeled={id: label, ...}")
            task = ray.remote(_prepare_context).options(num_gpus=num_gpus_per_actor,
                                                        num_cpus=num_cpus_per_actor)
            # not awaited here: the labeled-set pass runs while the first blocks are read (each
            # scorer waits for it when it loads the selection)
            context_ref = task.remote(strategy, source, pool, labels, batch_size,
                                      num_gpus_per_actor)

        pixels = needs_pixels(strategy, balance)
        spec = source.spec()
        workers = num_actors
        if pipeline == "staged":
            workers = max(num_actors, decode_tasks or int(ray.cluster_resources().get("CPU", 1)))
        if isinstance(pool, Pool):
            # A Parquet pool: each task reads its own units of it (pool_units: files, row
            # groups or slices of them, about UNITS_PER_WORKER a worker): no read stage, no
            # image bytes through the object store (benchmarks/pipeline_efficiency.py).
            units = pool_units(pool, workers)
            rows = unit_rows(pool, len(units), spec, pixels)
            # one unit a block (a pool with no rows has no units: nothing runs)
            ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
            call_rows = 1  # one unit a call
        else:
            # Another pool source: Ray Data reads it, about READ_BLOCKS_PER_WORKER blocks a
            # worker (at least 256 KiB) so that workers finish together and results flow.
            units, rows = None, 0
            ds = pool.to_dataset()
            blocks = READ_BLOCKS_PER_WORKER * workers
            ds.context.target_max_block_size = int(min(
                ds.context.target_max_block_size, max(256 << 10, pool.num_bytes // blocks)))
            # a block a call; Ray Data wants an explicit batch size for GPU tasks
            call_rows = (None if not num_gpus_per_actor
                         else max(batch_size, -(-pool.num_rows // blocks)))
        labeled_ref = [ray.put(frozenset(labels))]
        job = ScoringJob(uuid.uuid4().hex, source, pool, strategy, [context_ref],
                         labeled_ref if pipeline == "fused" else None, k, batch_size,
                         num_gpus_per_actor, int(max(1, num_cpus_per_actor)), balance, rows)
        if pipeline == "fused":
            # One operator with small outputs: no per-operator reservation. With it, Ray 2.60
            # gives the operator no budget until its autoscaling coordinator answers (1-4 s
            # per selection, measured), and one task at a time runs meanwhile; concurrency
            # stays bounded by the pool's size.
            ds.context.op_resource_reservation_enabled = False
            scores_ds = ds.map_batches(
                score_block, fn_kwargs=dict(job=job), batch_size=call_rows,
                batch_format="numpy", compute=ray.data.TaskPoolStrategy(size=num_actors),
                num_gpus=num_gpus_per_actor, num_cpus=num_cpus_per_actor,
                # Ray ends a GPU task's worker after each call by default (max_calls 1): keep
                # it, or every call would reload the model
                max_calls=0)
        else:
            decode_job = DecodeJob(job.token, pool, spec, labeled_ref, pixels, rows)
            decoded = ds.map_batches(
                decode_units, fn_kwargs=dict(job=decode_job), batch_size=call_rows,
                batch_format="numpy", num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks else None)
            # GPU actors need an explicit batch size; on CPUs a decoded piece a call
            scores_ds = decoded.map_batches(
                ScoreActor, fn_constructor_kwargs=dict(job=job),
                batch_size=(max(batch_size, rows or -(-pool.num_rows // (
                    READ_BLOCKS_PER_WORKER * num_actors)))
                    if num_gpus_per_actor else None),
                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=num_actors),
                num_gpus=num_gpus_per_actor, num_cpus=num_cpus_per_actor)

        set_based = isinstance(strategy, SetStrategy)
        balanced = balance != "none"
        merger = (StreamingCandidates(strategy, k, ray.get(context_ref)) if set_based
                  else StreamingBalancedTopK(k, balance) if balanced
                  else StreamingTopK(k))
        skipped: list[tuple[str, str]] = []
        num_scored = 0
        startup: tuple[float, int] | None = None
        bar = _progress(pool.num_rows - len(labels), f"scoring ({strategy.name})", progress)
        nodes: dict[str, None] = {}  # ordered set
        for out in (_batches_or_context_error(scores_ds, context_ref)
                    if units is None or units else ()):
            nodes.update(dict.fromkeys(out["node"].tolist()))
            good = out["status"] == ""
            bad = ~good & (out["status"] != COUNT_ONLY)
            if balanced:
                merger.add(out["id"][good], out["score"][good], out["class"][good])
                for counts in out["class_counts"]:
                    if len(counts):
                        merger.add_counts(np.frombuffer(counts, dtype=np.int64))
            else:
                merger.add(out["id"][good], features_from_bytes(out["features"][good])
                           if set_based else out["score"][good])
            skipped += [(str(i), str(r)) for i, r in zip(out["id"][bad], out["status"][bad])]
            n = int(out["n_scored"].sum())
            num_scored += n
            seen = n + int(bad.sum())
            bar.update(seen)
            if startup is None:  # scorers started, model loaded, first block read and scored
                startup = (time.perf_counter() - t0, seen)
        bar.close()
        if not num_scored:
            raise _no_usable_images(pool, skipped, len(labels))
        ids, scores, *classes = merger.result()
        if skipped:
            log.warning("skipped %d unreadable images (first: %s: %s)", len(skipped), *skipped[0])
        if len(ids) < budget:
            log.warning("budget %d, but only %d unlabeled images could be scored (%d skipped): "
                        "returning %d picks", budget, num_scored, len(skipped), len(ids))
        return Selection([str(i) for i in ids], scores, num_scored, skipped,
                         time.perf_counter() - t0, *(startup or (0.0, 0)), nodes=list(nodes),
                         pipeline=pipeline, balance=balance,
                         classes=[int(c) for c in classes[0]] if classes else [],
                         class_counts=merger.counts.tolist() if balanced else [])


def check_arguments(*, budget: Any, num_actors: Any, batch_size: Any, decode_tasks: Any,
                    num_gpus_per_actor: Any, num_cpus_per_actor: Any, resource_wait_s: Any,
                    strategy: Any, strategy_options: Any, input_spec: Any) -> None:
    """ConfigError naming the first argument of ``select`` whose type or value cannot work."""
    counts = {"budget": budget, "num_actors": num_actors, "batch_size": batch_size}
    if decode_tasks is not None:
        counts["decode_tasks"] = decode_tasks
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive int"
                              + (" or None" if name == "decode_tasks" else "")
                              + f", got {value!r}" + _type_of(value))
    for name, value in (("num_gpus_per_actor", num_gpus_per_actor),
                        ("num_cpus_per_actor", num_cpus_per_actor),
                        ("resource_wait_s", resource_wait_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not value >= 0:
            raise ConfigError(f"{name} must be a number >= 0, got {value!r}" + _type_of(value))
    if not isinstance(strategy, (str, Strategy)):
        raise ConfigError(f"strategy must be a registered strategy's name (one of "
                          f"raydal.list_strategies()) or a Strategy, got {strategy!r}"
                          + _type_of(strategy))
    if strategy_options is not None and not isinstance(strategy_options, Mapping):
        raise ConfigError(f"strategy_options must be a dict of the strategy's options, got "
                          f"{strategy_options!r}" + _type_of(strategy_options))
    if input_spec is not None:
        if not isinstance(input_spec, InputSpec):
            raise ConfigError(f"input_spec must be a raydal.InputSpec(in_chans, img_size), got "
                              f"{input_spec!r}" + _type_of(input_spec))
        if input_spec.in_chans not in (1, 3) or isinstance(input_spec.img_size, bool) \
                or not isinstance(input_spec.img_size, int) or input_spec.img_size < 1:
            raise ConfigError(f"input_spec={input_spec}: in_chans must be 1 or 3 and img_size a "
                              "positive int")


def _type_of(value: Any) -> str:
    """" (a str)" for a value whose type is not a number's, else ""."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return ""
    return f" (a {type(value).__name__})"


def labeled_dict(labeled: Mapping[str, int] | Iterable[str] | None) -> dict[str, int]:
    """``select``'s ``labeled`` as {id (str): label}; ids alone get label -1. ConfigError for a
    label that is not an int (a class index) and for a value that is neither a mapping nor a
    collection of ids."""
    if labeled is None:
        return {}
    if isinstance(labeled, Mapping):
        for i, y in labeled.items():
            if isinstance(y, bool) or not isinstance(y, (int, np.integer)):
                raise ConfigError(f"labeled: id {i!r} has label {y!r}{_type_of(y)}; labels are "
                                  "class indices (ints): pass labeled={id: int, ...}, or a list "
                                  "of ids for a strategy that needs no labels")
        return {str(i): int(y) for i, y in labeled.items()}
    if isinstance(labeled, (str, bytes)) or not isinstance(labeled, Iterable):
        raise ConfigError(f"labeled must be {{id: label, ...}}, a list of ids or None, got "
                          f"{labeled!r:.60}{_type_of(labeled)}")
    return {str(i): -1 for i in labeled}


def check_balance(balance: str, strategy: Strategy | None) -> None:
    """ConfigError for a ``balance`` that is not one of BALANCES, or a class-balanced query
    of a set-based strategy (its picks are a set, not per-sample scores to fill quotas with)."""
    if balance not in BALANCES:
        raise ConfigError(f"balance must be one of {', '.join(map(repr, BALANCES))}, got "
                          f"{balance!r}")
    if balance != "none" and isinstance(strategy, SetStrategy):
        raise ConfigError(f"balance={balance!r} needs per-sample scores, but strategy "
                          f"{strategy.name!r} is set-based (its picks depend on each other); "
                          "use balance='none' with it, or a per-sample strategy (dynamicAL, "
                          "entropy, margin, ...)")


def _batches_or_context_error(scores_ds, context_ref) -> Iterator[dict[str, np.ndarray]]:
    """The scored batches; if they fail, a failed labeled-set pass raises its own error first
    (the scorers waited for it, so theirs would only wrap it)."""
    try:
        yield from scores_ds.iter_batches(batch_size=None, batch_format="numpy")
    except Exception:
        ray.get(context_ref)
        raise


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=max(total, 0), desc=desc, unit="img", disable=not enabled, leave=False)
