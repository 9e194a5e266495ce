"""Active-learning quality on Fashion-MNIST: test accuracy versus number of labels, per strategy.

Protocol (the same for every strategy):
  - data: the Debian package's original Fashion-MNIST files, imported with
    ``raydal.datasets.prepare_dataset``; a fixed random subsample of the training split is the
    pool (``--pool-size``), a fixed random subsample of the test split the evaluation set
    (``--test-size``, only ever used to report accuracy: nothing is tuned on it).
  - per seed: one initial labeled set (``--initial`` uniform picks), shared by every strategy;
    then ``--rounds`` rounds of ``--budget`` picks.
  - training: timm ``test_resnet`` (in_chans=1, 32 px, random init), Adam 1e-3, batch 64,
    ``--steps`` optimizer steps per round (= ceil(steps / batches per epoch) epochs), RETRAINED
    FROM SCRATCH every round with an init seeded by (seed, round), so strategies differ only by
    their labels; ``--warm-start`` starts each round from the last weights instead (a new Adam
    each round, as the dynamicAL reference code does). The model that selects is the one just trained.
  - selection runs in-process with the registered Strategy objects (score + ``raydal.merge.top_k``,
    or a SetStrategy's embed + pick on the whole pool: the exact single-process algorithm).
    ``raydal.select`` gives the same top-b for score strategies; for set strategies the
    distributed approximation is measured here (``approximation`` in the JSON) by replaying it
    with ``raydal.scoring.diversity.sharded_pick`` at the first selection round.
  - metric: area under the accuracy-vs-labels curve (trapezoid, divided by the label range:
    a mean accuracy in %), mean ± std over seeds.

Strategies are names with options, e.g. ``dynamicAL:ip_weight=0`` or ``dynamicAL:params=head``.

    python benchmarks/al_quality.py [--quick] [--seeds 3] [--rounds 5] [--pool-size 5000]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from raydal.datasets import prepare_dataset
from raydal.merge import top_k
from raydal.models import ModelSpec, create_model
from raydal.pool import Pool
from raydal.scoring import create_strategy
from raydal.scoring.diversity import (SetStrategy, k_center_cost, k_means_cost, badge_gram,
                                      sharded_pick)
from raydal.transforms import decode_rows, to_model_input

STRATEGIES = ["random", "entropy", "margin", "least_confidence", "badge", "coreset", "dynamicAL"]
SPEC = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
HERE = Path(__file__).resolve().parent


def parse_strategy(text: str, seed: int):
    """'name' or 'name:key=value,...' -> Strategy (random and badge get the run's seed)."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    if name in ("random", "badge"):
        options.setdefault("seed", seed)
    return create_strategy(name, **options)


def decode(table, spec) -> torch.Tensor:
    arr, ok, bad = decode_rows(table.column("image").to_pylist(), None, spec.input_spec)
    if bad:
        raise RuntimeError(f"{len(bad)} unreadable images in Fashion-MNIST: {bad[:1]}")
    return to_model_input(arr, spec.input_spec)


def load_data(data_dir: Path, pool_size: int, test_size: int):
    """Decoded (pool ids, pool x, pool y, test x, test y); subsamples fixed by seed 0."""
    prepare_dataset("fashion-mnist", data_dir)
    rng = np.random.default_rng(0)
    truth = pq.read_table(data_dir / "truth.parquet").to_pydict()
    chosen = sorted(rng.choice(len(truth["id"]), size=pool_size, replace=False).tolist())
    ids = [truth["id"][i] for i in chosen]
    label_of = dict(zip(truth["id"], truth["label"]))
    table = Pool(data_dir / "pool.parquet").take(ids)
    ids = table.column("id").to_pylist()
    x = decode(table, SPEC)
    y = torch.tensor([label_of[i] for i in ids])
    test = pq.read_table(data_dir / "test.parquet")
    pick = np.sort(rng.choice(test.num_rows, size=test_size, replace=False))
    test = test.take(pick)
    return (np.asarray(ids, dtype=str), x, y, decode(test, SPEC),
            torch.tensor(test.column("label").to_pylist()))


def train(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
          init: torch.nn.Module | None = None) -> torch.nn.Module:
    """test_resnet (fresh, or warm-started from ``init``'s weights), a new Adam 1e-3 each call,
    batch 64, ``steps`` steps over reshuffled epochs."""
    model = create_model(SPEC, seed=seed)
    if init is not None:
        model.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        for idx in torch.randperm(len(x), generator=gen).split(64):
            if done == steps:
                break
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            done += 1
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    pred = torch.cat([model(x[s:s + 512]).argmax(1) for s in range(0, len(x), 512)])
    return float((pred == y).double().mean()) * 100


def batches(x, y, size=256):
    for s in range(0, len(x), size):
        yield x[s:s + size], y[s:s + size]


def select_in_process(strategy, model, ids, x, y, labeled: np.ndarray, budget: int):
    """Exact single-process selection of ``budget`` unlabeled ids (row indices), the context
    and, for set strategies, the unlabeled rows' features (for the approximation check)."""
    context = (strategy.prepare(model, batches(x[labeled], y[labeled]))
               if strategy.needs_labeled else None)
    free = np.setdiff1d(np.arange(len(ids)), labeled)
    if isinstance(strategy, SetStrategy):
        feats = np.concatenate([strategy.embed(model, x[rows], list(ids[rows]), context)
                                for rows in np.array_split(free, max(1, len(free) // 512))])
        picked = strategy.pick(ids[free], feats, budget, context)
        return np.searchsorted(ids, picked), context, (ids[free], feats)
    scores = torch.cat([strategy.score(model, x[rows], list(ids[rows]), context).double()
                        for rows in np.array_split(free, max(1, len(free) // 512))])
    top_ids, _ = top_k(ids[free], scores.numpy(), budget)
    return np.searchsorted(ids, top_ids), context, None


def approximation(strategy, pool, context, budget: int) -> dict:
    """Exact pick vs the distributed scheme replayed (batches of 256; default driver bound and a
    tight bound that forces driver reductions as on a large pool)."""
    ids, feats = pool
    exact = strategy.pick(ids, feats, budget, context)
    out = {}
    for label, max_rows in (("default_bound", None), ("tight_bound", 2 * budget)):
        approx = sharded_pick(strategy, ids, feats, budget, context, 256, max_rows)
        row = {"overlap": len(set(exact) & set(approx)) / budget}
        rows = {i: k for k, i in enumerate(ids)}
        if strategy.name == "coreset":
            base = context if context is not None else feats[:0]
            cost = [k_center_cost(feats, np.concatenate([base, feats[[rows[i] for i in p]]]))
                    for p in (exact, approx)]
            row["k_center_exact"], row["k_center_sharded"] = cost
        else:
            gram = badge_gram(int(feats[0, 0]))
            cost = [k_means_cost(feats[:, 1:], feats[[rows[i] for i in p]][:, 1:], gram)
                    for p in (exact, approx)]
            row["k_means_exact"], row["k_means_sharded"] = cost
        out[label] = row
    return out


def run(args, save=lambda result: None) -> dict:
    """The whole benchmark; ``save`` gets the partial result after every (seed, strategy) run."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ids, x, y, test_x, test_y = load_data(Path(args.data_dir), args.pool_size, args.test_size)
    print(f"data: pool {len(ids)}, test {len(test_y)} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    runs, approx = [], []
    for seed in range(args.seeds):
        initial = np.sort(np.random.default_rng(1000 + seed).choice(len(ids), args.initial,
                                                                    replace=False))
        for name in args.strategies:
            strategy = parse_strategy(name, seed)
            labeled = initial
            curve, t_run, t_sel = [], time.perf_counter(), 0.0
            model = None
            for r in range(args.rounds + 1):
                model = train(x[labeled], y[labeled], args.steps, seed=seed * 1000 + r,
                              init=model if args.warm_start else None)
                curve.append({"labels": int(len(labeled)),
                              "accuracy": accuracy(model, test_x, test_y)})
                if r == args.rounds:
                    break
                t = time.perf_counter()
                new, context, pool = select_in_process(strategy, model, ids, x, y, labeled,
                                                       args.budget)
                t_sel += time.perf_counter() - t
                if pool is not None and r == 0:
                    approx.append({"strategy": name, "seed": seed,
                                   **approximation(strategy, pool, context, args.budget)})
                assert len(set(new.tolist()) | set(labeled.tolist())) == len(labeled) + len(new)
                labeled = np.sort(np.concatenate([labeled, new]))
            runs.append({"strategy": name, "seed": seed, "curve": curve,
                         "auc": auc(curve), "seconds": time.perf_counter() - t_run,
                         "selection_seconds": t_sel})
            save(partial(args, runs, approx, t0))
            print(f"seed {seed} {name:>20}: auc {runs[-1]['auc']:.2f}  final "
                  f"{curve[-1]['accuracy']:.1f}%  ({runs[-1]['seconds']:.0f} s)", flush=True)
    return partial(args, runs, approx, t0)


def partial(args, runs: list, approx: list, t0: float) -> dict:
    return {"config": vars(args), "model": SPEC.to_dict(), "runs": runs,
            "approximation": approx, "seconds": time.perf_counter() - t0,
            "host": {"platform": platform.platform(), "torch": torch.__version__,
                     "threads": args.threads}}


def auc(curve: list[dict]) -> float:
    """Area under accuracy (%) vs labels, divided by the label range: a mean accuracy in %."""
    n = np.array([c["labels"] for c in curve], dtype=float)
    a = np.array([c["accuracy"] for c in curve])
    return float(np.trapezoid(a, n) / (n[-1] - n[0])) if len(n) > 1 else float(a[0])


def mean_std(v: np.ndarray) -> str:
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def summary(result: dict) -> str:
    """Markdown table: AUC and final accuracy, mean ± std over seeds, best AUC first."""
    rows = []
    for name in result["config"]["strategies"]:
        runs = [r for r in result["runs"] if r["strategy"] == name]
        aucs = np.array([r["auc"] for r in runs])
        final = np.array([r["curve"][-1]["accuracy"] for r in runs])
        rows.append((aucs.mean(), f"| {name} | {mean_std(aucs)} | {mean_std(final)} | "
                                  f"{len(runs)} |"))
    cfg = result["config"]
    start = "warm-started" if cfg.get("warm_start") else "retrained from scratch"
    head = (f"Fashion-MNIST, test_resnet {start} ({cfg['steps']} Adam steps), pool "
            f"{cfg['pool_size']}, test {cfg['test_size']}, {cfg['initial']} + {cfg['rounds']} x "
            f"{cfg['budget']} labels; mean ± std over seeds.\n\n"
            "| strategy | AUC (mean acc %) | final acc % | seeds |\n|---|---:|---:|---:|\n")
    return head + "\n".join(r for _, r in sorted(rows, key=lambda t: -t[0])) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in result["config"]["strategies"]:
        curves = [r["curve"] for r in result["runs"] if r["strategy"] == name]
        n = [c["labels"] for c in curves[0]]
        acc = np.array([[c["accuracy"] for c in curve] for curve in curves])
        ax.plot(n, acc.mean(0), marker="o", ms=3, label=name)
        ax.fill_between(n, acc.min(0), acc.max(0), alpha=0.15)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, mean and min-max over {result['config']['seeds']} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny pool, 1 seed, 2 rounds")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--pool-size", type=int, default=3000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--initial", type=int, default=100)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per round")
    p.add_argument("--strategies", nargs="+", default=STRATEGIES)
    p.add_argument("--warm-start", action="store_true",
                   help="start each round from the last round's weights (default: from scratch)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: robust on a shared, oversubscribed machine)")
    p.add_argument("--data-dir", default="/tmp/raydal-bench/fashion-mnist")
    p.add_argument("--out", default=str(HERE / "results" / "al_quality.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.pool_size, args.test_size = 1, 2, 1000, 500
        args.initial, args.budget, args.steps = 50, 50, 40
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run(args, save=lambda r: out.write_text(json.dumps(r, indent=1)))
    table = summary(result)
    result["table"] = table
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table)
    plot(result, out.with_suffix(".png"))
    print(table)
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')} "
          f"({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
