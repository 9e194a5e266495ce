"""Read a raydal run back from MLflow and plot it: what a user sees in the MLflow UI, as a PNG.

    python benchmarks/tracking_plot.py runs/quickstart --out benchmarks/results/mlflow_quickstart.png

The run directory's ``tracking.json`` names the MLflow tracking URI and run; everything plotted
comes from ``MlflowClient`` (params and metric histories), not from raydal's own files:
test accuracy against labels, each phase's seconds a round, the rank-0 worker's training
curve, and the picks per class.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_run(run_dir: Path) -> tuple[dict, dict[str, list[tuple[int, float]]]]:
    """(params, {metric: [(step, value), ...] sorted by step}) of the run's MLflow run."""
    from mlflow.tracking import MlflowClient
    record = json.loads((run_dir / "tracking.json").read_text())
    if not record.get("mlflow_uri"):
        raise SystemExit(f"{run_dir} was not tracked in MLflow (set tracking.mlflow)")
    client = MlflowClient(tracking_uri=record["mlflow_uri"])
    run = client.get_run(record["run_id"])
    metrics = {}
    for key in run.data.metrics:
        hist = client.get_metric_history(record["run_id"], key)
        metrics[key] = sorted((m.step, m.value) for m in hist)
    return dict(run.data.params), metrics


def _stacked(a, rounds: list[int], series: dict[str, list[tuple[int, float]]]) -> None:
    """Stacked bars a round: one layer per ``series`` entry (label -> [(step, value)])."""
    bottom = [0.0] * len(rounds)
    for label, history in series.items():
        vals = dict(history)
        ys = [vals.get(r, 0.0) for r in rounds]
        a.bar(rounds, ys, bottom=bottom, label=label)
        bottom = [b + y for b, y in zip(bottom, ys)]


def plot(params: dict, metrics: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    labeled = dict(metrics["num_labeled"])
    acc = metrics["test_accuracy"]
    a = ax[0][0]
    a.plot([labeled[s] for s, _ in acc], [100 * v for _, v in acc], "o-")
    a.set(xlabel="labeled images", ylabel="test accuracy %", title="test_accuracy vs num_labeled")
    a.grid(alpha=0.3)

    a = ax[0][1]
    rounds = [s for s, _ in acc]
    _stacked(a, rounds, {phase: metrics.get(f"seconds/{phase}", [])
                         for phase in ("select", "label", "train")})
    a.set(xlabel="round", ylabel="seconds", title="seconds/select|label|train")
    a.legend()

    a = ax[1][0]
    curve = metrics.get("train_loss_epoch", [])
    a.plot([s for s, _ in curve], [v for _, v in curve], lw=1)
    a.set(xlabel="round x epochs + epoch", ylabel="loss",
          title="train_loss_epoch (rank-0 worker)")
    a.grid(alpha=0.3)

    a = ax[1][1]
    classes = sorted((k for k in metrics if k.startswith("picks/class_")),
                     key=lambda k: int(k.rsplit("_", 1)[1]))
    _stacked(a, rounds, {k.rsplit("_", 1)[1]: metrics[k] for k in classes})
    a.set(xlabel="round", ylabel="picks", title="picks/class_K")
    a.legend(title="class", fontsize=7, ncol=2)
    fig.suptitle(f"MLflow run of {params.get('name', '?')}: strategy "
                 f"{params.get('strategy.name', '?')}, model {params.get('model.name', '?')} "
                 f"({len(params)} params logged)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("/tmp/raydal-bench/mlflow_run.png"))
    args = p.parse_args(argv)
    params, metrics = read_run(args.run_dir)
    plot(params, metrics, args.out)
    labeled = dict(metrics["num_labeled"])
    print("| round | labeled | test acc | select s | train s |")
    print("|---:|---:|---:|---:|---:|")
    for step, v in metrics["test_accuracy"]:
        sec = {k: dict(metrics.get(f"seconds/{k}", [])).get(step, float("nan"))
               for k in ("select", "train")}
        print(f"| {step} | {labeled[step]:.0f} | {v:.4f} | {sec['select']:.1f} | "
              f"{sec['train']:.1f} |")
    print(f"{len(params)} params, {len(metrics)} metrics; plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
