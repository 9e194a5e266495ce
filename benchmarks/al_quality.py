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
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import yaml

from raydal.datasets import prepare_dataset
from raydal.merge import top_k
from raydal.models import ModelSpec, create_model
from raydal.pool import Pool
from raydal.scoring import create_strategy
from raydal.stats import auc, labels_to_reach, mean_sd, paired_interval
from raydal.scoring.diagnostics import diagnose
from raydal.scoring.diversity import SetStrategy
from raydal.scoring.batch_dynamical import DynamicALBatch
from raydal.scoring.dynamical import DynamicAL
from raydal.transforms import decode_rows, to_model_input

HERE = Path(__file__).resolve().parent
QUICK_DIR = Path("/tmp/raydal-bench/quick")


# ---- the regime: data, not code -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Training:
    """Adam at ``lr``, ``batch_size``; epochs until the running training accuracy of an epoch
    reaches ``stop_train_accuracy`` (checked from ``min_epochs`` on), at most ``max_epochs``."""

    lr: float = 1e-3
    batch_size: int = 64
    min_epochs: int = 5
    max_epochs: int = 60
    stop_train_accuracy: float = 0.99
    warm_start: bool = False


@dataclasses.dataclass(frozen=True)
class Regime:
    name: str
    dataset: str = "fashion-mnist"
    pool_size: int | None = None
    test_size: int | None = None
    initial: int = 1000
    query: int = 1000
    rounds: int = 4
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (a confirmation: new ones)
    strategies: tuple[str, ...] = ("random", "entropy", "margin", "least_confidence", "badge",
                                   "coreset", "dynamicAL")
    model: dict = dataclasses.field(default_factory=lambda: {"name": "test_resnet",
                                                             "img_size": 32})
    training: Training = Training()

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
        r = cls(**{**d, "strategies": tuple(d.get("strategies", cls.strategies)),
                   "training": Training(**train)})
        for key in ("initial", "query", "rounds", "seeds"):
            if not isinstance(getattr(r, key), int) or getattr(r, key) < 1:
                raise ValueError(f"{where}: {key} must be a positive int, got {getattr(r, key)!r}")
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
    """A smoke version of a regime: tiny pool, 1 seed, 2 rounds, few epochs."""
    return dataclasses.replace(
        r, pool_size=min(r.pool_size or 60000, 1000), test_size=500, seeds=1, rounds=2,
        initial=min(r.initial, 50), query=min(r.query, 25),
        training=dataclasses.replace(r.training, min_epochs=1, max_epochs=3))


# ---- data, training, evaluation -----------------------------------------------------------------
def parse_strategy(text: str, seed: int):
    """'name' or 'name:key=value,...' -> Strategy (strategies with a seed get the run's seed)."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    strategy = create_strategy(name, **options)
    if "seed" in strategy.options() and "seed" not in options:
        strategy = create_strategy(name, **options, seed=seed)
    return strategy


def decode(table, spec) -> torch.Tensor:
    arr, ok, bad = decode_rows(table.column("image").to_pylist(), None, spec.input_spec)
    if bad:
        raise RuntimeError(f"{len(bad)} unreadable images in the data set: {bad[:1]}")
    return to_model_input(arr, spec.input_spec)


def load_data(r: Regime, data_dir: Path):
    """Decoded (pool ids (N,) str sorted, pool x, pool y, test x, test y); subsamples fixed by
    seed 0 whatever the experiment seed."""
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
    y = torch.tensor([label_of[i] for i in ids])
    test = pq.read_table(data_dir / "test.parquet")
    if r.test_size and r.test_size < test.num_rows:
        test = test.take(np.sort(rng.choice(test.num_rows, size=r.test_size, replace=False)))
    return ids, x, y, decode(test, spec), torch.tensor(test.column("label").to_pylist())


def train(x, y, recipe: Training, spec: ModelSpec, seed: int, init=None):
    """A model trained on (x, y) by the recipe: returns (model in eval mode, epochs, running
    training accuracy of the last epoch)."""
    model = create_model(spec, seed=seed)
    if init is not None:
        model.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, recipe.max_epochs + 1):
        correct = seen = 0
        for idx in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            opt.zero_grad()
            out = model(x[idx])
            F.cross_entropy(out, y[idx]).backward()
            opt.step()
            correct += int((out.argmax(1) == y[idx]).sum())
            seen += len(idx)
        train_acc = correct / max(seen, 1)
        if epoch >= recipe.min_epochs and train_acc >= recipe.stop_train_accuracy:
            break
    return model.eval(), epoch, train_acc


@torch.no_grad()
def predict(model, x, size: int = 1024) -> torch.Tensor:
    return torch.cat([model(x[s:s + size]) for s in range(0, len(x), size)])


def batches(x, y, size=256):
    for s in range(0, len(x), size):
        yield x[s:s + size], y[s:s + size]


def chunks(rows: np.ndarray, size: int = 512) -> list[np.ndarray]:
    return np.array_split(rows, max(1, math.ceil(len(rows) / size)))


def select_in_process(strategy, model, ids, x, y, labeled: np.ndarray, budget: int):
    """Exact single-process selection of ``budget`` unlabeled rows: (row indices, context,
    scores of the unlabeled rows or None for set strategies, unlabeled rows)."""
    context = (strategy.prepare(model, batches(x[labeled], y[labeled]))
               if strategy.needs_labeled else None)
    free = np.setdiff1d(np.arange(len(ids)), labeled)
    if isinstance(strategy, DynamicALBatch):  # its pick keeps only the top m by score: embed
        scores = np.concatenate([strategy.scores(model, x[rows], list(ids[rows]), context)
                                 .numpy() for rows in chunks(free)])  # only those m
        top = np.sort(free[np.argsort(-scores, kind="stable")[:strategy.num_candidates(budget)]])
        feats = strategy.embed(model, x[top], list(ids[top]), context)
        picked = strategy.pick(ids[top], feats, budget, context)
        return np.searchsorted(ids, picked), context, scores, free
    if isinstance(strategy, SetStrategy):
        feats = np.concatenate([strategy.embed(model, x[rows], list(ids[rows]), context)
                                for rows in chunks(free)])
        picked = strategy.pick(ids[free], feats, budget, context)
        return np.searchsorted(ids, picked), context, None, free
    scores = torch.cat([strategy.score(model, x[rows], list(ids[rows]), context).double()
                        for rows in chunks(free)]).numpy()
    top_ids, _ = top_k(ids[free], scores, budget)
    return np.searchsorted(ids, top_ids), context, scores, free


# ---- one (seed, strategy) run --------------------------------------------------------------------
def run_one(r: Regime, data, seed: int, name: str, diagnose_every: int = 1) -> dict:
    ids, x, y, test_x, test_y = data
    spec = r.spec()
    strategy = parse_strategy(name, seed)
    labeled = np.sort(np.random.default_rng(1000 + seed).choice(len(ids), r.initial,
                                                                replace=False))
    curve, t_run, t_sel, model = [], time.perf_counter(), 0.0, None
    for rnd in range(r.rounds + 1):
        t = time.perf_counter()
        model, epochs, train_acc = train(x[labeled], y[labeled], r.training, spec,
                                         seed=seed * 1000 + rnd,
                                         init=model if r.training.warm_start else None)
        t_train = time.perf_counter() - t
        pred = predict(model, test_x).argmax(1)
        point = {"labels": int(len(labeled)), "accuracy": float((pred == test_y).double().mean())
                 * 100, "epochs": epochs, "train_accuracy": train_acc,
                 "train_seconds": round(t_train, 2)}
        curve.append(point)
        if rnd == r.rounds:
            break
        t = time.perf_counter()
        new, context, scores, free = select_in_process(strategy, model, ids, x, y, labeled,
                                                       r.query)
        point["select_seconds"] = round(time.perf_counter() - t, 2)
        t_sel += point["select_seconds"]
        point["picks_per_class"] = np.bincount(y[new].numpy(), minlength=10).tolist()
        if rnd % diagnose_every == 0:
            dyn = isinstance(strategy, (DynamicAL, DynamicALBatch))
            point["diagnostics"] = diagnose(
                model, x, y, free, new, g_L=context if dyn else None,
                ip_weight=strategy.ip_weight if dyn else None,
                params=strategy.params if dyn else "all", seed=seed * 1000 + rnd)
        if len(set(new.tolist()) | set(labeled.tolist())) != len(labeled) + len(new):
            raise AssertionError(f"{name} picked a labeled or duplicate row")
        labeled = np.sort(np.concatenate([labeled, new]))
    return {"strategy": name, "seed": seed, "curve": curve, "auc": auc([c["labels"] for c in curve], [c["accuracy"] for c in curve]),
            "seconds": round(time.perf_counter() - t_run, 1), "selection_seconds": round(t_sel, 1)}


# ---- the whole benchmark -------------------------------------------------------------------------
def run(r: Regime, out: Path, data_dir: Path, threads: int, only: list[str] | None = None,
        seeds: list[int] | None = None, by_strategy: bool = False) -> dict:
    """Every (seed, strategy) run not yet in ``out``; the JSON is rewritten after each."""
    torch.set_num_threads(threads)
    old = json.loads(out.read_text()) if out.exists() else None
    if old is not None and not same_regime(old["regime"], r.to_dict()):
        raise SystemExit(f"{out} holds results of another regime definition; pass --out "
                         "elsewhere or delete it")
    result = old or {"regime": r.to_dict(), "runs": [], "seconds": 0.0}
    done = {(x["seed"], x["strategy"]) for x in result["runs"]}
    t0 = time.perf_counter()
    data = load_data(r, data_dir)
    print(f"[{r.name}] data: pool {len(data[0])}, test {len(data[4])} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    planned = range(r.first_seed, r.first_seed + r.seeds)
    pairs = [(seed, name) for seed in (seeds if seeds is not None else planned)
             for name in only or r.strategies]
    if by_strategy:  # every seed of a strategy before the next strategy
        order = list(dict.fromkeys(name for _, name in pairs))
        pairs.sort(key=lambda p: order.index(p[1]))
    for seed, name in pairs:
        if (seed, name) in done:
            continue
        one = run_one(r, data, seed, name)
        result["runs"].append(one)
        result["seconds"] += one["seconds"]
        result["host"] = {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": threads}
        write_json(out, result)
        c = one["curve"]
        print(f"[{r.name}] seed {seed} {name:>24}: auc {one['auc']:.2f} final "
              f"{c[-1]['accuracy']:.2f}% epochs {[p['epochs'] for p in c]} "
              f"({one['seconds']:.0f} s)", flush=True)
    return result


def same_regime(a: dict, b: dict) -> bool:
    """Whether two regime records define the same experiment (``seeds``, ``first_seed`` and
    ``strategies`` only say which runs to do: runs of more seeds or strategies may be added to
    a results file)."""
    def key(d):
        return {k: v for k, v in json.loads(json.dumps(d)).items()
                if k not in ("seeds", "first_seed", "strategies")}
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
    rows = []
    for name in names:
        aucs, finals = [area(x) for x in by[name].values()], [final(x) for x in by[name].values()]
        need = labels_to_reach(labels, mean_curve[name], target) if target else None
        saved = (f"{need / base_n:.0%} ({need:.0f})" if need is not None else
                 f"not reached (> {labels[-1]})") if base_n else ""
        rows.append((np.mean(aucs), f"| {name} | {len(aucs)} | {'%.2f ± %.2f' % mean_sd(aucs)} | "
                     f"{'%.2f ± %.2f' % mean_sd(finals)} | {paired(name, 'random', area)} | "
                     f"{paired(name, 'entropy', area)} | {paired(name, 'random', final)} | "
                     f"{paired(name, 'entropy', final)} | {saved} |"))
    t = r["training"]
    head = (f"**{r['name']}**: {r['dataset']}, pool {r['pool_size'] or 'all'}, test "
            f"{r['test_size'] or 'all'}, {r['initial']} + {r['rounds']} x {r['query']} labels, "
            f"{r['model']['name']} {'warm-started' if t['warm_start'] else 'retrained from scratch'}"
            f" each round (Adam {t['lr']}, batch {t['batch_size']}, until running train accuracy "
            f">= {t['stop_train_accuracy']}, {t['min_epochs']}-{t['max_epochs']} epochs). "
            f"Paired seeds; differences are per-seed means with a 95% t interval "
            f"(* excludes 0). Labels to reach random's final accuracy "
            f"({target:.2f}%) as a share of random's.\n\n" if target else "\n\n")
    table = ("| strategy | seeds | AUC (mean acc %) | final acc % | Δ AUC vs random | "
             "Δ AUC vs entropy | Δ final vs random | Δ final vs entropy | "
             "labels to reach random's final |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    table += "\n".join(row for _, row in sorted(rows, key=lambda t: -t[0]))
    conv = [(p["epochs"], p["train_accuracy"]) for x in result["runs"] for p in x["curve"]]
    secs = sum(x["seconds"] for x in result["runs"])
    tail = (f"\n\nConvergence: {sum(a >= t['stop_train_accuracy'] for _, a in conv)}/{len(conv)} "
            f"trainings reached the stop accuracy; epochs {min(e for e, _ in conv)}-"
            f"{max(e for e, _ in conv)}, final running train accuracy >= "
            f"{min(a for _, a in conv):.3f}. Compute: {secs / 60:.0f} min of runs "
            f"({result.get('host', {}).get('threads', '?')} thread(s) each).\n")
    return head + table + tail + curves_table(names, labels, mean_curve) + diagnostics_table(result)


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
    import matplotlib
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
    if not args.regime:
        p.error("a regime file is required (or --render JSON)")
    r = Regime.load(args.regime)
    if args.quick:
        r = quick(r)
    default_dir = QUICK_DIR if args.quick else HERE / "results"
    out = Path(args.out) if args.out else default_dir / f"al_quality_{r.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run(r, out, Path(args.data_dir), args.threads, args.strategies, args.seeds,
                 args.by_strategy)
    print(render(result, out))
    print(f"wrote {out} and its .md/.png ({result['seconds']:.0f} s of runs)")
    return result


if __name__ == "__main__":
    main()
