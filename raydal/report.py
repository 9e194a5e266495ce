"""Round tables and learning curves (PNG) from run records."""
from __future__ import annotations

from pathlib import Path

from raydal.storage import atomic_write


def format_table(rows: list[dict]) -> str:
    """Markdown table of per-round metrics."""
    lines = ["| round | labeled | test acc | select s | train s | skipped |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = r.get("test_accuracy")
        lines.append(f"| {r['round']} | {r['num_labeled']} | "
                     f"{'-' if acc is None else f'{acc:.4f}'} | {r['seconds']['select']:.1f} | "
                     f"{r['seconds']['train']:.1f} | {r.get('skipped_images', 0)} |")
    return "\n".join(lines)


def write_learning_curve(runs: dict[str, list[dict]], path: str | Path) -> Path:
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
