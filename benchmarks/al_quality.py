"""Active-learning quality: test accuracy versus labels, per strategy, on paired seeds.

A regime file (``benchmarks/regimes/*.yaml``) says everything that defines an experiment: data
set, pool size, initial labels, query size, rounds, seeds, strategies, model and training recipe.

Protocol (the same for every strategy of a regime):
  - data: the Debian package's original Fashion-MNIST files, imported with
    ``raydal.datasets.prepare_dataset``; the pool is the training split (or a fixed subsample of
    ``pool_size``), the test split (or ``test_size`` of it) is only ever used to report accuracy.
  - paired seeds: seed s fixes the initial labeled set and the initialisation of every round's
    model, shared by every strategy, so strategies differ only by the labels they pick.
  - training (``training:``): Adam, a fresh init each round (or ``warm_start``), epochs until the
    running training accuracy of an epoch reaches ``stop_train_accuracy`` (after
    ``min_epochs``, at most ``max_epochs``). The epochs and the final training accuracy of every
    round are recorded: that is the convergence evidence. The model that selects is the one
    just trained.
  - selection runs in-process with the registered Strategy objects (score + exact top-k, or a
    SetStrategy's embed + pick on the whole pool: the exact single-process algorithm).
  - statistics (``raydal``-independent, in ``stats``): AUC = area under accuracy-vs-labels divided
    by the label range (a mean accuracy in %); per strategy mean ± sd over seeds of AUC and final
    accuracy; the paired per-seed difference against random and against entropy with a 95%
    t interval; labels saved = labels a strategy needs to reach random's final accuracy (linear
    interpolation of the seed-mean curve) as a share of random's.
  - dynamicAL-family strategies also record diagnostics each round (``diagnose``).

    python benchmarks/al_quality.py benchmarks/regimes/mid-budget.yaml
    python benchmarks/al_quality.py benchmarks/regimes/mid-budget.yaml --quick   # smoke run
    python benchmarks/al_quality.py --render benchmarks/results/al_quality_mid-budget.json
    python benchmarks/al_quality.py --render part1.json part2.json --out merged.json

Results go to benchmarks/results/al_quality_<regime>.{json,md,png}; ``--quick`` writes under
/tmp/raydal-bench/quick unless ``--out`` says otherwise, so it never overwrites committed results.
A run that is stopped resumes from its JSON (finished (seed, strategy) runs are kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's raydal (the GPU machine has none installed)

from raydal.datasets import prepare_dataset
from raydal.merge import BALANCES, balanced_top_k, top_k
from raydal.models import ModelSpec, create_model
from raydal.pool import Pool
from raydal.scoring import create_strategy
from raydal.stats import auc, labels_to_reach, mean_sd, paired_interval
from raydal.scoring.diagnostics import diagnose
from raydal.scoring.diversity import SetStrategy
from raydal.scoring.batch_dynamical import DynamicALBatch
from raydal.scoring.dynamical import DynamicAL
from raydal.transforms import decode_rows, to_model_input

QUICK_DIR = Path("/tmp/raydal-bench/quick")


# ---- the regime: data, not code -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Training:
    """``optimizer`` at ``lr``, ``batch_size``; epochs until the running training accuracy of an
    epoch reaches ``stop_train_accuracy`` (checked once both ``min_epochs`` epochs and
    ``min_steps`` optimizer steps are done), at most ``max_epochs``.

    The defaults are the first regimes' recipe (Adam, no schedule, no augmentation, no step
    floor), so their files reproduce. The literature's recipe (Beck et al. 2021, DISTIL's
    ``train_helper``): ``optimizer: sgd`` (momentum 0.9, weight_decay 5e-4), ``schedule: cosine``
    (CosineAnnealingLR stepped per epoch, T_max = ``max_epochs``), ``augment: crop_flip`` (random
    32 px crop of the image padded by 4 black pixels, horizontal flip with p = 0.5)."""

    lr: float = 1e-3
    batch_size: int = 64
    min_epochs: int = 5
    max_epochs: int = 60
    stop_train_accuracy: float = 0.99
    warm_start: bool = False
    min_steps: int = 0            # optimizer steps before the stop rule may end training
    optimizer: str = "adam"       # adam | sgd
    momentum: float = 0.9         # sgd only
    weight_decay: float = 0.0
    schedule: str = "none"        # none | cosine (per epoch, T_max = max_epochs)
    augment: str = "none"         # none | crop_flip


OPTIMIZERS, SCHEDULES, AUGMENTS = ("adam", "sgd"), ("none", "cosine"), ("none", "crop_flip")
SELECTIONS = ("in_process", "library")


@dataclasses.dataclass(frozen=True)
class Regime:
    name: str
    dataset: str = "fashion-mnist"
    pool_size: int | None = None
    test_size: int | None = None
    initial: int = 1000
    query: int = 1000
    rounds: int = 4
    seeds: int | list[int] = 3  # a count (first_seed .. first_seed + seeds - 1) or the list
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (a confirmation: new ones)
    strategies: tuple[str, ...] = ("random", "entropy", "margin", "least_confidence", "badge",
                                   "coreset", "dynamicAL")
    model: dict = dataclasses.field(default_factory=lambda: {"name": "test_resnet",
                                                             "img_size": 32})
    training: Training = Training()
    # in_process: the Strategy objects in this process (exact single-process algorithm);
    # library: raydal.select (Ray, the library's path; set strategies use its sharded bounds)
    selection: str = "in_process"

    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, (list, tuple)):
            return list(self.seeds)
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @classmethod
    def from_dict(cls, d: dict, where: str = "regime") -> "Regime":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"{where}: unknown field {key!r}; expected one of {sorted(known)}")
        train = d.pop("training", {}) or {}
        tknown = {f.name for f in dataclasses.fields(Training)}
        for key in train:
            if key not in tknown:
                raise ValueError(f"{where}: unknown field training.{key}; expected one of "
                                 f"{sorted(tknown)}")
        if isinstance(d.get("seeds"), (list, tuple)):
            d["seeds"] = list(d["seeds"])
        r = cls(**{**d, "strategies": tuple(d.get("strategies", cls.strategies)),
                   "training": Training(**train)})
        for key in ("initial", "query", "rounds") + (() if isinstance(r.seeds, list)
                                                     else ("seeds",)):
            if not isinstance(getattr(r, key), int) or getattr(r, key) < 1:
                raise ValueError(f"{where}: {key} must be a positive int, got {getattr(r, key)!r}")
        if isinstance(r.seeds, list) and (
                not r.seeds or len(set(r.seeds)) != len(r.seeds)
                or any(not isinstance(s, int) or s < 0 for s in r.seeds)):
            raise ValueError(f"{where}: seeds must be a positive int or a non-empty list of "
                             f"distinct ints >= 0, got {r.seeds!r}")
        for key, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                             ("augment", AUGMENTS)):
            if getattr(r.training, key) not in allowed:
                raise ValueError(f"{where}: training.{key} must be one of {list(allowed)}, got "
                                 f"{getattr(r.training, key)!r}")
        if not isinstance(r.training.min_steps, int) or r.training.min_steps < 0:
            raise ValueError(f"{where}: training.min_steps must be an int >= 0, got "
                             f"{r.training.min_steps!r}")
        per_epoch = math.ceil(r.initial / r.training.batch_size)
        if r.training.min_steps > r.training.max_epochs * per_epoch:
            raise ValueError(f"{where}: training.min_steps {r.training.min_steps} cannot be reached "
                             f"in max_epochs {r.training.max_epochs} x {per_epoch} steps an epoch "
                             f"at {r.initial} labels: raise max_epochs or lower min_steps")
        if r.selection not in SELECTIONS:
            raise ValueError(f"{where}: selection must be one of {list(SELECTIONS)}, got "
                             f"{r.selection!r}")
        if not isinstance(r.first_seed, int) or r.first_seed < 0:
            raise ValueError(f"{where}: first_seed must be an int >= 0, got {r.first_seed!r}")
        t = r.training
        if not 0 < t.stop_train_accuracy <= 1 or not 1 <= t.min_epochs <= t.max_epochs:
            raise ValueError(f"{where}: training needs 0 < stop_train_accuracy <= 1 and "
                             f"1 <= min_epochs <= max_epochs, got {t}")
        return r

    @classmethod
    def load(cls, path: str | Path) -> "Regime":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()), where=str(path))

    def spec(self) -> ModelSpec:
        return ModelSpec(num_classes=10, in_chans=1, **self.model)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def quick(r: Regime) -> Regime:
    """A smoke version of a regime: tiny pool, 1 seed, 2 rounds, few epochs and steps."""
    seeds = [r.seed_list()[0]] if isinstance(r.seeds, list) else 1
    return dataclasses.replace(
        r, pool_size=min(r.pool_size or 60000, 1000), test_size=500, seeds=seeds, rounds=2,
        initial=min(r.initial, 50), query=min(r.query, 25),
        training=dataclasses.replace(r.training, min_epochs=1, max_epochs=3,
                                     min_steps=min(r.training.min_steps, 3)))


# ---- data, training, evaluation -----------------------------------------------------------------
def parse_strategy(text: str, seed: int):
    """'name' or 'name:key=value,...' -> Strategy (strategies with a seed get the run's seed);
    a class-balance suffix ('margin@proportional') is the selection's, see ``split_balance``."""
    name, _, rest = split_balance(text)[0].partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    strategy = create_strategy(name, **options)
    if "seed" in strategy.options() and "seed" not in options:
        strategy = create_strategy(name, **options, seed=seed)
    return strategy


def split_balance(text: str) -> tuple[str, str]:
    """'margin@proportional' -> ('margin', 'proportional'): the strategy and the selection's
    class balance (``raydal.select(balance=...)``; 'none' without a suffix)."""
    spec, _, balance = text.partition("@")
    balance = balance or "none"
    if balance not in BALANCES:
        raise ValueError(f"strategy {text!r}: class balance {balance!r} is not one of "
                         f"{list(BALANCES)}")
    return spec, balance


def decode(table, spec) -> torch.Tensor:
    arr, ok, bad = decode_rows(table.column("image").to_pylist(), None, spec.input_spec)
    if bad:
        raise RuntimeError(f"{len(bad)} unreadable images in the data set: {bad[:1]}")
    return to_model_input(arr, spec.input_spec)


def load_data(r: Regime, data_dir: Path):
    """Decoded (pool ids (N,) str sorted, pool x, pool y, test x, test y, pool images (N, H, W)
    uint8 as stored); subsamples fixed by seed 0 whatever the experiment seed."""
    prepare_dataset(r.dataset, data_dir)
    spec = r.spec()
    rng = np.random.default_rng(0)
    truth = pq.read_table(data_dir / "truth.parquet").to_pydict()
    n = len(truth["id"])
    chosen = (sorted(rng.choice(n, size=r.pool_size, replace=False).tolist())
              if r.pool_size and r.pool_size < n else range(n))
    label_of = dict(zip(truth["id"], truth["label"]))
    table = Pool(data_dir / "pool.parquet").take([truth["id"][i] for i in chosen])
    order = np.argsort(np.asarray(table.column("id").to_pylist(), dtype=str), kind="stable")
    table = table.take(order)
    ids = np.asarray(table.column("id").to_pylist(), dtype=str)
    x = decode(table, spec)
    raw = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L"))
                    for b in table.column("image").to_pylist()])
    y = torch.tensor([label_of[i] for i in ids])
    test = pq.read_table(data_dir / "test.parquet")
    if r.test_size and r.test_size < test.num_rows:
        test = test.take(np.sort(rng.choice(test.num_rows, size=r.test_size, replace=False)))
    return ids, x, y, decode(test, spec), torch.tensor(test.column("label").to_pylist()), raw


# ---- a compact committed subset, for a machine without the data set (the lent GPU) ---------------
NPZ_TRAIN, NPZ_TEST = 12000, 5000  # 7.1 MiB compressed: 20,000 + 10,000 would be 12.5 MiB


def export_npz(path: Path, source: Path = Path("/usr/share/datasets/fashion-mnist"),
               n_train: int = NPZ_TRAIN, n_test: int = NPZ_TEST) -> dict:
    """Write a fixed subset of Fashion-MNIST's original IDX files: ``n_train`` training and
    ``n_test`` test images drawn without replacement by numpy seed 0 (sorted by index), uint8
    28 x 28, with labels and their original indices, compressed (np.savez_compressed)."""
    from raydal.datasets import read_idx
    arrays = {}
    rng = np.random.default_rng(0)
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        xs = read_idx(source / f"{stem}-images-idx3-ubyte.gz")
        ys = read_idx(source / f"{stem}-labels-idx1-ubyte.gz")
        index = np.sort(rng.choice(len(xs), size=n, replace=False))
        arrays.update({f"{split}_x": xs[index].astype(np.uint8), f"{split}_y":
                       ys[index].astype(np.uint8), f"{split}_index": index.astype(np.int32)})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return {"path": str(path), "bytes": path.stat().st_size, "train": n_train, "test": n_test}


def resize_like_decode(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 grey -> (N, 1, size, size) uint8, the pixels ``decode_rows`` gives for
    the same images stored as PNG (bilinear resize of the short side, centre crop)."""
    out = []
    for a in images:
        im = Image.fromarray(a, mode="L")
        w, h = im.size
        if (w, h) != (size, size):
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        out.append(np.asarray(im, dtype=np.uint8)[None])
    return np.stack(out)


def load_npz(r: Regime, path: Path):
    """The same tuple as ``load_data`` from an ``export_npz`` file; ``pool_size`` and
    ``test_size`` subsample its rows by seed 0 (ids: the original ``train-NNNNN``)."""
    spec = r.spec()
    z = np.load(path)
    rng = np.random.default_rng(0)
    n, m = len(z["train_x"]), len(z["test_x"])
    if (r.pool_size or 60000) > n or (r.test_size or 10000) > m:
        raise SystemExit(f"{path} holds {n} training and {m} test images; the regime asks for "
                         f"pool_size {r.pool_size} and test_size {r.test_size}: set both at most "
                         "these in the regime file")
    rows = (np.sort(rng.choice(n, size=r.pool_size, replace=False))
            if r.pool_size and r.pool_size < n else np.arange(n))
    test = (np.sort(rng.choice(m, size=r.test_size, replace=False))
            if r.test_size and r.test_size < m else np.arange(m))
    ids = np.asarray([f"train-{i:05d}" for i in z["train_index"][rows]], dtype=str)
    order = np.argsort(ids, kind="stable")
    rows, ids = rows[order], ids[order]
    raw = z["train_x"][rows]
    x = to_model_input(resize_like_decode(raw, spec.img_size), spec.input_spec)
    test_x = to_model_input(resize_like_decode(z["test_x"][test], spec.img_size), spec.input_spec)
    return (ids, x, torch.as_tensor(z["train_y"][rows].astype(np.int64)), test_x,
            torch.as_tensor(z["test_y"][test].astype(np.int64)), raw)


def crop_flip(xb: torch.Tensor, gen: torch.Generator, fill: float, pad: int = 4
              ) -> torch.Tensor:
    """Random crop of each image padded by ``pad`` pixels of value ``fill`` (the normalised
    black), then a horizontal flip with p = 0.5; offsets drawn on the CPU by ``gen`` (the same
    draws on any device), applied as one gather on ``xb``'s device. xb: (B, C, S, S)."""
    b, _, h, w = xb.shape
    dy, dx, flip = (torch.randint(0, 2 * pad + 1, (b,), generator=gen),
                    torch.randint(0, 2 * pad + 1, (b,), generator=gen),
                    torch.rand(b, generator=gen) < 0.5)
    padded = F.pad(xb, (pad, pad, pad, pad), value=fill)
    rows = (dy[:, None] + torch.arange(h)).to(xb.device)          # (B, S)
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(xb.device)
    bi = torch.arange(b, device=xb.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, S, S, C)
    return out.permute(0, 3, 1, 2).contiguous()


def train(x, y, recipe: Training, spec: ModelSpec, seed: int, init=None, device="cpu"):
    """A model trained on (x, y) by the recipe: returns (model in eval mode, epochs, running
    training accuracy of the last epoch, optimizer steps)."""
    model = create_model(spec, seed=seed).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.max_epochs)
             if recipe.schedule == "cosine" else None)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 7919)  # its own stream: order draws unchanged
    fill = -spec.input_spec.mean[0] / spec.input_spec.std[0]
    model.train()
    steps = 0
    for epoch in range(1, recipe.max_epochs + 1):
        correct = seen = 0
        for idx in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            idx = idx.to(x.device)
            xb = x[idx] if recipe.augment == "none" else crop_flip(x[idx], aug_gen, fill)
            opt.zero_grad()
            out = model(xb)
            F.cross_entropy(out, y[idx]).backward()
            opt.step()
            steps += 1
            correct += int((out.argmax(1) == y[idx]).sum())
            seen += len(idx)
        if sched is not None:
            sched.step()
        train_acc = correct / max(seen, 1)
        if (epoch >= recipe.min_epochs and steps >= recipe.min_steps
                and train_acc >= recipe.stop_train_accuracy):
            break
    return model.eval(), epoch, train_acc, steps


@torch.no_grad()
def predict(model, x, size: int = 1024) -> torch.Tensor:
    return torch.cat([model(x[s:s + size]) for s in range(0, len(x), size)])


def batches(x, y, size=256):
    for s in range(0, len(x), size):
        yield x[s:s + size], y[s:s + size]


def chunks(rows: np.ndarray, size: int = 512) -> list[np.ndarray]:
    return np.array_split(rows, max(1, math.ceil(len(rows) / size)))


def select_in_process(strategy, model, ids, x, y, labeled: np.ndarray, budget: int,
                      balance: str = "none"):
    """Exact single-process selection of ``budget`` unlabeled rows: (row indices, context,
    scores of the unlabeled rows or None for set strategies, unlabeled rows); ``balance``:
    per-predicted-class quotas (``raydal.merge.balanced_top_k``) for score strategies."""
    context = (strategy.prepare(model, batches(x[labeled], y[labeled]))
               if strategy.needs_labeled else None)
    free = np.setdiff1d(np.arange(len(ids)), labeled)
    if isinstance(strategy, DynamicALBatch):  # its pick keeps only the top m by score: embed
        scores = np.concatenate([strategy.scores(model, x[rows], list(ids[rows]), context)
                                 .cpu().numpy() for rows in chunks(free)])  # only those m
        top = np.sort(free[np.argsort(-scores, kind="stable")[:strategy.num_candidates(budget)]])
        feats = strategy.embed(model, x[top], list(ids[top]), context)
        picked = strategy.pick(ids[top], feats, budget, context)
        return np.searchsorted(ids, picked), context, scores, free
    if isinstance(strategy, SetStrategy):
        feats = np.concatenate([strategy.embed(model, x[rows], list(ids[rows]), context)
                                for rows in chunks(free)])
        picked = strategy.pick(ids[free], feats, budget, context)
        return np.searchsorted(ids, picked), context, None, free
    if balance != "none":
        out = [strategy.score_with_classes(model, x[rows], list(ids[rows]), context)
               for rows in chunks(free)]
        scores = torch.cat([s.double().cpu() for s, _ in out]).numpy()
        classes = torch.cat([c.cpu() for _, c in out]).numpy()
        top_ids = balanced_top_k(ids[free], scores, classes, budget, balance)[0]
        return np.searchsorted(ids, np.sort(top_ids)), context, scores, free
    scores = torch.cat([strategy.score(model, x[rows], list(ids[rows]), context).double().cpu()
                        for rows in chunks(free)]).numpy()
    top_ids, _ = top_k(ids[free], scores, budget)
    return np.searchsorted(ids, top_ids), context, scores, free


def select_library(strategy, model, pool, ids, y, labeled: np.ndarray, budget: int,
                   spec: ModelSpec, balance: str = "none") -> np.ndarray:
    """The same selection through ``raydal.select`` (Ray tasks decode the pool's stored images
    and score them): row indices of the picks. One scorer: the picks do not depend on it."""
    from raydal.selection import select
    labels = {str(ids[i]): int(y[i]) for i in labeled}
    sel = select(pool, model, strategy, budget, labels, input_spec=spec.input_spec,
                 num_actors=1, batch_size=256, progress=False, balance=balance)
    return np.searchsorted(ids, np.sort(np.asarray(sel.ids, dtype=str)))


class BudgetStop(Exception):
    """A run reached the wall-clock deadline; it stops at a round boundary."""


# ---- one (seed, strategy) run --------------------------------------------------------------------
def run_one(r: Regime, data, seed: int, name: str, diagnose_every: int = 1, device: str = "cpu",
            deadline: float | None = None) -> dict:
    """One strategy on one seed: the curve, each round's training record and picks.
    ``deadline`` (time.time()): BudgetStop before any round that would start after it."""
    ids, x, y, test_x, test_y, raw = data
    y_cpu = y.cpu()
    spec = r.spec()
    strategy, balance = parse_strategy(name, seed), split_balance(name)[1]
    labeled = np.sort(np.random.default_rng(1000 + seed).choice(len(ids), r.initial,
                                                                replace=False))
    pool = None
    if r.selection == "library":
        from raydal.pool import Pool
        pool = Pool.from_numpy(raw, list(ids))
    curve, t_run, t_sel, model = [], time.perf_counter(), 0.0, None
    for rnd in range(r.rounds + 1):
        if deadline is not None and time.time() > deadline:
            raise BudgetStop(f"stopped before round {rnd} of {r.rounds} ({len(labeled)} labels): "
                             "wall-clock budget reached")
        t = time.perf_counter()
        model, epochs, train_acc, steps = train(
            x[labeled], y[labeled], r.training, spec, seed=seed * 1000 + rnd,
            init=model if r.training.warm_start else None, device=device)
        t_train = time.perf_counter() - t
        pred = predict(model, test_x).argmax(1)
        point = {"labels": int(len(labeled)), "accuracy": float((pred == test_y).double().mean())
                 * 100, "epochs": epochs, "steps": steps, "train_accuracy": train_acc,
                 "train_seconds": round(t_train, 2)}
        curve.append(point)
        if rnd == r.rounds:
            break
        t = time.perf_counter()
        if pool is not None:
            new, context = select_library(strategy, model.cpu(), pool, ids, y_cpu, labeled,
                                          r.query, spec, balance), None
            model.to(device)
        else:
            new, context, scores, free = select_in_process(strategy, model, ids, x, y, labeled,
                                                           r.query, balance)
        point["select_seconds"] = round(time.perf_counter() - t, 2)
        t_sel += point["select_seconds"]
        point["picks_per_class"] = np.bincount(y_cpu[new].numpy(), minlength=10).tolist()
        point["picks_sha1"] = hashlib.sha1(" ".join(sorted(ids[new])).encode()).hexdigest()[:16]
        if pool is None and diagnose_every and rnd % diagnose_every == 0:
            dyn = isinstance(strategy, (DynamicAL, DynamicALBatch))
            try:
                point["diagnostics"] = diagnose(
                    model, x, y, free, new, g_L=context if dyn else None,
                    ip_weight=strategy.ip_weight if dyn else None,
                    params=strategy.params if dyn else "all", seed=seed * 1000 + rnd)
            except Exception as e:  # a diagnostic must not cost the run (e.g. a device mismatch)
                point["diagnostics_error"] = f"{type(e).__name__}: {e}"[:300]
        if len(set(new.tolist()) | set(labeled.tolist())) != len(labeled) + len(new):
            raise AssertionError(f"{name} picked a labeled or duplicate row")
        labeled = np.sort(np.concatenate([labeled, new]))
    return {"strategy": name, "seed": seed, "curve": curve,
            "auc": auc([c["labels"] for c in curve], [c["accuracy"] for c in curve]),
            "seconds": round(time.perf_counter() - t_run, 1),
            "selection_seconds": round(t_sel, 1)}


# ---- the whole benchmark -------------------------------------------------------------------------
def load(r: Regime, data_dir: Path, data_npz: Path | None, device: str):
    data = load_npz(r, data_npz) if data_npz else load_data(r, data_dir)
    ids, x, y, test_x, test_y, raw = data
    return ids, x.to(device), y.to(device), test_x.to(device), test_y.to(device), raw


_WORKER: dict = {}


def _worker_init(regime: dict, data_dir: str, data_npz: str | None, device: str, threads: int,
                 diagnose_every: int) -> None:
    """A --parallel process: its own copy of the data on the device (CUDA needs spawn)."""
    torch.set_num_threads(threads)
    r = Regime.from_dict(regime)
    _WORKER.update(r=r, data=load(r, Path(data_dir), Path(data_npz) if data_npz else None,
                                  device), device=device, diagnose_every=diagnose_every)


def _worker_run(seed: int, name: str, deadline: float | None):
    w = _WORKER
    try:
        return run_one(w["r"], w["data"], seed, name, w["diagnose_every"], w["device"], deadline)
    except BudgetStop as e:
        return {"missing": str(e)}
    except Exception as e:  # recorded as a missing run with its reason; the others go on
        return {"missing": f"failed: {type(e).__name__}: {e}"[:500]}


def run(r: Regime, out: Path, data_dir: Path, threads: int, only: list[str] | None = None,
        seeds: list[int] | None = None, by_strategy: bool = False, *, device: str = "cpu",
        parallel: int = 1, budget_s: float | None = None, data_npz: Path | None = None,
        diagnose_every: int = 1) -> dict:
    """Every (seed, strategy) run not yet in ``out``; the JSON is rewritten after each.

    parallel: runs at a time, each in its own process (spawned; they share the device).
    budget_s: wall-clock budget from the start of this call. No run starts once its predicted
    end (now + the longest run so far) is past it; a run still going at the budget stops at its
    next round boundary. Every planned run that is not done is listed in ``missing`` with why.
    """
    torch.set_num_threads(threads)
    t_start = time.time()
    deadline = t_start + budget_s if budget_s else None
    old = json.loads(out.read_text()) if out.exists() else None
    if old is not None and not same_regime(old["regime"], r.to_dict()):
        raise SystemExit(f"{out} holds results of another regime definition; pass --out "
                         "elsewhere or delete it")
    result = old or {"regime": r.to_dict(), "runs": [], "seconds": 0.0}
    done = {(x["seed"], x["strategy"]) for x in result["runs"]}
    pairs = [(seed, name) for seed in (seeds if seeds is not None else r.seed_list())
             for name in only or r.strategies]
    if by_strategy:  # every seed of a strategy before the next strategy
        order = list(dict.fromkeys(name for _, name in pairs))
        pairs.sort(key=lambda p: order.index(p[1]))
    todo = [p for p in pairs if p not in done]
    missing = {(m["seed"], m["strategy"]): m["reason"] for m in result.get("missing", [])
               if (m["seed"], m["strategy"]) not in done}
    result["host"] = {"platform": platform.platform(), "torch": torch.__version__,
                      "threads": threads, "device": device if device == "cpu" else
                      torch.cuda.get_device_name(0), "parallel": parallel,
                      "budget_s": budget_s}
    longest = [0.0]

    def record(seed, name, one):
        if "missing" in one:
            missing[(seed, name)] = one["missing"]
            print(f"[{r.name}] seed {seed} {name:>24}: MISSING ({one['missing']})", flush=True)
        else:
            missing.pop((seed, name), None)
            result["runs"].append(one)
            result["seconds"] += one["seconds"]
            longest[0] = max(longest[0], one["seconds"])
            c = one["curve"]
            print(f"[{r.name}] seed {seed} {name:>24}: auc {one['auc']:.2f} final "
                  f"{c[-1]['accuracy']:.2f}% epochs {[p['epochs'] for p in c]} steps "
                  f"{[p['steps'] for p in c]} ({one['seconds']:.0f} s, at "
                  f"{time.time() - t_start:.0f} s)", flush=True)
        result["missing"] = [{"seed": s, "strategy": n, "reason": why}
                             for (s, n), why in missing.items()]
        result["wall_seconds"] = round(time.time() - t_start, 1)
        write_json(out, result)

    def may_start() -> bool:
        return deadline is None or time.time() + longest[0] <= deadline

    def not_started(rest):
        for seed, name in rest:
            record(seed, name, {"missing": f"not started: --budget-s {budget_s:g} would be "
                                           f"passed (longest run {longest[0]:.0f} s)"})

    if parallel <= 1:
        t0 = time.perf_counter()
        data = load(r, data_dir, data_npz, device)
        print(f"[{r.name}] data: pool {len(data[0])}, test {len(data[4])} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for i, (seed, name) in enumerate(todo):
            if not may_start():
                not_started(todo[i:])
                break
            try:
                one = run_one(r, data, seed, name, diagnose_every, device, deadline)
            except BudgetStop as e:
                one = {"missing": str(e)}
            record(seed, name, one)
        return result
    ctx = multiprocessing.get_context("spawn")
    init = (r.to_dict(), str(data_dir), str(data_npz) if data_npz else None, device, threads,
            diagnose_every)
    with ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_worker_init,
                             initargs=init) as ex:
        queue, running = list(todo), {}
        while queue or running:
            while queue and len(running) < parallel and may_start():
                seed, name = queue.pop(0)
                running[ex.submit(_worker_run, seed, name, deadline)] = (seed, name)
            if not running:
                not_started(queue)
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                seed, name = running.pop(f)
                try:
                    one = f.result()
                except Exception as e:  # the process died
                    one = {"missing": f"failed: {type(e).__name__}: {e}"[:500]}
                record(seed, name, one)
    return result


def same_regime(a: dict, b: dict) -> bool:
    """Whether two regime records define the same experiment (``seeds``, ``first_seed`` and
    ``strategies`` only say which runs to do: runs of more seeds or strategies may be added to
    a results file)."""
    def key(d):  # fields added later take their defaults (today's behaviour) in older records
        d = {k: v for k, v in json.loads(json.dumps(d)).items()
             if k not in ("seeds", "first_seed", "strategies")}
        return json.loads(json.dumps({k: v for k, v in Regime.from_dict(d).to_dict().items()
                                      if k not in ("seeds", "first_seed", "strategies")}))
    return key(a) == key(b)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def fmt_interval(m: float, lo: float, hi: float) -> str:
    star = "*" if lo > 0 or hi < 0 else ""
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]{star}"


def report(result: dict) -> str:
    """Markdown: per strategy (best mean AUC first) mean ± sd of AUC and final accuracy, the
    paired difference against random and entropy (95% t interval; * = excludes 0), labels to
    reach random's final accuracy as a share of random's, and the convergence record."""
    r = result["regime"]
    names = list(dict.fromkeys(x["strategy"] for x in result["runs"]))
    by = {name: {x["seed"]: x for x in result["runs"] if x["strategy"] == name} for name in names}

    def paired(name, base, key):
        seeds = sorted(set(by[name]) & set(by.get(base, {})))
        if name == base or not seeds:
            return ""
        return fmt_interval(*paired_interval([key(by[name][s]) for s in seeds],
                                             [key(by[base][s]) for s in seeds]))

    final = lambda run: run["curve"][-1]["accuracy"]  # noqa: E731
    area = lambda run: run["auc"]  # noqa: E731
    mean_curve = {name: np.mean([[c["accuracy"] for c in run["curve"]]
                                 for run in by[name].values()], axis=0) for name in names}
    labels = [c["labels"] for c in next(iter(by[names[0]].values()))["curve"]]
    target = mean_curve["random"][-1] if "random" in mean_curve else None
    base_n = labels_to_reach(labels, mean_curve["random"], target) if target else None
    balanced = any("@" in name for name in names)
    rows = []
    for name in names:
        aucs, finals = [area(x) for x in by[name].values()], [final(x) for x in by[name].values()]
        need = labels_to_reach(labels, mean_curve[name], target) if target else None
        saved = (f"{need / base_n:.0%} ({need:.0f})" if need is not None else
                 f"not reached (> {labels[-1]})") if base_n else ""
        base = split_balance(name)[0]  # a balanced query against its unbalanced form
        own = (f" {paired(name, base, area)} | {paired(name, base, final)} |"
               if balanced else "")
        rows.append((np.mean(aucs), f"| {name} | {len(aucs)} | {'%.2f ± %.2f' % mean_sd(aucs)} | "
                     f"{'%.2f ± %.2f' % mean_sd(finals)} | {paired(name, 'random', area)} | "
                     f"{paired(name, 'entropy', area)} | {paired(name, 'random', final)} | "
                     f"{paired(name, 'entropy', final)} |{own} {saved} |"))
    t = {**dataclasses.asdict(Training()), **r["training"]}
    head = (f"**{r['name']}**: {r['dataset']}, pool {r['pool_size'] or 'all'}, test "
            f"{r['test_size'] or 'all'}, {r['initial']} + {r['rounds']} x {r['query']} labels, "
            f"{r['model']['name']} {'warm-started' if t['warm_start'] else 'retrained from scratch'}"
            f" each round ({t['optimizer'].upper() if t['optimizer'] == 'sgd' else 'Adam'} "
            f"{t['lr']}, batch {t['batch_size']}, until running train accuracy "
            f">= {t['stop_train_accuracy']}, {t['min_epochs']}-{t['max_epochs']} epochs"
            f"{', at least %d steps' % t['min_steps'] if t['min_steps'] else ''}). "
            f"Paired seeds; differences are per-seed means with a 95% t interval "
            f"(* excludes 0). Labels to reach random's final accuracy "
            f"({target:.2f}%) as a share of random's.\n\n" if target else "\n\n")
    table = ("| strategy | seeds | AUC (mean acc %) | final acc % | Δ AUC vs random | "
             "Δ AUC vs entropy | Δ final vs random | Δ final vs entropy | "
             + ("Δ AUC vs unbalanced | Δ final vs unbalanced | " if balanced else "")
             + "labels to reach random's final |\n|---|---:|---:|---:|---:|---:|---:|---:|"
             + ("---:|---:|" if balanced else "") + "---:|\n")
    table += "\n".join(row for _, row in sorted(rows, key=lambda t: -t[0]))
    conv = [(p["epochs"], p["train_accuracy"]) for x in result["runs"] for p in x["curve"]]
    steps = [p["steps"] for x in result["runs"] for p in x["curve"] if "steps" in p]
    secs = sum(x["seconds"] for x in result["runs"])
    host = result.get("host", {})
    tail = (f"\n\nConvergence: {sum(a >= t['stop_train_accuracy'] for _, a in conv)}/{len(conv)} "
            f"trainings reached the stop accuracy; epochs {min(e for e, _ in conv)}-"
            f"{max(e for e, _ in conv)}"
            + (f", optimizer steps {min(steps)}-{max(steps)}" if steps else "")
            + f", final running train accuracy >= {min(a for _, a in conv):.3f}. Compute: "
            f"{secs / 60:.1f} min of runs ({host.get('threads', '?')} thread(s) each"
            + (f", device {host['device']}, {host.get('parallel', 1)} at a time, "
               f"{result.get('wall_seconds', 0):.0f} s wall" if "device" in host else "")
            + ").\n")
    return (head + protocol_table(result) + "\n" + table + tail + missing_table(result)
            + curves_table(names, labels, mean_curve) + diagnostics_table(result))


def protocol_table(result: dict) -> str:
    """The experiment's definition as one table (defaults filled in for older records)."""
    r = Regime.from_dict({k: v for k, v in result["regime"].items()})
    t, m = r.training, r.model
    seeds = r.seed_list()
    run_seeds = sorted({x["seed"] for x in result["runs"]})
    lr = (f"SGD lr {t.lr}, momentum {t.momentum}, weight decay {t.weight_decay}"
          if t.optimizer == "sgd" else f"Adam lr {t.lr}, weight decay {t.weight_decay}")
    rows = [
        ("data", f"{r.dataset}" + (" (a committed subset, --data-npz)"
                                   if result.get("data_npz") else "")),
        ("pool", f"{r.pool_size or 'the whole training split'} images"),
        ("test", f"{r.test_size or 'the whole test split'} images, accuracy only"),
        ("initial labels", f"{r.initial}, uniform at random (numpy seed 1000 + seed)"),
        ("query", f"{r.query} a round"),
        ("rounds", f"{r.rounds} ({r.initial} -> {r.initial + r.rounds * r.query} labels)"),
        ("learner", f"timm {m['name']} {m.get('img_size', '')} px, in_chans 1, random init "
                    f"(seed x 1000 + round), "
                    + ("warm-started" if t.warm_start else "retrained from scratch") + " each round"),
        ("optimizer", f"{lr}, batch {t.batch_size}"),
        ("schedule", "cosine annealing per epoch, T_max = max_epochs" if t.schedule == "cosine"
         else "constant"),
        ("augmentation", "random crop 32 px of the image padded by 4 + horizontal flip"
         if t.augment == "crop_flip" else "none"),
        ("stopping rule", f"running train accuracy of an epoch >= {t.stop_train_accuracy}, once "
                          f">= {t.min_epochs} epochs and >= {t.min_steps} optimizer steps; at "
                          f"most {t.max_epochs} epochs"),
        ("seeds", f"{seeds} in the file; with results: {run_seeds}"),
        ("selection path", "raydal.select (Ray)" if r.selection == "library"
         else "in-process Strategy objects (exact single-process top-k / set pick)"),
        ("strategies", ", ".join(r.strategies)),
    ]
    return ("\n| protocol | |\n|---|---|\n"
            + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n")


def missing_table(result: dict) -> str:
    """Every planned (seed, strategy) run without a result, and why."""
    r = Regime.from_dict(result["regime"])
    have = {(x["seed"], x["strategy"]) for x in result["runs"]}
    why = {(m["seed"], m["strategy"]): m["reason"] for m in result.get("missing", [])}
    rows = [(s, n, why.get((s, n), "not run yet (no attempt recorded)"))
            for s in r.seed_list() for n in r.strategies if (s, n) not in have]
    if not rows:
        return "\nMissing runs: none (every seed x strategy of the file has a result).\n"
    return (f"\nMissing runs ({len(rows)} of {len(r.seed_list()) * len(r.strategies)} planned):"
            "\n\n| seed | strategy | reason |\n|---:|---|---|\n"
            + "\n".join(f"| {s} | {n} | {w} |" for s, n, w in rows) + "\n")


def curves_table(names, labels, mean_curve) -> str:
    """Seed-mean test accuracy (%) at every label count."""
    text = ("\nMean test accuracy (%) by labels:\n\n| strategy | "
            + " | ".join(str(n) for n in labels) + " |\n|---|" + "---:|" * len(labels) + "\n")
    return text + "\n".join(f"| {name} | " + " | ".join(f"{a:.2f}" for a in mean_curve[name])
                            + " |" for name in names) + "\n"


DIAG = [("spearman_score_entropy", "ρ(s, entropy)"), ("spearman_score_gradnorm", "ρ(s, ‖g_u‖²)"),
        ("ip_share_picks", "ip share (picks)"), ("g_L_norm", "‖g_L‖"),
        ("g_u_norm_median_pool", "median ‖g_u‖ pool"), ("picks_misclassified", "picks wrong"),
        ("pool_misclassified", "pool wrong"), ("redundancy_picks", "cos(picks)"),
        ("redundancy_random", "cos(random)")]


def diagnostics_table(result: dict) -> str:
    """Per strategy and selection round, seed means of the diagnostics it recorded."""
    rows = []
    names = list(dict.fromkeys(x["strategy"] for x in result["runs"]))
    for name in names:
        runs = [x for x in result["runs"] if x["strategy"] == name]
        for i, point in enumerate(runs[0]["curve"]):
            diags = [x["curve"][i].get("diagnostics") for x in runs]
            diags = [d for d in diags if d]
            if not diags:
                continue
            cells = [f"{np.mean([d[k] for d in diags]):.3g}" if k in diags[0] else ""
                     for k, _ in DIAG]
            top = np.mean([max(x["curve"][i]["picks_per_class"]) / sum(
                x["curve"][i]["picks_per_class"]) for x in runs])
            rows.append(f"| {name} | {point['labels']} | " + " | ".join(cells)
                        + f" | {top:.2f} |")
    if not rows:
        return ""
    return ("\nDiagnostics of each selection (seed means; ρ = Spearman over a 2,000-row pool "
            "sample; ip share = |w<g_L,g_u>| / (‖g_u‖² + |w<g_L,g_u>|) over the picks; wrong = "
            "share misclassified by the selecting model; cos = mean pairwise cosine of the "
            "classifier-layer gradient embeddings; top class = the largest class's share of the "
            "picks, 0.1 if balanced):\n\n| strategy | labels | "
            + " | ".join(h for _, h in DIAG) + " | top class |\n|---|---:|"
            + "---:|" * (len(DIAG) + 1) + "\n"
            + "\n".join(rows) + "\n")


def render(result: dict, out: Path) -> str:
    text = report(result)
    out.with_suffix(".md").write_text(text)
    plot(result, out.with_suffix(".png"))
    return text


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU machine's image has no matplotlib: tables only
        print("matplotlib is not installed: no plot", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    r = result["regime"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    names = list(dict.fromkeys(x["strategy"] for x in result["runs"]))
    for name in names:
        curves = [x["curve"] for x in result["runs"] if x["strategy"] == name]
        n = [c["labels"] for c in curves[0]]
        acc = np.array([[c["accuracy"] for c in curve] for curve in curves])
        ax.plot(n, acc.mean(0), marker="o", ms=2.5, label=f"{name} ({len(curves)})")
        ax.fill_between(n, acc.min(0), acc.max(0), alpha=0.12)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{r['name']}: Fashion-MNIST, {r['model']['name']}; mean, min-max over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("regime", nargs="?", help="a regime file, e.g. benchmarks/regimes/mid-budget.yaml")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (tiny pool, 1 seed, 2 rounds) written under " + str(QUICK_DIR))
    p.add_argument("--strategies", nargs="+", help="run only these (default: the regime's)")
    p.add_argument("--seeds", type=int, nargs="+", help="run only these seeds")
    p.add_argument("--by-strategy", action="store_true",
                   help="run every seed of a strategy before the next (default: seed by seed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--data-dir", default="/tmp/raydal-bench/fashion-mnist")
    p.add_argument("--out", help="results JSON (default: benchmarks/results/al_quality_<name>."
                                 "json, or under /tmp with --quick)")
    p.add_argument("--device", default="cpu", help="torch device for training and scoring "
                                                   "(cuda: the lent GPU)")
    p.add_argument("--parallel", type=int, default=1,
                   help="(seed, strategy) runs at a time, each its own process sharing the device")
    p.add_argument("--budget-s", type=float,
                   help="wall-clock budget: no run starts that would end past it (longest run so "
                        "far), runs still going stop at a round boundary; the rest is recorded "
                        "as missing and the exit status is 0")
    p.add_argument("--data-npz", help="read the data from a file written by --export-npz "
                                      "(e.g. benchmarks/gpu_data/fmnist_subset.npz) instead of "
                                      "--data-dir")
    p.add_argument("--selection", choices=SELECTIONS,
                   help="override the regime's selection path (library: raydal.select)")
    p.add_argument("--diagnose-every", type=int, default=1,
                   help="diagnostics every N selection rounds (0: never)")
    p.add_argument("--override", metavar="KEY=VALUE", nargs="+", default=[],
                   help="change regime fields for a dry run, e.g. rounds=1 training.max_epochs=2 "
                        "(the results then record the changed regime)")
    p.add_argument("--export-npz", metavar="PATH",
                   help=f"write the compact subset ({NPZ_TRAIN} training + {NPZ_TEST} test images "
                        "of /usr/share/datasets/fashion-mnist) to PATH and exit")
    p.add_argument("--render", metavar="JSON", nargs="+",
                   help="only re-render the tables and plot of results files (several: parts of "
                        "one regime run in parallel, merged into --out)")
    args = p.parse_args(argv)
    if args.render:
        parts = [json.loads(Path(f).read_text()) for f in args.render]
        if any(not same_regime(x["regime"], parts[0]["regime"]) for x in parts):
            raise SystemExit("--render: the files hold different regime definitions")
        if len(parts) > 1 and not args.out:
            p.error("--render with several files (parts run in parallel) needs --out")
        out = Path(args.out or args.render[0])
        merged = {**parts[0], "runs": [x for part in parts for x in part["runs"]],
                  "seconds": sum(x["seconds"] for x in parts)}
        if len(parts) > 1 or out != Path(args.render[0]):  # merged, or copied elsewhere
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, merged)
        print(render(merged, out))
        return merged
    if args.export_npz:
        info = export_npz(Path(args.export_npz))
        print(json.dumps(info))
        return info
    if not args.regime:
        p.error("a regime file is required (or --render JSON)")
    r = Regime.load(args.regime)
    if args.quick:
        r = quick(r)
    r = apply_overrides(r, args.override + ([f"selection={args.selection}"] if args.selection
                                            else []))
    default_dir = QUICK_DIR if args.quick or args.override else HERE / "results"
    out = Path(args.out) if args.out else default_dir / f"al_quality_{r.name}.json"
    if args.out and out.suffix != ".json":  # a folder (e.g. $OUT/quality on the GPU machine)
        out = out / f"al_quality_{r.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run(r, out, Path(args.data_dir), args.threads, args.strategies, args.seeds,
                 args.by_strategy, device=args.device, parallel=args.parallel,
                 budget_s=args.budget_s, data_npz=Path(args.data_npz) if args.data_npz else None,
                 diagnose_every=args.diagnose_every)
    if args.data_npz:
        result["data_npz"] = args.data_npz
        write_json(out, result)
    print(render(result, out))
    print(f"wrote {out} and its .md/.png ({result['seconds']:.0f} s of runs, "
          f"{result.get('wall_seconds', 0):.0f} s wall, {len(result.get('missing', []))} missing)")
    return result


def apply_overrides(r: Regime, items: list[str]) -> Regime:
    """KEY=VALUE (YAML values; training.KEY for the recipe) -> a validated new Regime."""
    d = json.loads(json.dumps(r.to_dict()))
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--override expects KEY=VALUE, got {item!r}")
        *head, last = key.split(".")
        node = d
        for part in head:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return Regime.from_dict(d, where="--override")


if __name__ == "__main__":
    main()
