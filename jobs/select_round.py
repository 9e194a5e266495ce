"""Entry point for ``ray job submit``: one distributed selection, written as a Parquet file.

    ray job submit --working-dir . -- python jobs/select_round.py \\
        --pool /mnt/imagenet/pool.parquet --checkpoint runs/x/checkpoints/round-0003 \\
        --strategy dynamicAL --budget 10000 --labels runs/x/labels \\
        --out runs/x/selections/manual-0004.parquet

The output has columns id (string), score (float64), rank (int64, 0 = best) and is written
atomically (temp file + rename): it exists complete or not at all. A summary JSON line is printed
last (see ``ray job logs``). Paths are read by every node: use shared storage on a cluster.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The copy uploaded with --working-dir (or this checkout) wins over an installed raydal.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_labeled(path: str | None) -> dict[str, int] | list[str]:
    """The labeled set: {id: label} from a run dir, its labels/ folder or a Parquet file (local
    paths or URIs such as s3://bucket/runs/x).

    A Parquet file without a ``label`` column gives ids only (enough for strategies that need
    no labels, e.g. entropy). None gives an empty set.
    """
    import pyarrow.parquet as pq
    from raydal.fs import resolve
    from raydal.labels import LabelLog
    from raydal.storage import read_table

    if path is None:
        return {}
    p = resolve(path)
    if p.is_dir():
        folder = p / "labels" if (p / "labels").is_dir() else p
        log = LabelLog(folder)
        if not log.rounds():
            raise SystemExit(f"error: --labels {path}: no labels/round-NNNN.parquet files in "
                             f"{folder}; give a run directory, its labels/ folder or a Parquet "
                             "file with columns id[, label]")
        return log.labels()
    if not p.exists():
        raise SystemExit(f"error: --labels {path} does not exist")
    names = pq.read_schema(p.path, filesystem=p.fs).names
    if "id" not in names:
        raise SystemExit(f"error: --labels {path} has no 'id' column (columns: {names})")
    if "label" not in names:
        return [str(i) for i in read_table(p, columns=["id"]).column("id").to_pylist()]
    t = read_table(p, columns=["id", "label"])
    return {str(i): int(y) for i, y in zip(t.column("id").to_pylist(),
                                           t.column("label").to_pylist())}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Select the budget best unlabeled pool rows.")
    p.add_argument("--pool", required=True, help="Parquet pool (file or folder): id, image|path")
    p.add_argument("--checkpoint", help="raydal checkpoint folder (model.safetensors + meta.json);"
                   " not needed by the random strategy")
    p.add_argument("--strategy", default="dynamicAL", help="registered strategy name")
    p.add_argument("--strategy-options", default="{}", help="JSON object, e.g. '{\"ip_weight\": 2}'")
    p.add_argument("--budget", type=int, required=True, help="number of rows to select")
    p.add_argument("--labels", help="labeled set: run dir, its labels/ folder, or Parquet id[,label]")
    p.add_argument("--out", required=True, help="output Parquet file (id, score, rank)")
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256, help="images per scoring batch")
    p.add_argument("--num-gpus-per-actor", type=float, default=0.0)
    p.add_argument("--num-cpus-per-actor", type=float, default=0.5,
                   help="keep num_actors x this below the cluster's CPUs (Ray Data reads need one)")
    p.add_argument("--progress", action="store_true", help="draw a progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray
    import ray.data
    import raydal
    from raydal.storage import atomic_write_parquet

    options = json.loads(args.strategy_options)
    labeled = read_labeled(args.labels)
    ray.init(log_to_driver=args.progress)  # address: RAY_ADDRESS, set by `ray job submit`
    ray.data.DataContext.get_current().enable_progress_bars = False
    sel = raydal.select(raydal.Pool(args.pool), args.checkpoint, args.strategy, args.budget,
                        labeled=labeled, strategy_options=options, num_actors=args.num_actors,
                        batch_size=args.batch_size, num_gpus_per_actor=args.num_gpus_per_actor,
                        num_cpus_per_actor=args.num_cpus_per_actor, progress=args.progress)
    out = atomic_write_parquet(args.out, sel.to_table())
    print(json.dumps({"out": str(out), "strategy": args.strategy, "num_selected": len(sel.ids),
                      "num_scored": sel.num_scored, "num_labeled": len(labeled),
                      "skipped": len(sel.skipped), "seconds": round(sel.seconds, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
