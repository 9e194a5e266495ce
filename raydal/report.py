"""Round tables and learning curves (PNG) from run records."""
from __future__ import annotations

from raydal.fs import Location, Where, resolve
from raydal.storage import atomic_write, read_json, read_table


def format_table(rows: list[dict]) -> str:
    """Markdown table of per-round metrics; "start-up" is each phase's fixed cost within its
    seconds (selection: until the first scored batch; training: until the first optimiser step)."""
    lines = ["| round | labeled | test acc | select s | start-up | train s | start-up | skipped |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = r.get("test_accuracy")
        sec, up = r["seconds"], r.get("startup_seconds", {})
        lines.append(f"| {r['round']} | {r['num_labeled']} | "
                     f"{'-' if acc is None else f'{acc:.4f}'} | {sec['select']:.1f} | "
                     f"{up.get('select', 0.0):.1f} | {sec['train']:.1f} | "
                     f"{up.get('train', 0.0):.1f} | {r.get('skipped_images', 0)} |")
    if rows:
        total = sum(r["seconds"]["select"] + r["seconds"]["train"] for r in rows)
        fixed = sum(sum(r.get("startup_seconds", {}).values()) for r in rows)
        lines.append(f"\nselect + train: {total:.1f} s, {fixed:.1f} s of it start-up "
                     f"({fixed / max(total, 1e-9):.0%})")
    return "\n".join(lines)


def write_learning_curve(runs: dict[str, list[dict]], path: Where) -> Location:
    """Test accuracy vs number of labels, one line a run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, rows in runs.items():
        ax.plot([r["num_labeled"] for r in rows], [r["test_accuracy"] for r in rows],
                marker="o", label=name)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def learning_curve_auc(rows: list[dict]) -> float:
    """Area under accuracy-vs-labels, divided by the label range (= mean accuracy); NaN if < 2."""
    import numpy as np
    x = np.array([r["num_labeled"] for r in rows], dtype=float)
    y = np.array([r["test_accuracy"] for r in rows], dtype=float)
    if len(x) < 2 or x[-1] == x[0]:
        return float("nan")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def format_auc_table(runs: dict[str, list[dict]]) -> str:
    lines = ["| run | rounds | final labels | final acc | AUC (mean acc) |", "|---|---:|---:|---:|---:|"]
    for name, rows in runs.items():
        last = rows[-1] if rows else {"num_labeled": 0, "test_accuracy": float("nan")}
        lines.append(f"| {name} | {len(rows)} | {last['num_labeled']} | "
                     f"{last['test_accuracy']:.4f} | {learning_curve_auc(rows):.4f} |")
    return "\n".join(lines)


def round_summary(run_dir: Where) -> str:
    """Per selection round: picks per class (from the labels bought) and score quantiles."""
    import numpy as np
    from raydal.labels import LabelLog

    run_dir = resolve(run_dir)
    log = LabelLog(run_dir / "labels")
    lines = ["| round | picks | labels per class | score min / median / max | skipped images |",
             "|---:|---:|---|---|---:|"]
    all_labels = log.table().column("label").to_numpy()
    num_classes = int(all_labels.max()) + 1 if len(all_labels) else 0
    for r in log.rounds():
        labels = read_table(log.round_path(r)).column("label").to_numpy()
        counts = np.bincount(labels, minlength=num_classes)
        sel = run_dir / "selections" / f"round-{r:04d}.parquet"
        scores = read_table(sel).column("score").to_numpy() if sel.exists() else np.array([])
        q = (" / ".join(f"{v:.4g}" for v in np.quantile(scores, [0, 0.5, 1]))
             if len(scores) else "-")
        skipped = len(read_json(sel.with_suffix(".json"), {}).get("skipped", []))
        lines.append(f"| {r} | {len(labels)} | {' '.join(map(str, counts.tolist()))} | {q} "
                     f"| {skipped} |")
    return "\n".join(lines)
